"""Scoring a model on a holdout set: ``steadyserve evaluate`` and the evaluation gate.

numpy only. The metrics equal scikit-learn's (``accuracy_score``, ``precision_score`` /
``recall_score`` / ``f1_score`` with ``average="binary"`` or ``"macro"``, ``roc_auc_score``
one-vs-rest macro, ``mean_absolute_error``, ``mean_squared_error`` (root), ``r2_score``);
tests/test_evaluation.py checks that. Where scikit-learn warns and returns 0 (a class
never predicted has precision 0, a class never in the labels recall 0) so do we; where a
metric is undefined (ROC AUC with one class in the labels, R² of constant labels) the key
is left out rather than given an invented value.

Classes are integers. With class scores (an output of [rows, k] values, k > 1) the
predicted class is the column of the largest score: column i is class i.
"""

from __future__ import annotations

import csv
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import METRICS
from .datatypes import TensorSpec, coerce
from .errors import InvalidArgumentError
from .features.fit import csv_number

SUFFIXES = (".npz", ".csv")
TASKS = ("auto", "classification", "regression")
# "auto" reads float labels as classes only with at most this many distinct values.
MAX_AUTO_CLASSES = 100
NEEDS_BATCHING = (
    "evaluation needs a batching model (max_batch_size >= 1): a model with max_batch_size 0 "
    "takes one request of its own fixed shape, not a holdout set's rows"
)


@dataclass
class Holdout:
    """A holdout set: one array per model input and the labels, row for row."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray
    path: Path

    @property
    def rows(self) -> int:
        return int(self.labels.shape[0])


# --------------------------------------------------------------------- loading


def load_holdout(path: Path, inputs: list[TensorSpec], label: str = "label") -> Holdout:
    """Read a holdout set for a batching model with these ``inputs``.

    ``.npz``: an array per input name (converted to the input's datatype only where no
    value changes) and the ``label`` array, all with the same number of rows. ``.csv``:
    a header row, the ``label`` column and the feature columns, for a model with a single
    FP32 [batch, features] input; empty cells are missing values (NaN, for the input's
    contract to impute or refuse). Anything wrong raises ``InvalidArgumentError`` naming
    the file and what is wrong.
    """
    path = Path(path)
    check_holdout_path(path)
    if path.suffix.lower() == ".npz":
        holdout = _load_npz(path, inputs, label)
    else:
        holdout = _load_csv(path, inputs, label)
    if holdout.rows == 0:
        raise InvalidArgumentError(f"holdout set {path} has no rows")
    return holdout


def check_holdout_path(path: Path) -> None:
    """InvalidArgumentError unless ``path`` is an existing .npz or .csv file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InvalidArgumentError(
            f"holdout set {path}: use {' or '.join(SUFFIXES)} (got '{suffix or 'no suffix'}')"
        )
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise InvalidArgumentError(f"holdout set {path} {what}")


def _load_npz(path: Path, inputs: list[TensorSpec], label: str) -> Holdout:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:  # not npz, pickled objects
        raise InvalidArgumentError(f"cannot read holdout set {path} as npz: {exc}") from None
    found = ", ".join(arrays) or "none"
    wanted = [s.name for s in inputs]
    for name, what in [*((n, "a model input") for n in wanted), (label, "the labels")]:
        if name not in arrays:
            raise InvalidArgumentError(
                f"holdout set {path} has no array '{name}' ({what}); it needs "
                f"{', '.join(repr(n) for n in [*wanted, label])} (found: {found})"
            )
    converted = {}
    for spec in inputs:
        array = arrays[spec.name]
        row = spec.shape[1:]
        if array.ndim != len(spec.shape) or any(
            d not in (-1, a) for d, a in zip(row, array.shape[1:], strict=True)
        ):
            expected = ", ".join(["rows", *("any" if d == -1 else str(d) for d in row)])
            raise InvalidArgumentError(
                f"holdout set {path}: array '{spec.name}' has shape {list(array.shape)}; "
                f"input '{spec.name}' takes [{expected}]"
            )
        try:
            converted[spec.name] = coerce(spec.name, array, spec.dtype)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(
                f"holdout set {path}: array '{spec.name}' is {array.dtype}, input "
                f"'{spec.name}' takes {spec.datatype} ({spec.dtype}): {exc}"
            ) from None
    labels = _labels(arrays[label], f"holdout set {path}: array '{label}'")
    counts = {name: int(a.shape[0]) for name, a in converted.items()}
    counts[label] = labels.shape[0]
    if len(set(counts.values())) > 1:
        shown = ", ".join(f"'{n}' {c}" for n, c in counts.items())
        raise InvalidArgumentError(
            f"holdout set {path}: arrays have different row counts ({shown}); every input "
            f"and the labels need one row per example"
        )
    return Holdout(converted, labels, path)


def _labels(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise InvalidArgumentError(f"{what} is {array.dtype}; labels must be numbers or bools")
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise InvalidArgumentError(f"{what} has shape {list(array.shape)}; labels are [rows]")
    return array


def _load_csv(path: Path, inputs: list[TensorSpec], label: str) -> Holdout:
    spec = inputs[0] if len(inputs) == 1 else None
    if spec is None or spec.datatype != "FP32" or len(spec.shape) != 2:
        shown = ", ".join(f"'{s.name}' {s.datatype} {list(s.shape)}" for s in inputs)
        raise InvalidArgumentError(
            f"holdout set {path}: a .csv holdout is for a model with a single FP32 "
            f"[batch, features] input; this model takes {shown}: use .npz (an array per input)"
        )
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            lines = [
                (n, row) for n, row in enumerate(csv.reader(fh), 1) if any(c.strip() for c in row)
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidArgumentError(f"cannot read holdout set {path} as CSV: {exc}") from None
    if not lines:
        raise InvalidArgumentError(f"holdout set {path} is empty")
    header = [c.strip() for c in lines[0][1]]
    if label not in header:
        if all(csv_number(c) is not None for c in header):
            problem = "has no header row: the first line must name the columns"
        else:
            problem = f"has no column '{label}' (the labels)"
        raise InvalidArgumentError(
            f"holdout set {path} {problem} (columns: {', '.join(header)}; pick the label "
            f"column with --label or evaluation.label)"
        )
    at = header.index(label)
    features = len(header) - 1
    width = spec.shape[1]
    if width not in (-1, features):
        raise InvalidArgumentError(
            f"holdout set {path} has {features} feature column(s) besides the label "
            f"'{label}', but input '{spec.name}' takes {width} features per row"
        )
    values = np.empty((len(lines) - 1, len(header)), dtype=np.float64)
    for i, (line, row) in enumerate(lines[1:]):
        if len(row) != len(header):
            raise InvalidArgumentError(
                f"holdout set {path} line {line}: {len(row)} cells, the header has {len(header)}"
            )
        for j, cell in enumerate(row):
            value = csv_number(cell)
            if value is None or (j == at and math.isnan(value)):
                raise InvalidArgumentError(
                    f"holdout set {path} line {line}, column '{header[j]}': {cell.strip()!r} "
                    f"is not a number"
                )
            values[i, j] = value
    labels = values[:, at]
    feature_values = np.delete(values, at, axis=1).astype(np.float32)
    return Holdout({spec.name: feature_values}, labels, path)


# --------------------------------------------------------------------- scoring


def task_of(task: str, labels: np.ndarray, prediction: np.ndarray) -> str:
    """The task to score: ``task`` unless it is "auto", which means classification when
    the labels are classes (integers or bools, or integral floats with at most 100
    distinct values) and the prediction is class scores ([rows, k > 1]) or integer
    classes; regression otherwise."""
    if task not in TASKS:
        raise InvalidArgumentError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    if task != "auto":
        return task
    labels = np.asarray(labels)
    prediction = np.asarray(prediction)
    if labels.dtype.kind in "biu":
        classes = True
    elif labels.dtype.kind == "f":
        finite = labels[np.isfinite(labels)]
        classes = (
            finite.size == labels.size
            and bool(np.all(finite == np.round(finite)))
            and np.unique(finite).size <= MAX_AUTO_CLASSES
        )
    else:
        classes = False
    scores = prediction.ndim == 2 and prediction.shape[1] > 1
    return (
        "classification" if classes and (scores or prediction.dtype.kind in "biu") else "regression"
    )


def score(task: str, labels: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """The metrics of ``prediction`` against ``labels`` for "classification" or
    "regression" (resolve "auto" with ``task_of`` first).

    Classification: accuracy, precision, recall, f1, and roc_auc when the prediction
    is scores and the labels hold two classes or more. When only classes 0 and 1 occur
    (in labels and predictions) these are of class 1; otherwise precision, recall and
    F1 are macro averages over the classes in the labels or the predictions (a class
    never predicted has precision 0; one never in the labels, recall 0), and roc_auc
    the one-vs-rest macro average over the classes in the labels. A single score
    column ([rows] or [rows, 1] of fractional values in [0, 1]) is the probability of
    class 1: class 1 above 0.5.

    Regression: mae, rmse, and r2 unless the labels are constant.
    """
    labels = _labels(np.asarray(labels), "labels")
    prediction = np.asarray(prediction)
    if prediction.ndim == 0 or prediction.shape[0] != labels.shape[0]:
        raise InvalidArgumentError(
            f"the prediction has shape {list(prediction.shape)} for {labels.shape[0]} labels; "
            f"it needs one row per label"
        )
    if prediction.dtype.kind not in "biuf":
        raise InvalidArgumentError(
            f"the prediction is {prediction.dtype}; scoring needs numbers (class scores, "
            f"classes or values)"
        )
    if prediction.dtype.kind == "f" and not np.all(np.isfinite(prediction)):
        row = int(np.argwhere(~np.isfinite(prediction))[0][0])
        raise InvalidArgumentError(f"the prediction of row {row} is not finite (NaN or inf)")
    if labels.dtype.kind == "f" and not np.all(np.isfinite(labels)):
        row = int(np.flatnonzero(~np.isfinite(labels))[0])
        raise InvalidArgumentError(f"the label of row {row} is not finite (NaN or inf)")
    if task == "classification":
        return _classification(labels, prediction)
    if task == "regression":
        return _regression(labels, prediction)
    raise InvalidArgumentError(f"task must be classification or regression; got {task!r}")


def _classes(values: np.ndarray, what: str) -> np.ndarray:
    if values.dtype.kind == "f" and not np.all(values == np.round(values)):
        row = int(np.flatnonzero(values != np.round(values))[0])
        raise InvalidArgumentError(
            f"{what} of row {row} is {values[row].item()!r}, not a class (classes are integers)"
        )
    return values.astype(np.int64)


def _classification(labels: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    y = _classes(labels, "the label")
    scores = None
    if prediction.ndim == 2 and prediction.shape[1] > 1:
        scores = prediction.astype(np.float64)
        columns = scores.shape[1]
        outside = (y < 0) | (y >= columns)
        if outside.any():
            row = int(np.flatnonzero(outside)[0])
            raise InvalidArgumentError(
                f"the label of row {row} is {y[row]}, but the prediction has {columns} class "
                f"score columns (class i is column i, 0..{columns - 1})"
            )
        predicted = np.argmax(scores, axis=1)
    elif prediction.ndim <= 2:
        flat = (
            prediction.reshape(prediction.shape[0], -1)[:, 0]
            if prediction.ndim == 2
            else prediction
        )
        fractional = flat.dtype.kind == "f" and not np.all(flat == np.round(flat))
        if fractional:
            if not (np.all((flat >= 0) & (flat <= 1)) and np.all((y == 0) | (y == 1))):
                raise InvalidArgumentError(
                    "a single fractional prediction column is read as the probability of "
                    "class 1, which needs values in [0, 1] and labels 0 and 1; this output "
                    "is neither classes nor that (use task regression, or an output of "
                    "class scores)"
                )
            scores = np.stack([1.0 - flat, flat], axis=1).astype(np.float64)
            predicted = (flat > 0.5).astype(np.int64)
        else:
            predicted = _classes(flat, "the predicted class")
    else:
        raise InvalidArgumentError(
            f"the prediction has shape {list(prediction.shape)}; classification takes "
            f"[rows] classes or [rows, k] class scores"
        )
    metrics = {"accuracy": float(np.mean(predicted == y))}
    present = np.union1d(y, predicted)
    if np.all(np.isin(present, (0, 1))):
        p, r, f = _prf(y, predicted, 1)
    else:
        per_class = [_prf(y, predicted, c) for c in present]
        p, r, f = (float(np.mean(m)) for m in zip(*per_class, strict=True))
    metrics.update(precision=p, recall=r, f1=f)
    if scores is not None:
        auc = _roc_auc(y, scores)
        if auc is not None:
            metrics["roc_auc"] = auc
    return metrics


def _prf(y: np.ndarray, predicted: np.ndarray, cls: int) -> tuple[float, float, float]:
    """Precision, recall and F1 of one class (0 where a denominator is 0, as sklearn)."""
    tp = int(np.sum((predicted == cls) & (y == cls)))
    fp = int(np.sum((predicted == cls) & (y != cls)))
    fn = int(np.sum((predicted != cls) & (y == cls)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _roc_auc(y: np.ndarray, scores: np.ndarray) -> float | None:
    """Binary (two score columns: column 1 scores class 1) or one-vs-rest macro over the
    classes in the labels; None with fewer than two classes in the labels."""
    present = np.unique(y)
    if present.size < 2:
        return None
    if scores.shape[1] == 2:
        return _auc(y == 1, scores[:, 1])
    return float(np.mean([_auc(y == c, scores[:, c]) for c in present]))


def _auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney U / (n_pos * n_neg), tied scores taking their average rank."""
    order = np.argsort(score, kind="mergesort")
    ordered = score[order]
    starts_group = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.r_[starts[1:], ordered.size]
    ranks = np.empty(ordered.size, dtype=np.float64)
    ranks[order] = ((starts + 1 + ends) / 2.0)[group]  # mean of ranks starts+1 .. ends
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _regression(labels: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    if prediction.ndim > 2 or (prediction.ndim == 2 and prediction.shape[1] != 1):
        raise InvalidArgumentError(
            f"the prediction has shape {list(prediction.shape)}; regression takes one value "
            f"per row ([rows] or [rows, 1])"
        )
    y = labels.astype(np.float64)
    p = prediction.reshape(-1).astype(np.float64)
    error = y - p
    metrics = {
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error**2))),
    }
    total = float(np.sum((y - y.mean()) ** 2))
    if total > 0:
        metrics["r2"] = 1.0 - float(np.sum(error**2)) / total
    return metrics


# --------------------------------------------------------------------- evaluating


def evaluate(
    infer: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    holdout: Holdout,
    *,
    output: str | None,
    task: str,
    max_rows: int,
) -> dict:
    """Run ``holdout`` through ``infer`` in chunks of at most ``max_rows`` rows (the
    model's max_batch_size) and score ``output`` (None: the first output ``infer``
    returns). Returns {"task", "output", "rows", "metrics"}."""
    if max_rows < 1:
        raise InvalidArgumentError(NEEDS_BATCHING)
    if task not in TASKS:
        raise InvalidArgumentError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    pieces = []
    name = output
    for start in range(0, holdout.rows, max_rows):
        chunk = {k: v[start : start + max_rows] for k, v in holdout.inputs.items()}
        rows = min(max_rows, holdout.rows - start)
        outputs = infer(chunk)
        if name is None:
            name = next(iter(outputs), None)
            if name is None:
                raise InvalidArgumentError("the model returned no outputs")
        if name not in outputs:
            raise InvalidArgumentError(
                f"the model has no output '{name}' (outputs: {', '.join(outputs)})"
            )
        piece = np.asarray(outputs[name])
        if piece.ndim == 0 or piece.shape[0] != rows:
            raise InvalidArgumentError(
                f"output '{name}' has shape {list(piece.shape)} for a chunk of {rows} rows; "
                f"evaluation needs one output row per input row"
            )
        pieces.append(piece)
    prediction = np.concatenate(pieces)
    resolved = task_of(task, holdout.labels, prediction)
    return {
        "task": resolved,
        "output": name,
        "rows": holdout.rows,
        "metrics": score(resolved, holdout.labels, prediction),
    }


def format_table(columns: list[tuple[str, dict]]) -> str:
    """A plain-text table: one column per evaluated thing (its title and ``evaluate``'s
    result, or {"error": message}), one row per metric (4 decimals, "-" where absent),
    then the rows; an errored column's message follows the table."""
    present = {m for _, result in columns for m in result.get("metrics", {})}
    names = [m for m in METRICS if m in present]
    titles = [title for title, _ in columns]
    width = max(len("metric"), *(len(n) for n in [*names, "rows"]))
    cells = [max(8, len(t)) for t in titles]

    def line(head: str, values: list[str]) -> str:
        row = f"{head:<{width}}" + "".join(
            f"  {v:>{w}}" for v, w in zip(values, cells, strict=True)
        )
        return row.rstrip()

    out = [line("metric", titles)]
    for metric in names:
        values = []
        for _, result in columns:
            value = result.get("metrics", {}).get(metric)
            values.append("-" if value is None else f"{value:.4f}")
        out.append(line(metric, values))
    out.append(line("rows", [str(r["rows"]) if "rows" in r else "-" for _, r in columns]))
    for title, result in columns:
        if result.get("error"):
            out.append(f"{title}: error: {result['error']}")
    return "\n".join(out)


__all__ = [
    "METRICS",
    "NEEDS_BATCHING",
    "Holdout",
    "check_holdout_path",
    "evaluate",
    "format_table",
    "load_holdout",
    "score",
    "task_of",
]
