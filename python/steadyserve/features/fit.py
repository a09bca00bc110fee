"""Offline fit of a model directory: the stats file of REPO/<model>/<version> from reference data.

Reads reference data (.npy, .npz, .csv; never unpickles), keeps the rows the
contract accepts, fits the inputs' stats and, when every input is given, runs the
model on those rows (through the contract's transform) to fit its outputs' stats;
``steadyserve fit`` is its command line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .stats import DEFAULT_BINS, STATS_FORMAT, fit_feature_stats, read_stats, write_stats
from .transform import _RANGE_POLICY, build_transform, contract_policies

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


def csv_number(cell: str) -> float | None:
    """A CSV cell's value: NaN for an empty cell (a missing value), None for text."""
    cell = cell.strip()
    if not cell:
        return math.nan
    try:
        return float(cell)
    except ValueError:
        return None


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

    header = None
    first_line, first = lines[0]
    if any(csv_number(c) is None for c in first):
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
            value = csv_number(cell)
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
    from ..backends.onnx import OnnxBackend
    from ..config import load_model_config
    from ..datatypes import coerce

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
