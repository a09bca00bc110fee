"""Stats files: the reference statistics of a model's tensors, fitted from data.

This module fits stats files from reference data (or reads the scaling parameters
of a fitted scikit-learn scaler), and writes and reads them; ``transform`` turns
them into the native transform's per-feature arrays and ``drift`` compares the
live counts against their reference.

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

STATS_FORMAT = "steadyserve.stats/1"
DEFAULT_BINS = 10


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
    stats: dict[str, list] = {
        k: []
        for k in (
            "mean",
            "std",
            "min",
            "max",
            "median",
            "q25",
            "q75",
            "missing_rate",
            "bin_edges",
            "reference_counts",
        )
    }
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
