"""``steadyserve export``: a training-ready dataset from the prediction log.

One row per example row (a request of k rows gives k rows)::

    request_id, time, model_version, answered_by,
    <input> | <input>[0] <input>[1] ...,           raw inputs, flattened per row
    output.<name> | output.<name>[0] ...,           what the model answered
    label                                           the latest label sent for the request

A scalar label belongs to a 1-row request; a list of k labels to a k-row request, row i
getting element i; any other label leaves the rows unlabelled. An input whose name would
clash with these columns is exported as ``input.<name>``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, ConfigError
from .labels import latest_labels
from .reader import read_predictions

BASE_COLUMNS = ("request_id", "time", "model_version", "answered_by")
EXPORT_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl"}
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


@dataclass(frozen=True, slots=True)
class ExportSummary:
    rows: int  # example rows written
    requests: int  # logged requests they came from
    labelled: int  # rows with a label
    path: Path


def export(
    root: Path,
    model: str,
    out: Path,
    *,
    since: float | None = None,
    labelled: bool = False,
    format: str | None = None,
) -> ExportSummary:
    """Write ``model``'s logged requests (time >= ``since``) to ``out``, as ``format``
    (parquet, csv, jsonl; default from out's suffix); ``labelled`` keeps only rows with
    a label. The file appears complete or not at all."""
    out = Path(out)
    fmt = _format(out, format)
    labels = latest_labels(Path(root), model)
    table = _Table()
    for record in read_predictions(root, model, since=since):
        entry = labels.get(record["request_id"])
        table.add(record, _row_labels(entry, record["rows"]), only_labelled=labelled)
    table.finish()

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    try:
        {"parquet": _write_parquet, "csv": _write_csv, "jsonl": _write_jsonl}[fmt](table, partial)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    labelled_rows = sum(label is not None for label in table.labels)
    return ExportSummary(table.rows, table.requests, labelled_rows, out)


def parse_since(text: str, now: float) -> float:
    """Unix seconds of ``--since``: an ISO 8601 date or date-time (naive is UTC), or a
    duration before ``now`` (``90m``, ``24h``, ``7d``, ``3600s``, ``2w``)."""
    match = DURATION.match(text)
    if match:
        return now - float(match[1]) * SECONDS[match[2]]
    iso = text.strip()
    if iso[-1:] in ("Z", "z"):  # Python 3.10's fromisoformat has no "Z"
        iso = iso[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(iso)
    except ValueError:
        raise ConfigError(
            f"since: {text!r} is neither an ISO 8601 date/time (2025-12-01, "
            "2025-12-01T08:00:00Z) nor a duration (a number and s, m, h, d or w: 90m, 24h, 7d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _format(out: Path, format: str | None) -> str:
    if format is None:
        if out.suffix.lower() not in EXPORT_FORMATS:
            raise ConfigError(
                f"export to {out}: cannot tell the format from its suffix; name it "
                f"{', '.join(EXPORT_FORMATS)} or pass format"
            )
        return EXPORT_FORMATS[out.suffix.lower()]
    if format not in EXPORT_FORMATS.values():
        raise ConfigError(f"format must be parquet, csv or jsonl, got {format!r}")
    return format


def _row_labels(entry: dict | None, rows: int) -> list:
    """The label of each of a request's rows (None: none)."""
    label = None if entry is None else entry.get("label")
    if isinstance(label, list):
        return list(label) if len(label) == rows else [None] * rows
    if label is None or isinstance(label, dict) or rows != 1:
        return [None] * rows
    return [label]


def _feature_name(name: str) -> str:
    clashes = name in (*BASE_COLUMNS, "label") or name.startswith(("output.", "input."))
    return f"input.{name}" if clashes else name


class _Table:
    """The export's columns, stacked a block of alike records at a time (one small array
    per request and column would not scale). A column is pieces: (first row, values)."""

    def __init__(self) -> None:
        self.rows = 0
        self.requests = 0
        self.labels: list = []
        self.columns: dict[str, list[tuple[int, np.ndarray]]] = {n: [] for n in BASE_COLUMNS}
        self._features: dict[str, list[tuple[int, np.ndarray]]] = {}
        self._outputs: dict[str, list[tuple[int, np.ndarray]]] = {}
        self._block: list[tuple[dict, int, dict[str, np.ndarray]]] = []
        self._block_key: tuple = ()

    def add(self, record: dict, labels: list, *, only_labelled: bool) -> None:
        rows = record["rows"]
        if rows == 0:
            return
        flat = {_feature_name(n): a.reshape(rows, -1) for n, a in record["inputs"].items()}
        flat.update({f"output.{n}": a.reshape(rows, -1) for n, a in record["outputs"].items()})
        if only_labelled:
            keep = np.array([label is not None for label in labels])
            if not keep.any():
                return
            if not keep.all():
                flat = {name: values[keep] for name, values in flat.items()}
                labels = [label for label in labels if label is not None]
        key = tuple((name, values.shape[1], values.dtype) for name, values in flat.items())
        if key != self._block_key:
            self._stack_block()
            self._block_key = key
        self._block.append((record, len(labels), flat))
        self.labels.extend(labels)
        self.requests += 1

    def finish(self) -> None:
        self._stack_block()
        self.columns.update(self._features)
        self.columns.update(self._outputs)

    def values(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """A column's values over all rows and which of them are present."""
        pieces = self.columns[name]
        dtypes = [values.dtype for _, values in pieces] or [np.dtype(object)]
        dtype = np.result_type(*dtypes)
        out = (
            np.full(self.rows, None, dtype=object)
            if dtype.kind == "O"
            else np.zeros(self.rows, dtype)
        )
        present = np.zeros(self.rows, dtype=bool)
        for start, values in pieces:
            out[start : start + len(values)] = values
            present[start : start + len(values)] = True
        return out, present

    def _stack_block(self) -> None:
        if not self._block:
            return
        counts = [rows for _, rows, _ in self._block]
        start = self.rows

        def per_row(key: str, dtype) -> np.ndarray:
            return np.repeat(np.array([r[key] for r, _, _ in self._block], dtype=dtype), counts)

        self.columns["request_id"].append((start, per_row("request_id", object)))
        self.columns["time"].append((start, per_row("time", np.float64)))
        self.columns["model_version"].append((start, per_row("version", object)))
        self.columns["answered_by"].append((start, per_row("answered_by", object)))
        for name, width, _ in self._block_key:
            stacked = np.concatenate([flat[name] for _, _, flat in self._block])
            into = self._outputs if name.startswith("output.") else self._features
            names = [name] if width == 1 else [f"{name}[{i}]" for i in range(width)]
            for i, column in enumerate(names):
                into.setdefault(column, []).append((start, stacked[:, i]))
        self.rows += sum(counts)
        self._block = []


# --- writers ----------------------------------------------------------------------


def _write_parquet(table: _Table, path: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise BackendUnavailableError(f"a Parquet export needs pyarrow ({e})") from e
    arrays = {}
    for name in table.columns:
        values, present = table.values(name)
        if values.dtype.kind == "O":
            arrays[name] = pa.array(
                [v if p else None for v, p in zip(values, present, strict=True)]
            )
        else:
            arrays[name] = pa.array(values, mask=~present)
    arrays["label"] = _label_array(pa, table.labels)
    pq.write_table(pa.table(arrays), path, compression="zstd")


def _label_array(pa, labels: list):
    """One type for the label column, as the labels are (bool, int64, float64, string),
    else each label as its JSON text."""
    present = [label for label in labels if label is not None]
    numbers = [v for v in present if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if all(isinstance(v, bool) for v in present):
        return pa.array(labels, pa.bool_())
    if len(numbers) == len(present):
        exact = all(isinstance(v, int) for v in numbers)
        return pa.array(labels, pa.int64() if exact else pa.float64())
    if all(isinstance(v, str) for v in present):
        return pa.array(labels, pa.string())
    return pa.array([None if v is None else json.dumps(v) for v in labels], pa.string())


def _cells(table: _Table, name: str, cell) -> Iterator:
    values, present = table.values(name)
    for value, here in zip(values, present, strict=True):
        yield cell(value) if here else None


def _text(value) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="backslashreplace")
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    return str(value)  # numpy floats print the shortest text that reads back exactly


def _json_value(value):
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="backslashreplace")
    if isinstance(value, np.floating):
        # JSON has no NaN or infinity: missing. str(): a float32 as written, not widened.
        return float(str(value)) if math.isfinite(value) else None
    return value.item() if isinstance(value, np.generic) else value


def _write_csv(table: _Table, path: Path) -> None:
    names = [*table.columns, "label"]
    columns = [_cells(table, name, _text) for name in table.columns]
    labels = (
        None if v is None else v if isinstance(v, str) else json.dumps(v) for v in table.labels
    )
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        for row in zip(*columns, labels, strict=True):
            writer.writerow(["" if cell is None else cell for cell in row])


def _write_jsonl(table: _Table, path: Path) -> None:
    names = [*table.columns, "label"]
    columns = [_cells(table, name, _json_value) for name in table.columns]
    with open(path, "w", encoding="utf-8") as f:
        for row in zip(*columns, table.labels, strict=True):
            f.write(json.dumps(dict(zip(names, row, strict=True)), allow_nan=False) + "\n")
