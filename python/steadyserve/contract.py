"""Feature contracts: validate, impute, scale and watch the drift of an FP32 input.

The work per row is done by the native core (``_core.FeatureTransform``) in
the same pass that copies the row into the batch; this module turns a model's
config (``inputs[].contract``, ``drift``) and its stats file into the native
transform's per-feature arrays, fits stats files from reference data, and
computes drift figures (Population Stability Index) from the live counts.

Stats file (JSON, next to model.onnx; written by ``steadyserve fit``)::

    {"format": "steadyserve.stats/1",
     "inputs":  {"features": {"rows": 4096, "feature_names": [...],
                              "mean": [...], "std": [...], "min": [...], "max": [...],
                              "median": [...], "q25": [...], "q75": [...],
                              "missing_rate": [...],
                              "bin_edges": [[...], ...],          # bins-1 inner edges per feature
                              "reference_counts": [[...], ...]}}, # bins counts per feature
     "outputs": {"probabilities": {...same keys...}}}

Binning rule, shared by the reference and the live counts: a value's bin is the
number of inner edges <= the value (``numpy.searchsorted(edges, x, "right")``).
Non-finite values are never binned; they are counted as missing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError

STATS_FORMAT = "steadyserve.stats/1"
DEFAULT_BINS = 10
PSI_EPSILON = 1e-4  # floor for bin shares, so an empty bin does not make PSI infinite

_RANGE_POLICY = {"allow": 0, "reject": 1, "clip": 2}
_MISSING_POLICY = {"reject": 0, "mean": 1, "median": 1, "constant": 1}


# ----------------------------------------------------------------------------- fitting


def fit_feature_stats(
    x: np.ndarray, names: Sequence[str] | None = None, bins: int = DEFAULT_BINS
) -> dict[str, Any]:
    """Stats and the drift reference of a [rows, features] sample.

    Bin edges are the reference's quantiles, so each bin holds about 1/bins of
    the reference rows (the usual choice for PSI).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"reference data must be [rows >= 2, features], got shape {list(x.shape)}")
    if not 2 <= bins <= 1024:
        raise ValueError(f"bins must be 2..1024, got {bins}")
    n = x.shape[1]
    if names is not None and len(names) != n:
        raise ValueError(f"{len(names)} feature names for {n} features")
    stats: dict[str, list] = {k: [] for k in (
        "mean", "std", "min", "max", "median", "q25", "q75", "missing_rate",
        "bin_edges", "reference_counts",
    )}
    for f in range(n):
        column = x[:, f]
        finite = column[np.isfinite(column)]
        stats["missing_rate"].append(float(1.0 - finite.size / column.size))
        if finite.size == 0:
            raise ValueError(f"feature {names[f] if names else f} has no finite values")
        q = np.quantile(finite, [0.25, 0.5, 0.75])
        stats["mean"].append(float(finite.mean()))
        stats["std"].append(float(finite.std()))
        stats["min"].append(float(finite.min()))
        stats["max"].append(float(finite.max()))
        stats["q25"].append(float(q[0]))
        stats["median"].append(float(q[1]))
        stats["q75"].append(float(q[2]))
        # Edges as float32: the live counts compare float32 values against them.
        edges = np.quantile(finite, np.arange(1, bins) / bins).astype(np.float32)
        counts = np.bincount(
            np.searchsorted(edges, finite.astype(np.float32), side="right"), minlength=bins
        )
        stats["bin_edges"].append([float(e) for e in edges])
        stats["reference_counts"].append([int(c) for c in counts])
    out: dict[str, Any] = {"rows": int(x.shape[0]), **stats}
    if names is not None:
        out["feature_names"] = list(names)
    return out


def fit_stats(
    inputs: Mapping[str, np.ndarray],
    outputs: Mapping[str, np.ndarray] | None = None,
    *,
    names: Mapping[str, Sequence[str]] | None = None,
    bins: int = DEFAULT_BINS,
) -> dict[str, Any]:
    """A whole stats file: every input (and output) given, by tensor name."""
    names = names or {}
    return {
        "format": STATS_FORMAT,
        "inputs": {k: fit_feature_stats(v, names.get(k), bins) for k, v in inputs.items()},
        "outputs": {
            k: fit_feature_stats(np.asarray(v).reshape(len(v), -1), None, bins)
            for k, v in (outputs or {}).items()
        },
    }


def stats_from_sklearn(scaler, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Scaling parameters of a fitted scikit-learn StandardScaler, MinMaxScaler or
    RobustScaler, as the stats of one input (no drift reference: fit data for that).

    Reads the fitted attributes only; nothing is unpickled here. The options that
    change what ``transform`` does are honoured (``with_mean`` / ``with_std``,
    ``with_centering`` / ``with_scaling``); those a contract cannot express are
    refused (MinMaxScaler with another ``feature_range`` or ``clip=True``).
    Feature names default to the scaler's ``feature_names_in_`` (fitted on a
    DataFrame).
    """
    kind = type(scaler).__name__
    if kind not in ("StandardScaler", "MinMaxScaler", "RobustScaler"):
        raise ValueError(
            f"unsupported scaler {kind}: use StandardScaler, MinMaxScaler or RobustScaler"
        )
    n = getattr(scaler, "n_features_in_", None)
    if n is None:
        raise ValueError(f"the {kind} is not fitted: call fit() first")
    n = int(n)

    def vector(attr: str, default: float) -> list[float]:
        value = getattr(scaler, attr, None)
        if value is None:
            return [default] * n
        return [float(v) for v in np.asarray(value, dtype=np.float64).reshape(n)]

    stats: dict[str, Any] = {}
    if kind == "StandardScaler":
        # mean_ is set even with with_mean=False, but transform() does not subtract it.
        stats["mean"] = vector("mean_", 0.0) if scaler.with_mean else [0.0] * n
        stats["std"] = vector("scale_", 1.0) if scaler.with_std else [1.0] * n
    elif kind == "MinMaxScaler":
        lo, hi = scaler.feature_range
        if (lo, hi) != (0, 1):
            raise ValueError("only MinMaxScaler(feature_range=(0, 1)) maps onto 'minmax' scaling")
        if getattr(scaler, "clip", False):
            raise ValueError(
                "MinMaxScaler(clip=True) clips its output; a contract clips inputs instead: "
                "use contract min/max with out_of_range: clip and a scaler with clip=False"
            )
        stats["min"] = vector("data_min_", 0.0)
        stats["max"] = vector("data_max_", 1.0)
    else:
        stats["median"] = vector("center_", 0.0) if scaler.with_centering else [0.0] * n
        stats["q25"] = [0.0] * n  # only the spread q75 - q25 is used: keep it exact
        stats["q75"] = vector("scale_", 1.0) if scaler.with_scaling else [1.0] * n
    if names is None and getattr(scaler, "feature_names_in_", None) is not None:
        names = [str(v) for v in scaler.feature_names_in_]
    if names is not None:
        if len(names) != n:
            raise ValueError(f"{len(names)} feature names for a scaler of {n} features")
        stats["feature_names"] = list(names)
    return stats


def write_stats(path: Path | str, stats: Mapping[str, Any]) -> Path:
    path = Path(path)
    path.write_text(json.dumps(stats, indent=1, sort_keys=True) + "\n")
    return path


def read_stats(path: Path | str) -> dict[str, Any]:
    """Read and check a stats file; ConfigError names the file and the problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"stats file {path} not found: run `steadyserve fit` to write it"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read stats file {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != STATS_FORMAT:
        raise ConfigError(f"stats file {path}: 'format' must be {STATS_FORMAT!r}")
    for section in ("inputs", "outputs"):
        if not isinstance(data.get(section, {}), dict):
            raise ConfigError(f"stats file {path}: '{section}' must be a mapping of tensor name")
    return data


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
    from . import _core

    names = contract.feature_names or (stats or {}).get("feature_names")
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
    from . import _core

    bins, edges = _reference_edges(stats, n_values, where)
    if bins == 0:
        return None
    lo = stats.get("min", [-math.inf] * n_values)
    hi = stats.get("max", [math.inf] * n_values)
    subs, sub_rows, sub_s = _sub_window(drift)
    return _core.FeatureTransform(
        model, output_name, [],
        [float(v) for v in lo], [float(v) for v in hi],
        [0] * n_values, [1] * n_values, [0.0] * n_values, [0.0] * n_values, [1.0] * n_values,
        bins=bins, edges=edges, sub_windows=subs,
        sub_window_rows=sub_rows, sub_window_s=sub_s,
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


# ----------------------------------------------------------------------------- drift


def psi(reference_counts: np.ndarray, live_counts: np.ndarray, eps: float = PSI_EPSILON) -> np.ndarray:
    """Population Stability Index per feature: sum over bins of (q - p) * ln(q / p),
    p the reference share and q the live share of each bin, both floored at eps."""
    ref = np.asarray(reference_counts, dtype=np.float64)
    live = np.asarray(live_counts, dtype=np.float64)
    p = ref / np.maximum(ref.sum(axis=-1, keepdims=True), 1.0)
    q = live / np.maximum(live.sum(axis=-1, keepdims=True), 1.0)
    p = np.maximum(p, eps)
    q = np.maximum(q, eps)
    return np.sum((q - p) * np.log(q / p), axis=-1)


def drift_section(snapshot: Mapping[str, Any], stats: Mapping[str, Any], names, drift) -> dict:
    """Drift and data-quality figures of one tensor from a live snapshot."""
    rows = int(snapshot["rows"])
    counts = np.asarray(snapshot["counts"])
    reference = np.asarray(stats.get("reference_counts")) if stats.get("bin_edges") else None
    n = counts.shape[0]
    names = list(names) if names else [str(f) for f in range(n)]
    missing = np.asarray(snapshot["missing"], dtype=np.float64)
    out_of_range = np.asarray(snapshot["out_of_range"], dtype=np.float64)
    values = rows if rows else 1
    psis = psi(reference, counts) if reference is not None and rows else np.full(n, np.nan)
    features = []
    for f in range(n):
        features.append(
            {
                "feature": names[f],
                "psi": None if math.isnan(psis[f]) else round(float(psis[f]), 6),
                "missing_rate": round(float(missing[f] / values), 6),
                "out_of_range_rate": round(float(out_of_range[f] / values), 6),
            }
        )
    meaningful = rows >= drift.min_rows and reference is not None
    worst = None
    if reference is not None and rows:
        i = int(np.nanargmax(psis))
        worst = {"feature": names[i], "psi": round(float(psis[i]), 6)}
    flagged = [
        f["feature"] for f in features
        if meaningful and f["psi"] is not None and f["psi"] > drift.psi_threshold
    ]
    return {
        "rows": rows,
        "min_rows": drift.min_rows,
        "enough_rows": meaningful,
        "worst": worst,
        "flagged": flagged,
        "features": features,
    }
