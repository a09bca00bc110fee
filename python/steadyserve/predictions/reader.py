"""Reads the prediction log back: the complete files of a model, their records.

A record is a dict::

    {"request_id", "time", "model", "answered_by", "version", "failover", "rows",
     "inputs": {name: ndarray [rows, *dims]}, "scaled": {...}, "outputs": {...}}

with each array in the dtype it was logged in (strings as object arrays of bytes).
Files being written are never read (they are not published yet); a damaged file is
skipped with a warning naming it, a damaged JSON line likewise.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from ..errors import BackendUnavailableError
from .files import complete_files, model_folder
from .jsonl_files import read_jsonl
from .records import TENSOR_KINDS

log = logging.getLogger("steadyserve.predictions")


def prediction_files(root: Path, model: str) -> list[Path]:
    """The complete log files of ``model`` under ``root``, oldest first."""
    return complete_files(model_folder(Path(root), model))


def read_predictions(
    root: Path,
    model: str,
    since: float | None = None,
    until: float | None = None,
    *,
    newest_first: bool = False,
    kinds: tuple[str, ...] = TENSOR_KINDS,
) -> Iterator[dict]:
    """The logged records of ``model`` with ``since <= time < until``, file by file in
    time order (``newest_first``: the files in reverse, each file's records as written).
    A file last written before ``since`` is not opened (its modification time bounds its
    records' times). ``kinds``: the tensors wanted ("input", "scaled", "output"); a
    Parquet file's other columns are not read. Parquet files need pyarrow
    (BackendUnavailableError without it)."""
    files = prediction_files(root, model)
    for path in reversed(files) if newest_first else files:
        if since is not None and _last_written(path) < since:
            if newest_first:
                return  # the older ones were written earlier still
            continue
        for record in _read_file(path, kinds):
            if since is not None and record["time"] < since:
                continue
            if until is not None and record["time"] >= until:
                continue
            yield record


def _last_written(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return float("inf")  # let the read say what is wrong with it


def _read_file(path: Path, kinds: tuple[str, ...]) -> list[dict]:
    if path.suffix == ".jsonl":
        try:
            records, bad = read_jsonl(path)
        except OSError as e:
            log.warning("prediction log file %s skipped: %s", path, e.strerror or e)
            return []
        if bad:
            lines = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
            log.warning(
                "prediction log file %s: %d damaged lines skipped (line %s)", path, len(bad), lines
            )
        return records
    try:
        from .parquet_files import read_parquet
    except ImportError as e:
        raise BackendUnavailableError(
            f"reading {path} needs pyarrow ({e}); install steadyserve[parquet]"
        ) from e
    try:
        return read_parquet(path, kinds)
    except Exception as e:  # pyarrow raises several types for a damaged file
        log.warning("prediction log file %s skipped: it is damaged or truncated (%s)", path, e)
        return []
