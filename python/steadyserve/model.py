"""One servable model version: the native batcher, an ONNX Runtime backend, stats.

The way of a request (DESIGN.md): ``infer``/``infer_async`` check the inputs
against the model's signature and hand them to the native batcher, which copies
them and returns at once. Executor threads (one per configured instance) block
in ``Batcher.next_batch`` with the GIL released, run ONNX Runtime on the whole
batch (GIL released again while it computes), and hand each request its own rows
of the outputs: sync callers through a one-lock answer slot, asyncio
callers through one ``call_soon_threadsafe`` per event loop per batch.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import _core
from .contract import build_monitor, build_transform, drift_section, read_stats
from .datatypes import TensorSpec, coerce
from .errors import (
    CancelledError,
    ConfigError,
    DeadlineExceededError,
    InvalidArgumentError,
    ModelFailureError,
    ResourceExhaustedError,
    SteadyServeError,
    UnavailableError,
)
from .watchdog import ExecutionWatchdog

log = logging.getLogger("steadyserve.model")

PLATFORM = "onnxruntime_onnx"
_RECENT = 4096  # requests kept for in-process percentiles
# execution: auto runs batches inline when the largest batch takes at most this long.
INLINE_MAX_BATCH_NS = 1_000_000
# ... and leaves inline execution for threads after a batch that ran longer than this.
INLINE_LEAVE_NS = 5_000_000
# A cancellation this close to the request's deadline is the caller giving up at its
# deadline (client and server clocks see a gRPC deadline a transit time apart).
_CANCEL_AT_DEADLINE_NS = 5_000_000


class InferResult:
    """Outputs of one request and the model version that produced them."""

    __slots__ = ("outputs", "model_name", "model_version", "parameters")

    def __init__(
        self,
        outputs: dict[str, np.ndarray],
        model_name: str,
        model_version: str,
        parameters: dict[str, Any] | None = None,
    ):
        self.outputs = outputs
        self.model_name = model_name
        self.model_version = model_version
        self.parameters = parameters if parameters is not None else {}

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]

    def __repr__(self) -> str:
        shapes = {k: list(v.shape) for k, v in self.outputs.items()}
        return f"InferResult({self.model_name}:{self.model_version}, {shapes})"


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class BatchDuration:
    count: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0


@dataclass
class ModelStatistics:
    """Triton-style statistics (ModelStatistics in the V2 extension)."""

    inference_count: int = 0  # rows answered
    execution_count: int = 0  # batches executed
    last_inference_ms: int = 0  # wall clock, ms since the epoch
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batch_stats: dict[int, BatchDuration] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)  # by grpc code name
    slo_missed: int = 0  # answered, but later than slo.latency_ms


class _Pending:
    """A request between submit and answer. Whoever pops it from the table answers it."""

    __slots__ = ("future", "loop", "handle", "outputs", "start_ns", "deadline_ns", "timer")

    def __init__(self, future, loop, outputs, start_ns, deadline_ns):
        self.future = future
        self.deadline_ns = deadline_ns  # absolute monotonic ns, 0 for none
        self.loop = loop  # None for sync callers (future is a _SyncFuture)
        self.handle = None
        self.outputs = outputs
        self.start_ns = start_ns
        self.timer = None


class _SyncFuture:
    """The answer slot of a thread calling ``infer``: one lock, released by whoever
    answers. (concurrent.futures.Future does the same with a Condition, at several
    times the cost, on the executor's critical path.)"""

    __slots__ = ("_lock", "_done", "_value", "_error")

    def __init__(self):
        self._lock = threading.Lock()
        self._lock.acquire()
        self._done = False
        self._value = None
        self._error = None

    def done(self) -> bool:
        return self._done

    def set_result(self, value) -> None:
        if not self._done:
            self._value, self._done = value, True
            self._lock.release()

    def set_exception(self, error: BaseException) -> None:
        if not self._done:
            self._error, self._done = error, True
            self._lock.release()

    def result(self, timeout: float | None = None):
        """The answer; raises TimeoutError if none came within ``timeout`` seconds."""
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError
        self._lock.release()  # leave it open for a second call
        if self._error is not None:
            raise self._error
        return self._value


class _RunContext:
    """Per executor thread: the RunOptions and abort flag reused run after run
    (a new pair only after a timeout fired, since ORT's terminate flag sticks)."""

    __slots__ = ("run_options", "abort")

    def __init__(self, backend, watched: bool):
        self.run_options = backend.new_run_options() if watched else None
        self.abort = threading.Event()


def _resolve_in_loop(items: list) -> None:
    # Runs on the event loop: the caller may have been cancelled meanwhile.
    for future, value, failed in items:
        if future.done():
            continue
        if failed:
            future.set_exception(value)
        else:
            future.set_result(value)


def _ring_write(ring: np.ndarray, start: int, values: list[int]) -> None:
    size = len(ring)
    for i, value in enumerate(values):
        ring[(start + i) % size] = value


def _batched_specs(name: str, specs: list[TensorSpec], max_batch_size: int, kind: str):
    """Check the signature can be served as configured; return per-tensor row shapes."""
    row_shapes = {}
    for spec in specs:
        shape = spec.shape
        if max_batch_size > 0:
            if not shape or shape[0] not in (-1,):
                raise ConfigError(
                    f"model '{name}': max_batch_size is {max_batch_size} but {kind} '{spec.name}' "
                    f"has shape {list(shape)} with no dynamic first (batch) dimension; "
                    f"set max_batch_size: 0 in config.yaml to serve it unbatched"
                )
            row = shape[1:]
        else:
            row = shape
        if kind == "input" and any(d < 0 for d in row):
            raise ConfigError(
                f"model '{name}': input '{spec.name}' has shape {list(shape)} with a dynamic "
                f"non-batch dimension; pin it with inputs[].dims in config.yaml"
            )
        row_shapes[spec.name] = tuple(row)
    return row_shapes


class ServableModel:
    """A loaded model version behind its own native batcher and executor threads."""

    platform = PLATFORM

    def __init__(self, name: str, version: str, config, backend, metrics, faults=None):
        self.name = name
        self.version = str(version)
        self.config = config
        self.max_batch_size = _effective_max_batch_size(config, backend.inputs)
        self._backend = backend
        self._metrics = metrics
        self.faults = faults  # a FaultInjector when fault injection is allowed, else None
        # Called as (model, reason, count) for failed requests that no caller waits for.
        self.failure_listener = None
        self.inputs: list[TensorSpec] = _resolve_specs(name, backend.inputs, config.inputs, "input")
        self.outputs: list[TensorSpec] = _resolve_specs(
            name, backend.outputs, config.outputs, "output"
        )
        self._input_rows = _batched_specs(name, self.inputs, self.max_batch_size, "input")
        self._input_by_name = {s.name: s for s in self.inputs}
        self._output_names = [s.name for s in self.outputs]
        self._output_set = frozenset(self._output_names)
        failover = config.failover
        self._output_checks = list(failover.output_checks)
        for check in self._output_checks:
            if check.name not in self._output_set:
                raise ConfigError(
                    f"model '{name}': failover.output_checks names output '{check.name}', "
                    f"which the model does not have (outputs: {', '.join(self._output_names)})"
                )
        self._execution_timeout_ms = failover.execution_timeout_ms
        self._watchdog: ExecutionWatchdog | None = None  # started with the executors
        batching = config.batching
        slo = config.slo
        self._priority_levels = slo.priority_levels
        self._default_level = slo.default_level
        self.slo_latency_ms = slo.latency_ms
        level_caps = []
        for level in range(1, slo.priority_levels + 1):
            policy = slo.priority_queues.get(level)
            level_caps.append(policy.max_queue_size or 0 if policy is not None else 0)
        self._contracts, self._monitors = self._build_contracts(config)
        layout = [
            (
                s.name,
                int(np.prod(self._input_rows[s.name], dtype=np.int64)) * s.dtype.itemsize,
                self._contracts[s.name][0] if s.name in self._contracts else None,
            )
            for s in self.inputs
        ]
        for input_name, row_bytes, _ in layout:
            if row_bytes == 0:
                raise ConfigError(f"model '{name}': input '{input_name}' has zero elements per row")
        self._batcher = _core.Batcher(
            name,
            layout,
            max_batch_size=max(1, self.max_batch_size),
            preferred_batch_sizes=list(batching.preferred_batch_sizes),
            max_queue_delay_us=int(batching.max_queue_delay_us),
            max_queue_size=int(batching.max_queue_size),
            priority_levels=int(slo.priority_levels),
            executors=int(config.instances),
            slack_margin_us=int(slo.margin_ms * 1000),
            slo_latency_us=int((slo.latency_ms or 0) * 1000),
            admission_control=bool(slo.admission_control),
            level_max_queue=level_caps if any(level_caps) else [],
        )
        default_ms = slo.deadline_ms
        self._default_deadline_ns = int(default_ms * 1e6) if default_ms else None
        self._slo_ns = int(slo.latency_ms * 1e6) if slo.latency_ms else None
        self._started = time.monotonic()
        # Recent request latencies and queue times, for in-process percentiles.
        self._recent_latency_ns = np.zeros(_RECENT, dtype=np.int64)
        self._recent_queue_ns = np.zeros(_RECENT, dtype=np.int64)
        self._recent_latency_n = 0
        self._recent_queue_n = 0
        metrics.queue_depth.set_function(lambda: self._batcher.queued_requests)
        self._pending: dict[int, _Pending] = {}
        self._tokens = itertools.count(1)
        self._stats = ModelStatistics()
        self._stats_lock = threading.Lock()
        # Queued requests withdrawn when their deadline passed: the core counts them as
        # cancelled; refusals() reports them as expired_in_queue.
        self._expired_withdrawn = 0
        self._threads: list[threading.Thread] = []
        self.ready = False
        self._closed = False
        self.inline = False  # decided by start()
        self._inline_context: _RunContext | None = None
        self._drain_scheduled = False

    # ----------------------------------------------------------------- contracts

    def _build_contracts(self, config):
        """Native transforms for inputs with a feature contract, monitors for outputs.

        Returns ({input: (transform, names, stats)}, {output: (monitor, stats)}).
        """
        model_dir = Path(getattr(self._backend, "path", ".")).parent
        stats_cache: dict[str, dict | None] = {}

        def stats_for(file_name: str, required: bool) -> dict | None:
            if file_name not in stats_cache:
                path = model_dir / file_name
                stats_cache[file_name] = read_stats(path) if (required or path.exists()) else None
            return stats_cache[file_name]

        contracts = {}
        for entry in config.inputs:
            contract = entry.contract
            if contract is None:
                continue
            spec = self._input_by_name[entry.name]
            row = self._input_rows[entry.name]
            where = f"model '{self.name}' input '{entry.name}'"
            if spec.datatype != "FP32" or self.max_batch_size == 0 or len(row) != 1:
                raise ConfigError(
                    f"{where}: a feature contract needs an FP32 [batch, features] input of a "
                    f"batching model; this one is {spec.datatype} {list(spec.shape)}"
                )
            needs_stats = (
                contract.scaling != "none"
                or contract.missing in ("mean", "median")
                or any(r.missing in ("mean", "median") for r in contract.features.values())
            )
            stats_file = stats_for(contract.stats, needs_stats)
            stats = (stats_file or {}).get("inputs", {}).get(entry.name, {})
            if needs_stats and not stats:
                raise ConfigError(
                    f"{where}: {model_dir / contract.stats} has no stats for input "
                    f"'{entry.name}' (run `steadyserve fit`)"
                )
            transform = build_transform(
                self.name, entry.name, row[0], contract, config.drift, stats, where
            )
            names = contract.feature_names or stats.get("feature_names")
            contracts[entry.name] = (transform, names, stats)
        monitors = {}
        stats_file = stats_for("stats.json", False)
        for spec in self.outputs:
            stats = (stats_file or {}).get("outputs", {}).get(spec.name)
            if not stats or spec.datatype != "FP32" or self.max_batch_size == 0:
                continue
            width = (
                int(np.prod([d for d in spec.shape[1:]], dtype=np.int64)) if spec.shape[1:] else 1
            )
            if width <= 0:
                continue
            where = f"model '{self.name}' output '{spec.name}'"
            monitor = build_monitor(self.name, spec.name, width, config.drift, stats, where)
            if monitor is not None:
                monitors[spec.name] = (monitor, stats)
        return contracts, monitors

    def drift_report(self) -> dict[str, Any]:
        """Live drift and data quality against the reference, per input and output."""
        drift = self.config.drift
        inputs = {
            name: drift_section(transform.snapshot(), stats, names, drift)
            for name, (transform, names, stats) in self._contracts.items()
        }
        outputs = {
            name: drift_section(monitor.snapshot(), stats, None, drift)
            for name, (monitor, stats) in self._monitors.items()
        }
        return {
            "model": self.name,
            "version": self.version,
            "psi_threshold": drift.psi_threshold,
            "window_rows": drift.window_rows if drift.window_seconds is None else None,
            "window_seconds": drift.window_seconds,
            "inputs": inputs,
            "outputs": outputs,
        }

    def reset_drift(self) -> None:
        for transform, _, _ in self._contracts.values():
            transform.reset()
        for monitor, _ in self._monitors.values():
            monitor.reset()

    # ----------------------------------------------------------------- lifecycle

    def start(self, warmup: bool = True, allow_inline: bool = True) -> None:
        """Warm up (seeding the latency model), start the executors, become ready.

        ``allow_inline`` False keeps ``execution: auto`` on threads (the runtime does
        this when faults may be injected: a hang must not block the event loop).
        """
        if warmup:
            self._warmup()
        if self._execution_timeout_ms:
            self._watchdog = ExecutionWatchdog(self.name, self._execution_timeout_ms / 1000.0)
        self.inline = self._choose_inline(allow_inline)
        if self.inline:
            self._inline_context = _RunContext(self._backend, self._watchdog is not None)
        else:
            self._start_executors()
        self.ready = True
        self._metrics.ready.set(1)

    def _start_executors(self) -> None:
        for i in range(int(self.config.instances)):
            thread = threading.Thread(
                target=self._executor_loop,
                name=f"steadyserve-exec-{self.name}-{self.version}-{i}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def _leave_inline(self, run_ns: int) -> None:
        """An inline batch ran long (the model's cost depends on its input, or the machine
        slowed down): from now on executor threads run the batches, off the caller's
        thread (the server's event loop)."""
        if not self.inline or self.config.execution == "inline":
            return
        self.inline = False
        log.warning(
            "batch ran %.1f ms inline: moving execution to executor threads",
            run_ns / 1e6,
            extra={"model": self.name, "version": self.version},
        )
        self._start_executors()

    def _choose_inline(self, allow_inline: bool) -> bool:
        mode = self.config.execution
        if mode != "auto":
            return mode == "inline"
        # A batch small enough to run on the event loop without stalling it noticeably.
        largest = max(1, self.max_batch_size)
        return (
            allow_inline
            and self.config.batching.max_queue_delay_us == 0
            and self.config.instances == 1
            and 0 < self._batcher.estimate_ns(largest) <= INLINE_MAX_BATCH_NS
        )

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop accepting, execute everything already accepted, join the executors."""
        if self._closed:
            return
        self._closed = True
        self.ready = False
        self._metrics.ready.set(0)
        self._batcher.stop()
        if self.inline:
            self._drain()  # what is still queued runs here
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            log.error("executors did not stop in time", extra={"threads": stuck})
        if self._watchdog is not None:
            self._watchdog.stop()
        self._backend.close()

    def _warmup_batch_sizes(self) -> list[int]:
        if self.max_batch_size == 0:
            return [1]
        sizes = {1, self.max_batch_size, *self.config.batching.preferred_batch_sizes}
        size = 2
        while size < self.max_batch_size:
            sizes.add(size)
            size *= 2
        return sorted(sizes)

    def _zeros(self, rows: int) -> dict[str, np.ndarray]:
        feeds = {}
        for spec in self.inputs:
            shape = self._input_rows[spec.name]
            full = (rows, *shape) if self.max_batch_size > 0 else shape
            feeds[spec.name] = np.zeros(full, dtype=spec.dtype)
        return feeds

    def _warmup(self) -> None:
        timings = self._backend.warmup(self._zeros, self._warmup_batch_sizes())
        for rows, seconds in timings.items():
            self._batcher.record_latency(rows, int(seconds * 1e9))

    # ----------------------------------------------------------------- requests

    def _prepare(self, inputs: Mapping[str, Any], outputs: Sequence[str] | None):
        """Check and convert the caller's tensors; return (arrays in input order, rows)."""
        if not isinstance(inputs, Mapping):
            raise InvalidArgumentError(
                f"model '{self.name}': inputs must be a mapping of input name to array"
            )
        for input_name in inputs:
            if input_name not in self._input_by_name:
                known = ", ".join(self._input_by_name)
                raise InvalidArgumentError(
                    f"model '{self.name}' has no input '{input_name}' (inputs: {known})"
                )
        if outputs is not None:
            for output_name in outputs:
                if output_name not in self._output_set:
                    known = ", ".join(self._output_names)
                    raise InvalidArgumentError(
                        f"model '{self.name}' has no output '{output_name}' (outputs: {known})"
                    )
        arrays = []
        rows = None
        for spec in self.inputs:
            if spec.name not in inputs:
                raise InvalidArgumentError(
                    f"model '{self.name}': missing input '{spec.name}' "
                    f"({spec.datatype} {list(spec.shape)})"
                )
            array = np.asarray(inputs[spec.name])
            array = coerce(spec.name, array, spec.dtype)
            row_shape = self._input_rows[spec.name]
            if self.max_batch_size > 0:
                if array.ndim != len(row_shape) + 1 or tuple(array.shape[1:]) != row_shape:
                    raise InvalidArgumentError(
                        f"model '{self.name}': input '{spec.name}' has shape {list(array.shape)}, "
                        f"expected {list((-1, *row_shape))}"
                    )
                n = int(array.shape[0])
                if n == 0:
                    raise InvalidArgumentError(
                        f"model '{self.name}': input '{spec.name}' has 0 rows (shape "
                        f"{list(array.shape)}); send at least one row"
                    )
                if n > self.max_batch_size:
                    raise InvalidArgumentError(
                        f"model '{self.name}': input '{spec.name}' has {n} rows, more than "
                        f"max_batch_size {self.max_batch_size}; split the request"
                    )
                if rows is not None and n != rows:
                    raise InvalidArgumentError(
                        f"model '{self.name}': input '{spec.name}' has {n} rows but the other "
                        f"inputs have {rows}; every input needs the same batch size"
                    )
                rows = n
            else:
                if tuple(array.shape) != row_shape:
                    raise InvalidArgumentError(
                        f"model '{self.name}': input '{spec.name}' has shape {list(array.shape)}, "
                        f"expected {list(row_shape)}"
                    )
                rows = 1
            arrays.append(np.ascontiguousarray(array))
        return arrays, rows

    def _level(self, priority: int) -> int:
        """Triton's convention: priority 0 is the default level, 1 the highest."""
        p = int(priority)
        if p == 0:
            return self._default_level - 1
        if 1 <= p <= self._priority_levels:
            return p - 1
        raise InvalidArgumentError(
            f"model '{self.name}': priority {p} is outside 0..{self._priority_levels} "
            f"(1 is the highest level, 0 means the default level {self._default_level})"
        )

    def _deadline(self, deadline_ns: int | None) -> int:
        if deadline_ns is None and self._default_deadline_ns is not None:
            return time.monotonic_ns() + self._default_deadline_ns
        return int(deadline_ns or 0)

    def _submit(self, inputs, outputs, deadline_ns, priority, future, loop) -> tuple[int, _Pending]:
        start_ns = time.monotonic_ns()
        try:
            if self._closed:
                raise UnavailableError(f"model '{self.name}' version {self.version} is stopping")
            arrays, rows = self._prepare(inputs, outputs)
            level = self._level(priority)
            deadline = self._deadline(deadline_ns)
            token = next(self._tokens)
            pending = _Pending(future, loop, outputs, start_ns, deadline)
            self._pending[token] = pending  # before submit: an executor may answer at once
            try:
                pending.handle, evicted = self._batcher.submit(token, arrays, rows, deadline, level)
            except BaseException:
                self._pending.pop(token, None)
                raise
            if evicted:
                self._answer_evicted(evicted)
        except SteadyServeError as error:
            self._count_refusal(error)
            raise
        return token, pending

    def infer(
        self,
        inputs: Mapping[str, Any],
        *,
        deadline_ns: int | None = None,
        priority: int = 0,
        outputs: Sequence[str] | None = None,
    ) -> InferResult:
        """Run one request (thread-safe); concurrent callers share batches."""
        future = _SyncFuture()
        token, pending = self._submit(inputs, outputs, deadline_ns, priority, future, None)
        if self.inline:
            self._drain()  # run it (and whatever else is ready) in this thread
        deadline = pending.deadline_ns  # the one the core got (a default is computed once)
        timeout = None if not deadline else max(0.0, (deadline - time.monotonic_ns()) / 1e9)
        try:
            return future.result(timeout=timeout)
        except TimeoutError:
            if self._expire(token):
                raise DeadlineExceededError(
                    f"model '{self.name}': deadline exceeded while queued"
                ) from None
            return future.result()  # answered in the meantime

    async def infer_async(
        self,
        inputs: Mapping[str, Any],
        *,
        deadline_ns: int | None = None,
        priority: int = 0,
        outputs: Sequence[str] | None = None,
    ) -> InferResult:
        """Run one request from asyncio; cancelling the await withdraws it if still queued."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        token, pending = self._submit(inputs, outputs, deadline_ns, priority, future, loop)
        if self.inline and not self._drain_scheduled:
            self._drain_scheduled = True
            loop.call_soon(self._drain_soon)
        deadline = pending.deadline_ns
        if deadline:
            # asyncio's clock is time.monotonic, the core's is the same monotonic clock.
            pending.timer = loop.call_at(deadline / 1e9, self._expire, token)
        try:
            return await future
        except asyncio.CancelledError:
            if deadline and time.monotonic_ns() >= deadline - _CANCEL_AT_DEADLINE_NS:
                # The caller gave up at its deadline (a gRPC client cancels when its
                # deadline passes, racing the timer above): an expiry, not a cancel.
                self._expire(token)
            elif self._pending.pop(token, None) is not None and pending.handle is not None:
                self._batcher.cancel(pending.handle)
                self._count_refusal(CancelledError("cancelled"))
            raise
        finally:
            if pending.timer is not None:
                pending.timer.cancel()

    def _expire(self, token: int) -> bool:
        """Answer a request DEADLINE_EXCEEDED now, if nobody has answered it yet."""
        pending = self._pending.pop(token, None)
        if pending is None:
            return False
        with self._stats_lock:  # cancel and count together: refusals() reads both at once
            withdrawn = pending.handle is not None and self._batcher.cancel(pending.handle)
            if withdrawn:
                self._expired_withdrawn += 1
        if withdrawn:
            error = DeadlineExceededError(
                f"model '{self.name}': deadline passed while queued; the request was not executed"
            )
        else:
            error = DeadlineExceededError(
                f"model '{self.name}': deadline passed while its batch was executing"
            )
        self._record_failure(pending, error)
        # Sync callers: we run in their thread; async: on their loop (a loop timer).
        if not pending.future.done():
            pending.future.set_exception(error)
        return True

    # ----------------------------------------------------------------- executor

    def _executor_loop(self) -> None:
        batcher = self._batcher
        context = _RunContext(self._backend, self._watchdog is not None)
        while True:
            dispatched = batcher.next_batch(None)
            if dispatched is not None and self._handle(dispatched, context):
                return

    def _drain(self) -> None:
        """Inline execution: run every batch that is ready now, in this thread."""
        batcher = self._batcher
        while True:
            dispatched = batcher.next_batch(0)
            if dispatched is None or self._handle(dispatched, self._inline_context):
                return

    def _drain_soon(self) -> None:
        # Scheduled with call_soon after a submit: by now every request that reached the
        # loop in the same iteration is queued, so they share this batch.
        self._drain_scheduled = False
        self._drain()

    def _handle(self, dispatched, context) -> bool:
        """Answer a dispatch (expired requests, a batch); True when the batcher has stopped."""
        (buffer, rows, tokens, offsets, counts, enqueue_ns, views, dropped, _codes, stopped) = (
            dispatched
        )
        if len(dropped):
            self._answer_dropped(dropped)
        if rows:
            try:
                self._execute(buffer, rows, tokens, offsets, counts, enqueue_ns, views, context)
            except BaseException:  # never let one batch kill the executor
                log.exception("executor failed outside the model run")
        return bool(stopped)

    def _check_outputs(self, outputs: dict[str, np.ndarray], rows: int) -> None:
        """A batch with a bad output fails as a whole: one row per batch row (batching
        models), then failover.output_checks.

        Two reductions per output cover both checks (min and max are NaN when any
        value is, and +-inf show up in them); the offending value is only looked for
        once a check has failed.
        """
        if self.max_batch_size > 0:
            for name, out in outputs.items():
                if out.ndim == 0 or out.shape[0] != rows:
                    raise ModelFailureError(
                        f"model '{self.name}': output '{name}' has shape {list(out.shape)}, "
                        f"expected {rows} rows for a batch of {rows}"
                    )
        for check in self._output_checks:
            out = outputs.get(check.name)
            if out is None or out.dtype.kind != "f" or out.size == 0:
                continue
            low, high = float(out.min()), float(out.max())
            finite = math.isfinite(low) and math.isfinite(high)
            if check.finite and not finite:
                bad = np.argwhere(~np.isfinite(out))[0]
                raise ModelFailureError(
                    f"model '{self.name}' version {self.version}: output '{check.name}' has a "
                    f"non-finite value {out[tuple(bad)].item()!r} at {bad.tolist()}",
                    reason="bad_output",
                )
            below = check.min is not None and low < check.min
            above = check.max is not None and high > check.max
            if below or above:
                outside = (out < check.min) if below else (out > check.max)
                bad = np.argwhere(outside)[0]
                lo = "-inf" if check.min is None else f"{check.min:g}"
                hi = "inf" if check.max is None else f"{check.max:g}"
                raise ModelFailureError(
                    f"model '{self.name}' version {self.version}: output '{check.name}' value "
                    f"{float(out[tuple(bad)]):g} at {bad.tolist()} is outside [{lo}, {hi}]",
                    reason="bad_output",
                )

    def _answer_evicted(self, token: int) -> None:
        error = ResourceExhaustedError(
            f"model '{self.name}': shed from a full queue to make room for a request of "
            f"higher priority"
        )
        self._deliver([(self._pending.pop(int(token), None), error, True)])

    def _answer_dropped(self, tokens) -> None:
        error = DeadlineExceededError(
            f"model '{self.name}': deadline passed while queued; the request was not executed"
        )
        self._deliver([(self._pending.pop(int(t), None), error, True) for t in tokens])

    def _execute(self, buffer, rows, tokens, offsets, counts, enqueue_ns, views, context) -> None:
        formed_ns = time.monotonic_ns()
        t0 = time.perf_counter_ns()
        feeds = {}
        for spec, view in zip(self.inputs, views, strict=True):
            row_shape = self._input_rows[spec.name]
            shape = (rows, *row_shape) if self.max_batch_size > 0 else row_shape
            feeds[spec.name] = view.view(spec.dtype).reshape(shape)
        t1 = time.perf_counter_ns()
        run_ns = 0
        error: SteadyServeError | None = None
        outputs: dict[str, np.ndarray] = {}
        run_options, abort, run_id = context.run_options, context.abort, None
        if self._watchdog is not None:
            run_id = self._watchdog.begin(run_options, abort)
        try:
            run_start = time.perf_counter_ns()  # an injected slowdown is part of the run
            if self.faults is not None:
                self.faults.before_run(abort)
            outputs = self._backend.run(feeds, self._output_names, run_options)
            run_ns = time.perf_counter_ns() - run_start
            if self.faults is not None:
                outputs = self.faults.after_run(outputs)
            self._check_outputs(outputs, rows)
            for name, (monitor, _) in self._monitors.items():
                out = outputs.get(name)
                if out is not None and out.dtype == np.float32 and out.shape[:1] == (rows,):
                    monitor.observe(np.ascontiguousarray(out).reshape(rows, -1))
        except ModelFailureError as e:
            error = e
        except SteadyServeError as e:
            error = ModelFailureError(str(e))
        except Exception as e:  # an unexpected backend failure still fails only this batch
            error = ModelFailureError(f"model '{self.name}' version {self.version} failed: {e}")
        finally:
            if run_id is not None:
                self._watchdog.end(run_id)
        t2 = time.perf_counter_ns()
        timed_out = abort.is_set()
        if timed_out:
            context.run_options = self._backend.new_run_options()  # terminate sticks
            context.abort = threading.Event()
            if error is not None:
                error = ModelFailureError(
                    f"model '{self.name}' version {self.version}: execution ran past "
                    f"execution_timeout_ms {self._watchdog.timeout_s * 1000:g} and was "
                    f"terminated",
                    reason="execution_timeout",
                )
        # The buffer is free again. The latency model learns the run itself (not the
        # checks around it); a batch that failed fast says nothing about how long a
        # batch takes, while a timed-out one says it took at least the timeout.
        learned = run_ns if error is None else (t2 - t1 if timed_out else -1)
        self._batcher.complete(buffer, rows, learned)
        if self.inline and (run_ns > INLINE_LEAVE_NS or timed_out):
            self._leave_inline(run_ns or (t2 - t1))
        deliveries = []
        orphans = 0
        batched = self.max_batch_size > 0
        for token, lo, n in zip(tokens.tolist(), offsets.tolist(), counts.tolist(), strict=True):
            pending = self._pending.pop(token, None)
            if pending is None:
                orphans += 1  # expired or cancelled while its batch ran
                continue
            if error is not None:
                deliveries.append((pending, error, True))
                continue
            names = pending.outputs or self._output_names
            result = {m: outputs[m][lo : lo + n] if batched else outputs[m] for m in names}
            deliveries.append((pending, InferResult(result, self.name, self.version), False))
        t3 = time.perf_counter_ns()
        if error is not None and orphans and self.failure_listener is not None:
            # Nobody waits for these answers any more (their deadlines passed while the
            # batch hung), so no route will report the failure: tell the circuit directly.
            self.failure_listener(self.name, getattr(error, "reason", "execution_error"), orphans)
        self._deliver(deliveries)
        self._record_batch(
            rows, formed_ns, enqueue_ns, t1 - t0, run_ns or (t2 - t1), t3 - t2, error
        )

    def _deliver(self, deliveries) -> None:
        """Answer requests: sync futures directly, each event loop once for the whole batch."""
        by_loop: dict[Any, list] = {}
        now = time.monotonic_ns()
        succeeded = []
        try:
            here = asyncio.get_running_loop()  # inline execution on an event loop
        except RuntimeError:
            here = None
        for pending, value, failed in deliveries:
            if pending is None:
                continue
            if failed:
                self._record_failure(pending, value, now)
            else:
                succeeded.append(now - pending.start_ns)
            if pending.loop is None:
                if not pending.future.done():
                    if failed:
                        pending.future.set_exception(value)
                    else:
                        pending.future.set_result(value)
            else:
                by_loop.setdefault(pending.loop, []).append((pending.future, value, failed))
        for loop, items in by_loop.items():
            if loop is here:
                _resolve_in_loop(items)
                continue
            try:
                loop.call_soon_threadsafe(_resolve_in_loop, items)
            except RuntimeError:
                log.warning("event loop closed before its answers could be delivered")
        if succeeded:
            self._record_successes(succeeded)

    # ----------------------------------------------------------------- stats

    def _count_refusal(self, error: SteadyServeError) -> None:
        code = error.grpc_code
        with self._stats_lock:
            self._stats.refused[code] = self._stats.refused.get(code, 0) + 1
        self._metrics.request_done(code.lower())

    def _record_successes(self, elapsed_ns: list[int]) -> None:
        """One batch's answered requests, counted together (plain Python: batches are
        often a few rows, where numpy's per-call cost is larger than the work)."""
        n = len(elapsed_ns)
        slo = self._slo_ns
        missed = sum(1 for e in elapsed_ns if e > slo) if slo is not None else 0
        with self._stats_lock:
            self._stats.success.add(sum(elapsed_ns), n)
            self._stats.slo_missed += missed
            _ring_write(self._recent_latency_ns, self._recent_latency_n, elapsed_ns)
            self._recent_latency_n += n
        self._metrics.requests_done("success", [e / 1e9 for e in elapsed_ns])
        if self._slo_ns is not None:
            self._metrics.slo_results(n - missed, missed)

    def _record_failure(self, pending: _Pending, error: SteadyServeError, now: int | None = None):
        elapsed = (now or time.monotonic_ns()) - pending.start_ns
        with self._stats_lock:
            self._stats.fail.add(elapsed)
        self._metrics.request_done(error.grpc_code.lower(), elapsed / 1e9)

    def _record_batch(self, rows, formed_ns, enqueue_ns, input_ns, infer_ns, output_ns, error):
        queue_ns = [max(0, formed_ns - e) for e in enqueue_ns.tolist()]
        n = len(queue_ns)
        with self._stats_lock:
            s = self._stats
            _ring_write(self._recent_queue_ns, self._recent_queue_n, queue_ns)
            self._recent_queue_n += n
            s.execution_count += 1
            if error is None:
                s.inference_count += rows
            s.last_inference_ms = int(time.time() * 1000)
            s.queue.add(sum(queue_ns), n)
            s.compute_input.add(input_ns * n, n)
            s.compute_infer.add(infer_ns * n, n)
            s.compute_output.add(output_ns * n, n)
            b = s.batch_stats.setdefault(rows, BatchDuration())
            b.count += 1
            b.compute_input_ns += input_ns
            b.compute_infer_ns += infer_ns
            b.compute_output_ns += output_ns
        self._metrics.queue_duration.observe_many([q / 1e9 for q in queue_ns])
        self._metrics.batch_done(rows, infer_ns / 1e9)

    def statistics(self) -> ModelStatistics:
        with self._stats_lock:
            s = self._stats
            return ModelStatistics(
                inference_count=s.inference_count,
                execution_count=s.execution_count,
                last_inference_ms=s.last_inference_ms,
                success=Duration(s.success.count, s.success.ns),
                fail=Duration(s.fail.count, s.fail.ns),
                queue=Duration(s.queue.count, s.queue.ns),
                compute_input=Duration(s.compute_input.count, s.compute_input.ns),
                compute_infer=Duration(s.compute_infer.count, s.compute_infer.ns),
                compute_output=Duration(s.compute_output.count, s.compute_output.ns),
                batch_stats={k: BatchDuration(**vars(v)) for k, v in s.batch_stats.items()},
                refused=dict(s.refused),
                slo_missed=s.slo_missed,
            )

    def slo_report(self) -> dict[str, Any]:
        """SLO figures: attainment, goodput, refusals by reason, queue and execution times.

        Attainment is the share of answered requests that were answered within
        ``slo.latency_ms``; goodput counts those per second since the model started.
        Percentiles cover the most recent requests (up to 4096).
        """
        with self._stats_lock:
            answered = self._stats.success.count
            missed = self._stats.slo_missed
            latency = self._recent_latency_ns[: min(self._recent_latency_n, _RECENT)].copy()
            queue = self._recent_queue_ns[: min(self._recent_queue_n, _RECENT)].copy()
            failed = self._stats.fail.count
        met = answered - missed
        elapsed = max(1e-9, time.monotonic() - self._started)
        core = self._batcher.stats()

        def percentiles(ns: np.ndarray) -> dict[str, float | None]:
            if ns.size == 0:
                return {"p50": None, "p90": None, "p99": None}
            p50, p90, p99 = np.percentile(ns, [50, 90, 99]) / 1e6
            return {"p50": float(p50), "p90": float(p90), "p99": float(p99)}

        return {
            "latency_ms": self.slo_latency_ms,
            "answered": answered,
            "within_slo": met if self._slo_ns is not None else None,
            "attainment": (met / answered if answered else None) if self._slo_ns else None,
            "goodput_per_s": met / elapsed if self._slo_ns is not None else None,
            "failed": failed,
            "refused": self.refusals(core),
            "latency_ms_recent": percentiles(latency),
            "queue_ms_recent": percentiles(queue),
            "execution_estimate_ms": {
                rows: self.estimate_ms(rows) for rows in self._warmup_batch_sizes()
            },
            "batch_cap": self._batcher.batch_cap,
        }

    def refusals(self, core: dict[str, int] | None = None) -> dict[str, int]:
        """Requests not executed, by reason (the core counts them where they happen)."""
        with self._stats_lock:
            core = core if core is not None else self._batcher.stats()
            refused = dict(self._stats.refused)
            expired_withdrawn = self._expired_withdrawn
        return {
            "admission": core["rejected_admission"],
            "deadline_passed": core["rejected_deadline"],
            "expired_in_queue": core["expired"] + expired_withdrawn,
            "queue_full": core["rejected_queue_full"],
            "shed_for_priority": core["evicted"],
            "cancelled": max(0, core["cancelled"] - expired_withdrawn),
            "invalid_input": refused.get("INVALID_ARGUMENT", 0),
            "stopping": core["rejected_stopped"],
        }

    def batcher_stats(self) -> dict[str, int]:
        return self._batcher.stats()

    @property
    def queue_depth(self) -> int:
        return self._batcher.queued_requests

    def estimate_completion_ns(self, rows: int, priority: int = 0) -> int:
        """When a request of ``rows`` rows sent now would finish (monotonic ns); 0 = unknown."""
        try:
            level = self._level(priority)
        except InvalidArgumentError:
            level = self._default_level - 1
        return self._batcher.estimate_completion_ns(
            max(1, min(rows, self._batcher.max_batch_size)), level
        )

    def estimate_ms(self, rows: int) -> float:
        """The latency model's execution estimate for a batch of ``rows`` rows."""
        return self._batcher.estimate_ns(rows) / 1e6


def _resolve_specs(name: str, model_specs, configured, kind: str) -> list[TensorSpec]:
    """The model file's signature, with dims pinned by config.yaml where given."""
    by_name = {s.name: s for s in model_specs}
    overrides = {}
    for entry in configured or ():
        if entry.name not in by_name:
            known = ", ".join(by_name)
            raise ConfigError(
                f"model '{name}': config.yaml names {kind} '{entry.name}', which the model "
                f"file does not have ({kind}s: {known})"
            )
        overrides[entry.name] = entry
    resolved = []
    for spec in model_specs:
        entry = overrides.get(spec.name)
        shape = spec.shape
        if entry is not None:
            if entry.datatype is not None and entry.datatype != spec.datatype:
                raise ConfigError(
                    f"model '{name}': config.yaml gives {kind} '{spec.name}' datatype "
                    f"{entry.datatype} but the model file says {spec.datatype}"
                )
            if entry.dims is not None:
                shape = _pin_dims(name, spec, entry.dims, kind)
        resolved.append(TensorSpec(spec.name, spec.datatype, shape))
    return resolved


def _pin_dims(name: str, spec: TensorSpec, dims, kind: str) -> tuple[int, ...]:
    """Apply configured non-batch dims to the model's shape (batch dim kept first)."""
    model_row = spec.shape[1:] if spec.shape and spec.shape[0] == -1 else spec.shape
    head = spec.shape[:1] if spec.shape and spec.shape[0] == -1 else ()
    if len(dims) != len(model_row):
        raise ConfigError(
            f"model '{name}': config.yaml dims {list(dims)} for {kind} '{spec.name}' have rank "
            f"{len(dims)}, the model's non-batch shape {list(model_row)} has rank {len(model_row)}"
        )
    for configured, actual in zip(dims, model_row, strict=True):
        if actual >= 0 and configured != actual:
            raise ConfigError(
                f"model '{name}': config.yaml dims {list(dims)} for {kind} '{spec.name}' "
                f"contradict the model's shape {list(spec.shape)}"
            )
    return (*head, *(int(d) for d in dims))


def _effective_max_batch_size(config, model_inputs: list[TensorSpec]) -> int:
    """config.max_batch_size, except that a model without a dynamic first dimension and
    no explicit max_batch_size in config.yaml is served unbatched (works with no config)."""
    explicit = "max_batch_size" in getattr(config, "model_fields_set", ())
    batchable = all(s.shape and s.shape[0] == -1 for s in model_inputs)
    if not explicit and not batchable:
        return 0
    return int(config.max_batch_size)
