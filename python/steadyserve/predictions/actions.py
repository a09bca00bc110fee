"""What a quality breach does besides its alert (``quality.on_breach``): roll the model
back to the generation its last promotion replaced, or hold its circuit open so that
its backup answers until the KPIs are back within their limits.

The monitor reports a breach as it starts; the action runs on this object's thread
(a rollback takes seconds, and the reporting thread is the prediction log's writer or
a feedback call). The same thread asks the monitor for its breaches every
``RECHECK_S`` — which re-scores windows whose labels aged out, so a breach is seen
within that time even when nothing else asks — and releases the models it holds open
that are no longer in breach (their circuit goes half-open: probes decide, as after
any opening)."""

from __future__ import annotations

import logging
import queue
import threading

from ..errors import SteadyServeError

log = logging.getLogger("steadyserve.quality")

RECHECK_S = 1.0


class QualityActions:
    def __init__(self, runtime):
        self._runtime = runtime
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._held: set[str] = set()
        self._thread = threading.Thread(target=self._work, name="steadyserve-quality", daemon=True)
        self._thread.start()

    def on_breach(self, model: str, version: str, action: str, why: str) -> None:
        """The monitor's report of a breach that just started (any thread; never blocks).
        ``action`` is the config's ``quality.on_breach``, checked when it loaded."""
        log.warning(
            "model quality breach",
            extra={"model": model, "version": version, "action": action, "reason": why},
        )
        if action != "alert":
            self._tasks.put((model, version, action, why))

    def close(self) -> None:
        self._tasks.put(None)
        self._thread.join(timeout=30.0)

    def _work(self) -> None:
        while True:
            try:
                task = self._tasks.get(timeout=RECHECK_S)
            except queue.Empty:
                self._recheck()
                continue
            if task is None:
                return
            self._act(*task)

    def _act(self, model: str, version: str, action: str, why: str) -> None:
        runtime = self._runtime
        try:
            if action == "rollback":
                runtime.lifecycle.rollback(model, "quality", why)
            else:
                runtime.router.breaker(model).hold(f"quality: {why}")
                self._held.add(model)
        except SteadyServeError as error:  # e.g. nothing kept to roll back to
            log.error(
                "quality breach action failed",
                extra={"model": model, "version": version, "action": action, "reason": str(error)},
            )

    def _recheck(self) -> None:
        monitor = self._runtime.quality
        if monitor is None:
            return
        try:
            breached = monitor.breaches()  # reports breaches that just started (on_breach)
        except Exception:  # a scoring bug must not end the thread that runs the actions
            log.exception("quality re-check failed")
            return
        for model in list(self._held):
            if model not in breached:
                self._held.discard(model)
                self._runtime.router.breaker(model).release("quality back within its limits")
