"""Feature contracts: validate, impute, scale and watch the drift of an FP32 input.

The work per row is done by the native core (``_core.FeatureTransform``) in
the same pass that copies the row into the batch; this module turns a model's
config (``inputs[].contract``, ``drift``) and its stats file (see ``stats``) into
the native transform's per-feature arrays, and builds the native counters that
watch an output's prediction drift.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError

_RANGE_POLICY = {"allow": 0, "reject": 1, "clip": 2}
_MISSING_POLICY = {"reject": 0, "mean": 1, "median": 1, "constant": 1}


# ----------------------------------------------------------------------------- building


def _per_feature(stats: Mapping[str, Any], key: str, n: int, where: str) -> np.ndarray:
    values = stats.get(key)
    if values is None:
        raise ConfigError(f"{where}: the stats file has no '{key}' (run `steadyserve fit`)")
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (n,) or not np.isfinite(array).all():
        raise ConfigError(f"{where}: stats '{key}' must be {n} finite numbers")
    return array


def _safe_inverse(spread: np.ndarray) -> np.ndarray:
    # A constant feature has no spread: leave it unscaled (as scikit-learn does).
    return np.where(spread > 0, 1.0 / np.where(spread > 0, spread, 1.0), 1.0)


def _resolve_feature(key, names: Sequence[str] | None, n: int, where: str) -> int:
    if isinstance(key, int):
        if not 0 <= key < n:
            raise ConfigError(f"{where}: contract.features.{key}: no feature {key} (0..{n - 1})")
        return key
    if names and key in names:
        return list(names).index(key)
    if key.isdigit() and int(key) < n:
        return int(key)
    known = ", ".join(names) if names else f"indexes 0..{n - 1}"
    raise ConfigError(f"{where}: contract.features.{key}: no feature named {key!r} ({known})")


def contract_policies(input_name: str, n_features: int, contract, names, where: str):
    """Per-feature (lo, hi, range_policy codes, missing policy names, missing_value) of a
    contract: the defaults at its top level, overridden by ``features``."""
    if names is not None and len(names) != n_features:
        raise ConfigError(
            f"{where}: {len(names)} feature names for {n_features} features of input '{input_name}'"
        )
    lo = np.full(n_features, -np.inf)
    hi = np.full(n_features, np.inf)
    range_policy = np.zeros(n_features, dtype=np.uint8)
    missing = [contract.missing] * n_features
    missing_value = np.full(n_features, contract.missing_value or 0.0)
    if contract.min is not None:
        lo[:] = contract.min
    if contract.max is not None:
        hi[:] = contract.max
    if contract.min is not None or contract.max is not None:
        range_policy[:] = _RANGE_POLICY[contract.out_of_range]
    for key, rule in contract.features.items():
        f = _resolve_feature(key, names, n_features, where)
        if rule.min is not None:
            lo[f] = rule.min
        if rule.max is not None:
            hi[f] = rule.max
        if rule.out_of_range is not None or rule.min is not None or rule.max is not None:
            range_policy[f] = _RANGE_POLICY[rule.out_of_range or contract.out_of_range]
        if rule.missing is not None:
            missing[f] = rule.missing
        if rule.missing_value is not None:
            missing_value[f] = rule.missing_value
        if lo[f] > hi[f]:
            raise ConfigError(f"{where}: contract.features.{key}: min {lo[f]:g} > max {hi[f]:g}")
    return lo, hi, range_policy, missing, missing_value


def build_transform(
    model: str,
    input_name: str,
    n_features: int,
    contract,
    drift,
    stats: Mapping[str, Any] | None,
    where: str,
):
    """The native transform for one input, from its contract and stats."""
    from .. import _core

    names = contract.feature_names or (stats or {}).get("feature_names")
    lo, hi, range_policy, missing, missing_value = contract_policies(
        input_name, n_features, contract, names, where
    )

    impute = np.zeros(n_features)
    for f, policy in enumerate(missing):
        if policy in ("mean", "median"):
            impute[f] = _per_feature(stats or {}, policy, n_features, where)[f]
        elif policy == "constant":
            impute[f] = missing_value[f]

    offset = np.zeros(n_features)
    scale = np.ones(n_features)
    s = stats or {}
    if contract.scaling == "standard":
        offset = _per_feature(s, "mean", n_features, where)
        scale = _safe_inverse(_per_feature(s, "std", n_features, where))
    elif contract.scaling == "minmax":
        offset = _per_feature(s, "min", n_features, where)
        scale = _safe_inverse(_per_feature(s, "max", n_features, where) - offset)
    elif contract.scaling == "robust":
        offset = _per_feature(s, "median", n_features, where)
        iqr = _per_feature(s, "q75", n_features, where) - _per_feature(s, "q25", n_features, where)
        scale = _safe_inverse(iqr)

    bins, edges = _reference_edges(s, n_features, where)
    subs, sub_rows, sub_s = _sub_window(drift)
    return _core.FeatureTransform(
        model,
        input_name,
        list(names or []),
        lo.astype(np.float32).tolist(),
        hi.astype(np.float32).tolist(),
        range_policy.tolist(),
        [_MISSING_POLICY[m] for m in missing],
        impute.astype(np.float32).tolist(),
        offset.astype(np.float32).tolist(),
        scale.astype(np.float32).tolist(),
        bins=bins,
        edges=edges,
        sub_windows=subs,
        sub_window_rows=sub_rows,
        sub_window_s=sub_s,
    )


def build_monitor(model: str, output_name: str, n_values: int, drift, stats, where: str):
    """A native counter for prediction drift of one output (no policies apply)."""
    from .. import _core

    bins, edges = _reference_edges(stats, n_values, where)
    if bins == 0:
        return None
    lo = stats.get("min", [-math.inf] * n_values)
    hi = stats.get("max", [math.inf] * n_values)
    subs, sub_rows, sub_s = _sub_window(drift)
    return _core.FeatureTransform(
        model,
        output_name,
        [],
        [float(v) for v in lo],
        [float(v) for v in hi],
        [0] * n_values,
        [1] * n_values,
        [0.0] * n_values,
        [0.0] * n_values,
        [1.0] * n_values,
        bins=bins,
        edges=edges,
        sub_windows=subs,
        sub_window_rows=sub_rows,
        sub_window_s=sub_s,
    )


def _reference_edges(stats: Mapping[str, Any], n: int, where: str) -> tuple[int, list[float]]:
    edges = stats.get("bin_edges")
    if edges is None:
        return 0, []
    array = np.asarray(edges, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != n or array.shape[1] < 1:
        raise ConfigError(f"{where}: stats 'bin_edges' must be {n} lists of the same length")
    counts = np.asarray(stats.get("reference_counts", []))
    if counts.shape != (n, array.shape[1] + 1):
        raise ConfigError(
            f"{where}: stats 'reference_counts' must be {n} lists of {array.shape[1] + 1} counts"
        )
    return array.shape[1] + 1, array.ravel().tolist()


def _sub_window(drift) -> tuple[int, int, float]:
    """(sub_windows, rows per sub-window, seconds per sub-window) of the live window.

    A row window smaller than sub_windows gets one row per sub-window (not a window
    of sub_windows rows). As it slides, a row window holds between window_rows minus
    one sub-window and window_rows rows.
    """
    if drift.window_seconds is not None:
        return drift.sub_windows, 1, drift.window_seconds / drift.sub_windows
    subs = min(drift.sub_windows, drift.window_rows)
    return subs, max(1, drift.window_rows // subs), 0.0
