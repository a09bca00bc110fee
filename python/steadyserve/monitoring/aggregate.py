"""Figures of several worker processes merged into the figures of one server.

With ``steadyserve serve --workers N`` every worker keeps its own counts (the native
core's atomics, its circuit breakers, its drift windows), and a scrape or a report
reaches whichever worker the kernel gave the connection. The worker that answers asks
its siblings for their own figures (``server/siblings.py``) and merges them here, so
that /metrics, ModelStatistics and the drift and failover reports describe the whole
server. Pure functions over plain data: no I/O, no runtime.

Why not prometheus-client's multiprocess mode: it only aggregates the client
library's own Counter / Gauge / Histogram objects through files written on every
update, while most of our figures are read at scrape time by custom collectors
(``CoreCollector``, ``SloCollector``, ``DriftCollector``, ``FrontendCollector``) from
counters that live in the native core, and multiprocess mode does not support custom
collectors. So each worker collects its registry as it always does, sends the
families as plain data (``plain_families``: JSON, since parsing the text exposition
with ``prometheus_client.parser`` costs ~20x more; ``merge_expositions`` takes text
too), and the merging worker combines them sample by sample with the rules of
``RULES`` and renders one exposition.

How each family merges (``RULES``; a family not named there merges by its type,
``BY_TYPE``):

===================================  ==========  =============================================
family                               rule        why
===================================  ==========  =============================================
counters, histograms (any)           sum         counts of events: the server's is the sum
queue_depth, executing_batches,      sum         amounts held right now: requests waiting,
grpc_connections, grpc_streams,                  batches running, connections and streams
grpc_connection_memory_bytes                     open, bytes held
model_ready                          min         ready only if every worker is
circuit_state                        max         the worst breaker (0 closed .. 2 open); the
                                                 failover report names each worker's
slo_batch_cap                        min         the tightest cap any worker applies now
batch_execution_estimate_seconds     max         the most pessimistic latency model
slo_latency_seconds                  max         configuration: the same in every worker
shadow_agreement_ratio               per_worker  a ratio of one worker's mirror: a sum is
                                                 meaningless, a mean hides a bad worker
event_loop_lag_seconds               per_worker  one worker's event loop; summed buckets
                                                 would hide the one worker that stalls
feature_psi, drift_worst_psi,        recompute   ratios of windows: recomputed from the summed
feature_missing_ratio,                           raw counts (never an average of PSIs); the
feature_out_of_range_ratio,                      caller passes them as ``replacements``;
drift_window_rows                                without them, per_worker
``*_created`` (of a family above)    max         the latest (re)start of any summed part; a
                                                 per_worker family's stay per worker
other gauges, summaries, untyped     per_worker  not known to be amounts: never a wrong sum
===================================  ==========  =============================================

``per_worker`` keeps each worker's samples with a ``worker`` label (its index).
The merged exposition ends with ``steadyserve_workers{state="answered"|"missing"}``:
how many workers' figures it holds, and how many did not answer (left out).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from ..serving.statistics import BatchDuration, Duration, ModelStatistics

SUM, MIN, MAX, PER_WORKER, RECOMPUTE = "sum", "min", "max", "per_worker", "recompute"

RULES: dict[str, str] = {
    # amounts held right now
    "steadyserve_queue_depth": SUM,
    "steadyserve_executing_batches": SUM,
    "steadyserve_grpc_connections": SUM,
    "steadyserve_grpc_streams": SUM,
    "steadyserve_grpc_connection_memory_bytes": SUM,
    # states: the worst worker
    "steadyserve_model_ready": MIN,
    "steadyserve_circuit_state": MAX,
    "steadyserve_slo_batch_cap": MIN,
    "steadyserve_batch_execution_estimate_seconds": MAX,
    "steadyserve_slo_latency_seconds": MAX,
    # one worker's own behaviour
    "steadyserve_shadow_agreement_ratio": PER_WORKER,
    "steadyserve_event_loop_lag_seconds": PER_WORKER,
    # ratios of the drift windows: recomputed from the summed counts by the caller
    "steadyserve_feature_psi": RECOMPUTE,
    "steadyserve_drift_worst_psi": RECOMPUTE,
    "steadyserve_feature_missing_ratio": RECOMPUTE,
    "steadyserve_feature_out_of_range_ratio": RECOMPUTE,
    "steadyserve_drift_window_rows": RECOMPUTE,
}
BY_TYPE: dict[str, str] = {"counter": SUM, "histogram": SUM}  # anything else: PER_WORKER

WORKER_LABEL = "worker"
WORKERS_FAMILY = "steadyserve_workers"


def rule_of(family: str, kind: str, kinds: Mapping[str, str] | None = None) -> str:
    """How samples of ``family`` (of type ``kind``) merge; ``kinds``: every family of
    the exposition and its type, to recognise a parsed ``X_created`` gauge as X's
    creation times."""
    kinds = kinds or {}
    base = family.removesuffix("_created")
    if base != family and kind == "gauge" and (base in kinds or base in RULES):
        return _created_rule(rule_of(base, kinds.get(base, "")))
    rule = RULES.get(family) or BY_TYPE.get(kind, PER_WORKER)
    return PER_WORKER if rule == RECOMPUTE else rule


def _created_rule(rule: str) -> str:
    return PER_WORKER if rule == PER_WORKER else MAX


def workers_family(answered: int, missing: int) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        WORKERS_FAMILY,
        "Worker processes whose figures this scrape holds (answered) and those that did "
        "not answer in time and are left out (missing).",
        labels=["state"],
    )
    family.add_metric(["answered"], answered)
    family.add_metric(["missing"], missing)
    return family


class _Families:
    """What ``generate_latest`` needs: something with ``collect()``."""

    def __init__(self, families: list[Metric]):
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def render(families: Iterable[Metric]) -> str:
    """The text exposition of ``families`` (HELP and TYPE once per family)."""
    return generate_latest(_Families(list(families))).decode()


def plain_families(families: Iterable[Metric], *, skip_recomputed: bool = False) -> list:
    """Families as JSON-able plain data, ``[name, help, type, [[sample, labels, value],
    ...]]`` each: what a worker sends its sibling (parsing the text exposition costs
    ~20x more than JSON). ``skip_recomputed`` leaves out the families the merging
    worker recomputes (``RECOMPUTE``)."""
    return [
        [f.name, f.documentation, f.type, [[s.name, s.labels, s.value] for s in f.samples]]
        for f in families
        if not (skip_recomputed and RULES.get(f.name) == RECOMPUTE)
    ]


def families_of_plain(plain: Iterable) -> list[Metric]:
    out = []
    for name, documentation, kind, samples in plain:
        family = Metric(name, documentation, kind)
        family.samples = [Sample(n, labels, value) for n, labels, value in samples]
        out.append(family)
    return out


def merge_expositions(
    texts: Mapping[int, str],
    *,
    missing: Iterable[int] = (),
    replacements: Iterable[Metric] = (),
) -> str:
    """``merge_families`` of text expositions (worker index -> its /metrics text),
    rendered as text."""
    parsed = {i: list(text_string_to_metric_families(text)) for i, text in texts.items()}
    return render(merge_families(parsed, missing=missing, replacements=replacements))


def merge_families(
    workers: Mapping[int, Iterable[Metric]],
    *,
    missing: Iterable[int] = (),
    replacements: Iterable[Metric] = (),
) -> list[Metric]:
    """The families of the whole server from each worker's (worker index -> its
    families; families and samples come out in worker order, whoever asks), by the
    rules of ``RULES``, then ``steadyserve_workers``. ``replacements`` are families the
    caller computed for the whole server (the drift ratios): they take the place of
    the workers' families of the same name."""
    replaced = {family.name: family for family in replacements}
    workers = {i: list(workers[i]) for i in sorted(workers)}
    kinds = {f.name: f.type for families in workers.values() for f in families}
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple, Sample]] = {}  # family -> (sample name, labels) -> sample
    for index, families in workers.items():
        for family in families:
            if family.name in replaced:
                merged.setdefault(family.name, replaced[family.name])
                continue
            if family.name == WORKERS_FAMILY:
                continue
            if family.name not in merged:
                merged[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            rule = rule_of(family.name, family.type, kinds)
            into = values[family.name]
            for sample in family.samples:
                # A collected (not parsed) counter or histogram holds its _created samples.
                how = _created_rule(rule) if sample.name.endswith("_created") else rule
                labels = dict(sample.labels)
                if how == PER_WORKER:
                    labels[WORKER_LABEL] = str(index)
                key = (sample.name, tuple(sorted(labels.items())))
                seen = into.get(key)
                if seen is None:
                    into[key] = Sample(sample.name, labels, sample.value, sample.timestamp)
                else:
                    into[key] = seen._replace(value=_combine(how, seen.value, sample.value))
    for name, family in replaced.items():
        merged.setdefault(name, family)
    for name, samples in values.items():
        merged[name].samples = list(samples.values())
    return [*merged.values(), workers_family(len(workers), len(list(missing)))]


def _combine(rule: str, a: float, b: float) -> float:
    if rule == MIN:
        return min(a, b)
    if rule == MAX:
        return max(a, b)
    return a + b  # SUM (PER_WORKER samples never meet: their labels differ)


# -- ModelStatistics ---------------------------------------------------------------------

# Fields of ModelStatistics that are not counts: the merged value is the latest.
LATEST_FIELDS = ("last_inference_ms",)


def statistics_dict(stats: ModelStatistics) -> dict[str, Any]:
    """A ModelStatistics as JSON-able plain data (batch sizes as string keys)."""
    plain = dataclasses.asdict(stats)
    plain["batch_stats"] = {str(size): b for size, b in plain["batch_stats"].items()}
    return plain


def merge_statistics(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The sum of ``statistics_dict`` forms, field by field (counts and ns summed,
    ``last_inference_ms`` the latest)."""
    merged: dict[str, Any] = {}
    for part in parts:
        _add_into(merged, part)
    return merged


def _add_into(into: dict, part: Mapping[str, Any]) -> None:
    for key, value in part.items():
        key = str(key)
        if isinstance(value, Mapping):
            _add_into(into.setdefault(key, {}), value)
        elif key in LATEST_FIELDS:
            into[key] = max(into.get(key, 0), value)
        else:
            into[key] = into.get(key, 0) + value


def statistics_from_dict(plain: Mapping[str, Any]) -> ModelStatistics:
    """The ModelStatistics of a ``statistics_dict`` form (or a merge of several)."""
    durations = {
        name: Duration(**plain.get(name, {}))
        for name in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
    }
    return ModelStatistics(
        inference_count=int(plain.get("inference_count", 0)),
        execution_count=int(plain.get("execution_count", 0)),
        last_inference_ms=int(plain.get("last_inference_ms", 0)),
        batch_stats={
            int(size): BatchDuration(**b) for size, b in plain.get("batch_stats", {}).items()
        },
        refused={k: int(v) for k, v in plain.get("refused", {}).items()},
        slo_missed=int(plain.get("slo_missed", 0)),
        **durations,
    )


# -- drift windows -----------------------------------------------------------------------


def snapshot_dict(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """A transform's or monitor's ``snapshot()`` as JSON-able plain data."""
    return {
        "rows": int(snapshot["rows"]),
        "counts": np.asarray(snapshot["counts"]).tolist(),
        "missing": np.asarray(snapshot["missing"]).tolist(),
        "out_of_range": np.asarray(snapshot["out_of_range"]).tolist(),
    }


def sum_snapshots(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One window of the raw counts of several (rows, counts per feature and bin,
    missing, out_of_range: each summed). PSI and the rates are then computed from the
    sum (``features.drift.drift_section``), never averaged. Raises ValueError when
    the windows' shapes differ (different features or bins)."""
    snapshots = list(snapshots)
    if not snapshots:
        raise ValueError("no drift window to sum")
    total: dict[str, Any] = {"rows": 0}
    for snap in snapshots:
        total["rows"] += int(snap["rows"])
        for key in ("counts", "missing", "out_of_range"):
            part = np.asarray(snap[key], dtype=np.uint64)
            if key not in total:
                total[key] = part.copy()
            elif total[key].shape != part.shape:
                raise ValueError(
                    f"drift windows differ in shape ({key}: {total[key].shape} vs {part.shape})"
                )
            else:
                total[key] += part
    return total


# -- failover report ---------------------------------------------------------------------

CIRCUIT_ORDER = {"closed": 0, "half_open": 1, "open": 2}


def workers_field(answered: Iterable[int], missing: Iterable[int]) -> dict[str, list[int]]:
    """The ``workers`` field of a merged JSON report: whose figures it holds, and who
    did not answer in time (left out)."""
    return {"answered": sorted(answered), "missing": sorted(missing)}


def merge_failover(reports: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """One failover report from each worker's (worker index -> ``Runtime.failover_report``).

    Failovers and skips are summed per (model, answered_by) and (model, reason). The
    workers' circuit breakers are separate: each circuit lists every worker's state
    under ``workers`` and, at its top, the worst one's state, reason and age, with
    ``opened`` summed."""
    circuits: dict[str, dict[str, Any]] = {}
    backups: dict[str, Any] = {}
    failovers: dict[tuple[str, str], int] = {}
    skipped: dict[tuple[str, str], int] = {}
    for index in sorted(reports):
        report = reports[index]
        backups.update({k: v for k, v in report.get("backups", {}).items() if k not in backups})
        for name, circuit in report.get("circuits", {}).items():
            entry = circuits.setdefault(name, {"opened": 0, "workers": {}})
            entry["workers"][str(index)] = dict(circuit)
            entry["opened"] += int(circuit.get("opened", 0))
        for f in report.get("failovers", []):
            key = (f["model"], f["answered_by"])
            failovers[key] = failovers.get(key, 0) + int(f["count"])
        for s in report.get("skipped", []):
            key = (s["model"], s["reason"])
            skipped[key] = skipped.get(key, 0) + int(s["count"])
    for entry in circuits.values():
        worst = max(
            entry["workers"].values(), key=lambda c: CIRCUIT_ORDER.get(c.get("state"), 0)
        )  # max keeps the first of equals: the lowest worker index
        entry.update(
            {
                "state": worst.get("state"),
                "reason": worst.get("reason"),
                "since_s": worst.get("since_s"),
            }
        )
    return {
        "circuits": {
            name: {k: entry[k] for k in ("state", "opened", "reason", "since_s", "workers")}
            for name, entry in sorted(circuits.items())
        },
        "backups": backups,
        "failovers": [
            {"model": m, "answered_by": a, "count": n} for (m, a), n in sorted(failovers.items())
        ],
        "skipped": [{"model": m, "reason": r, "count": n} for (m, r), n in sorted(skipped.items())],
    }


__all__ = [
    "RULES",
    "families_of_plain",
    "merge_expositions",
    "merge_families",
    "merge_failover",
    "merge_statistics",
    "plain_families",
    "render",
    "rule_of",
    "snapshot_dict",
    "statistics_dict",
    "statistics_from_dict",
    "sum_snapshots",
    "workers_field",
]
