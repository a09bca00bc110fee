"""Backup-model failover: which model answers a request, and when to stop trusting one.

Every request for a model walks its chain (the model, its ``backup``, that
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

from .errors import (
    DeadlineExceededError,
    ModelFailureError,
    NotFoundError,
    ResourceExhaustedError,
    SteadyServeError,
    UnavailableError,
)
from .model import InferResult, ServableModel

log = logging.getLogger("steadyserve.routing")

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
STATE_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}

NORMAL, PROBE = "normal", "probe"  # tickets from CircuitBreaker.allow

# Background runs that keep a deadline-skipped model's latency estimate fresh
# (Router.refresh_estimate): at most one per model in flight, one per interval.
_REFRESH_INTERVAL_S = 0.05
_REFRESH_TIMEOUT_S = 2.0


class CircuitBreaker:
    """closed -> open when failures pass a threshold (consecutive, or a rate over a
    sliding window); open -> half-open after a cool-down, letting a few probe
    requests through; enough successful probes close it, a failed one reopens it."""

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
        self._window: deque[tuple[float, bool]] = deque()  # (time, failed)
        self._window_failures = 0
        self._probes_in_flight = 0
        self._probe_successes = 0
        self.opened_count = 0
        self.last_reason = ""
        self.changed_at = clock()  # when the state last changed (clock's time)

    def allow(self) -> str | None:
        """May a request go to this model now? Returns a ticket (NORMAL or PROBE) or None."""
        with self._lock:
            if self.state == CLOSED:
                return NORMAL
            if self.state == OPEN:
                if self._clock() - self._opened_at < self._config.open_s:
                    return None
                self._move(HALF_OPEN, "cool-down over: probing")
            if self._probes_in_flight < self._config.half_open_probes:
                self._probes_in_flight += 1
                return PROBE
            return None

    def since_s(self) -> float:
        """Seconds in the current state."""
        return self._clock() - self.changed_at

    def release(self, ticket: str | None) -> None:
        """The request did not reach a verdict on this model (refused, cancelled)."""
        if ticket == PROBE:
            with self._lock:
                self._probes_in_flight = max(0, self._probes_in_flight - 1)

    def record(self, ticket: str | None, ok: bool, reason: str = "") -> None:
        with self._lock:
            now = self._clock()
            if ticket == PROBE:
                self._probes_in_flight = max(0, self._probes_in_flight - 1)
                if self.state != HALF_OPEN:
                    return
                if not ok:
                    self._open(now, f"probe failed: {reason}")
                    return
                self._probe_successes += 1
                if self._probe_successes >= self._config.half_open_probes:
                    why = f"{self._probe_successes} probes succeeded"
                    self._reset_counts()  # (zeroes _probe_successes: say it first)
                    self._move(CLOSED, why)
                return
            if self.state != CLOSED:
                return  # a request admitted before the circuit opened
            self._window.append((now, not ok))
            self._window_failures += not ok
            horizon = now - self._config.window_s
            while self._window and self._window[0][0] < horizon:
                _, failed = self._window.popleft()
                self._window_failures -= failed
            if ok:
                self._consecutive = 0
                return
            self._consecutive += 1
            total = len(self._window)
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
        self._window_failures = 0
        self._probes_in_flight = 0
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


class Route:
    """One request's walk along its model's chain (shared by the sync and async paths)."""

    __slots__ = (
        "_router",
        "_chain",
        "_index",
        "_version",
        "_deadline_ns",
        "_priority",
        "_rows",
        "_reasons",
        "primary",
        "_inputs",
    )

    def __init__(self, router: Router, name: str, version, deadline_ns, priority, inputs):
        self._router = router
        self._chain = router.chain(name)
        self._index = 0
        self._version = version
        self._deadline_ns = deadline_ns
        self._priority = priority
        self._inputs = inputs
        self._rows = _rows(inputs)
        self._reasons: list[str] = []
        self.primary = name

    def next_model(self) -> tuple[ServableModel, str] | None:
        """The next link that may take the request, with its circuit ticket (None: none left)."""
        router = self._router
        while self._index < len(self._chain):
            i = self._index
            self._index += 1
            name = self._chain[i]
            try:
                model = router.runtime.get_model(name, self._version if i == 0 else None)
            except NotFoundError:
                if i == 0:
                    raise
                self._reasons.append(f"backup '{name}' not found")
                continue
            except UnavailableError as error:
                self._note(name, "not_ready", str(error))
                continue
            breaker = router.breaker(name)
            ticket = breaker.allow()
            if ticket is None:
                self._note(name, "circuit_open", breaker.last_reason)
                continue
            if self._misses_deadline(model, i):
                breaker.release(ticket)
                self._note(name, "deadline", "estimated to finish after the deadline")
                router.refresh_estimate(model, self._inputs, self._priority)
                continue
            return model, ticket
        return None

    def _misses_deadline(self, model: ServableModel, i: int) -> bool:
        if not self._deadline_ns or i + 1 >= len(self._chain):
            return False
        if not model.config.failover.on_deadline_miss:
            return False
        done = model.estimate_completion_ns(self._rows, self._priority)
        if not done or done <= self._deadline_ns:
            return False
        try:  # only worth it if the next link would make it
            following = self._router.runtime.get_model(self._chain[i + 1])
        except SteadyServeError:
            return False
        after = following.estimate_completion_ns(self._rows, self._priority)
        return bool(after) and after <= self._deadline_ns

    def _note(self, name: str, reason: str, detail: str) -> None:
        self._reasons.append(f"{name}: {reason} ({detail})")
        self._router.count_skip(name, reason)

    def failed(self, model: ServableModel, ticket: str, error: BaseException) -> None:
        """Record a failure; re-raise it unless the next link should try."""
        breaker = self._router.breaker(model.name)
        if isinstance(error, ModelFailureError):
            breaker.record(ticket, False, error.reason)
            self._note(model.name, error.reason, str(error))
            return
        breaker.release(ticket)
        retry = isinstance(error, (ResourceExhaustedError, DeadlineExceededError, UnavailableError))
        deadline_left = not self._deadline_ns or time.monotonic_ns() < self._deadline_ns
        if retry and deadline_left and self._index < len(self._chain):
            self._note(model.name, type(error).__name__, str(error))
            return
        raise error

    def succeeded(self, model: ServableModel, ticket: str, result: InferResult) -> InferResult:
        self._router.breaker(model.name).record(ticket, True)
        if model.name != self.primary:
            result.parameters["failover"] = True
            result.parameters["failover_from"] = self.primary
            result.parameters["failover_reason"] = "; ".join(self._reasons)
            self._router.count_failover(self.primary, model.name)
        return result

    def exhausted(self, inputs) -> InferResult:
        """Nothing answered: the primary's static default, else UNAVAILABLE naming every failure."""
        why = "; ".join(self._reasons) or "no model in the chain could take the request"
        default = self._router.default_output(self.primary)
        if default is not None:
            self._router.count_failover(self.primary, "default_output")
            outputs = {
                name: np.repeat(row[None, :], self._rows, axis=0) for name, row in default.items()
            }
            return InferResult(
                outputs,
                self.primary,
                "default",
                {"failover": True, "default_output": True, "failover_reason": why},
            )
        raise UnavailableError(f"model '{self.primary}' could not answer: {why}")


class Router:
    """Failover chains and circuit breakers of a Runtime's models."""

    def __init__(self, runtime, on_change=None, metrics=None):
        self.runtime = runtime
        self._metrics = metrics
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()
        self._on_change = on_change
        self._backups: dict[str, str] = {}
        self._defaults: dict[str, dict[str, np.ndarray]] = {}
        self.failovers: dict[tuple[str, str], int] = {}
        self.skips: dict[tuple[str, str], int] = {}
        self._refreshing: set[str] = set()  # models with a refresh run in flight
        self._next_refresh: dict[str, float] = {}
        self.refreshes = 0  # background runs that refreshed a skipped model's estimate

    def configure(self, name: str, config, signature=None) -> None:
        if config.backup:
            self._backups[name] = config.backup
        if config.failover.default_output:
            self._defaults[name] = {
                k: np.asarray(v, dtype=np.float32)
                for k, v in config.failover.default_output.items()
            }
        self.breaker(name, config.failover.circuit)
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
                    breaker = CircuitBreaker(name, config, on_change=self._on_change)
                    self._breakers[name] = breaker
        return breaker

    def unanswered_failures(self, model: str, reason: str, count: int) -> None:
        """Failed requests whose callers had already gone (their deadlines passed while
        the batch hung): no route reports them, so they count against the circuit here."""
        breaker = self.breaker(model)
        for _ in range(min(count, self._UNANSWERED_LIMIT)):
            breaker.record(NORMAL, False, reason)

    # One hung batch of many expired requests counts as a few failures, not as many.
    _UNANSWERED_LIMIT = 8

    def default_output(self, name: str) -> dict[str, np.ndarray] | None:
        return self._defaults.get(name)

    def count_failover(self, primary: str, answered_by: str) -> None:
        with self._lock:
            key = (primary, answered_by)
            self.failovers[key] = self.failovers.get(key, 0) + 1
        if self._metrics is not None:
            self._metrics.failovers.labels(primary, answered_by).inc()

    def count_skip(self, name: str, reason: str) -> None:
        with self._lock:
            key = (name, reason)
            self.skips[key] = self.skips.get(key, 0) + 1
        if self._metrics is not None:
            self._metrics.failover_triggers.labels(name, reason).inc()

    def route(self, name: str, version, deadline_ns, priority, inputs) -> Route:
        return Route(self, name, version, deadline_ns, priority, inputs)

    def refresh_estimate(self, model: ServableModel, inputs, priority: int) -> None:
        """Keep the latency estimate of a model skipped for its deadline up to date.

        A model estimated to miss deadlines gets no traffic, so its estimate (built from
        the batches it runs) would never learn that it got fast again, and every request
        would go to the backup for good. So now and then (at most one in flight, one per
        ``_REFRESH_INTERVAL_S``) a copy of a skipped request runs on it in the
        background; its answer is discarded and only its execution time counts.
        """
        now = time.monotonic()
        with self._lock:
            if model.name in self._refreshing or now < self._next_refresh.get(model.name, 0.0):
                return
            self._refreshing.add(model.name)
            self._next_refresh[model.name] = now + _REFRESH_INTERVAL_S
        try:
            copy = {k: np.array(v, copy=True) for k, v in inputs.items()}
            threading.Thread(
                target=self._refresh,
                args=(model, copy, priority),
                name=f"steadyserve-refresh-{model.name}",
                daemon=True,
            ).start()
        except BaseException:
            with self._lock:
                self._refreshing.discard(model.name)
            raise

    def _refresh(self, model: ServableModel, inputs, priority: int) -> None:
        try:
            deadline = time.monotonic_ns() + int(_REFRESH_TIMEOUT_S * 1e9)
            model.infer(inputs, deadline_ns=deadline, priority=priority)
            ran = 1
        except BaseException:  # still slow, failing or stopping: the estimate says so
            ran = 0
        with self._lock:
            self._refreshing.discard(model.name)
            self.refreshes += ran

    def report(self) -> dict[str, Any]:
        with self._lock:
            failovers = dict(self.failovers)
            skips = dict(self.skips)
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
                for (p, a), n in sorted(failovers.items())
            ],
            "skipped": [
                {"model": m, "reason": r, "count": n} for (m, r), n in sorted(skips.items())
            ],
        }


def _rows(inputs) -> int:
    for value in getattr(inputs, "values", lambda: [])():
        shape = getattr(value, "shape", None)
        if shape:
            return max(1, int(shape[0]))
    return 1
