"""The alert rules: what each checks, on one evaluation's reading of a runtime.

``alerts.AlertEvaluator`` takes a reading (``_Reading``: the core's counters now and at
the start of each rule's window, circuits, readiness, quality breaches) every interval
and asks ``check`` for each rule and model; the verdict (a ``Check``) says whether the
condition holds, the value, the threshold and a description naming them. The table of
rules and defaults is in ``alerts.py``'s docstring and in ``config.AlertsConfig``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import AlertsConfig

RULES = tuple(AlertsConfig.model_fields)  # the schema names the rules, in its order
ALERTNAMES = {r: "SteadyServe" + "".join(p.capitalize() for p in r.split("_")) for r in RULES}
MAX_SAMPLES = 2048  # counter samples kept; spaced so that they span the longest window
MIN_RESOLVE_TIMEOUT_S = 60.0
MAX_LISTED = 5  # flagged features a drift alert names per tensor (the worst)
STOP_WAIT_S = 10.0  # how long stop() waits for an evaluation under way
INTERNAL = 13  # gRPC status INTERNAL: the model failed the request


@dataclass(frozen=True, slots=True)  # slots: the ring holds many
class Counts:
    """Lifetime counters of one model version (the core's)."""

    requests: int = 0  # every request that reached the model, whatever its outcome
    failed: int = 0  # the model failed it (execution error or timeout, a bad output)
    answered: int = 0
    slo_met: int = 0
    invalid: int = 0  # refused as invalid input

    def minus(self, old: Counts) -> Counts:
        diff = Counts(*(a - b for a, b in zip(_fields(self), _fields(old), strict=True)))
        return self if min(_fields(diff)) < 0 else diff  # counters restarted: all is new

    def plus(self, other: Counts) -> Counts:
        return Counts(*(a + b for a, b in zip(_fields(self), _fields(other), strict=True)))


def _fields(c: Counts) -> tuple[int, ...]:
    return (c.requests, c.failed, c.answered, c.slo_met, c.invalid)


@dataclass
class Sample:
    """What one evaluation read: counters by model and version, failovers by model and
    the model that answered."""

    t: float
    versions: dict[str, dict[str, Counts]] = field(default_factory=dict)
    failovers: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    """One rule's verdict on one model at one evaluation."""

    active: bool
    value: float | None = None
    threshold: float | None = None
    window_s: float | None = None
    description: str = ""


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


class _Reading:
    """One evaluation's view of the runtime: the counters now (``now``, a Sample), the
    circuits, readiness, the latest version of each model, and the window baselines."""

    def __init__(self, t: float, ring: list[Sample], runtime, unloaded: Callable):
        self._ring = ring
        self._unloaded = unloaded  # name -> AlertsConfig of a model with no loaded version
        self._bases: dict[float, Sample | None] = {}
        self.now = Sample(t)
        self.models = {}  # name -> the latest loaded version
        for model in runtime.models():
            raw = model.core_model.statistics()
            outcomes = raw["outcomes"]
            self.now.versions.setdefault(model.name, {})[str(model.version)] = Counts(
                requests=sum(outcomes.values()),
                failed=outcomes.get(INTERNAL, 0),
                answered=raw["success"][0],
                slo_met=raw["slo_met"],
                invalid=raw["refusals"].get("invalid_input", 0),
            )
            best = self.models.get(model.name)
            if best is None or int(model.version) > int(best.version):
                self.models[model.name] = model
        report = runtime.failover_report()
        for f in report["failovers"]:
            by = self.now.failovers.setdefault(f["model"], {})
            by[f["answered_by"]] = by.get(f["answered_by"], 0) + f["count"]
        self.circuits = report["circuits"]
        self.not_ready = {name: why for name, why in runtime.not_ready().items() if name}
        # Model -> its quality breach (QualityMonitor.breaches()); None: no monitor (the
        # server runs without a prediction log), so the rule applies to no model.
        monitor = getattr(runtime, "quality", None)
        self.quality: dict[str, dict] | None = None if monitor is None else monitor.breaches()

    def config(self, model: str) -> AlertsConfig:
        latest = self.models.get(model)
        return latest.config.alerts if latest is not None else self._unloaded(model)

    def _base(self, window_s: float) -> Sample | None:
        if window_s not in self._bases:
            start = self.now.t - window_s
            base = None
            for s in reversed(self._ring):
                base = s
                if s.t <= start:
                    break
            self._bases[window_s] = base
        return self._bases[window_s]

    def delta(self, model: str, window_s: float) -> tuple[Counts, float] | None:
        base = self._base(window_s)
        if base is None:
            return None
        total = Counts()
        old = base.versions.get(model, {})
        for version, counts in self.now.versions.get(model, {}).items():
            total = total.plus(counts.minus(old.get(version, Counts())))
        return total, self.now.t - base.t

    def failovers(self, model: str, window_s: float) -> tuple[dict[str, int], float] | None:
        base = self._base(window_s)
        if base is None:
            return None
        old = base.failovers.get(model, {})
        out = {}
        for by, n in self.now.failovers.get(model, {}).items():
            d = n - old.get(by, 0)
            out[by] = n if d < 0 else d
        return {by: n for by, n in out.items() if n}, self.now.t - base.t


def _over(span: float, window_s: float) -> str:
    if span >= window_s * 0.999:
        return f"over the last {window_s:g} s"
    return f"over the last {span:.3g} s (of a {window_s:g} s window)"


def _ratio_rule(
    reading: _Reading, model: str, rule, part: str, whole: str, above: bool, what: str
) -> Check:
    got = reading.delta(model, rule.window_s)
    if got is None:
        return Check(False, None, rule.threshold, rule.window_s, "no data yet")
    counts, span = got
    n, k = getattr(counts, whole), getattr(counts, part)
    if n < rule.min_requests:
        return Check(False, None, rule.threshold, rule.window_s, f"{n} requests: too few")
    share = k / n
    active = share > rule.threshold if above else share < rule.threshold
    text = (
        f"model '{model}': {_pct(share)} of {n} requests {what} {_over(span, rule.window_s)} "
        f"(threshold: {'above' if above else 'below'} {_pct(rule.threshold)})"
    )
    return Check(active, round(share, 6), rule.threshold, rule.window_s, text)


def check(rule: str, cfg, model: str, reading: _Reading, firing: bool) -> Check | None:
    """``rule``'s verdict on ``model``, or None where the rule does not apply."""
    latest = reading.models.get(model)
    if rule == "slo_attainment":
        if latest is None or not latest.slo_latency_ms:
            return None
        what = f"answered met the {latest.slo_latency_ms:g} ms SLO"
        return _ratio_rule(reading, model, cfg, "slo_met", "answered", False, what)
    if rule == "error_rate":
        return _ratio_rule(reading, model, cfg, "failed", "requests", True, "failed")
    if rule == "input_rejection_rate":
        what = "were refused as invalid input"
        return _ratio_rule(reading, model, cfg, "invalid", "requests", True, what)
    if rule == "failover_active":
        got = reading.failovers(model, cfg.window_s)
        if got is None:
            return Check(False, None, cfg.threshold, cfg.window_s, "no data yet")
        by, span = got
        n = sum(by.values())
        who = ", ".join(f"{m} ({k})" for m, k in sorted(by.items())) or "none"
        text = (
            f"model '{model}': {n} requests answered by another model {_over(span, cfg.window_s)}"
            f": {who} (threshold: above {cfg.threshold})"
        )
        return Check(n > cfg.threshold, n, cfg.threshold, cfg.window_s, text)
    if rule == "circuit_open":
        circuit = reading.circuits.get(model)
        if circuit is None:
            return None
        state = circuit["state"]
        # Half-open keeps an open circuit's alert firing: it is still probing, not closed.
        active = state == "open" or (state == "half_open" and firing)
        text = (
            f"model '{model}': circuit breaker {state} for {circuit['since_s']:g} s "
            f"(opened {circuit['opened']} times; {circuit['reason']}); requests go to its "
            f"backup (threshold: open)"
        )
        return Check(active, circuit["since_s"], None, None, text)
    if rule == "model_not_ready":
        why = reading.not_ready.get(model)
        if why is None:
            return Check(False)
        return Check(True, None, None, None, f"model '{model}' is not ready: {why}")
    if rule == "model_quality":
        if reading.quality is None or latest is None or latest.config.quality is None:
            return None
        breach = reading.quality.get(model)
        if breach is None:
            return Check(False)
        return Check(True, breach["value"], breach["limit"], None, breach["description"])
    raise AssertionError(rule)


__all__ = ["ALERTNAMES", "RULES", "Check", "Counts", "Sample", "check"]
