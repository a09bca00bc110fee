"""Shadow traffic: mirror a share of live batches to a candidate version and compare.

The live version's executor offers each successful batch (``Executor.shadow``) before
the core answers it; the mirror samples a fixed share of them, copies the sampled
batch's inputs and predicting output, and hands the copy to one worker thread at the
lowest CPU priority, which runs the candidate's ONNX Runtime session on the same inputs
and compares row by row. Nothing here can change an answer: the live outputs are
already final when offered, and the mirror never raises into the executor.

Dropped first under load: a sampled batch is skipped (and counted) when the live model
has requests waiting, or when ``max_pending_batches`` mirrored batches are already
waiting for the worker. The executor pays one attribute read per batch with no mirror
attached; with one, a counter step per batch, and a copy of the sampled ones.

Attach and detach (the lifecycle manager's job)::

    reason = check_compatible(live, candidate, output)   # None: it can run
    mirror = ShadowMirror(live, candidate, "2", config.shadow, config.evaluation.output,
                          runtime.metrics)
    live.executor.shadow = mirror
    ...
    live.executor.shadow = None
    mirror.close()
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from ..config import ShadowConfig
from ..errors import ConfigError

log = logging.getLogger("steadyserve.lifecycle.shadow")

# A failing candidate is logged on its first failure and then once per this many.
FAILURE_LOG_EVERY = 1000
# The sampling share as a fraction of small integers: 0.1 mirrors exactly every 10th batch.
FRACTION_MAX_DENOMINATOR = 1_000_000
# Nice value of the worker thread (the lowest priority).
WORKER_NICE = 19


@dataclass(frozen=True)
class _Mirrored:
    """One sampled batch: copies of the inputs and of the live version's output."""

    feeds: dict[str, np.ndarray]
    live: np.ndarray
    rows: int


def check_compatible(live, candidate_backend, output: str | None) -> str | None:
    """Why ``candidate_backend`` cannot shadow ``live`` (None when it can): its input
    names, datatypes or row shapes differ from what the live version is fed, or it
    lacks the compared ``output`` (None: the live model's first), or that output's
    datatype or row shape differs from the live one's.

    Limitation: the mirror feeds the candidate the live version's *transformed*
    inputs (validated, imputed, clipped and scaled by the live version's feature
    contract). A candidate whose own stats.json scales differently is therefore
    compared on the live version's scaling, not its own; the evaluation gate, which
    runs each version with its own contract, is the check for that.
    """
    theirs_in = {s.name: s for s in candidate_backend.inputs}
    ours_in = {s.name: s for s in live.inputs}
    if set(theirs_in) != set(ours_in):
        return (
            f"the candidate has inputs {sorted(theirs_in)}, the live version "
            f"{live.version} has {sorted(ours_in)}"
        )
    for name, spec in ours_in.items():
        theirs = theirs_in[name]
        if theirs.datatype != spec.datatype:
            return (
                f"input '{name}' is {theirs.datatype} in the candidate, {spec.datatype} "
                f"in the live version"
            )
        fed = list(live.input_shape(name, 1))
        if live.max_batch_size > 0:
            fed[0] = -1  # a batch of any size up to max_batch_size
        if not _fits(fed, theirs.shape, either_dynamic=False):
            return (
                f"input '{name}' has shape {list(theirs.shape)} in the candidate; the live "
                f"version feeds it {fed} (-1: the batch)"
            )
    name = output or live.outputs[0].name
    ours_out = {s.name: s for s in live.outputs}
    theirs_out = {s.name: s for s in candidate_backend.outputs}
    if name not in ours_out:
        return f"the live version has no output '{name}' (outputs: {', '.join(ours_out)})"
    if name not in theirs_out:
        return f"the candidate has no output '{name}' (outputs: {', '.join(theirs_out)})"
    spec, theirs = ours_out[name], theirs_out[name]
    if spec.datatype == "BYTES" or theirs.datatype != spec.datatype:
        return (
            f"output '{name}' is {theirs.datatype} in the candidate and {spec.datatype} in "
            f"the live version; shadow compares numeric outputs of one datatype"
        )
    if not _fits(spec.shape, theirs.shape, either_dynamic=True):
        return (
            f"output '{name}' has shape {list(theirs.shape)} in the candidate, "
            f"{list(spec.shape)} in the live version"
        )
    return None


class ShadowMirror:
    """Mirrors a share of ``live``'s batches to ``candidate_backend`` and keeps score.

    ``offer`` runs on the live executor's threads; everything else on the mirror's own
    worker thread (``steadyserve-shadow-<model>``) or the control plane.
    """

    def __init__(
        self,
        live,
        candidate_backend,
        candidate_version: str,
        config: ShadowConfig,
        output: str | None,
        metrics,
    ):
        """``live``: the serving ServableModel; ``candidate_backend``: the candidate's
        OnnxBackend (the mirror runs its session, it does not close it); ``output``: the
        output compared (None: the live model's first); ``metrics``: the runtime's
        ``Metrics`` (None: no Prometheus figures). Raises ConfigError when the candidate
        cannot be fed the live inputs (``check_compatible``)."""
        reason = check_compatible(live, candidate_backend, output)
        if reason is not None:
            raise ConfigError(
                f"model '{live.name}': shadow version {candidate_version} cannot mirror "
                f"version {live.version}: {reason}"
            )
        self._live = live
        self.candidate_backend = candidate_backend
        self.model = live.name
        self.live_version = str(live.version)
        self.shadow_version = str(candidate_version)
        self.config = config
        self.output = output or live.outputs[0].name
        self._output_index = [s.name for s in live.outputs].index(self.output)
        self._batched = live.max_batch_size > 0
        share = Fraction(config.fraction).limit_denominator(FRACTION_MAX_DENOMINATOR)
        self._share_num, self._share_den = share.numerator, share.denominator
        self._offered = itertools.count(1)  # next() is atomic: no lock per offered batch
        self._max_pending = int(config.max_pending_batches)
        self._tolerance = float(config.tolerance)

        # One lock for the queue and every count; held briefly, never while calling out.
        self._cond = threading.Condition(threading.Lock())
        self._pending: collections.deque[_Mirrored] = collections.deque()
        self._running = False  # the worker is comparing a batch
        self._closed = False
        self._counts = dict.fromkeys(
            (
                "mirrored",
                "compared",
                "failed",
                "dropped_busy",
                "dropped_queue_full",
                "discarded",
                "rows_agree",
                "rows_disagree",
                "values",  # output values compared (finite differences)
            ),
            0,
        )
        self._abs_diff_sum = 0.0
        self._run_ns = 0
        self._offer_errors = 0

        self._metrics = metrics
        if metrics is not None:
            key = (self.model, self.shadow_version)
            self._m_rows = {r: metrics.shadow_rows.labels(*key, r) for r in ("agree", "disagree")}
            self._m_batches = {
                o: metrics.shadow_batches.labels(*key, o)
                for o in ("compared", "failed", "dropped_busy", "dropped_queue_full", "discarded")
            }
            self._m_agreement = metrics.shadow_agreement.labels(*key)

        self._thread = threading.Thread(
            target=self._work, name=f"steadyserve-shadow-{self.model}", daemon=True
        )
        self._thread.start()

    # ----------------------------------------------------------------- compatibility

    check_compatible = staticmethod(check_compatible)

    # ----------------------------------------------------------------- executor side

    def offer(self, feeds: dict[str, np.ndarray], outputs: list, rows: int) -> None:
        """One successful live batch (``outputs`` in the order of the live model's
        outputs). Called on an executor thread before the batch is answered: cheap,
        never blocks on the worker, never raises."""
        try:
            n = next(self._offered)
            num, den = self._share_num, self._share_den
            if (n * num) // den == ((n - 1) * num) // den or self._closed:
                return  # not sampled
            if self._live.queue_depth > 0:
                self._dropped("dropped_busy")
                return
            if len(self._pending) >= self._max_pending:  # a hint; rechecked under the lock
                self._dropped("dropped_queue_full")
                return
            # Copies: the feeds are views of the core's batch buffer, reused once answered.
            item = _Mirrored(
                {k: np.array(v, copy=True) for k, v in feeds.items()},
                np.array(outputs[self._output_index], copy=True),
                int(rows),
            )
            with self._cond:
                if self._closed:
                    return
                full = len(self._pending) >= self._max_pending
                if not full:
                    self._pending.append(item)
                    self._counts["mirrored"] += 1
                    self._cond.notify()
            if full:
                self._dropped("dropped_queue_full")
        except Exception:  # never into the executor: the batch's answer comes first
            self._offer_errors += 1
            if (self._offer_errors - 1) % FAILURE_LOG_EVERY == 0:
                log.exception(
                    "shadow mirror failed to take a batch (%d so far)",
                    self._offer_errors,
                    extra={"model": self.model, "version": self.shadow_version},
                )

    def _dropped(self, outcome: str) -> None:
        with self._cond:
            self._counts[outcome] += 1
        if self._metrics is not None:
            self._m_batches[outcome].inc()

    # ----------------------------------------------------------------- worker

    def _work(self) -> None:
        _lower_priority()
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                item = self._pending.popleft()
                self._running = True
            try:
                self._compare(item)
            finally:
                with self._cond:
                    self._running = False
                    self._cond.notify_all()

    def _compare(self, item: _Mirrored) -> None:
        try:
            session = self.candidate_backend.session
            if session is None:
                raise RuntimeError("the candidate's session is closed")
            t0 = time.perf_counter_ns()
            (theirs,) = session.run([self.output], item.feeds)
            run_ns = time.perf_counter_ns() - t0
            theirs = np.asarray(theirs)
            ours = item.live
            if theirs.shape != ours.shape:
                raise ValueError(
                    f"output '{self.output}' has shape {list(theirs.shape)}, the live "
                    f"version's {list(ours.shape)}"
                )
            agree, disagree, values, abs_sum = self._score(ours, theirs, item.rows)
        except Exception as exc:  # the candidate's trouble is only ever counted
            self._failed(exc)
            return
        with self._cond:
            c = self._counts
            c["compared"] += 1
            c["rows_agree"] += agree
            c["rows_disagree"] += disagree
            c["values"] += values
            self._abs_diff_sum += abs_sum
            self._run_ns += run_ns
            ratio = c["rows_agree"] / max(1, c["rows_agree"] + c["rows_disagree"])
            closed = self._closed
        if self._metrics is not None:
            self._m_batches["compared"].inc()
            self._m_rows["agree"].inc(agree)
            self._m_rows["disagree"].inc(disagree)
            if not closed:  # close() removes the gauge
                self._m_agreement.set(ratio)

    def _score(self, ours: np.ndarray, theirs: np.ndarray, rows: int):
        """(rows agreeing, rows disagreeing, finite differences, their absolute sum).

        Rows wider than one value (class scores) agree when their argmax does; rows of
        one value agree when they differ by at most ``tolerance`` (NaN never agrees)."""
        rows = rows if self._batched else 1
        a = ours.reshape(rows, -1)
        b = theirs.reshape(rows, -1)
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        if a.shape[1] > 1:
            same = np.argmax(a, axis=1) == np.argmax(b, axis=1)
        else:
            same = diff[:, 0] <= self._tolerance
        agree = int(np.count_nonzero(same))
        finite = diff[np.isfinite(diff)]
        return agree, rows - agree, int(finite.size), float(finite.sum())

    def _failed(self, exc: Exception) -> None:
        with self._cond:
            self._counts["failed"] += 1
            failed = self._counts["failed"]
        if self._metrics is not None:
            self._m_batches["failed"].inc()
        if (failed - 1) % FAILURE_LOG_EVERY == 0:
            log.warning(
                "shadow version %s of model '%s' failed on a mirrored batch (%d failed so "
                "far; logged once per %d): %s",
                self.shadow_version,
                self.model,
                failed,
                FAILURE_LOG_EVERY,
                exc,
                extra={"model": self.model, "version": self.shadow_version},
            )

    # ----------------------------------------------------------------- control plane

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no mirrored batch is pending or being compared (or the mirror is
        closed); False if ``timeout`` seconds passed first. For reports and tests."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._closed or (not self._pending and not self._running), timeout
            )

    def report(self) -> dict[str, Any]:
        """Counts so far. ``batches.mirrored`` = compared + failed + discarded + the ones
        still pending; sampled batches = mirrored + dropped_busy + dropped_queue_full.
        ``mean_abs_diff`` is over every finite output value compared."""
        with self._cond:
            c = dict(self._counts)
            abs_sum, run_ns = self._abs_diff_sum, self._run_ns
        rows = c["rows_agree"] + c["rows_disagree"]
        return {
            "model": self.model,
            "live_version": self.live_version,
            "shadow_version": self.shadow_version,
            "fraction": self.config.fraction,
            "batches": {
                k: c[k]
                for k in (
                    "mirrored",
                    "compared",
                    "failed",
                    "dropped_busy",
                    "dropped_queue_full",
                    "discarded",
                )
            },
            "rows": {"compared": rows, "agree": c["rows_agree"], "disagree": c["rows_disagree"]},
            "agreement": c["rows_agree"] / rows if rows else None,
            "mean_abs_diff": abs_sum / c["values"] if c["values"] else None,
            "shadow_run_ms_mean": run_ns / c["compared"] / 1e6 if c["compared"] else None,
        }

    @property
    def running(self) -> bool:
        """Whether the worker thread is alive (False once ``close`` has joined it)."""
        return self._thread.is_alive()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker: pending batches are discarded (and counted), a batch being
        compared is finished. Detach first (``live.executor.shadow = None``). Idempotent."""
        with self._cond:
            discarded = 0 if self._closed else len(self._pending)
            self._closed = True
            self._pending.clear()
            self._counts["discarded"] += discarded
            self._cond.notify_all()
        if self._metrics is not None and discarded:
            self._m_batches["discarded"].inc(discarded)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning(
                    "shadow worker still comparing a batch %.1f s after close",
                    timeout,
                    extra={"model": self.model, "version": self.shadow_version},
                )
        if self._metrics is not None:
            with contextlib.suppress(KeyError):  # the ratio is of a running mirror
                self._metrics.shadow_agreement.remove(self.model, self.shadow_version)

    def __repr__(self) -> str:
        return (
            f"ShadowMirror({self.model} {self.live_version} -> {self.shadow_version}, "
            f"fraction={self.config.fraction})"
        )


def _fits(ours, theirs, either_dynamic: bool) -> bool:
    """Same rank and each dim equal, or dynamic in ``theirs`` (or in either)."""
    if len(ours) != len(theirs):
        return False
    return all(
        a == b or b < 0 or (either_dynamic and a < 0) for a, b in zip(ours, theirs, strict=True)
    )


def _lower_priority() -> None:
    """This thread to nice 19 (Linux: per thread), so the candidate's runs yield the CPU
    to serving. ORT's own pool threads (intra_op_threads > 1) keep their priority."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)
