"""Prometheus metrics of a Runtime.

Each Runtime owns a CollectorRegistry (so several runtimes, e.g. in tests, never
collide in the global one). Request and batch figures live in the native core
(atomics, counted where they happen) and are read at scrape time by
``CoreCollector``: nothing is counted twice, and the request path never touches
a Python metric. The families kept here change on the control plane only.

Names follow Prometheus conventions: counters end in ``_total`` (added by the
client library), durations are ``_seconds`` histograms, labels ``model`` and
``version``.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

log = logging.getLogger("steadyserve.monitoring.metrics")

# Request latency on a serving path runs from ~100 µs (in-process) to seconds.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The metric families; one instance per Runtime."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ["model", "version"]
        r = self.registry
        self.model_ready = Gauge(
            "steadyserve_model_ready",
            "1 when the model version is ready to serve.",
            labels,
            registry=r,
        )

        self.circuit_state = Gauge(
            "steadyserve_circuit_state",
            "Circuit breaker of a model: 0 closed, 1 half-open, 2 open.",
            ["model"],
            registry=r,
        )
        self.circuit_transitions = Counter(
            "steadyserve_circuit_transitions",
            "Circuit breaker state changes, by the state entered.",
            ["model", "state"],
            registry=r,
        )

        self.event_loop_lag = Histogram(
            "steadyserve_event_loop_lag_seconds",
            "How late the server's event loop ran a timer (sampled every 50 ms): how long "
            "ready work waits for the server's Python thread. High lag means requests "
            "queue before any model sees them.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

        # Shadow traffic (lifecycle.shadow.ShadowMirror); version is the shadow version.
        self.shadow_rows = Counter(
            "steadyserve_shadow_rows",
            "Rows of mirrored batches compared with the live answer, by whether the shadow "
            "version agreed (result=agree|disagree).",
            [*labels, "result"],
            registry=r,
        )
        self.shadow_batches = Counter(
            "steadyserve_shadow_batches",
            "Live batches sampled for the shadow version, by outcome (compared, failed: the "
            "shadow version raised, dropped_busy: the live model had requests waiting, "
            "dropped_queue_full: too many mirrored batches pending, discarded: pending when "
            "the mirror stopped).",
            [*labels, "outcome"],
            registry=r,
        )
        self.shadow_agreement = Gauge(
            "steadyserve_shadow_agreement_ratio",
            "Share of compared rows on which the shadow version agreed with the live one, "
            "while the mirror runs.",
            labels,
            registry=r,
        )

        self.model_loads = Counter(
            "steadyserve_model_loads",
            "Loads and reloads of a model, by outcome: loaded (serving), failed (a file, "
            "the config, the warm-up or the backup chain was wrong; what served goes on), "
            "rejected (the evaluation gate refused the candidate).",
            ["model", "outcome"],
            registry=r,
        )
        self.model_load_seconds = Histogram(
            "steadyserve_model_load_duration_seconds",
            "Time from a load request to the new version serving: sessions loaded and "
            "warmed up, gate passed, swapped in.",
            ["model"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=r,
        )
        self.model_rollbacks = Counter(
            "steadyserve_model_rollbacks",
            "Rollbacks to the version a promotion replaced, by trigger: command, "
            "probation_failures (failed batches in probation), probation_circuit (its "
            "circuit opened in probation), quality (a live KPI past its threshold).",
            ["model", "trigger"],
            registry=r,
        )

    def circuit_changed(self, model: str, state: str) -> None:
        self.circuit_state.labels(model).set({"closed": 0, "half_open": 1, "open": 2}[state])
        self.circuit_transitions.labels(model, state).inc()


# Per collector class, the one collector of each registry (runtimes sharing a registry
# share it).
_REGISTERED: dict[type, weakref.WeakKeyDictionary] = {}


class RuntimeCollector:
    """Base of the scrape-time collectors: the runtimes registered with it, held weakly
    (a closed and dropped Runtime simply disappears from the metrics)."""

    @classmethod
    def register(cls, runtime) -> RuntimeCollector:
        """Export this collector's figures of ``runtime``'s models in
        ``runtime.metrics.registry`` (one collector of each class per registry)."""
        per_registry = _REGISTERED.setdefault(cls, weakref.WeakKeyDictionary())
        registry = runtime.metrics.registry
        collector = per_registry.get(registry)
        if collector is None:
            collector = cls()
            registry.register(collector)
            per_registry[registry] = collector
        collector.add(runtime)
        return collector

    def __init__(self) -> None:
        self._runtimes: list[weakref.ref] = []

    def add(self, runtime) -> None:
        self._runtimes = [r for r in self._runtimes if r() is not None and r() is not runtime]
        self._runtimes.append(weakref.ref(runtime))

    def describe(self) -> list[Metric]:
        return []  # families depend on the models loaded; don't collect() at registration

    def models(self) -> Iterator:
        """Every model of every live runtime."""
        for runtime_ref in list(self._runtimes):
            runtime = runtime_ref()
            if runtime is not None:
                yield from runtime.models()


class SloCollector(RuntimeCollector):
    """SLO figures read from the models at scrape time (nothing is counted twice on the
    request path: the core and the models keep the counts, this turns them into metrics).

    - ``steadyserve_refused_requests_total{model,version,reason}``: requests not executed,
      by reason (``ServableModel.refusals()``: admission, deadline_passed,
      expired_in_queue, queue_full, shed_for_priority, cancelled, invalid_input, stopping).
    - ``steadyserve_batch_execution_estimate_seconds{model,version,batch_size}``: the
      latency model's execution estimate (a high quantile of recent batches) at the
      warm-up batch sizes; what admission control and deadline-aware batching use.
    - ``steadyserve_slo_batch_cap{model,version}``: the largest batch formed now (less
      than max_batch_size when the SLO caps it).
    - ``steadyserve_slo_latency_seconds{model,version}``: the model's slo.latency_ms.
    - ``steadyserve_executing_batches{model,version}``: batches executing now.

    Runtimes are held weakly: a closed and dropped Runtime disappears from the metrics.
    """

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        refused = CounterMetricFamily(
            "steadyserve_refused_requests",
            "Requests not executed, by reason (admission, deadline_passed, expired_in_queue, "
            "queue_full, shed_for_priority, cancelled, invalid_input, stopping).",
            labels=[*labels, "reason"],
        )
        estimate = GaugeMetricFamily(
            "steadyserve_batch_execution_estimate_seconds",
            "The latency model's execution estimate for a batch of batch_size rows.",
            labels=[*labels, "batch_size"],
        )
        cap = GaugeMetricFamily(
            "steadyserve_slo_batch_cap",
            "Largest batch the batcher forms now (below max_batch_size when the SLO caps it).",
            labels=labels,
        )
        slo = GaugeMetricFamily(
            "steadyserve_slo_latency_seconds",
            "The model's latency SLO (slo.latency_ms).",
            labels=labels,
        )
        executing = GaugeMetricFamily(
            "steadyserve_executing_batches", "Batches executing now.", labels=labels
        )
        for model in self.models():
            try:
                key = [model.name, str(model.version)]
                for reason, count in model.refusals().items():
                    refused.add_metric([*key, reason], count)
                report = model.slo_report()
                for rows, ms in sorted(report["execution_estimate_ms"].items()):
                    estimate.add_metric([*key, str(rows)], ms / 1000.0)
                cap.add_metric(key, report["batch_cap"])
                if report["latency_ms"]:
                    slo.add_metric(key, report["latency_ms"] / 1000.0)
                executing.add_metric(key, model.batcher_stats()["executing"])
            except Exception:  # one model's trouble must not take /metrics down
                log.exception("SLO figures failed", extra={"model": model.name})
        yield from (refused, estimate, cap, slo, executing)


# Status code numbers -> the outcome label of steadyserve_requests_total.
OUTCOMES = {
    0: "success",
    1: "cancelled",
    3: "invalid_argument",
    4: "deadline_exceeded",
    5: "not_found",
    8: "resource_exhausted",
    13: "internal",
    14: "unavailable",
}


def _histogram(name: str, doc: str, labels, key, raw, scale: float) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    bounds, counts, total = raw
    cumulative, buckets = 0, []
    for bound, count in zip(bounds, counts, strict=False):
        cumulative += count
        buckets.append((repr(bound * scale), cumulative))
    cumulative += counts[-1]
    buckets.append(("+Inf", cumulative))
    family.add_metric(key, buckets, total * scale)
    return family


class CoreCollector(RuntimeCollector):
    """Request and batch figures, read from the native core at scrape time:
    ``steadyserve_requests_total{outcome}``, request / queue / compute duration and
    batch size histograms, queue depth, SLO met/missed, failovers and their triggers.
    A model's failures include requests its backup then answered (those are also in
    ``steadyserve_failovers_total`` and the answering model's success count)."""

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        requests = CounterMetricFamily(
            "steadyserve_requests",
            "Inference requests by outcome (success or the gRPC status code name, lower case).",
            labels=[*labels, "outcome"],
        )
        depth = GaugeMetricFamily(
            "steadyserve_queue_depth", "Requests waiting in the batcher queue.", labels=labels
        )
        slo = CounterMetricFamily(
            "steadyserve_slo_requests",
            "Answered requests by whether they met the model's latency SLO (result=met|missed).",
            labels=[*labels, "result"],
        )
        families: dict[str, list[HistogramMetricFamily]] = {
            "request": [],
            "queue": [],
            "compute": [],
            "batch_size": [],
        }
        docs = {
            "request": (
                "steadyserve_request_duration_seconds",
                "Time from a request reaching the model to its answer (queue + compute).",
                1e-9,
            ),
            "queue": (
                "steadyserve_queue_duration_seconds",
                "Time a request waited in the batcher queue before its batch formed.",
                1e-9,
            ),
            "compute": (
                "steadyserve_compute_duration_seconds",
                "ONNX Runtime execution time per batch.",
                1e-9,
            ),
            "batch_size": ("steadyserve_batch_size", "Rows per executed batch.", 1.0),
        }
        failovers = CounterMetricFamily(
            "steadyserve_failovers",
            "Requests answered by a backup (or the default output) instead of the model asked.",
            labels=["model", "answered_by"],
        )
        triggers = CounterMetricFamily(
            "steadyserve_failover_triggers",
            "Times a model was passed over for the next link of its chain, by reason "
            "(execution_error, execution_timeout, bad_output, not_ready, circuit_open, deadline, "
            "or the error class of a refusal).",
            labels=["model", "reason"],
        )
        for runtime_ref in list(self._runtimes):
            runtime = runtime_ref()
            if runtime is None:
                continue
            for primary, answered_by, count in runtime.core.failovers():
                failovers.add_metric([primary, answered_by], count)
            for model, reason, count in runtime.core.skips():
                triggers.add_metric([model, reason], count)
        for model in self.models():
            try:
                key = [model.name, str(model.version)]
                core = model.core_model
                raw = core.statistics()
                for code, count in sorted(raw["outcomes"].items()):
                    requests.add_metric([*key, OUTCOMES.get(code, str(code))], count)
                depth.add_metric(key, core.queued_requests)
                if model.slo_latency_ms:
                    slo.add_metric([*key, "met"], raw["slo_met"])
                    slo.add_metric([*key, "missed"], raw["slo_missed"])
                for what, hist in core.histograms().items():
                    name, doc, scale = docs[what]
                    families[what].append(_histogram(name, doc, labels, key, hist, scale))
            except Exception:  # one model's trouble must not take /metrics down
                log.exception("core figures failed", extra={"model": model.name})
        yield requests
        yield depth
        yield slo
        for parts in families.values():
            if not parts:
                continue
            merged = parts[0]
            for extra in parts[1:]:
                merged.samples.extend(extra.samples)
            yield merged
        yield failovers
        yield triggers


class FrontendCollector:
    """Figures of the native gRPC frontend (``_core.GrpcFrontend.stats()``), read at
    scrape time: connections and streams open, refusals at the door, protocol errors
    the server sent, and the memory its connections hold."""

    # stats() key -> (metric name, help, counter?)
    FAMILIES = {
        "connections_open": ("steadyserve_grpc_connections", "HTTP/2 connections open", False),
        "connections_accepted": (
            "steadyserve_grpc_connections_accepted",
            "HTTP/2 connections accepted",
            True,
        ),
        "connections_refused": (
            "steadyserve_grpc_connections_refused",
            "connections refused over --max-connections (GOAWAY naming the limit)",
            True,
        ),
        "streams_open": ("steadyserve_grpc_streams", "gRPC calls open", False),
        "native_requests": (
            "steadyserve_grpc_native_requests",
            "ModelInfer calls and ModelStreamInfer messages handled natively",
            True,
        ),
        "bridged_calls": (
            "steadyserve_grpc_bridged_calls",
            "calls of other methods, bridged to the Python handlers",
            True,
        ),
        "streams_refused": (
            "steadyserve_grpc_streams_refused",
            "streams refused (REFUSED_STREAM: over max concurrent streams, or after GOAWAY)",
            True,
        ),
        "streams_reset_by_peer": (
            "steadyserve_grpc_streams_reset_by_peer",
            "streams the client reset (RST_STREAM) before the answer",
            True,
        ),
        "protocol_errors": (
            "steadyserve_grpc_protocol_errors",
            "HTTP/2 stream and connection errors sent to misbehaving clients",
            True,
        ),
        "connection_memory_bytes": (
            "steadyserve_grpc_connection_memory_bytes",
            "bytes the open connections hold (buffers, streams, HPACK tables)",
            False,
        ),
    }

    def __init__(self, stats) -> None:
        self._stats = stats  # a callable: the frontend's stats() dict

    @classmethod
    def register(cls, registry: CollectorRegistry, stats) -> FrontendCollector:
        collector = cls(stats)
        registry.register(collector)
        return collector

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self._stats()
        except Exception:  # a stopped frontend must not take /metrics down
            log.exception("frontend figures failed")
            return
        for key, (name, doc, counter) in self.FAMILIES.items():
            family = CounterMetricFamily if counter else GaugeMetricFamily
            yield family(name, doc, value=int(stats.get(key, 0)))
