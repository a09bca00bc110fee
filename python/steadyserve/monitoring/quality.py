"""Prometheus metrics of live model quality, read from a ``QualityMonitor`` at scrape
time: the KPIs of each window (model asked for, model that answered, version), how many
labelled requests they are over, the primary's threshold breaches and the feedback
labels' outcomes. Nothing is counted here: the monitor owns the figures, and its cached
KPI values mean a scrape scores only the windows that changed since the last one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..config import QUALITY_KPIS

log = logging.getLogger("steadyserve.monitoring.quality")

WINDOW_LABELS = ["model", "answered_by", "version"]
KPI_HELP = {
    "accuracy": "share of labelled rows whose predicted class is the label",
    "precision": "precision (of class 1 with classes 0/1, else the macro average)",
    "recall": "recall (of class 1 with classes 0/1, else the macro average)",
    "f1": "F1 score (of class 1 with classes 0/1, else the macro average)",
    "mae": "mean absolute error",
    "rmse": "root mean squared error",
}


class QualityCollector:
    def __init__(self, monitor) -> None:
        self._monitor = monitor  # a predictions.feedback.QualityMonitor

    def describe(self) -> list[Metric]:
        return []  # read at scrape time; nothing to describe up front

    def collect(self) -> Iterator[Metric]:
        try:
            windows = self._monitor.kpis()
            counters = self._monitor.counters()
        except Exception:  # the monitor's trouble must not take /metrics down
            log.exception("quality figures failed")
            return
        kpis = {
            kpi: GaugeMetricFamily(
                f"steadyserve_model_{kpi}",
                f"Live {KPI_HELP[kpi]}, over the labelled requests of the quality window "
                f"(the KPIs of the model's task only).",
                labels=WINDOW_LABELS,
            )
            for kpi in QUALITY_KPIS
        }
        labelled = GaugeMetricFamily(
            "steadyserve_model_labelled_requests",
            "Labelled requests in the quality window the KPIs are computed over.",
            labels=WINDOW_LABELS,
        )
        breach = GaugeMetricFamily(
            "steadyserve_model_quality_breach",
            "1 while the KPI of the model version (answering for itself) is past its "
            "quality.thresholds limit with min_labelled labelled requests, else 0.",
            labels=["model", "version", "kpi"],
        )
        for window in windows:
            key = [window["model"], window["answered_by"], window["version"]]
            labelled.add_metric(key, window["labelled"])
            for kpi, value in window["values"].items():
                kpis[kpi].add_metric(key, value)
            for kpi, breached in window["breached"].items():
                breach.add_metric([window["model"], window["version"], kpi], int(breached))
        yield from kpis.values()
        yield labelled
        yield breach
        labels = CounterMetricFamily(
            "steadyserve_feedback_labels",
            "Feedback labels by outcome: joined (to their prediction), replaced (joined, "
            "replacing an earlier label), pending (waited for their prediction), expired "
            "(never found it), rejected (invalid); and logged predictions unmatched (left "
            "the join window unlabelled) or evicted (pushed out by the index's cap).",
            labels=["model", "outcome"],
        )
        for (model, outcome), n in sorted(counters.items()):
            labels.add_metric([model, outcome], n)
        yield labels


def register(registry: CollectorRegistry, monitor) -> QualityCollector:
    collector = QualityCollector(monitor)
    registry.register(collector)
    return collector


__all__ = ["QualityCollector", "register"]
