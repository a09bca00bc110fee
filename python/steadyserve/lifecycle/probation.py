"""Probation: a newly promoted generation on trial.

For ``probation.window_s`` after a promotion, failed batches of the versions it
brought (execution errors and timeouts, failed output checks) are counted, and an
opened circuit is noted; at ``probation.max_failures`` failures, or at the
circuit's opening, the model is rolled back to the generation it replaced. The
count is kept on the executor's per-batch report (a dict lookup, and only for a
failed batch); the rollback itself runs on this watch's own thread, since the
thread that saw the failure is an executor of the version being replaced.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .generation import Generation

log = logging.getLogger("steadyserve.lifecycle")


@dataclass
class Trial:
    generation: Generation
    versions: frozenset[str]  # the versions the promotion brought in
    until: float  # time.monotonic()
    max_failures: int
    failures: int = 0
    triggered: bool = False


class ProbationWatch:
    """The trials of a runtime's models; ``rollback(model, generation, trigger, why)``
    is called on this watch's thread when one fails."""

    def __init__(self, router, rollback: Callable[[str, Generation, str, str], None]):
        self._router = router
        self._rollback = rollback
        self._trials: dict[str, Trial] = {}
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._work, name="steadyserve-probation", daemon=True
        )
        self._thread.start()

    def begin(self, candidate: Generation, replaced: Generation) -> None:
        """Put ``candidate`` on trial (its config's window; none when it is 0)."""
        window = candidate.config.probation.window_s
        if window <= 0:
            self.end(candidate.name)
            return
        new = frozenset(v for v, m in candidate.models.items() if m is not replaced.models.get(v))
        self._trials[candidate.name] = Trial(
            candidate, new, time.monotonic() + window, candidate.config.probation.max_failures
        )

    def end(self, name: str) -> None:
        self._trials.pop(name, None)

    def seconds_left(self, name: str) -> float | None:
        trial = self._trials.get(name)
        return None if trial is None else round(max(0.0, trial.until - time.monotonic()), 3)

    def batch_hook(self, version: str):
        """The executor's per-batch report for ``version``: the router's breaker, then
        the trial."""
        router = self._router
        trials = self._trials

        def on_batch(model: str, ok: bool, requests: int, reason: str | None) -> None:
            router.record_batch(model, ok, requests, reason)
            if ok:
                return
            trial = trials.get(model)
            if trial is None or version not in trial.versions or trial.triggered:
                return
            if time.monotonic() > trial.until:
                return
            trial.failures += 1
            if trial.failures >= trial.max_failures:
                trial.triggered = True
                why = (
                    f"{trial.failures} failed batches of version {version} in probation "
                    f"(max_failures {trial.max_failures}), last: {reason}"
                )
                self._tasks.put((model, trial.generation, "probation_failures", why))

        return on_batch

    def circuit_changed(self, model: str, state: str, why: str) -> None:
        """A circuit opened: a generation on trial is rolled back."""
        trial = self._trials.get(model)
        if state != "open" or trial is None or trial.triggered or time.monotonic() > trial.until:
            return
        trial.triggered = True
        self._tasks.put((model, trial.generation, "probation_circuit", f"circuit opened: {why}"))

    def _work(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            model, generation, trigger, why = task
            try:
                self._rollback(model, generation, trigger, why)
            except Exception:
                log.exception("automatic rollback failed", extra={"model": model})

    def close(self) -> None:
        self._tasks.put(None)
        self._thread.join(timeout=10)


__all__ = ["ProbationWatch", "Trial"]
