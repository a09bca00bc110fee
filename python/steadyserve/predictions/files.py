"""Names of the prediction log's files, and the life of one open file.

    ROOT/<model>/predictions-<UTC start %Y%m%dT%H%M%S>-<host>.<pid>-<seq>.parquet|.jsonl

The host is in the name because replicas may share one root (a network volume), and in
containers every server is pid 1.

A file being written is named ``.<final name>.partial`` (hidden, and not matching the
pattern): readers only ever see files that were closed, fsynced and renamed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import socket
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import BinaryIO, ClassVar

from .records import ModelRecords

SUFFIXES = {"parquet": ".parquet", "jsonl": ".jsonl"}
FILE_PATTERN = re.compile(r"^predictions-(\d{8}T\d{6})-(.+)-(\d+)\.(parquet|jsonl)$")

# One sequence per process: two logs on one root never pick the same name.
_SEQUENCE = itertools.count(1)


def writer_tag() -> str:
    """<host>.<pid> of this process, as file names take it."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"
    return f"{host}.{os.getpid()}"


def new_file(folder: Path, fmt: str, start: float) -> tuple[Path, Path]:
    """(partial path, final path) of a new file of format ``fmt`` opened at ``start``."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(start))
    final = folder / f"predictions-{stamp}-{writer_tag()}-{next(_SEQUENCE):06d}{SUFFIXES[fmt]}"
    return folder / f".{final.name}.partial", final


def publish(partial: Path, final: Path) -> None:
    """Make a closed (and fsynced) file visible under its final name, durably."""
    os.replace(partial, final)
    with contextlib.suppress(OSError):  # a directory fsync is best effort (not everywhere)
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def model_folder(root: Path, model: str) -> Path:
    """ROOT/<model>; ValueError for a name that is not one path component."""
    if not model or model in (".", "..") or "/" in model or "\\" in model or "\0" in model:
        raise ValueError(f"model name {model!r} cannot be a directory name")
    return Path(root) / model


def complete_files(folder: Path) -> list[Path]:
    """The folder's closed log files, oldest first (by start time, then writer and sequence)."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = FILE_PATTERN.match(path.name)
        if match and path.is_file():
            stamp, writer, seq, _ = match.groups()
            found.append(((stamp, writer, int(seq)), path))
    return [path for _, path in sorted(found)]


class LogFile(ABC):
    """One open log file of one model, holding records of one layout. Written under its
    partial name; ``close`` publishes it. After a failed write, ``abandon`` keeps what
    is still readable."""

    format: ClassVar[str]
    buffered: ClassVar[bool]

    def __init__(self, folder: Path, layout: tuple):
        folder.mkdir(parents=True, exist_ok=True)
        self.partial, self.path = new_file(folder, self.format, time.time())
        self.layout = layout
        self.opened_at = time.monotonic()  # its age decides rotation
        self.size = 0  # bytes, after the last write that succeeded
        self.requests = 0  # records, after the last write that succeeded
        self._file: BinaryIO = open(  # noqa: SIM115 (open until close or abandon)
            self.partial, "xb", buffering=-1 if self.buffered else 0
        )

    def write(self, parts: list[ModelRecords]) -> int:
        """Append the records of ``parts`` (all of ``layout``); the bytes the file grew.
        Raises what the disk raised (the file is then to be abandoned)."""
        self._write(parts)
        before, self.size = self.size, self._file.tell()
        self.requests += sum(p.requests for p in parts)
        return self.size - before

    def close(self) -> None:
        """Finish, fsync and publish the file."""
        self._finish()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        publish(self.partial, self.path)

    def abandon(self) -> bool:
        """After a failed write: publish the file if its first ``requests`` records are
        intact (True), else remove it (those records are lost)."""
        try:
            kept = self._salvage() and self.requests > 0
            if kept:
                publish(self.partial, self.path)
        except Exception:  # whatever broke the write broke this too: removed below
            kept = False
        if not kept:
            with contextlib.suppress(OSError):
                self._file.close()
            with contextlib.suppress(OSError):
                self.partial.unlink()
        return kept

    @abstractmethod
    def _write(self, parts: list[ModelRecords]) -> None: ...

    @abstractmethod
    def _finish(self) -> None:
        """Write what closes the format (a Parquet footer)."""

    @abstractmethod
    def _salvage(self) -> bool:
        """Close the file after a failed write, leaving its first ``requests`` records
        readable; False when that cannot be done."""
