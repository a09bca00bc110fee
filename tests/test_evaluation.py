"""Model evaluation: the metrics against scikit-learn's, holdout sets (.npz, .csv) and
their errors, and `steadyserve evaluate` end to end on real ONNX models.

Repository of the CLI tests (``repo``):
- ``clf``: scikit-learn LogisticRegression, 3 classes, converted with skl2onnx (zipmap
  off): X FP32 [-1, 4] -> label INT64 [-1], probabilities FP32 [-1, 3]. Version 1 is the
  trained model, version 2 the same with its weights shuffled (degraded). max_batch_size
  16, so the 300-row holdout runs in chunks. Backup ``clf_backup``; evaluation.data
  holdout.npz (X, label), evaluation.output probabilities.
- ``clf_backup``: a LogisticRegression trained on a quarter of the data, C=0.05.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.linear_model import LinearRegression, LogisticRegression

import onnx_models
from steadyserve.datatypes import TensorSpec
from steadyserve.errors import InvalidArgumentError
from steadyserve.evaluation import (
    Holdout,
    evaluate,
    format_table,
    load_holdout,
    score,
    task_of,
)

HOLDOUT_ROWS = 300
FEATURES = TensorSpec("X", "FP32", (-1, 4))


def approx(value):
    return pytest.approx(value, rel=1e-9, abs=1e-12)


def sk_classification(y, predicted, scores=None) -> dict:
    """scikit-learn's figures: binary (class 1) when only classes 0 and 1 occur, else macro."""
    binary = set(np.unique(np.r_[y, predicted])) <= {0, 1}
    average = "binary" if binary else "macro"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        out = {
            "accuracy": skm.accuracy_score(y, predicted),
            "precision": skm.precision_score(y, predicted, average=average, zero_division=0),
            "recall": skm.recall_score(y, predicted, average=average, zero_division=0),
            "f1": skm.f1_score(y, predicted, average=average, zero_division=0),
        }
    if scores is not None:
        if scores.shape[1] == 2:
            out["roc_auc"] = skm.roc_auc_score(y, scores[:, 1])
        else:
            out["roc_auc"] = skm.roc_auc_score(y, scores, multi_class="ovr", average="macro")
    return out


def sk_regression(y, prediction) -> dict:
    return {
        "mae": skm.mean_absolute_error(y, prediction),
        "rmse": float(np.sqrt(skm.mean_squared_error(y, prediction))),
        "r2": skm.r2_score(y, prediction),
    }


def assert_metrics(got: dict, expected: dict) -> None:
    assert set(got) == set(expected), (got, expected)
    for name, value in expected.items():
        assert got[name] == approx(value), name


# --------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("classes", [2, 3, 5])
def test_class_scores_match_sklearn(seed, classes):
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(20, 400))
    y = rng.integers(0, classes, rows)
    # Rounded scores: many ties, in the ranking and in the argmax.
    scores = rng.random((rows, classes)).round(1) + 0.01
    scores /= scores.sum(axis=1, keepdims=True)  # sklearn's ovr wants probabilities
    scores = scores.astype(np.float32)
    got = score("classification", y, scores)
    assert_metrics(got, sk_classification(y, np.argmax(scores, axis=1), scores))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 4)), min_size=2, max_size=60),
)
def test_binary_roc_auc_with_heavy_ties_matches_sklearn(pairs):
    y = np.array([int(p) for p, _ in pairs])
    assume(0 < y.sum() < len(y))
    p1 = np.array([s / 4 for _, s in pairs], dtype=np.float32)
    scores = np.stack([1 - p1, p1], axis=1)
    got = score("classification", y, scores)
    assert got["roc_auc"] == approx(skm.roc_auc_score(y, p1))
    assert_metrics(got, sk_classification(y, np.argmax(scores, axis=1), scores))


@pytest.mark.parametrize("seed", range(4))
def test_class_outputs_match_sklearn_macro_over_labels_and_predictions(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 150)  # class 3 is never predicted (precision 0) ...
    predicted = np.where(rng.random(150) < 0.6, y, rng.integers(0, 3, 150))
    predicted[predicted == 3] = 5  # ... and class 5 never in the labels (recall 0)
    predicted[:3] = 5
    got = score("classification", y, predicted.astype(np.int64))
    assert "roc_auc" not in got  # classes only: no scores to rank
    assert_metrics(got, sk_classification(y, predicted))


def test_binary_class_output_scores_class_1_and_never_predicted_has_precision_0():
    y = np.array([0, 1, 1, 0, 1])
    got = score("classification", y, np.zeros(5, np.int64))
    assert got == {"accuracy": 0.4, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    got = score("classification", y, np.array([[1], [1], [0], [0], [1]], np.int64))
    assert_metrics(got, sk_classification(y, np.array([1, 1, 0, 0, 1])))


def test_a_single_probability_column_is_the_score_of_class_1():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 80)
    p1 = rng.random(80).round(2).astype(np.float32)
    for prediction in (p1, p1[:, None]):
        got = score("classification", y, prediction)
        assert got["roc_auc"] == approx(skm.roc_auc_score(y, p1))
        assert_metrics(got, sk_classification(y, (p1 > 0.5).astype(int), np.c_[1 - p1, p1]))
    with pytest.raises(InvalidArgumentError, match=r"probability of class 1.*\[0, 1\]"):
        score("classification", y, p1 * 3)


def test_roc_auc_is_left_out_with_one_class_in_the_labels():
    got = score("classification", np.ones(6, np.int64), np.full((6, 3), 1 / 3, np.float32))
    assert "roc_auc" not in got and got["accuracy"] == 0.0  # argmax of ties: column 0


def test_multiclass_roc_auc_averages_the_classes_in_the_labels():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 90)  # class 3 has a score column but no label
    scores = rng.random((90, 4))
    got = score("classification", y, scores)
    expected = np.mean([skm.roc_auc_score(y == c, scores[:, c]) for c in range(3)])
    assert got["roc_auc"] == approx(expected)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("column", [False, True])
def test_regression_matches_sklearn(seed, column):
    rng = np.random.default_rng(seed)
    y = rng.normal(10, 3, 200)
    prediction = (y + rng.normal(0, 1 + seed, 200)).astype(np.float32)
    got = score("regression", y, prediction[:, None] if column else prediction)
    assert_metrics(got, sk_regression(y, prediction))


def test_regression_without_label_variance_has_no_r2():
    got = score("regression", np.full(5, 2.0), np.array([1, 2, 3, 2, 2], np.float32))
    assert got == {"mae": 0.4, "rmse": pytest.approx(np.sqrt(0.4))}


@pytest.mark.parametrize(
    ("task", "labels", "prediction", "message"),
    [
        ("regression", np.zeros(4), np.zeros((4, 3)), r"shape \[4, 3\]; regression takes one"),
        ("classification", np.array([0, 1, 3]), np.zeros((3, 3)),
         r"label of row 2 is 3, but the prediction has 3 class score columns"),
        ("classification", np.array([0.5, 1]), np.zeros((2, 2)), r"row 0 is 0.5, not a class"),
        ("classification", np.zeros(3), np.zeros((2, 2)), r"shape \[2, 2\] for 3 labels"),
        ("regression", np.zeros(3), np.array([1.0, np.nan, 2.0]), r"row 1 is not finite"),
        ("regression", np.array([1.0, np.inf]), np.zeros(2), r"label of row 1 is not finite"),
    ],
)  # fmt: skip
def test_score_errors_name_the_problem(task, labels, prediction, message):
    with pytest.raises(InvalidArgumentError, match=message):
        score(task, labels, prediction)


@pytest.mark.parametrize(
    ("labels", "prediction", "task"),
    [
        (np.array([0, 1, 2]), np.zeros((3, 3), np.float32), "classification"),
        (np.array([True, False]), np.zeros((2, 2), np.float32), "classification"),
        (np.array([0.0, 1.0, 2.0]), np.zeros((3, 3), np.float32), "classification"),
        (np.array([0, 1, 2]), np.array([0, 2, 1], np.int64), "classification"),
        (np.array([0, 1, 2]), np.zeros((3, 1), np.float32), "regression"),
        (np.array([0, 1, 2]), np.zeros(3, np.float32), "regression"),
        (np.array([0.5, 1.0, 2.0]), np.zeros((3, 3), np.float32), "regression"),
        (np.arange(101, dtype=np.float64), np.zeros((101, 2), np.float32), "regression"),
        (np.arange(101), np.zeros((101, 2), np.float32), "classification"),
    ],
)
def test_auto_task(labels, prediction, task):
    assert task_of("auto", labels, prediction) == task
    assert task_of("regression", labels, prediction) == "regression"


def test_unknown_task_is_refused():
    with pytest.raises(InvalidArgumentError, match="auto, classification, regression"):
        task_of("ranking", np.zeros(2), np.zeros(2))


# --------------------------------------------------------------------------- holdouts


def test_npz_holdout(tmp_path):
    x = np.arange(12, dtype=np.float64).reshape(3, 4)  # float64 holding exact float32 values
    np.savez(tmp_path / "h.npz", X=x, label=np.array([[0], [1], [2]]), extra=np.zeros(2))
    holdout = load_holdout(tmp_path / "h.npz", [FEATURES])
    assert holdout.rows == 3 and holdout.path == tmp_path / "h.npz"
    assert holdout.inputs["X"].dtype == np.float32 and list(holdout.inputs) == ["X"]
    np.testing.assert_array_equal(holdout.inputs["X"], x)
    np.testing.assert_array_equal(holdout.labels, [0, 1, 2])


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((3, 4), np.float32), "label": np.zeros(3)},
         r"h.npz has no array 'X' \(a model input\); it needs 'X', 'label' \(found: x, label\)"),
        ({"X": np.zeros((3, 4), np.float32)}, r"h.npz has no array 'label' \(the labels\)"),
        ({"X": np.full((3, 4), 0.1), "label": np.zeros(3)},
         r"h.npz: array 'X' is float64, input 'X' takes FP32 \(float32\): .*value 0.1"),
        ({"X": np.zeros((3, 5), np.float32), "label": np.zeros(3)},
         r"h.npz: array 'X' has shape \[3, 5\]; input 'X' takes \[rows, 4\]"),
        ({"X": np.zeros((3, 4), np.float32), "label": np.zeros(4)},
         r"h.npz: arrays have different row counts \('X' 3, 'label' 4\)"),
        ({"X": np.zeros((3, 4), np.float32), "label": np.array(["a", "b", "c"])},
         r"h.npz: array 'label' is <U1; labels must be numbers"),
        ({"X": np.zeros((0, 4), np.float32), "label": np.zeros(0)}, r"h.npz has no rows"),
    ],
)  # fmt: skip
def test_npz_holdout_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "h.npz", **arrays)
    with pytest.raises(InvalidArgumentError, match=message):
        load_holdout(tmp_path / "h.npz", [FEATURES])


def test_csv_holdout_label_anywhere_and_empty_cells_missing(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("a,b,target,c,d\n1,2,0,3,4\n5,,1,7,8.5\n\n")
    holdout = load_holdout(path, [FEATURES], label="target")
    np.testing.assert_array_equal(holdout.labels, [0, 1])
    np.testing.assert_array_equal(holdout.inputs["X"], [[1, 2, 3, 4], [5, np.nan, 7, 8.5]])
    assert holdout.inputs["X"].dtype == np.float32


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2,3,4,0\n", r"h.csv has no header row: the first line must name the columns"),
        ("a,b,c,d,y\n1,2,3,4,0\n", r"h.csv has no column 'label' \(the labels\) \(columns: a, b"),
        ("a,b,c,label\n1,2,3,0\n", r"h.csv has 3 feature column\(s\) besides the label 'label', "
         r"but input 'X' takes 4 features per row"),
        ("a,b,c,d,label\n1,2,3,4,0\n1,2,x,4,1\n", r"h.csv line 3, column 'c': 'x' is not a number"),
        ("a,b,c,d,label\n1,2,3,4,\n", r"h.csv line 2, column 'label': '' is not a number"),
        ("a,b,c,d,label\n1,2,3,4\n", r"h.csv line 2: 4 cells, the header has 5"),
        ("a,b,c,d,label\n", r"h.csv has no rows"),
        ("\n", r"h.csv is empty"),
    ],
)  # fmt: skip
def test_csv_holdout_errors(tmp_path, text, message):
    (tmp_path / "h.csv").write_text(text)
    with pytest.raises(InvalidArgumentError, match=message):
        load_holdout(tmp_path / "h.csv", [FEATURES])


def test_csv_holdout_needs_one_fp32_matrix_input(tmp_path):
    (tmp_path / "h.csv").write_text("a,label\n1,0\n")
    two = [TensorSpec("a", "FP32", (-1, 1)), TensorSpec("b", "FP32", (-1, 1))]
    with pytest.raises(InvalidArgumentError, match=r"single FP32 \[batch, features\] input.*npz"):
        load_holdout(tmp_path / "h.csv", two)


def test_holdout_path_errors(tmp_path):
    (tmp_path / "h.parquet").write_text("")
    with pytest.raises(InvalidArgumentError, match=r"h.parquet: use .npz or .csv"):
        load_holdout(tmp_path / "h.parquet", [FEATURES])
    with pytest.raises(InvalidArgumentError, match=r"holdout set .*nope.npz does not exist"):
        load_holdout(tmp_path / "nope.npz", [FEATURES])
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(InvalidArgumentError, match=r"cannot read holdout set .*bad.npz as npz"):
        load_holdout(tmp_path / "bad.npz", [FEATURES])


# --------------------------------------------------------------------------- evaluate


def test_evaluate_feeds_chunks_of_max_rows_and_scores_the_first_output(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((23, 4)).astype(np.float32)
    y = rng.integers(0, 2, 23)
    holdout = Holdout({"X": x}, y, tmp_path / "h.npz")
    chunks = []

    def infer(inputs):
        chunks.append(len(inputs["X"]))
        scores = np.c_[-inputs["X"][:, 0], inputs["X"][:, 0]]
        return {"scores": scores, "label": np.argmax(scores, axis=1)}

    result = evaluate(infer, holdout, output=None, task="auto", max_rows=8)
    assert chunks == [8, 8, 7]
    assert result["task"] == "classification" and result["output"] == "scores"
    assert result["rows"] == 23
    scores = np.c_[-x[:, 0], x[:, 0]]
    assert_metrics(result["metrics"], sk_classification(y, np.argmax(scores, 1), scores))
    by_label = evaluate(infer, holdout, output="label", task="auto", max_rows=30)
    assert by_label["metrics"]["accuracy"] == result["metrics"]["accuracy"]
    assert "roc_auc" not in by_label["metrics"]
    with pytest.raises(InvalidArgumentError, match=r"no output 'nope' \(outputs: scores, label\)"):
        evaluate(infer, holdout, output="nope", task="auto", max_rows=8)
    with pytest.raises(InvalidArgumentError, match="evaluation needs a batching model"):
        evaluate(infer, holdout, output=None, task="auto", max_rows=0)


def test_evaluate_refuses_outputs_of_the_wrong_length(tmp_path):
    holdout = Holdout({"X": np.zeros((4, 4), np.float32)}, np.zeros(4), tmp_path / "h.npz")
    with pytest.raises(InvalidArgumentError, match=r"shape \[1\] for a chunk of 4 rows"):
        evaluate(lambda _: {"y": np.zeros(1)}, holdout, output=None, task="auto", max_rows=4)


def test_format_table():
    table = format_table(
        [
            ("m v1", {"rows": 10, "metrics": {"accuracy": 0.9, "roc_auc": 0.95}}),
            ("backup other v3", {"rows": 10, "metrics": {"accuracy": 0.123456}}),
            ("m v2", {"error": "failed to load: bad file", "metrics": {}}),
        ]
    ).splitlines()
    assert table[0].split() == ["metric", "m", "v1", "backup", "other", "v3", "m", "v2"]
    assert table[1].split() == ["accuracy", "0.9000", "0.1235", "-"]
    assert table[2].split() == ["roc_auc", "0.9500", "-", "-"]
    assert table[3].split() == ["rows", "10", "10", "-"]
    assert table[4] == "m v2: error: failed to load: bad file"
    # Columns line up: every value ends where its title does.
    ends = [table[0].index(t) + len(t) for t in ("m v1", "backup other v3")]
    assert [table[1].index(v) + len(v) for v in ("0.9000", "0.1235")] == ends


# --------------------------------------------------------------------------- the CLI


def _to_onnx(estimator, path, n_features=4, classifier=True) -> None:
    from skl2onnx import to_onnx

    options = {id(estimator): {"zipmap": False}} if classifier else None
    model = to_onnx(
        estimator,
        np.zeros((1, n_features), np.float32),
        options=options,
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    model.ir_version = min(model.ir_version, onnx_models.IR_VERSION)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))


def _classes_data(rows: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 4)).astype(np.float32)
    logits = x @ np.array([[2, 0, -1], [0, 2, 0], [-1, 0, 2], [1, -1, 0.5]]) * 1.5
    y = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
    return x, y


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_repo")
    x, y = _classes_data(1200, 0)
    good = LogisticRegression(max_iter=1000).fit(x, y)
    degraded = LogisticRegression(max_iter=1000).fit(x, y)
    degraded.coef_ = np.random.default_rng(1).permutation(good.coef_.ravel()).reshape(3, 4)
    backup = LogisticRegression(max_iter=1000, C=0.05).fit(x[:300], y[:300])
    _to_onnx(good, root / "clf" / "1" / "model.onnx")
    _to_onnx(degraded, root / "clf" / "2" / "model.onnx")
    _to_onnx(backup, root / "clf_backup" / "1" / "model.onnx")
    config = {
        "max_batch_size": 16,
        "backup": "clf_backup",
        "evaluation": {"data": "holdout.npz", "output": "probabilities"},
    }
    (root / "clf" / "config.yaml").write_text(yaml.safe_dump(config))
    (root / "clf_backup" / "config.yaml").write_text(yaml.safe_dump({"max_batch_size": 64}))
    hx, hy = _classes_data(HOLDOUT_ROWS, 2)
    np.savez(root / "clf" / "holdout.npz", X=hx, label=hy)
    return root


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "steadyserve", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def ort_outputs(model_file, x) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"X": x}), strict=True))


def test_evaluate_scores_every_version_and_the_backup_as_sklearn_does(repo):
    done = run_cli("evaluate", str(repo), "clf", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["model"] == "clf" and report["data"] == str(repo / "clf" / "holdout.npz")
    assert report["task"] == "classification" and report["rows"] == HOLDOUT_ROWS
    rows = [(r["model"], r["version"], r["role"]) for r in report["results"]]
    assert rows == [("clf", "1", "version"), ("clf", "2", "version"), ("clf_backup", "1", "backup")]
    with np.load(repo / "clf" / "holdout.npz") as holdout:
        x, y = holdout["X"], holdout["label"]
    for result in report["results"]:
        file = repo / result["model"] / result["version"] / "model.onnx"
        probabilities = ort_outputs(file, x)["probabilities"]
        assert result["output"] == "probabilities" and result["rows"] == HOLDOUT_ROWS
        expected = sk_classification(y, np.argmax(probabilities, 1), probabilities)
        assert result["metrics"] == pytest.approx(expected, rel=1e-6)
    v1, v2, backup = (r["metrics"] for r in report["results"])
    assert v1["accuracy"] > 0.7 and v1["roc_auc"] > 0.85
    assert v2["accuracy"] < v1["accuracy"] - 0.15 and v2["roc_auc"] < v1["roc_auc"] - 0.1
    assert backup["accuracy"] > v2["accuracy"]


def test_evaluate_prints_a_column_per_version_and_backup(repo):
    done = run_cli("evaluate", str(repo), "clf")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"model 'clf', holdout {repo / 'clf' / 'holdout.npz'}: 300 rows")
    assert lines[1].split() == ["metric", "clf", "v1", "clf", "v2", "backup", "clf_backup", "v1"]
    assert [line.split()[0] for line in lines[2:]] == [
        "accuracy",
        "precision",
        "recall",
        "f1",
        "roc_auc",
        "rows",
    ]
    assert all(len(line.split()) == 4 for line in lines[2:])
    assert lines[-1].split() == ["rows", "300", "300", "300"]


def test_evaluate_the_class_output_has_no_roc_auc(repo, tmp_path):
    data = tmp_path / "renamed.npz"
    with np.load(repo / "clf" / "holdout.npz") as holdout:
        np.savez(data, X=holdout["X"], truth=holdout["label"])
    done = run_cli(
        "evaluate", str(repo), "clf", "--data", str(data), "--label", "truth", "--output",
        "label", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    labels = ort_outputs(repo / "clf" / "1" / "model.onnx", np.load(data)["X"])["label"]
    v1 = report["results"][0]
    assert v1["output"] == "label" and "roc_auc" not in v1["metrics"]
    assert v1["metrics"] == pytest.approx(sk_classification(np.load(data)["truth"], labels))


def test_evaluate_regressor_on_a_csv(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((400, 3)).astype(np.float32)
    target = x @ np.array([1.5, -2.0, 0.5]) + 3 + rng.normal(0, 0.3, 400)
    repo = tmp_path / "repo"
    _to_onnx(LinearRegression().fit(x, target), repo / "reg" / "1" / "model.onnx", 3, False)
    config = {"max_batch_size": 32, "evaluation": {"data": "data/holdout.csv", "label": "y"}}
    (repo / "reg" / "config.yaml").write_text(yaml.safe_dump(config))
    hx = rng.standard_normal((77, 3)).astype(np.float32)
    hy = hx @ np.array([1.5, -2.0, 0.5]) + 3 + rng.normal(0, 0.3, 77)
    (repo / "reg" / "data").mkdir()
    rows = zip(hx.tolist(), hy.tolist(), strict=True)
    lines = ["a,y,b,c"] + [f"{a!r},{t!r},{b!r},{c!r}" for (a, b, c), t in rows]
    (repo / "reg" / "data" / "holdout.csv").write_text("\n".join(lines) + "\n")
    done = run_cli("evaluate", str(repo), "reg", "--json")
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(done.stdout)["results"]
    assert result["task"] == "regression" and result["rows"] == 77
    prediction = ort_outputs(repo / "reg" / "1" / "model.onnx", hx)["variable"]
    assert result["metrics"] == pytest.approx(sk_regression(hy, prediction.ravel()), rel=1e-6)
    assert result["metrics"]["r2"] > 0.9
    table = run_cli("evaluate", str(repo), "reg")
    assert [line.split()[0] for line in table.stdout.splitlines()[2:]] == [
        "mae",
        "rmse",
        "r2",
        "rows",
    ]


def test_evaluate_shows_a_version_that_fails_to_load_as_an_error_row(repo, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    (copy / "clf" / "3").mkdir()
    (copy / "clf" / "3" / "model.onnx").write_bytes(b"not an onnx model")
    done = run_cli("evaluate", str(copy), "clf", "--json")
    assert done.returncode == 1, done.stderr
    results = json.loads(done.stdout)["results"]
    assert [r["version"] for r in results] == ["1", "2", "3", "1"]
    assert "error" not in results[0] and results[0]["metrics"]["accuracy"] > 0.7
    assert results[2]["metrics"] == {} and results[2]["error"].startswith("failed to load: ")
    assert "model.onnx" in results[2]["error"]
    table = run_cli("evaluate", str(copy), "clf")
    assert table.returncode == 1
    assert table.stdout.splitlines()[-1].startswith("clf v3: error: failed to load: ")


def test_evaluate_an_answer_from_the_backup_is_an_error_of_the_version(repo, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    config = yaml.safe_load((copy / "clf" / "config.yaml").read_text())
    # Every batch of clf fails its output check, so the backup answers for it.
    config["failover"] = {"output_checks": [{"name": "probabilities", "max": 0.01}]}
    (copy / "clf" / "config.yaml").write_text(yaml.safe_dump(config))
    done = run_cli("evaluate", str(copy), "clf", "--json")
    assert done.returncode == 1, done.stderr
    v1, v2, backup = json.loads(done.stdout)["results"]
    for row, version in ((v1, "1"), (v2, "2")):
        assert row["error"].startswith(
            f"model 'clf' version {version} failed on the holdout set; 'clf_backup' version 1 "
            f"answered instead"
        ), row
    assert "error" not in backup and backup["metrics"]["accuracy"] > 0.5


def test_evaluate_scores_versions_that_the_gate_would_refuse(repo, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    config = yaml.safe_load((copy / "clf" / "config.yaml").read_text())
    config["gate"] = {"rules": [{"metric": "accuracy", "min": 0.99}]}
    config["probation"] = {"window_s": 60.0}
    (copy / "clf" / "config.yaml").write_text(yaml.safe_dump(config))
    done = run_cli("evaluate", str(copy), "clf", "--json")
    assert done.returncode == 0, done.stderr
    v1, v2, _ = json.loads(done.stdout)["results"]
    assert (
        v1["metrics"]["accuracy"] < 0.99 and v2["metrics"]["accuracy"] < v1["metrics"]["accuracy"]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["clf", "--data", "{tmp}/none.npz"], "holdout set {tmp}/none.npz does not exist"),
        (["clf", "--data", "{tmp}/h.txt"], "holdout set {tmp}/h.txt: use .npz or .csv"),
        (["clf", "--data", "{tmp}/other.npz"], "has no array 'X' (a model input)"),
        (["clf_backup"], "no holdout set: pass --data FILE, or set evaluation.data in"),
        (["nope"], "has no model 'nope' (models: clf, clf_backup)"),
    ],
)
def test_evaluate_usage_and_data_errors_exit_2(repo, tmp_path, args, message):
    (tmp_path / "h.txt").write_text("")
    np.savez(tmp_path / "other.npz", features=np.zeros((2, 4), np.float32), label=np.zeros(2))
    done = run_cli("evaluate", str(repo), *(a.format(tmp=tmp_path) for a in args))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    err = done.stderr.strip()
    assert err.startswith("steadyserve evaluate: error: ") and "\n" not in err, err
    assert message.format(tmp=tmp_path) in err, err
