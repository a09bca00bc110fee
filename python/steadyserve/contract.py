"""Compatibility module: the feature-contract code lives in ``steadyserve.features``.

``features.stats`` (stats files, fitting reference statistics), ``features.transform``
(contract + stats -> native FeatureTransform / output monitor), ``features.drift``
(PSI, drift report) and ``features.fit`` (offline fit of a model directory). This
module re-exports their public names so ``steadyserve.contract.<name>`` (e.g.
``steadyserve.contract.stats_from_sklearn``) keeps working; import from
``steadyserve.features`` in new code.
"""

from __future__ import annotations

from .features.drift import PSI_EPSILON, drift_section, psi
from .features.fit import DataError, FitResult, fit_model, read_reference_data
from .features.stats import (
    DEFAULT_BINS,
    STATS_FORMAT,
    fit_feature_stats,
    fit_stats,
    read_stats,
    stats_from_sklearn,
    write_stats,
)
from .features.transform import _sub_window, build_monitor, build_transform, contract_policies

__all__ = [
    "DEFAULT_BINS",
    "PSI_EPSILON",
    "STATS_FORMAT",
    "DataError",
    "FitResult",
    "_sub_window",
    "build_monitor",
    "build_transform",
    "contract_policies",
    "drift_section",
    "fit_feature_stats",
    "fit_model",
    "fit_stats",
    "psi",
    "read_reference_data",
    "read_stats",
    "stats_from_sklearn",
    "write_stats",
]
