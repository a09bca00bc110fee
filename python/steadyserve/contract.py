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
from dataclasses import dataclass, field
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
    from . import _core

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
    from . import _core

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


# ----------------------------------------------------------------------------- drift


def psi(
    reference_counts: np.ndarray, live_counts: np.ndarray, eps: float = PSI_EPSILON
) -> np.ndarray:
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
        f["feature"]
        for f in features
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


# ----------------------------------------------------------------------------- fitting a model


class DataError(ValueError):
    """Reference data that cannot be used: missing file, wrong shape, not numeric, ..."""


def read_reference_data(path: Path | str) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """The arrays of a reference data file and, for a CSV with a header, its column names.

    ``.npy``: one array (key ""); ``.npz``: its arrays by key; ``.csv``: numbers separated
    by commas, one row per line, an optional first line of column names (a first line with
    any cell that is not a number is a header), empty cells read as NaN. Never unpickles:
    object arrays are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"data file {path} " + ("is not a file" if path.exists() else "does not exist")
        )
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return {"": _numeric(np.load(path, allow_pickle=False), f"{path}")}, None
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                arrays = {k: _numeric(archive[k], f"{path} array '{k}'") for k in archive.files}
            if not arrays:
                raise DataError(f"{path} holds no arrays")
            return arrays, None
    except DataError:
        raise
    except (OSError, ValueError) as exc:  # pickled objects, truncated files, not numpy at all
        raise DataError(f"cannot read {path} as {suffix[1:]}: {exc}") from None
    if suffix == ".csv":
        return _read_csv(path)
    raise DataError(f"data file {path}: use .npy, .npz or .csv (got '{suffix or 'no suffix'}')")


def _numeric(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise DataError(f"{what} has dtype {array.dtype}; expected numbers (int or float)")
    return array


def _read_csv(path: Path) -> tuple[dict[str, np.ndarray], list[str] | None]:
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = enumerate(csv.reader(fh), start=1)
            lines = [(i, row) for i, row in rows if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path} as CSV: {exc}") from None
    if not lines:
        raise DataError(f"{path} is empty")

    def number(cell: str) -> float | None:
        cell = cell.strip()
        if not cell:
            return math.nan
        try:
            return float(cell)
        except ValueError:
            return None

    header = None
    first_line, first = lines[0]
    if any(number(c) is None for c in first):
        header = [c.strip() for c in first]
        if any(not name for name in header):
            raise DataError(f"{path} line {first_line}: the header has an empty column name")
        if len(set(header)) != len(header):
            dup = next(n for n in header if header.count(n) > 1)
            raise DataError(f"{path} line {first_line}: column name {dup!r} appears twice")
        lines = lines[1:]
        if not lines:
            raise DataError(f"{path} has a header but no rows")
    width = len(header) if header else len(lines[0][1])
    data = np.empty((len(lines), width), dtype=np.float64)
    for r, (line, row) in enumerate(lines):
        if len(row) != width:
            raise DataError(f"{path} line {line}: {len(row)} values, expected {width}")
        for c, cell in enumerate(row):
            value = number(cell)
            if value is None:
                column = f"'{header[c]}'" if header else str(c + 1)
                raise DataError(
                    f"{path} line {line}, column {column}: {cell.strip()!r} is not a number"
                )
            data[r, c] = value
    return {"": data}, header


@dataclass
class FitResult:
    """What ``fit_model`` did (the CLI prints it)."""

    path: Path
    model: str
    version: int
    inputs: dict[str, dict[str, Any]]  # input name -> its stats
    outputs: dict[str, dict[str, Any]]  # output name -> its stats
    rows_refused: int = 0  # reference rows the contract refuses (left out of output stats)
    first_refusal: str | None = None
    notes: list[str] = field(default_factory=list)


def fit_model(
    model_dir: Path | str,
    data: Mapping[str, np.ndarray],
    *,
    header: Sequence[str] | None = None,
    input_name: str | None = None,
    version: int | None = None,
    bins: int = DEFAULT_BINS,
) -> FitResult:
    """Fit and write the stats file of ``model_dir`` (REPO/<model>) from reference data.

    ``data`` maps input names to [rows, features] arrays; the key "" (a .npy or .csv)
    stands for the input being fitted: ``input_name``, else the only input with a
    contract, else the model's only input.

    The stats describe the data as the server would see it: rows the contract refuses
    (NaN/inf or out-of-range values under a reject policy) are left out, clipped
    features are clipped, the remaining NaN/inf (imputed when served) are counted as
    missing. When every input is given, the model then runs on those rows, validated,
    imputed and scaled by the contract with the new stats, to fit its outputs' stats
    (prediction drift). Other inputs' sections of an existing stats file are kept.
    """
    from .backends.onnx import OnnxBackend
    from .config import load_model_config
    from .datatypes import coerce

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise DataError(
            f"model directory {model_dir} "
            + ("is not a directory" if model_dir.exists() else "does not exist")
            + " (expected REPO/<model> holding <version>/model.onnx)"
        )
    config = load_model_config(model_dir / "config.yaml")
    versions = {
        int(p.name): p
        for p in model_dir.iterdir()
        if p.name.isdigit() and (p / "model.onnx").is_file()
    }
    if not versions:
        raise DataError(f"{model_dir} has no <version>/model.onnx (e.g. {model_dir}/1/model.onnx)")
    if version is None:
        version = max(versions)
    elif version not in versions:
        raise DataError(
            f"{model_dir} has no version {version} (versions: "
            f"{', '.join(map(str, sorted(versions)))})"
        )
    version_dir = versions[version]
    model = model_dir.name
    backend = OnnxBackend.load(version_dir / "model.onnx", config.onnxruntime)
    try:
        specs = {s.name: s for s in backend.inputs}
        contracts = {e.name: e.contract for e in config.inputs if e.contract is not None}
        target = _target_input(model, specs, contracts, data, input_name)
        arrays = {k: np.asarray(v) for k, v in data.items() if k in specs}
        if target not in arrays:
            unnamed = [k for k in data if k not in specs]
            if len(unnamed) != 1:
                raise DataError(
                    f"the data has arrays {', '.join(repr(k) for k in data)}; none is named "
                    f"'{target}' (name the array after the input, or pass one array)"
                )
            arrays[target] = np.asarray(data[unnamed[0]])
        n_rows = {len(a) if a.ndim else 0 for a in arrays.values()}
        if len(n_rows) != 1:
            raise DataError(
                "the inputs' arrays have different row counts: "
                + ", ".join(f"'{k}' {len(a)}" for k, a in arrays.items())
            )

        # FP32 [batch, features] inputs (the target must be one), as the wire carries them.
        matrices: dict[str, np.ndarray] = {}
        names: dict[str, list[str] | None] = {}
        for name, array in arrays.items():
            spec = specs[name]
            if spec.datatype != "FP32" or len(spec.shape) != 2:
                if name == target:
                    raise DataError(
                        f"input '{name}' is {spec.datatype} {list(spec.shape)}: feature stats "
                        "are for FP32 [batch, features] inputs"
                    )
                continue
            x = _as_matrix(array, name, spec.shape[-1])
            with np.errstate(over="ignore"):
                matrices[name] = np.ascontiguousarray(x, dtype=np.float32)
            names[name] = _feature_names(
                name, x.shape[1], header if name == target else None, contracts.get(name)
            )

        # The rows every contract accepts, and the values the server would bin and scale.
        keep = np.ones(n_rows.pop(), dtype=bool)
        seen: dict[str, np.ndarray] = {}
        first_refusal = None
        for name, x in matrices.items():
            contract = contracts.get(name)
            if contract is None:
                seen[name] = x
                continue
            where = f"model '{model}' input '{name}'"
            lo, hi, range_policy, missing, _ = contract_policies(
                name, x.shape[1], contract, names[name], where
            )
            lo, hi = lo.astype(np.float32), hi.astype(np.float32)
            finite = np.isfinite(x)
            with np.errstate(invalid="ignore"):
                outside = finite & ((x < lo) | (x > hi))
            refused = (~finite & np.array([m == "reject" for m in missing])) | (
                outside & (range_policy == _RANGE_POLICY["reject"])
            )
            bad_rows = refused.any(axis=1)
            if bad_rows.any():
                r = int(np.argmax(bad_rows & keep)) if (bad_rows & keep).any() else None
                if r is not None and first_refusal is None:
                    f = int(np.argmax(refused[r]))
                    first_refusal = _refusal_message(
                        model, name, r, f, float(x[r, f]), names[name], lo[f], hi[f]
                    )
                keep &= ~bad_rows
            clip = (range_policy == _RANGE_POLICY["clip"]) & finite
            seen[name] = np.where(clip, np.clip(x, lo, hi), x)
        kept = int(keep.sum())
        if kept < 2:
            raise DataError(
                f"the contract refuses {len(keep) - kept} of the {len(keep)} rows, leaving "
                f"fewer than 2 to fit; the first refused: {first_refusal}"
            )
        input_stats = {
            name: fit_feature_stats(values[keep], names[name], bins)
            for name, values in seen.items()
        }
        result = FitResult(
            version_dir,
            model,
            version,
            input_stats,
            {},
            rows_refused=len(keep) - kept,
            first_refusal=first_refusal,
        )

        # Output stats: the model's answers on the accepted rows, when every input is given.
        missing_inputs = [n for n in specs if n not in arrays]
        if missing_inputs:
            result.notes.append(
                "outputs not fitted: the model also needs input(s) "
                + ", ".join(f"'{n}'" for n in missing_inputs)
                + " (give an .npz with one array per input)"
            )
        else:
            feeds = {}
            for name, array in arrays.items():
                if name in matrices and name in contracts:
                    where = f"model '{model}' input '{name}'"
                    transform = build_transform(
                        model, name, matrices[name].shape[1], contracts[name], config.drift,
                        input_stats[name], where,
                    )  # fmt: skip
                    feeds[name] = transform.apply(np.ascontiguousarray(matrices[name][keep]))
                elif name in matrices:
                    feeds[name] = np.ascontiguousarray(matrices[name][keep])
                else:
                    feeds[name] = coerce(name, array[keep], specs[name].dtype)
            outputs: dict[str, list[np.ndarray]] = {}
            chunk = 4096
            for start in range(0, kept, chunk):
                part = {k: v[start : start + chunk] for k, v in feeds.items()}
                for k, v in backend.run(part).items():
                    outputs.setdefault(k, []).append(v)
            for spec in backend.outputs:
                if spec.datatype != "FP32":
                    result.notes.append(f"output '{spec.name}' ({spec.datatype}) not fitted")
                    continue
                values = np.concatenate(outputs[spec.name]).reshape(kept, -1)
                result.outputs[spec.name] = fit_feature_stats(values, None, bins)

        contract = contracts.get(target)
        stats_name = contract.stats if contract is not None else "stats.json"
        result.path = version_dir / stats_name
        merged: dict[str, Any] = {"format": STATS_FORMAT, "inputs": {}, "outputs": {}}
        if result.path.exists():
            try:
                old = read_stats(result.path)
                merged["inputs"].update(
                    {k: v for k, v in old.get("inputs", {}).items() if k in specs}
                )
                if not result.outputs:
                    merged["outputs"].update(old.get("outputs", {}))
            except ConfigError as exc:
                result.notes.append(f"replaced an unreadable stats file ({exc})")
        merged["inputs"].update(input_stats)
        merged["outputs"].update(result.outputs)
        if stats_name != "stats.json" and result.outputs:
            result.notes.append(
                f"output stats are in {stats_name}; prediction drift reads them from stats.json"
            )
        write_stats(result.path, merged)
        return result
    finally:
        backend.close()


def _refusal_message(model, name, row, f, value, names, lo, hi) -> str:
    feature = f"'{names[f]}' (index {f})" if names else str(f)
    if not math.isfinite(value):
        rule = "is not allowed (NaN/inf policy: reject)"
    else:
        rule = f"is outside [{float(lo):.9g}, {float(hi):.9g}] (range policy: reject)"
    return f"model '{model}': input '{name}' row {row}, feature {feature}: value {value:.9g} {rule}"


def _target_input(model, specs, contracts, data, input_name) -> str:
    if input_name is not None:
        if input_name not in specs:
            raise DataError(
                f"model '{model}' has no input '{input_name}' (inputs: {', '.join(specs)})"
            )
        return input_name
    if len(contracts) == 1:
        return next(iter(contracts))
    if len(specs) == 1:
        return next(iter(specs))
    named = [k for k in specs if k in data]
    if named and len(named) == len(data):  # every array named after an input: fit them all
        return named[0]
    raise DataError(
        f"model '{model}' has inputs {', '.join(specs)}: say which to fit with --input NAME"
    )


def _as_matrix(array: np.ndarray, name: str, width: int | None) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 1 and width == 1:
        array = array[:, None]
    expected = f"[rows, {width if width and width > 0 else 'features'}]"
    if array.ndim != 2:
        raise DataError(
            f"data for input '{name}' must be {expected}, got shape {list(array.shape)}"
        )
    if width and width > 0 and array.shape[1] != width:
        raise DataError(
            f"data for input '{name}' has {array.shape[1]} columns, but the input takes "
            f"{width} features (shape {list(array.shape)}, expected {expected})"
        )
    if array.shape[0] < 2:
        raise DataError(f"data for input '{name}' needs at least 2 rows, got {array.shape[0]}")
    return array


def _feature_names(name, n, header, contract) -> list[str] | None:
    configured = contract.feature_names if contract is not None else None
    if header is not None and len(header) != n:
        raise DataError(f"the CSV header has {len(header)} names for {n} columns")
    if header is not None and configured is not None and list(header) != list(configured):
        i = next(i for i, (a, b) in enumerate(zip(header, configured, strict=False)) if a != b)
        raise DataError(
            f"the CSV header differs from input '{name}' contract.feature_names at column "
            f"{i + 1}: {header[i]!r} vs {configured[i]!r} (same names, same order)"
        )
    names = list(header) if header is not None else configured
    return list(names) if names is not None else None
