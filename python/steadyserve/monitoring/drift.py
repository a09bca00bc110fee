"""Drift and data-quality gauges for Prometheus, read from the models at scrape time.

Nothing is computed per request here: the native feature transforms count every row
into their sliding windows, and this collector turns each model's ``drift_report()``
into gauges when /metrics is scraped (a snapshot is O(features x bins x sub-windows)).

Gauges (labels ``model``, ``version``, ``tensor`` = the input or output name, and
``feature`` = the feature's name, else its index):

- ``steadyserve_feature_psi``: Population Stability Index of the live window against
  the reference in the stats file. Only exported once the window holds ``drift.min_rows``
  rows: a PSI from a handful of rows is noise, and an alert on it would be too.
- ``steadyserve_feature_missing_ratio``: share of the window's rows whose value was NaN
  or +-inf (imputed, or counted only for outputs).
- ``steadyserve_feature_out_of_range_ratio``: share of rows outside the contract's
  [min, max] (clipped or allowed; for outputs: outside the reference's [min, max]).
- ``steadyserve_drift_window_rows{model,version,tensor}``: rows in the live window.
- ``steadyserve_drift_worst_psi{model,version,tensor}``: the largest feature PSI of the
  tensor (exported with the PSI gauges, from ``drift.min_rows`` rows on).

Example Prometheus alert rules (PSI above 0.2, the usual "significant shift" mark,
sustained for 10 minutes; the second fires on data-quality trouble)::

    groups:
      - name: steadyserve-drift
        rules:
          - alert: SteadyServeFeatureDrift
            expr: steadyserve_feature_psi > 0.2
            for: 10m
            labels:
              severity: warning
            annotations:
              summary: >-
                Drift on {{ $labels.model }} v{{ $labels.version }}
                {{ $labels.tensor }}/{{ $labels.feature }}
              description: >-
                PSI {{ $value | printf "%.2f" }} > 0.2 for 10 minutes against the
                reference in stats.json. Details:
                steadyserve drift --url HOST:HTTP_PORT {{ $labels.model }}
          - alert: SteadyServeMissingValues
            expr: >-
              steadyserve_feature_missing_ratio > 0.05
              and on(model, version, tensor) steadyserve_drift_window_rows >= 200
            for: 10m
            labels:
              severity: warning
            annotations:
              summary: >-
                {{ $labels.model }} {{ $labels.tensor }}/{{ $labels.feature }}:
                {{ $value | humanizePercentage }} of the values missing
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from .metrics import RuntimeCollector

log = logging.getLogger("steadyserve.monitoring.drift")

TENSOR_LABELS = ["model", "version", "tensor"]
FEATURE_LABELS = [*TENSOR_LABELS, "feature"]


class DriftCollector(RuntimeCollector):
    """PSI and data-quality gauges of every model of the registered runtimes."""

    def collect(self) -> Iterator[Metric]:
        psi = GaugeMetricFamily(
            "steadyserve_feature_psi",
            "Population Stability Index of a feature's live window against its reference "
            "(exported from drift.min_rows rows on).",
            labels=FEATURE_LABELS,
        )
        missing = GaugeMetricFamily(
            "steadyserve_feature_missing_ratio",
            "Share of the live window's rows whose value was NaN or +-inf.",
            labels=FEATURE_LABELS,
        )
        out_of_range = GaugeMetricFamily(
            "steadyserve_feature_out_of_range_ratio",
            "Share of the live window's rows outside the valid range (contract min/max; "
            "for outputs the reference min/max).",
            labels=FEATURE_LABELS,
        )
        rows = GaugeMetricFamily(
            "steadyserve_drift_window_rows",
            "Rows in the live drift window of a tensor.",
            labels=TENSOR_LABELS,
        )
        worst = GaugeMetricFamily(
            "steadyserve_drift_worst_psi",
            "The largest feature PSI of a tensor (exported from drift.min_rows rows on).",
            labels=TENSOR_LABELS,
        )
        for model in self.models():
            try:
                report = model.drift_report()
            except Exception:  # one model's trouble must not take /metrics down
                log.exception("drift report failed", extra={"model": model.name})
                continue
            for section in ("inputs", "outputs"):
                for tensor, entry in report.get(section, {}).items():
                    labels = [report["model"], str(report["version"]), tensor]
                    rows.add_metric(labels, entry["rows"])
                    if not entry["rows"]:
                        continue
                    for feature in entry["features"]:
                        flabels = [*labels, feature["feature"]]
                        missing.add_metric(flabels, feature["missing_rate"])
                        out_of_range.add_metric(flabels, feature["out_of_range_rate"])
                        if entry["enough_rows"] and feature["psi"] is not None:
                            psi.add_metric(flabels, feature["psi"])
                    if entry["enough_rows"] and entry["worst"] is not None:
                        worst.add_metric(labels, entry["worst"]["psi"])
        yield from (psi, worst, missing, out_of_range, rows)


__all__ = ["DriftCollector"]
