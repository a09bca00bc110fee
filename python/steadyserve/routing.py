"""Backup-model failover: when to stop trusting a model, published to the native core.

Split by cadence (DESIGN.md): per request, the core walks the chain Python
published; per batch, the executor reports the outcome here and the circuit
breaker moves; a change of state is published to the core at once. Every
request for a model walks its chain (the model, its ``backup``, that
model's backup, ...) and is answered by the first link that

* is loaded and ready,
* has its circuit closed (or lets this request through as a half-open probe),
* is not estimated to miss the request's deadline while a later link would not
  (``failover.on_deadline_miss``), and
* answers: a model failure (execution error, execution timeout, failed output
  check) or a refusal for overload moves on to the next link, so the client gets
  the backup's answer instead of an error.

A bad request (INVALID_ARGUMENT) or a cancelled one is never retried. When no
link answers, the primary's ``failover.default_output`` answers if configured
(marked as a default), else UNAVAILABLE names what went wrong with each link.

The answer's ``model_name``/``model_version`` are the model that produced it;
``parameters`` say when it was a failover and why.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger("steadyserve.routing")

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
STATE_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}

# How often the control plane moves cooled-down circuits to half-open and refreshes the
# latency estimate of models passed over for their deadline.
_TICK_S = 0.01
_REFRESH_INTERVAL_S = 0.05


class CircuitBreaker:
    """closed -> open when failures pass a threshold (consecutive, or a rate over a
    sliding window); open -> half-open after a cool-down (``tick``), letting a budget
    of probe requests through (the core spends it); enough successful probes close
    it, a failed one reopens it. Fed once per executed batch."""

    def __init__(
        self,
        model: str,
        config,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, str, str, str], None] | None = None,
    ):
        self.model = model
        self._config = config
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self.state = CLOSED
        self._opened_at = 0.0
        self._consecutive = 0
        self._window: deque[tuple[float, int, int]] = deque()  # (time, requests, failed)
        self._window_requests = 0
        self._window_failures = 0
        self._probe_successes = 0
        self.opened_count = 0
        self.last_reason = ""
        self.changed_at = clock()  # when the state last changed (clock's time)
        # Why the circuit is held open (a quality breach with on_breach: failover), or
        # "": while held it stays open whatever the cool-down, until release().
        self.held = ""

    def configure(self, config) -> None:
        """New thresholds (a reloaded config); counts so far are kept."""
        with self._lock:
            self._config = config

    def reset(self, why: str) -> None:
        """Closed with clean counts: the model behind it was replaced (a rollback)."""
        with self._lock:
            self._reset_counts()
            self.held = ""
            if self.state != CLOSED:
                self._move(CLOSED, why)

    def hold(self, why: str) -> None:
        """Open, and kept open past the cool-down until ``release``: the backup answers."""
        with self._lock:
            self.held = why
            if self.state != OPEN:
                self._open(self._clock(), why)

    def release(self, why: str) -> None:
        """The hold is over: half-open, so probes decide as after any opening."""
        with self._lock:
            if not self.held:
                return
            self.held = ""
            if self.state == OPEN:
                self._probe_successes = 0
                self._move(HALF_OPEN, why)

    def since_s(self) -> float:
        """Seconds in the current state."""
        return self._clock() - self.changed_at

    def tick(self) -> None:
        """Open long enough: half-open (the core then lets the probe budget through)."""
        with self._lock:
            if (
                self.state == OPEN
                and not self.held
                and self._clock() - self._opened_at >= self._config.open_s
            ):
                self._probe_successes = 0
                self._move(HALF_OPEN, "cool-down over: probing")

    def record_batch(self, ok: bool, requests: int, reason: str = "") -> None:
        """One executed batch of ``requests`` requests succeeded or failed."""
        with self._lock:
            now = self._clock()
            if self.held:
                return  # a batch admitted before the hold
            if self.state == HALF_OPEN:
                if not ok:
                    self._open(now, f"probe failed: {reason}")
                    return
                self._probe_successes += requests
                if self._probe_successes >= self._config.half_open_probes:
                    why = f"{self._probe_successes} probes succeeded"
                    self._reset_counts()
                    self._move(CLOSED, why)
                return
            if self.state != CLOSED:
                return  # a batch admitted before the circuit opened
            failed = 0 if ok else requests
            self._window.append((now, requests, failed))
            self._window_requests += requests
            self._window_failures += failed
            horizon = now - self._config.window_s
            while self._window and self._window[0][0] < horizon:
                _, n, f = self._window.popleft()
                self._window_requests -= n
                self._window_failures -= f
            if ok:
                self._consecutive = 0
                return
            self._consecutive += requests
            total = self._window_requests
            if self._consecutive >= self._config.consecutive_failures:
                self._open(now, f"{self._consecutive} failures in a row, last: {reason}")
            elif (
                total >= self._config.min_requests
                and self._window_failures / total >= self._config.failure_rate
            ):
                self._open(
                    now,
                    f"{self._window_failures} of {total} requests failed in "
                    f"{self._config.window_s:g} s, last: {reason}",
                )

    def _open(self, now: float, why: str) -> None:
        self._opened_at = now
        self.opened_count += 1
        self._reset_counts()
        self._move(OPEN, why)

    def _reset_counts(self) -> None:
        self._consecutive = 0
        self._window.clear()
        self._window_requests = 0
        self._window_failures = 0
        self._probe_successes = 0

    def _move(self, state: str, why: str) -> None:
        previous, self.state, self.last_reason = self.state, state, why
        self.changed_at = self._clock()
        log.warning(
            "circuit of model '%s': %s -> %s (%s)",
            self.model,
            previous,
            state,
            why,
            extra={"model": self.model, "from": previous, "to": state, "reason": why},
        )
        if self._on_change is not None:
            self._on_change(self.model, previous, state, why)


class Router:
    """Failover chains and circuit breakers of a Runtime's models, published to the core."""

    def __init__(self, runtime, core, on_change=None, metrics=None, clock=time.monotonic):
        self.runtime = runtime
        self._clock = clock  # the breakers' clock: tests pass one they advance
        self._core = core
        self._metrics = metrics
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()
        self._on_change = on_change
        self._backups: dict[str, str] = {}
        self._next_refresh: dict[str, float] = {}
        self._deadline_skips: dict[str, int] = {}
        self.refreshes = 0  # runs that refreshed a skipped model's estimate
        self._stop = threading.Event()
        self._ticker = threading.Thread(
            target=self._tick_loop, name="steadyserve-router", daemon=True
        )
        self._ticker.start()

    def configure(self, name: str, config) -> None:
        """Publish a model's failover settings (at load, and again at each reload)."""
        if config.backup:
            self._backups[name] = config.backup
        else:
            self._backups.pop(name, None)
        defaults = [
            (
                output,
                list(np.asarray(row, dtype=np.float32).shape),
                np.asarray(row, np.float32).ravel().tolist(),
            )
            for output, row in (config.failover.default_output or {}).items()
        ]
        self._core.set_route(
            name, config.backup or "", bool(config.failover.on_deadline_miss), defaults
        )
        self.breaker(name, config.failover.circuit).configure(config.failover.circuit)
        if self._metrics is not None:  # a series from the start, not from the first change
            self._metrics.circuit_state.labels(name).set(STATE_VALUE[self.breaker(name).state])

    def chain(self, name: str) -> list[str]:
        chain = [name]
        while chain[-1] in self._backups and len(chain) <= 16:
            following = self._backups[chain[-1]]
            if following in chain:
                break  # cycles are refused at load; never loop here
            chain.append(following)
        return chain

    def breaker(self, name: str, config=None) -> CircuitBreaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.get(name)
                if breaker is None:
                    if config is None:
                        from .config import CircuitConfig

                        config = CircuitConfig()
                    breaker = CircuitBreaker(name, config, self._clock, on_change=self._changed)
                    self._breakers[name] = breaker
        return breaker

    def _changed(self, model: str, previous: str, state: str, why: str) -> None:
        probes = self.breaker(model)._config.half_open_probes if state == HALF_OPEN else 0
        self._core.set_circuit(model, STATE_VALUE[state], probes)
        if self._on_change is not None:
            self._on_change(model, previous, state, why)

    def record_batch(self, model: str, ok: bool, requests: int, reason: str | None) -> None:
        """An executed batch's outcome (called by the executors, once per batch)."""
        self.breaker(model).record_batch(ok, requests, reason or "")

    # ----------------------------------------------------------------- control plane

    def tick(self) -> None:
        """Moves cooled-down circuits to half-open and refreshes skipped models' estimates
        (the control-plane thread calls it every few ms; tests with their own clock may too)."""
        for breaker in list(self._breakers.values()):
            breaker.tick()
        self._refresh_skipped()

    def _tick_loop(self) -> None:
        while not self._stop.wait(_TICK_S):
            try:
                self.tick()
            except Exception:  # the control plane must keep ticking
                log.exception("router tick failed")

    def _refresh_skipped(self) -> None:
        """Keep the latency estimate of a model skipped for its deadline up to date.

        A model estimated to miss deadlines gets no traffic, so its estimate (built from
        the batches it runs) would never learn that it got fast again, and every request
        would go to the backup for good. So now and then (one per ``_REFRESH_INTERVAL_S``)
        a one-row run of zeros times it again.
        """
        now = time.monotonic()
        for model, reason, count in self._core.skips():
            if reason != "deadline" or count == self._deadline_skips.get(model, 0):
                continue
            if now < self._next_refresh.get(model, 0.0):
                continue
            self._deadline_skips[model] = count
            self._next_refresh[model] = now + _REFRESH_INTERVAL_S
            try:
                target = self.runtime.get_model(model)
                feeds = target._zeros(1)
                start = time.perf_counter_ns()
                target.backend.run(feeds)
                target.core_model.record_latency(1, time.perf_counter_ns() - start)
                self.refreshes += 1
            except Exception:  # still failing or stopping: the estimate stays
                continue

    def close(self) -> None:
        self._stop.set()
        self._ticker.join(timeout=5)

    def report(self) -> dict[str, Any]:
        return {
            "circuits": {
                name: {
                    "state": b.state,
                    "opened": b.opened_count,
                    "reason": b.last_reason,
                    "since_s": round(b.since_s(), 3),
                }
                for name, b in sorted(self._breakers.items())
            },
            "backups": dict(self._backups),
            "failovers": [
                {"model": p, "answered_by": a, "count": n}
                for p, a, n in sorted(self._core.failovers())
            ],
            "skipped": [
                {"model": m, "reason": r, "count": n} for m, r, n in sorted(self._core.skips())
            ],
        }
