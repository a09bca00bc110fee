"""The prediction log in JSON lines (when pyarrow is not installed): one request a line.

    {"request_id": "abc", "time": 1764601200.123, "model": "m", "answered_by": "m",
     "version": "1", "failover": false, "rows": 2,
     "inputs": {"x": {"dtype": "float32", "dims": [3], "values": [0.5, "NaN", ...]}},
     "scaled": {...}, "outputs": {...}}

Values round-trip exactly: a float32 or float16 is exact as a Python float, and Python
writes floats in the shortest form that reads back to the same double. JSON has no NaN
or infinity: those are the strings "NaN", "Infinity" and "-Infinity". Strings (dtype
"bytes") are base64.
"""

from __future__ import annotations

import base64
import json
import math
import os
from pathlib import Path

import numpy as np

from .files import LogFile
from .records import RECORD_KEYS, ModelRecords, flat_bytes, value_kind

NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class JsonlFile(LogFile):
    format = "jsonl"
    buffered = False  # one os.write per write: a failed one is cut off by truncating

    def _write(self, parts: list[ModelRecords]) -> None:
        data = "".join(line for part in parts for line in _lines(part)).encode("utf-8")
        fd = self._file.fileno()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def _finish(self) -> None:
        """Nothing closes a JSON lines file."""

    def _salvage(self) -> bool:
        os.ftruncate(self._file.fileno(), self.size)  # cut off the torn write
        self._file.close()
        return True


def _lines(part: ModelRecords) -> list[str]:
    offsets = part.offsets()
    tensors = []
    for kind, name, array in part.tensors:
        per_row = int(np.prod(array.shape[1:], dtype=np.int64))
        tensors.append(
            (
                RECORD_KEYS[kind],
                name,
                value_kind(array.dtype),
                array.shape[1:],
                _json_values(array),
                per_row,
            )
        )
    failover = part.answered_by != part.model
    lines = []
    for i, request_id in enumerate(part.request_ids):
        start, end = int(offsets[i]), int(offsets[i + 1])
        record = {
            "request_id": request_id,
            "time": part.time,
            "model": part.model,
            "answered_by": part.answered_by,
            "version": part.version,
            "failover": failover,
            "rows": end - start,
            **{key: {} for key in RECORD_KEYS.values()},
        }
        for key, name, kind, dims, values, per_row in tensors:
            record[key][name] = {
                "dtype": kind,
                "dims": list(dims),
                "values": values[start * per_row : end * per_row],
            }
        lines.append(json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")
    return lines


def _json_values(array: np.ndarray) -> list:
    """A tensor's elements, flat, as JSON values."""
    if array.dtype.kind in "OSU":
        return [base64.b64encode(v).decode("ascii") for v in flat_bytes(array)]
    values = array.reshape(-1).tolist()
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        values = [v if math.isfinite(v) else _non_finite(v) for v in values]
    return values


def _non_finite(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def read_jsonl(path: Path) -> tuple[list[dict], list[int]]:
    """Every intact record of one file, and the numbers of the lines that were not
    (a torn last line after a crash, or damage)."""
    records, bad = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            try:
                records.append(_record(json.loads(line)))
            except (ValueError, KeyError, TypeError, AttributeError):
                bad.append(number)
    return records, bad


def _record(entry: dict) -> dict:
    record = {
        "request_id": str(entry["request_id"]),
        "time": float(entry["time"]),
        "model": str(entry["model"]),
        "answered_by": str(entry["answered_by"]),
        "version": str(entry["version"]),
        "failover": bool(entry["failover"]),
        "rows": int(entry["rows"]),
    }
    for key in RECORD_KEYS.values():
        record[key] = {name: _array(tensor, record["rows"]) for name, tensor in entry[key].items()}
    return record


def _array(tensor: dict, rows: int) -> np.ndarray:
    kind, values = tensor["dtype"], tensor["values"]
    if kind == "bytes":
        flat = np.empty(len(values), dtype=object)
        flat[:] = [base64.b64decode(v, validate=True) for v in values]
    elif np.dtype(kind).kind == "f":
        flat = np.array([NON_FINITE[v] if isinstance(v, str) else v for v in values], kind)
    else:
        flat = np.array(values, dtype=kind)
    return flat.reshape(rows, *tensor["dims"])
