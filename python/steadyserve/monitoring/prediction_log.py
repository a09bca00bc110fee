"""Prometheus figures of the prediction log, read from ``PredictionLog.stats()`` at
scrape time (the log keeps the counts; nothing is counted twice):

- ``steadyserve_prediction_log_records_total{model}``: requests written, by model asked.
- ``steadyserve_prediction_log_dropped_total{model,reason}``: requests not logged
  (queue_full, closed, write_error, invalid_batch).
- ``steadyserve_prediction_log_files_total{model}``: files closed and readable.
- ``steadyserve_prediction_log_queued_bytes``: bytes offered and not yet written.
- ``steadyserve_prediction_log_written_bytes_total``: bytes written to log files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger("steadyserve.monitoring.prediction_log")


class PredictionLogCollector:
    def __init__(self, prediction_log) -> None:
        self._log = prediction_log  # a predictions.writer.PredictionLog

    def describe(self) -> list[Metric]:
        return []  # label values come and go with the models; don't collect() at registration

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self._log.stats()
        except Exception:  # the log's trouble must not take /metrics down
            log.exception("prediction log figures failed")
            return
        records = CounterMetricFamily(
            "steadyserve_prediction_log_records",
            "Requests written to the prediction log, by the model they asked for.",
            labels=["model"],
        )
        for model, count in sorted(stats["written"].items()):
            records.add_metric([model], count)
        dropped = CounterMetricFamily(
            "steadyserve_prediction_log_dropped",
            "Requests the prediction log did not keep, by reason (queue_full: the writer "
            "fell behind, closed: offered after shutdown began, write_error: the disk "
            "failed, invalid_batch: a malformed hand-over).",
            labels=["model", "reason"],
        )
        for (model, reason), count in sorted(stats["dropped"].items()):
            dropped.add_metric([model, reason], count)
        files = CounterMetricFamily(
            "steadyserve_prediction_log_files",
            "Prediction log files closed and readable, by model.",
            labels=["model"],
        )
        for model, count in sorted(stats["files"].items()):
            files.add_metric([model], count)
        yield records
        yield dropped
        yield files
        yield GaugeMetricFamily(
            "steadyserve_prediction_log_queued_bytes",
            "Bytes of batches offered to the prediction log and not yet written.",
            value=stats["queued_bytes"],
        )
        yield CounterMetricFamily(
            "steadyserve_prediction_log_written_bytes",
            "Bytes written to prediction log files.",
            value=stats["bytes_written"],
        )


def register(registry: CollectorRegistry, prediction_log) -> PredictionLogCollector:
    """Export ``prediction_log``'s figures in ``registry``."""
    collector = PredictionLogCollector(prediction_log)
    registry.register(collector)
    return collector
