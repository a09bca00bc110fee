"""The prediction log: a bounded queue that executors offer batches to, and one writer
thread that writes them into rotating files, one directory per model asked for.

The serving path only ever calls ``offer``: it takes a lock for a few operations, never
waits for the disk and never raises. The writer lets batches gather for up to
``write_interval_s`` (or ``write_bytes`` of them) and writes them at once: a Parquet row
group per model per write, so that a write's fixed cost (measured: most of the cost of
logging 1% of requests when every batch was written on its own) is paid per interval,
not per batch. A full queue drops the batch (counted, by model and
reason) rather than slowing the server: the log is for retraining, the answers are what
the clients wait for. A failing disk drops what could not be written (counted as
``write_error``) and the writer tries again with a new file on the next batch.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path

from ..errors import BackendUnavailableError, ConfigError, FailedPreconditionError
from .capture import LoggedBatch
from .files import LogFile, model_folder
from .records import InvalidBatchError, ModelRecords, split_by_model

log = logging.getLogger("steadyserve.predictions")

FORMATS = ("auto", "parquet", "jsonl")
MIB = 1024 * 1024
ERROR_LOG_INTERVAL_S = 10.0  # a failing disk fails every batch: say so once per interval
# Batches per write at most: building a write's columns holds the GIL in numpy and
# pyarrow calls for about 10 us per batch, and executors wait for it meanwhile (a whole
# second of single-request batches at once held it for 60 ms).
WRITE_MAX_BATCHES = 256


class PredictionLog:
    """Logs the requests of offered batches under ``root``; see the module docstring.

    ``on_batch(batch)`` runs on the writer thread after a batch's records were all
    written (the join index of the feedback side); its exceptions are logged. It is an
    attribute, read per batch: a feedback loop built after the log sets it."""

    def __init__(
        self,
        root: Path,
        *,
        format: str = "auto",
        rotate_bytes: int = 64 * MIB,
        rotate_s: float = 300.0,
        queue_bytes: int = 64 * MIB,
        on_batch: Callable[[LoggedBatch], None] | None = None,
        write_interval_s: float = 1.0,
        write_bytes: int = 4 * MIB,
    ):
        self.root = Path(root)
        self._file_class = _file_class(format)
        self.format = self._file_class.format
        self._rotate_bytes = _positive_int("rotate_bytes", rotate_bytes)
        self._queue_bytes = _positive_int("queue_bytes", queue_bytes)
        if isinstance(rotate_s, bool) or not isinstance(rotate_s, (int, float)):
            raise ConfigError(f"rotate_s must be a number of seconds > 0, got {rotate_s!r}")
        if not (math.isfinite(rotate_s) and rotate_s > 0):
            raise ConfigError(f"rotate_s must be finite and > 0, got {rotate_s!r}")
        self._rotate_s = float(rotate_s)
        if isinstance(write_interval_s, bool) or not isinstance(write_interval_s, (int, float)):
            raise ConfigError(
                f"write_interval_s must be a number of seconds, got {write_interval_s!r}"
            )
        if not (math.isfinite(write_interval_s) and write_interval_s >= 0):
            raise ConfigError(f"write_interval_s must be finite and >= 0, got {write_interval_s!r}")
        self._write_interval_s = float(write_interval_s)
        self._write_bytes = _positive_int("write_bytes", write_bytes)
        if on_batch is not None and not callable(on_batch):
            raise ConfigError(f"on_batch must be callable or None, got {on_batch!r}")
        self.on_batch = on_batch
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(
                f"prediction log root {self.root}: cannot create it ({e.strerror or e})"
            ) from e

        # Shared with offer(), under _lock: the queue, its bytes, the counters, the
        # flush and close handshakes. Batches count in _pending_bytes until written.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: deque[tuple[LoggedBatch, int]] = deque()  # (batch, its nbytes)
        self._pending_bytes = 0
        self._pending_batches = 0
        self._first_queued_at = 0.0  # time.monotonic() when the queue last became non-empty
        self._closing = False
        self._stopped = False  # the writer thread has finished
        self._flush_asked = 0  # flush() calls so far
        self._flush_done = 0  # the flush() calls whose batches are written and files closed
        self._written: Counter[str] = Counter()
        self._dropped: Counter[tuple[str, str]] = Counter()
        self._files: Counter[str] = Counter()
        self._bytes_written = 0
        self._errors = _RateLimitedLog(ERROR_LOG_INTERVAL_S)

        self._open: dict[str, LogFile] = {}  # the writer thread's alone: model -> file
        self._thread = threading.Thread(
            target=self._run, name="steadyserve-prediction-log", daemon=True
        )
        self._thread.start()

    # --- the serving path ---------------------------------------------------------

    def offer(self, batch: LoggedBatch) -> bool:
        """Queue ``batch`` for writing; False (and its requests counted dropped) when the
        queue is full or the log is closing. Never blocks, never raises."""
        try:
            nbytes = batch.nbytes
            with self._lock:
                if self._closing:
                    reason = "closed"
                elif self._pending_bytes >= self._queue_bytes:
                    reason = "queue_full"
                else:
                    self._queue.append((batch, nbytes))
                    self._pending_bytes += nbytes
                    self._pending_batches += 1
                    # The writer waits for company: woken to start its interval, and
                    # again once enough gathered.
                    if len(self._queue) == 1:
                        self._first_queued_at = time.monotonic()
                        self._wake.notify()
                    elif self._pending_bytes >= self._write_bytes:
                        self._wake.notify()
                    return True
                for model, requests in Counter(batch.asked).items():
                    self._dropped[(model, reason)] += requests
            return False
        except Exception as e:  # a malformed batch must not fail the request it came with
            self._errors.error("prediction log: batch not offered: %r", e)
            return False

    # --- control --------------------------------------------------------------------

    def stats(self) -> dict:
        with self._lock:
            return {
                "queued_bytes": self._pending_bytes,
                "queued_batches": self._pending_batches,
                "written": dict(self._written),
                "dropped": dict(self._dropped),
                "files": dict(self._files),
                "bytes_written": self._bytes_written,
                "format": self.format,
            }

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every batch offered before this call is written and the open files
        are closed (readable). False when ``timeout`` passed first."""
        self._refuse_on_writer_thread("flush")
        with self._wake:
            self._flush_asked += 1
            ticket = self._flush_asked
            self._wake.notify_all()
            return self._wake.wait_for(lambda: self._flush_done >= ticket or self._stopped, timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Stop accepting batches, write every queued one, close the files, join the
        writer. Idempotent; False when ``timeout`` passed before the writer finished."""
        self._refuse_on_writer_thread("close")
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _refuse_on_writer_thread(self, what: str) -> None:
        if threading.current_thread() is self._thread:
            raise FailedPreconditionError(
                f"PredictionLog.{what}() called from on_batch: it would wait for itself"
            )

    # --- the writer thread ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while True:
                    wait = self._until_due()
                    if wait is not None and wait <= 0:
                        break
                    self._wake.wait(wait)
                queue = self._queue
                taken = [queue.popleft() for _ in range(min(len(queue), WRITE_MAX_BATCHES))]
                closing, flush_ticket = self._closing and not queue, self._flush_asked
                if queue:  # the rest is written next, at once: it has waited long enough
                    flush_ticket = self._flush_done
            batches = [batch for batch, _ in taken]
            try:
                self._close_expired()
                self._write(batches)
                if closing or flush_ticket > self._flush_done:
                    for model in list(self._open):
                        self._close_file(model)
            except Exception:  # the writer must outlive any one batch
                log.exception("prediction log: unexpected writer failure")
            with self._wake:
                self._pending_bytes -= sum(nbytes for _, nbytes in taken)
                self._pending_batches -= len(taken)
                self._flush_done = max(self._flush_done, flush_ticket)
                # Closing and nothing was left to take: nothing can come any more.
                self._stopped = closing and not taken
                self._wake.notify_all()
            if self._stopped:
                return

    def _until_due(self) -> float | None:
        """Seconds until the writer has something to do (<= 0: now; None: nothing)."""
        if self._closing or self._flush_asked > self._flush_done:
            return 0.0
        wait = self._until_oldest_expires()
        if self._queue:
            if self._pending_bytes >= self._write_bytes:
                return 0.0
            gathered = self._first_queued_at + self._write_interval_s - time.monotonic()
            wait = gathered if wait is None else min(wait, gathered)
        return wait

    def _until_oldest_expires(self) -> float | None:
        if not self._open:
            return None
        oldest = min(f.opened_at for f in self._open.values())
        return oldest + self._rotate_s - time.monotonic()

    def _close_expired(self) -> None:
        now = time.monotonic()
        for model, file in list(self._open.items()):
            if now - file.opened_at >= self._rotate_s:
                self._close_file(model)

    def _write(self, batches: list[LoggedBatch]) -> None:
        """Every batch's records, one write per model and layout (one Parquet row group)."""
        by_model: dict[str, list[tuple[int, ModelRecords]]] = {}
        failed: set[int] = set()
        for i, batch in enumerate(batches):
            try:
                for part in split_by_model(batch):
                    by_model.setdefault(part.model, []).append((i, part))
            except InvalidBatchError as e:
                failed.add(i)
                self._count_dropped(Counter(batch.asked), "invalid_batch")
                self._errors.error("prediction log: batch dropped: %s", e)
        for model, parts in by_model.items():
            runs: list[list[tuple[int, ModelRecords]]] = []
            for item in parts:
                if runs and runs[-1][-1][1].layout == item[1].layout:
                    runs[-1].append(item)
                else:
                    runs.append([item])
            for run in runs:
                if not self._write_run(model, [part for _, part in run]):
                    failed.update(i for i, _ in run)
        on_batch = self.on_batch
        if on_batch is not None:
            for i, batch in enumerate(batches):
                if i not in failed:
                    self._call_on_batch(on_batch, batch)

    def _write_run(self, model: str, parts: list[ModelRecords]) -> bool:
        """Write parts of one model and layout; False (counted, logged) when it failed."""
        file = self._open.get(model)
        try:
            if file is not None and file.layout != parts[0].layout:
                self._close_file(model)
                file = None
            if file is None:
                file = self._file_class(model_folder(self.root, model), parts[0].layout)
                self._open[model] = file
            grown = file.write(parts)
        except Exception as e:
            self._count_dropped({model: sum(p.requests for p in parts)}, "write_error")
            where = file.partial if file is not None else self.root / model
            self._errors.error(
                "prediction log: writing %d records of %s to %s failed: %s",
                sum(p.requests for p in parts),
                model,
                where,
                getattr(e, "strerror", None) or e,
            )
            if file is not None:
                self._abandon(model, self._open.pop(model))
            return False
        with self._lock:
            self._written[model] += sum(p.requests for p in parts)
            self._bytes_written += grown
        if file.size >= self._rotate_bytes:
            self._close_file(model)
        return True

    def _close_file(self, model: str) -> None:
        file = self._open.pop(model)
        try:
            file.close()
        except Exception as e:
            self._errors.error(
                "prediction log: closing %s failed: %s",
                file.partial,
                getattr(e, "strerror", None) or e,
            )
            self._abandon(model, file)
            return
        with self._lock:
            self._files[model] += 1

    def _abandon(self, model: str, file: LogFile) -> None:
        """Keep what a broken file still holds; its records that cannot be kept were
        written after all: counted dropped instead."""
        if file.abandon():
            with self._lock:
                self._files[model] += 1
        elif file.requests:
            with self._lock:
                self._written[model] -= file.requests
                self._dropped[(model, "write_error")] += file.requests
            self._errors.error(
                "prediction log: %d records of %s lost with %s", file.requests, model, file.partial
            )

    def _count_dropped(self, requests: dict[str, int], reason: str) -> None:
        with self._lock:
            for model, count in requests.items():
                self._dropped[(model, reason)] += count

    @staticmethod
    def _call_on_batch(on_batch: Callable[[LoggedBatch], None], batch: LoggedBatch) -> None:
        try:
            on_batch(batch)
        except Exception:
            log.exception("prediction log: on_batch failed", extra={"model": batch.model})


class _RateLimitedLog:
    """log.error at most once per interval, saying how many were suppressed between."""

    def __init__(self, interval_s: float):
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._last = -math.inf
        self._suppressed = 0

    def error(self, message: str, *args) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self._interval_s:
                self._suppressed += 1
                return
            self._last, suppressed, self._suppressed = now, self._suppressed, 0
        if suppressed:
            message += f" ({suppressed} similar errors in the last {self._interval_s:g} s)"
        log.error(message, *args)


def _file_class(format: str) -> type[LogFile]:
    """The file class of ``format``; "auto" is Parquet when pyarrow imports."""
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if format != "jsonl":
        try:
            from .parquet_files import ParquetFile

            return ParquetFile
        except ImportError as e:
            if format == "parquet":
                raise BackendUnavailableError(
                    f"format='parquet' needs pyarrow ({e}); install steadyserve[parquet] "
                    "or use format='jsonl'"
                ) from e
    from .jsonl_files import JsonlFile

    return JsonlFile


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1 (bytes), got {value!r}")
    return value
