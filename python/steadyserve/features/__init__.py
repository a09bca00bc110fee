"""Features: feature contracts (serving transform), stats files, PSI, offline fit.

- ``stats``: the stats file format (``STATS_FORMAT``) and fitting reference statistics
  from data or a fitted scikit-learn scaler (``fit_feature_stats``, ``fit_stats``,
  ``stats_from_sklearn``, ``write_stats``, ``read_stats``).
- ``transform``: a model's contract and stats turned into the native
  ``FeatureTransform`` of an input (``contract_policies``, ``build_transform``) or the
  drift counter of an output (``build_monitor``).
- ``drift``: Population Stability Index and the drift report of a tensor (``psi``,
  ``drift_section``).
- ``fit``: the offline fit of a model directory's stats file from reference data
  (``read_reference_data``, ``fit_model``, ``FitResult``, ``DataError``); ``steadyserve fit``.

``steadyserve.contract`` re-exports these names for older imports.
"""

from __future__ import annotations

from .drift import PSI_EPSILON, drift_section, psi
from .fit import DataError, FitResult, fit_model, read_reference_data
from .stats import (
    DEFAULT_BINS,
    STATS_FORMAT,
    fit_feature_stats,
    fit_stats,
    read_stats,
    stats_from_sklearn,
    write_stats,
)
from .transform import build_monitor, build_transform, contract_policies

__all__ = [
    "DEFAULT_BINS",
    "PSI_EPSILON",
    "STATS_FORMAT",
    "DataError",
    "FitResult",
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
