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
import threading
import time

import numpy as np

from .. import _core
from ..errors import ModelFailureError, SteadyServeError
from ..watchdog import ExecutionWatchdog

log = logging.getLogger("steadyserve.executor")

# execution: auto runs batches inline when the largest batch takes at most this long.
INLINE_MAX_BATCH_NS = 1_000_000
# ... and leaves inline execution for threads after a batch that ran longer than this, in
# CPU time of the running thread: a batch preempted by another process on a busy machine
# must not move a fast model off inline execution for good (wall time would).
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
        self._any_bytes = any(self._bytes_inputs)
        self._any_bytes_out = any(s.datatype == "BYTES" for s in model.outputs)
        self._watchdog: ExecutionWatchdog | None = None
        self._threads: list[threading.Thread] = []
        self.inline = False
        self._inline_context: _RunContext | None = None
        self._inline_lock = threading.Lock()
        # Called as (model name, ok, requests, reason) once per executed batch.
        self.on_batch = None
        # A lifecycle.shadow.ShadowMirror offered each successful batch, or None.
        self.shadow = None
        # A predictions.capture.BatchCapture handed each successful batch with logged
        # requests, or None (no prediction log).
        self.capture = None

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
            self.drain(wait=True)
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

    def drain(self, wait: bool = False) -> int:
        """Inline execution: run every batch that is ready now, in this thread; how
        many ran.

        ``wait`` (at stop): wait for a thread draining now to finish instead of
        leaving the rest to it, so that nothing runs once this returns."""
        if not self._inline_lock.acquire(blocking=wait):
            return 0  # another thread is draining: it takes what is ready
        ran = 0
        try:
            core = self._core
            while True:
                batch = core.next_batch(0)
                if batch is None or isinstance(batch, str):
                    return ran
                self._run_guarded(batch, self._inline_context)
                ran += 1
        finally:
            self._inline_lock.release()

    def _run_guarded(self, batch, context) -> None:
        try:
            self._run(batch, context)
        except BaseException:  # never let one batch kill the executor
            log.exception("executor failed outside the model run")
            self._core.fail(batch.buffer, "execution_error", "internal error", _core.BatchTimings())

    def _run(self, batch, context: _RunContext) -> None:
        """One batch: ORT on the batch buffer, then the core checks the outputs and answers.

        Kept lean on purpose: over gRPC a batch is often one request, so every Python
        operation here is paid per request.
        """
        model = self.model
        t0 = time.perf_counter_ns()
        if self._any_bytes:
            feeds = {
                name: _decode_bytes(view, model.input_shape(name, batch.rows)) if is_bytes else view
                for name, view, is_bytes in zip(
                    self._input_names, batch.inputs, self._bytes_inputs, strict=True
                )
            }
        else:
            feeds = dict(zip(self._input_names, batch.inputs, strict=True))
        error: ModelFailureError | None = None
        produced = None
        watchdog = self._watchdog
        run_id = watchdog.begin(context.run_options, context.abort) if watchdog else None
        inline = self.inline
        cpu0 = time.thread_time_ns() if inline else 0
        t1 = time.perf_counter_ns()
        try:
            if model.faults is not None:
                model.faults.before_run(context.abort)
            values = self._session_run(self._names, feeds, context.run_options)
            if model.faults is not None:
                named = dict(zip(self._names, values, strict=True))
                values = list(model.faults.after_run(named).values())
            produced = [_encode_output(v) for v in values] if self._any_bytes_out else values
        except ModelFailureError as e:
            error = e
        except SteadyServeError as e:  # an injected fault, a closed backend
            error = ModelFailureError(str(e))
        except Exception as e:  # an unexpected backend failure still fails only this batch
            error = ModelFailureError(f"model '{model.name}' version {model.version} failed: {e}")
        finally:
            if run_id is not None:
                watchdog.end(run_id)
        t2 = time.perf_counter_ns()
        run_ns = t2 - t1
        timed_out = context.abort.is_set()
        if timed_out:
            context.run_options = self._backend.new_run_options()  # terminate sticks
            context.abort = threading.Event()
            if error is not None:
                error = ModelFailureError(
                    f"model '{model.name}' version {model.version}: execution ran past "
                    f"execution_timeout_ms {watchdog.timeout_s * 1000:g} and was terminated",
                    reason="execution_timeout",
                )
        core = self._core
        if error is None:
            problem = core.check(batch.buffer, produced)
            if problem is not None:
                error = ModelFailureError(problem[1], reason=problem[0])
        # The latency model learns the run itself; a batch that failed fast says nothing
        # about how long a batch takes, while a timed-out one took at least the timeout.
        learned = run_ns if error is None else (run_ns if timed_out else -1)
        timings = _core.BatchTimings(t1 - t0, run_ns, 0, learned, int(time.time() * 1000))
        # The circuit learns the outcome before any caller sees its answer, so a caller
        # that saw a failure also sees the state it caused.
        on_batch = self.on_batch
        if error is None:
            if on_batch is not None:
                on_batch(model.name, True, batch.requests, None)
            shadow = self.shadow
            if shadow is not None:  # before complete: the feeds are views of the batch buffer
                shadow.offer(feeds, values, batch.rows)
            capture = self.capture
            if capture is not None and batch.logged:  # before complete: it reads the requests
                try:
                    capture(core, batch, values)
                except Exception:  # the log must never fail the requests it records
                    log.exception("prediction log capture failed")
            core.complete(batch.buffer, produced, timings)
        else:
            if on_batch is not None:
                on_batch(model.name, False, batch.requests, error.reason)
            core.fail(batch.buffer, error.reason, str(error), timings)
        if inline:
            cpu_ns = time.thread_time_ns() - cpu0
            if cpu_ns > INLINE_LEAVE_NS or timed_out:
                self._leave_inline(cpu_ns)

    def _session_run(self, names, feeds, run_options):
        # ORT's own run, no wrapper per batch. The session is asked for each batch, not kept:
        # the warm-up may replace it (intra_op_threads: auto), and a copy taken earlier would
        # go on running the one it replaced.
        session = self._backend.session
        if session is None:
            raise ModelFailureError(
                f"model '{self.model.name}' version {self.model.version}: closed"
            )
        try:
            return session.run(names, feeds, run_options)
        except Exception as exc:
            raise ModelFailureError(
                f"model '{self.model.name}' version {self.model.version}: ONNX Runtime failed "
                f"running {self._backend.path}: {exc}"
            ) from None


def _encode_output(out):
    """Numeric arrays go to the core as they are; string arrays in Triton's BYTES form."""
    if isinstance(out, np.ndarray) and out.dtype.kind in "OSU":
        from ..datatypes import serialize_bytes

        return (serialize_bytes(out), list(out.shape))
    return out


def _decode_bytes(view: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    from ..datatypes import deserialize_bytes

    return deserialize_bytes(view.tobytes(), shape)
