"""Alert rules, evaluated in the background, and what they fire.

Every ``interval_s`` the evaluator reads each model's counters from the native core
(``core_model.statistics()``), the router (``Runtime.failover_report()``), readiness
(``Runtime.not_ready()``) and drift (``ServableModel.drift_report()``), and checks the
rules of ``config.yaml``'s ``alerts:`` section (``config.AlertsConfig``; a model without
one gets the schema defaults):

==================== ==================================================== =============
rule                 fires when                                           default
==================== ==================================================== =============
slo_attainment       answered within slo.latency_ms / answered < thr.     0.99, 300 s
error_rate           failed (INTERNAL) / requests > thr.                  5 %, 300 s
failover_active      requests answered by another model > thr.            0, 60 s
circuit_open         the circuit is open (and until it closes again)      critical
drift                a feature's PSI > drift.psi_threshold (min_rows)     warning
input_rejection_rate refused as invalid input / requests > thr.           5 %, 300 s
model_not_ready      a required model does not serve                      critical
model_quality        a live KPI past its quality.thresholds limit over    warning
                     quality.window labelled requests (min_labelled)
==================== ==================================================== =============

Rates are windowed: each evaluation keeps a sample of the lifetime counters (a ring, at
most ``MAX_SAMPLES``), and a rate is the delta between now and the sample at the start
of the window (the oldest one while the evaluator is younger than the window). The rate
rules need ``min_requests`` requests in the window. A true condition makes an alert
*pending*; held ``for_s`` it *fires*; false again, a firing alert *resolves*. One alert
per rule and model. Fired and resolved alerts are logged (``steadyserve.alerts``) and
handed to the receivers (``notify.py``): Alertmanager gets every firing alert each
evaluation (``endsAt`` = now + ``resolve_timeout_s``) and a resolved one once (``endsAt``
= now); the webhook gets the changes only.

The evaluator runs on its own thread: no evaluation runs on the event loop, and the
request path never sees it (the counters are the core's atomics). ``clock`` (monotonic)
and ``wall`` (epoch seconds) are injectable; tests call ``evaluate()`` themselves.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..config import AlertsConfig, load_model_config
from ..errors import ConfigError
from .alert_rules import (
    ALERTNAMES,
    MAX_LISTED,
    MAX_SAMPLES,
    MIN_RESOLVE_TIMEOUT_S,
    RULES,
    STOP_WAIT_S,
    Check,
    Sample,
    _Reading,
)
from .alert_rules import check as check_rule
from .notify import AlertmanagerSender, WebhookSender, alert_object, rfc3339

log = logging.getLogger("steadyserve.alerts")
_DEFAULTS = AlertsConfig()


@dataclass
class Alert:
    rule: str
    model: str
    labels: dict[str, str]
    for_s: float
    since: float  # clock: when the condition became true
    since_wall: float
    check: Check
    fired_wall: float | None = None  # None: pending

    @property
    def state(self) -> str:
        return "pending" if self.fired_wall is None else "firing"

    def summary(self) -> str:
        return f"{ALERTNAMES[self.rule]}: model '{self.model}'"

    def annotations(self) -> dict[str, str]:
        return {"summary": self.summary(), "description": self.check.description}

    def to_json(self) -> dict[str, Any]:
        c = self.check
        return {
            "alertname": ALERTNAMES[self.rule],
            "rule": self.rule,
            "model": self.model,
            "version": self.labels.get("version"),
            "state": self.state,
            "severity": self.labels["severity"],
            "value": c.value,
            "threshold": c.threshold,
            "window_s": c.window_s,
            "for_s": self.for_s,
            "active_since": rfc3339(self.since_wall),
            "fired_at": None if self.fired_wall is None else rfc3339(self.fired_wall),
            "summary": self.summary(),
            "description": c.description,
            "labels": dict(self.labels),
        }


class AlertEvaluator:
    """Evaluates every rule for every model; owns the alerts, their receivers and their
    metrics (``AlertsCollector``)."""

    def __init__(
        self,
        runtime,
        *,
        interval_s: float = 10.0,
        alertmanager: AlertmanagerSender | None = None,
        webhook: WebhookSender | None = None,
        generator_url: str = "",
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0 seconds, got {interval_s!r}")
        self.runtime = runtime
        self.interval_s = interval_s
        self.alertmanager = alertmanager
        self.webhook = webhook
        self.generator_url = generator_url
        self.resolve_timeout_s = max(4 * interval_s, MIN_RESOLVE_TIMEOUT_S)
        self._clock = clock
        self._wall = wall
        self._ring: list[Sample] = []
        self._alerts: dict[tuple[str, str], Alert] = {}
        self._drift_flagged: dict[tuple[str, str, str, str], float] = {}
        self._seen: set[tuple[str, str]] = set()  # (alertname, model) that ever fired
        self._configs: dict[str, tuple[tuple[int, int], AlertsConfig]] = {}
        self._lock = threading.Lock()  # the state others read: alerts, counts
        self._evaluating = threading.Lock()
        self.evaluations = 0
        self.failures = 0
        self._last_wall: float | None = None
        self._last_s = 0.0  # how long the last evaluation took
        self._cpu_s = 0.0  # CPU time of every evaluation so far
        self._last_failure_log = -float("inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._collector: AlertsCollector | None = None

    @classmethod
    def for_server(cls, runtime, settings, http_port: int) -> AlertEvaluator:
        """The evaluator ``steadyserve serve`` runs, from its ServerSettings."""
        from ..server.ports import hostport

        host = settings.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        return cls(
            runtime,
            interval_s=settings.alert_interval_s,
            alertmanager=AlertmanagerSender(settings.alertmanager_url)
            if settings.alertmanager_url
            else None,
            webhook=WebhookSender(settings.alert_webhook) if settings.alert_webhook else None,
            generator_url=f"http://{hostport(host, http_port)}/v2/alerts",
        )

    # -- lifecycle ------------------------------------------------------------------------

    def receivers(self) -> list:
        return [r for r in (self.alertmanager, self.webhook) if r is not None]

    def start(self) -> None:
        self._collector = AlertsCollector(self)
        self.runtime.metrics.registry.register(self._collector)
        for receiver in self.receivers():
            receiver.start()
        self._thread = threading.Thread(target=self._run, name="steadyserve-alerts", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """No evaluation starts from now on (one running finishes); returns at once."""
        self._stop.set()

    def stop(self) -> None:
        """Stop evaluating and sending (firing alerts expire in Alertmanager at endsAt)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(STOP_WAIT_S)
            if self._thread.is_alive():
                log.warning("alert evaluation still running at shutdown; leaving it")
        for receiver in self.receivers():
            receiver.stop()
        if self._collector is not None:
            self.runtime.metrics.registry.unregister(self._collector)
            self._collector = None

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            try:
                self.evaluate()
            except Exception:  # a rule's trouble must not stop the others next time
                self.failures += 1
                now = time.monotonic()
                if now - self._last_failure_log >= 60.0:
                    self._last_failure_log = now
                    log.exception("alert evaluation failed; trying again next interval")
            next_at += self.interval_s
            next_at = max(next_at, time.monotonic())  # late: skip, don't catch up

    # -- one evaluation -------------------------------------------------------------------

    def evaluate(self) -> None:
        """Read the runtime, check every rule, update alerts, log and notify the changes."""
        with self._evaluating:
            t0, cpu0 = time.perf_counter(), time.thread_time()
            now, wall = self._clock(), self._wall()
            reading = _Reading(now, self._ring, self.runtime, self._unloaded_config)
            names = sorted(set(self.runtime.model_names()) | set(reading.not_ready))
            fired: list[Alert] = []
            resolved: list[tuple[Alert, Check | None]] = []
            drift_events: list = []
            alerts = dict(self._alerts)
            for model in names:
                latest = reading.models.get(model)
                config = reading.config(model)
                for rule in RULES:
                    cfg = getattr(config, rule)
                    key = (rule, model)
                    current = alerts.get(key)
                    check = None
                    if cfg.enabled:
                        if rule == "drift":
                            check = self._drift(model, latest, drift_events)
                        else:
                            firing = current is not None and current.fired_wall is not None
                            check = check_rule(rule, cfg, model, reading, firing)
                    if check is not None and check.active:
                        if current is None:
                            labels = {
                                "alertname": ALERTNAMES[rule],
                                "model": model,
                                "severity": cfg.severity,
                                "service": "steadyserve",
                            }
                            if latest is not None and rule != "model_not_ready":
                                labels["version"] = str(latest.version)
                            current = Alert(rule, model, labels, cfg.for_s, now, wall, check)
                        # A new object each time: report() reads the old one meanwhile.
                        current = dataclasses.replace(current, check=check)
                        if current.fired_wall is None and now - current.since >= cfg.for_s:
                            current.fired_wall = wall
                            fired.append(current)
                        alerts[key] = current
                    elif current is not None:
                        del alerts[key]
                        if current.fired_wall is not None:
                            resolved.append((current, check))
            for key in [k for k in alerts if k[1] not in names]:  # the model is gone
                gone = alerts.pop(key)
                if gone.fired_wall is not None:
                    resolved.append((gone, None))
            self._keep(reading, names)
            with self._lock:
                self._alerts = alerts
                self._seen.update((ALERTNAMES[a.rule], a.model) for a in fired)
                self.evaluations += 1
                self._last_wall = wall
            self._announce(fired, resolved, drift_events)
            self._notify(
                wall, [a for a in alerts.values() if a.fired_wall is not None], fired, resolved
            )
            with self._lock:
                self._last_s = time.perf_counter() - t0
                self._cpu_s += time.thread_time() - cpu0

    def _unloaded_config(self, model: str) -> AlertsConfig:
        """The alerts section of a model that has no loaded version (it failed to load):
        read from its config.yaml (again when the file changes); the defaults when it has
        none or it does not parse (the load's own error says why)."""
        path = Path(self.runtime.repository) / model / "config.yaml"
        try:
            stat = path.stat()
            key = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            return _DEFAULTS
        cached = self._configs.get(model)
        if cached is None or cached[0] != key:
            try:
                config = load_model_config(path).alerts
            except ConfigError:
                config = _DEFAULTS
            cached = self._configs[model] = (key, config)
        return cached[1]

    def _keep(self, reading: _Reading, names: list[str]) -> None:
        """Add the reading's sample to the ring (spaced to span the longest window) and
        forget what no window reaches any more (keeping one sample at or before the
        longest window's start)."""
        longest = 0.0
        for model in names:
            config = reading.config(model)
            for rule in ("slo_attainment", "error_rate", "failover_active", "input_rejection_rate"):
                longest = max(longest, getattr(config, rule).window_s)
        sample = reading.now
        ring = self._ring
        if not ring or sample.t - ring[-1].t >= longest / MAX_SAMPLES:
            ring.append(sample)
        start = sample.t - longest
        drop = 0
        while drop + 1 < len(ring) and ring[drop + 1].t <= start:
            drop += 1
        del ring[:drop]

    def _drift(self, model: str, latest, events: list) -> Check | None:
        """Flagged features of the latest version; their changes go to ``events``."""
        if latest is None:
            return None
        report = latest.drift_report()
        threshold = report["psi_threshold"]
        flagged: dict[tuple[str, str, str, str], float] = {}
        for direction in ("inputs", "outputs"):
            for tensor, section in report[direction].items():
                psi = {f["feature"]: f["psi"] for f in section["features"]}
                for feature in section["flagged"]:
                    flagged[(model, direction[:-1], tensor, feature)] = psi[feature]
        old = {k: v for k, v in self._drift_flagged.items() if k[0] == model}
        for key, value in flagged.items():
            if key not in old:
                events.append(("drift flagged", key, value, threshold, latest.version))
        for key, value in old.items():
            if key not in flagged:
                events.append(("drift cleared", key, value, threshold, latest.version))
                del self._drift_flagged[key]
        self._drift_flagged.update(flagged)
        if not flagged:
            return Check(False, None, threshold)
        worst = max(flagged.values())
        by_tensor: dict[tuple[str, str], list[tuple[float, str]]] = {}
        for (_, direction, tensor, feature), value in flagged.items():
            by_tensor.setdefault((direction, tensor), []).append((value, feature))
        parts = []
        for (direction, tensor), features in sorted(by_tensor.items()):
            features.sort(key=lambda vf: (-vf[0], vf[1]))  # the worst first
            shown = ", ".join(f"{f} ({v:.3g})" for v, f in features[:MAX_LISTED])
            if len(features) > MAX_LISTED:
                shown += f" and {len(features) - MAX_LISTED} more"
            parts.append(f"{direction} {tensor}: {shown}")
        listing = "; ".join(parts)
        text = (
            f"model '{model}' version {latest.version}: PSI above {threshold:g} on {listing} "
            f"(over the drift window; threshold: psi_threshold {threshold:g})"
        )
        return Check(True, worst, threshold, None, text)

    def _announce(self, fired: list[Alert], resolved: list, drift_events: list) -> None:
        for a in fired:
            log.warning(
                "alert fired",
                extra={
                    "alertname": ALERTNAMES[a.rule],
                    "model": a.model,
                    "severity": a.labels["severity"],
                    "value": a.check.value,
                    "threshold": a.check.threshold,
                    "window_s": a.check.window_s,
                    "description": a.check.description,
                },
            )
        for a, now in resolved:  # the value now (None: no data), the firing one's threshold
            log.info(
                "alert resolved",
                extra={
                    "alertname": ALERTNAMES[a.rule],
                    "model": a.model,
                    "value": None if now is None else now.value,
                    "threshold": a.check.threshold,
                },
            )
        for what, (model, direction, tensor, feature), value, threshold, version in drift_events:
            (log.warning if what == "drift flagged" else log.info)(
                what,
                extra={
                    "model": model,
                    "version": version,
                    direction: tensor,
                    "feature": feature,
                    "psi": value,
                    "psi_threshold": threshold,
                },
            )

    def _notify(self, wall: float, firing: list[Alert], fired: list, resolved: list) -> None:
        def obj(a: Alert, ends: float) -> dict:
            starts = a.fired_wall if a.fired_wall is not None else a.since_wall
            return alert_object(a.labels, a.annotations(), starts, ends, self.generator_url)

        if self.alertmanager is not None:
            ends = wall + self.resolve_timeout_s
            batch = [obj(a, ends) for a in firing] + [obj(a, wall) for a, _ in resolved]
            self.alertmanager.submit(batch)
        if self.webhook is not None:
            ends = wall + self.resolve_timeout_s
            self.webhook.submit("firing", [obj(a, ends) for a in fired])
            self.webhook.submit("resolved", [obj(a, wall) for a, _ in resolved])

    # -- reading --------------------------------------------------------------------------

    def alerts(self) -> list[Alert]:
        with self._lock:
            return list(self._alerts.values())

    def report(self) -> dict[str, Any]:
        """GET /v2/alerts: what fires and what is pending, and how the receivers fare."""
        with self._lock:
            alerts = [a.to_json() for a in self._alerts.values()]
            evaluations, failures, last = self.evaluations, self.failures, self._last_wall
            last_ms, cpu_s = round(self._last_s * 1e3, 3), round(self._cpu_s, 6)
        alerts.sort(key=lambda a: (a["state"] != "firing", a["alertname"], a["model"]))
        return {
            "alerts": alerts,
            "firing": sum(a["state"] == "firing" for a in alerts),
            "pending": sum(a["state"] == "pending" for a in alerts),
            "interval_s": self.interval_s,
            "evaluations": evaluations,
            "evaluation_failures": failures,
            "last_evaluation": None if last is None else rfc3339(last),
            "last_evaluation_ms": last_ms,
            "evaluation_cpu_s": cpu_s,
            "receivers": [r.stats() for r in self.receivers()],
        }

    def firing_series(self) -> tuple[dict[tuple[str, str], int], list]:
        with self._lock:
            series = dict.fromkeys(self._seen, 0)
            for a in self._alerts.values():
                if a.fired_wall is not None:
                    series[(ALERTNAMES[a.rule], a.model)] = 1
            return series, (self.evaluations, self.failures)


class AlertsCollector:
    """``steadyserve_alerts_firing{alertname,model}`` (1 firing, 0 once it resolved),
    ``steadyserve_alert_notifications_total{receiver,outcome}`` and
    ``steadyserve_alert_evaluations_total{outcome}``, read at scrape time."""

    def __init__(self, evaluator: AlertEvaluator):
        self._evaluator = evaluator

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        series, (evaluations, failures) = self._evaluator.firing_series()
        firing = GaugeMetricFamily(
            "steadyserve_alerts_firing",
            "1 while the alert fires (0 once it resolved), by alert name and model.",
            labels=["alertname", "model"],
        )
        for (alertname, model), value in sorted(series.items()):
            firing.add_metric([alertname, model], value)
        yield firing
        sent = CounterMetricFamily(
            "steadyserve_alert_notifications",
            "Alerts handed to a receiver, by outcome: sent (delivered), failed (in a POST that "
            "failed; retried with back-off), dropped (given up: the queue was full or the "
            "retries ran out).",
            labels=["receiver", "outcome"],
        )
        for receiver in self._evaluator.receivers():
            stats = receiver.stats()
            for outcome in ("sent", "failed", "dropped"):
                sent.add_metric([receiver.receiver, outcome], stats[outcome])
        yield sent
        runs = CounterMetricFamily(
            "steadyserve_alert_evaluations",
            "Evaluations of the alert rules, by outcome (ok, failed: logged).",
            labels=["outcome"],
        )
        runs.add_metric(["ok"], evaluations)
        runs.add_metric(["failed"], failures)
        yield runs


__all__ = ["ALERTNAMES", "RULES", "Alert", "AlertEvaluator", "AlertsCollector", "Check"]
