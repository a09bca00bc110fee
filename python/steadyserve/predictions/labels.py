"""Label files: the ground truth sent to the feedback endpoint, kept durably.

One JSON object per line, appended and flushed per feedback call::

    {"request_id": "abc", "label": 1, "time": 1764601200.123}

``label`` is any JSON value (a class, a number, a list for a request of several rows).
A later line for the same id replaces an earlier one.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from .files import writer_tag

LABEL_GLOB = "labels-*.jsonl"


class LabelFile:
    """Appends labels of one model to ``ROOT/<model>/labels-<host>.<pid>.jsonl`` (one
    writer per file: replicas may share the root)."""

    def __init__(self, root: Path, model: str):
        self.path = Path(root) / model / f"labels-{writer_tag()}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)

    def append(self, labels: Iterable[tuple[str, object, float]]) -> None:
        """(request id, label, time) each; on disk (flushed, fsynced) when this returns."""
        text = "".join(
            json.dumps({"request_id": rid, "label": label, "time": t}, separators=(",", ":")) + "\n"
            for rid, label, t in labels
        )
        with self._lock:
            self._file.write(text)
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_labels(root: Path, model: str, since: float | None = None) -> Iterator[dict]:
    """Every label line of ``model`` (time >= ``since``), file by file; a torn last line
    (a crash mid-write) is skipped."""
    folder = Path(root) / model
    if not folder.is_dir():
        return
    for path in sorted(folder.glob(LABEL_GLOB)):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(entry, dict) or not isinstance(entry.get("request_id"), str):
                    continue
                if since is not None and float(entry.get("time", 0.0)) < since:
                    continue
                yield entry


def latest_labels(root: Path, model: str, since: float | None = None) -> dict[str, dict]:
    """request id -> its latest label line."""
    out: dict[str, dict] = {}
    for entry in read_labels(root, model, since):
        old = out.get(entry["request_id"])
        if old is None or float(entry.get("time", 0.0)) >= float(old.get("time", 0.0)):
            out[entry["request_id"]] = entry
    return out
