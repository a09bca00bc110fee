"""The executor: Python once per batch.

The native core forms a batch and hands its buffer over (``ModelCore.next_batch``,
GIL released while waiting); the executor runs ONNX Runtime on it (GIL released
while it computes), checks the outputs, counts prediction drift, and hands the
outputs back (``complete``), or fails the batch (``fail``: the core sends its
requests on to the backup). Nothing here is per request: the core scatters rows,
encodes answers and wakes callers.

Two ways to run: executor threads (one per configured instance), or inline, where
the submitting thread (the event loop, or an in-process caller) runs each ready
batch itself with no thread hand-off — for fast models.
"""

from __future__ import annotations

import logging
import math
import threading
import time

import numpy as np

from .. import _core
from ..errors import ModelFailureError, SteadyServeError
from ..watchdog import ExecutionWatchdog

log = logging.getLogger("steadyserve.executor")

# execution: auto runs batches inline when the largest batch takes at most this long.
INLINE_MAX_BATCH_NS = 1_000_000
# ... and leaves inline execution for threads after a batch that ran longer than this.
INLINE_LEAVE_NS = 5_000_000


class _RunContext:
    """Per executor thread: the RunOptions and abort flag reused run after run
    (a new pair only after a timeout fired, since ORT's terminate flag sticks)."""

    __slots__ = ("run_options", "abort")

    def __init__(self, backend, watched: bool):
        self.run_options = backend.new_run_options() if watched else None
        self.abort = threading.Event()


class Executor:
    """Runs a model version's batches: threads or inline."""

    def __init__(self, model):
        self.model = model  # the ServableModel
        self._core = model.core_model
        self._backend = model.backend
        self._names = [s.name for s in model.outputs]
        self._bytes_inputs = [s.datatype == "BYTES" for s in model.inputs]
        self._input_names = [s.name for s in model.inputs]
        self._checks = list(model.config.failover.output_checks)
        self._batched = model.max_batch_size > 0
        self._watchdog: ExecutionWatchdog | None = None
        self._threads: list[threading.Thread] = []
        self.inline = False
        self._inline_context: _RunContext | None = None
        self._inline_lock = threading.Lock()
        # Called as (model name, ok, requests, reason) once per executed batch.
        self.on_batch = None

    # ----------------------------------------------------------------- lifecycle

    def start(self, inline: bool) -> None:
        timeout_ms = self.model.config.failover.execution_timeout_ms
        if timeout_ms:
            self._watchdog = ExecutionWatchdog(self.model.name, timeout_ms / 1000.0)
        self.inline = inline
        if inline:
            self._inline_context = _RunContext(self._backend, self._watchdog is not None)
        else:
            self._start_threads()

    def _start_threads(self) -> None:
        for i in range(int(self.model.config.instances)):
            thread = threading.Thread(
                target=self._loop,
                name=f"steadyserve-exec-{self.model.name}-{self.model.version}-{i}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float | None) -> None:
        """After the core stopped accepting: run what is queued, join the threads."""
        if self.inline:
            self.drain()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            log.error("executors did not stop in time", extra={"threads": stuck})
        if self._watchdog is not None:
            self._watchdog.stop()

    def _leave_inline(self, run_ns: int) -> None:
        """An inline batch ran long: from now on executor threads run the batches."""
        if not self.inline or self.model.config.execution == "inline":
            return
        self.inline = False
        log.warning(
            "batch ran %.1f ms inline: moving execution to executor threads",
            run_ns / 1e6,
            extra={"model": self.model.name, "version": self.model.version},
        )
        self._start_threads()

    # ----------------------------------------------------------------- batches

    def _loop(self) -> None:
        context = _RunContext(self._backend, self._watchdog is not None)
        core = self._core
        while True:
            batch = core.next_batch(None)
            if batch is None:
                continue
            if isinstance(batch, str):  # stopped and drained
                return
            self._run_guarded(batch, context)

    def drain(self) -> None:
        """Inline execution: run every batch that is ready now, in this thread."""
        if not self._inline_lock.acquire(blocking=False):
            return  # another thread is draining: it takes what is ready
        try:
            core = self._core
            while True:
                batch = core.next_batch(0)
                if batch is None or isinstance(batch, str):
                    return
                self._run_guarded(batch, self._inline_context)
        finally:
            self._inline_lock.release()

    def _run_guarded(self, batch, context) -> None:
        try:
            self._run(batch, context)
        except BaseException:  # never let one batch kill the executor
            log.exception("executor failed outside the model run")
            self._core.fail(batch.buffer, "execution_error", "internal error", _core.BatchTimings())

    def _run(self, batch, context: _RunContext) -> None:
        model = self.model
        rows = batch.rows
        t0 = time.perf_counter_ns()
        feeds = {}
        for name, view, is_bytes in zip(
            self._input_names, batch.inputs, self._bytes_inputs, strict=True
        ):
            feeds[name] = _decode_bytes(view, model.input_shape(name, rows)) if is_bytes else view
        t1 = time.perf_counter_ns()
        run_ns = 0
        error: SteadyServeError | None = None
        outputs: dict[str, np.ndarray] = {}
        run_id = None
        if self._watchdog is not None:
            run_id = self._watchdog.begin(context.run_options, context.abort)
        try:
            run_start = time.perf_counter_ns()  # an injected slowdown is part of the run
            if model.faults is not None:
                model.faults.before_run(context.abort)
            outputs = self._backend.run(feeds, self._names, context.run_options)
            run_ns = time.perf_counter_ns() - run_start
            if model.faults is not None:
                outputs = model.faults.after_run(outputs)
            self._check_outputs(outputs)
            model.observe_outputs(outputs, rows)
        except ModelFailureError as e:
            error = e
        except SteadyServeError as e:
            error = ModelFailureError(str(e))
        except Exception as e:  # an unexpected backend failure still fails only this batch
            error = ModelFailureError(f"model '{model.name}' version {model.version} failed: {e}")
        finally:
            if run_id is not None:
                self._watchdog.end(run_id)
        t2 = time.perf_counter_ns()
        timed_out = context.abort.is_set()
        if timed_out:
            context.run_options = self._backend.new_run_options()  # terminate sticks
            context.abort = threading.Event()
            if error is not None:
                error = ModelFailureError(
                    f"model '{model.name}' version {model.version}: execution ran past "
                    f"execution_timeout_ms {self._watchdog.timeout_s * 1000:g} and was terminated",
                    reason="execution_timeout",
                )
        # The latency model learns the run itself; a batch that failed fast says nothing
        # about how long a batch takes, while a timed-out one took at least the timeout.
        learned = run_ns if error is None else (t2 - t1 if timed_out else -1)
        timings = _core.BatchTimings(
            input_ns=t1 - t0,
            infer_ns=run_ns or (t2 - t1),
            output_ns=0,
            learn_ns=learned,
            wall_ms=int(time.time() * 1000),
        )
        # The circuit learns the outcome before any caller sees its answer, so a caller
        # that saw a failure also sees the state it caused.
        if error is None:
            if self.on_batch is not None:
                self.on_batch(model.name, True, batch.requests, None)
            produced = [_encode_output(outputs[name]) for name in self._names]
            problem = self._core.complete(batch.buffer, produced, timings)
            if problem is not None and self.on_batch is not None:  # failed over by the core
                self.on_batch(model.name, False, batch.requests, "execution_error")
        else:
            if self.on_batch is not None:
                self.on_batch(model.name, False, batch.requests, error.reason)
            self._core.fail(batch.buffer, error.reason, str(error), timings)
        if self.inline and (run_ns > INLINE_LEAVE_NS or timed_out):
            self._leave_inline(run_ns or (t2 - t1))

    def _check_outputs(self, outputs: dict[str, np.ndarray]) -> None:
        """failover.output_checks: two reductions per output cover both checks (min and
        max are NaN when any value is, and +-inf show up in them); the offending value is
        only looked for once a check has failed. (Row counts are the core's to check.)"""
        model = self.model
        for check in self._checks:
            out = outputs.get(check.name)
            if out is None or out.dtype.kind != "f" or out.size == 0:
                continue
            low, high = float(out.min()), float(out.max())
            finite = math.isfinite(low) and math.isfinite(high)
            if check.finite and not finite:
                bad = np.argwhere(~np.isfinite(out))[0]
                raise ModelFailureError(
                    f"model '{model.name}' version {model.version}: output '{check.name}' has a "
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
                    f"model '{model.name}' version {model.version}: output '{check.name}' value "
                    f"{float(out[tuple(bad)]):g} at {bad.tolist()} is outside [{lo}, {hi}]",
                    reason="bad_output",
                )


def _encode_output(out):
    """Numeric arrays go to the core as they are; string arrays in Triton's BYTES form."""
    if isinstance(out, np.ndarray) and out.dtype.kind in "OSU":
        from ..datatypes import serialize_bytes

        return (serialize_bytes(out), list(out.shape))
    return out


def _decode_bytes(view: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    from ..datatypes import deserialize_bytes

    return deserialize_bytes(view.tobytes(), shape)
