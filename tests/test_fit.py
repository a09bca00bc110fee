"""Fitting stats files: `steadyserve fit` from .npy / .npz / .csv, then serving with them;
scikit-learn scaler parameters giving the scaler's own results."""

from __future__ import annotations

import functools
import json

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler

import onnx_models
from steadyserve import Runtime
from steadyserve.cli import main as cli_main
from steadyserve.errors import InvalidArgumentError
from steadyserve.features.stats import fit_feature_stats, stats_from_sklearn, write_stats

N = 6
NAMES = ["age", "income", "height", "weight", "score", "tenure"]
MEANS = np.array([40, 5e4, 170, 70, 0, 3], np.float32)
STDS = np.array([12, 1e4, 10, 15, 1, 2], np.float32)


def reference(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(MEANS, STDS, (rows, N)).astype(np.float32)


def make_model(root, contract: dict | None = None, drift: dict | None = None):
    """REPO/lin: a linear model x [-1, 6] -> y [-1, 2] with ``contract`` on x."""
    config = {"max_batch_size": 64, "inputs": [{"name": "x", "contract": contract or {}}]}
    if drift:
        config["drift"] = drift
    onnx_models.make_repo(
        root,
        {"lin": functools.partial(onnx_models.write_linear, n_in=N, n_out=2, seed=3)},
        configs={"lin": config},
    )
    return root / "lin"


def ort_run(model_dir, x):
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"))
    return session.run(None, {"x": np.asarray(x, np.float32)})[0]


CONTRACT = {
    "feature_names": NAMES,
    "missing": "reject",
    "scaling": "standard",
    "features": {"income": {"missing": "median", "min": 0, "max": 1e6}},
}


def fit(model_dir, data, *extra) -> int:
    return cli_main(["fit", str(model_dir), "--data", str(data), *extra])


# --------------------------------------------------------------------------- round trips


def test_fit_npy_then_serve(tmp_path, capsys):
    model_dir = make_model(tmp_path / "repo", CONTRACT, {"window_rows": 1000, "min_rows": 100})
    ref = reference(3000, seed=1)
    np.save(tmp_path / "ref.npy", ref)
    assert fit(model_dir, tmp_path / "ref.npy") == 0
    out = capsys.readouterr().out
    assert "input 'x': 3000 rows x 6 features" in out and "output 'y': 3000 rows x 2" in out
    assert f"wrote {model_dir / '1' / 'stats.json'}" in out

    stats = json.loads((model_dir / "1" / "stats.json").read_text())
    s = stats["inputs"]["x"]
    assert s["feature_names"] == NAMES and s["rows"] == 3000
    np.testing.assert_allclose(s["mean"], ref.astype(np.float64).mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(s["std"], ref.astype(np.float64).std(axis=0), rtol=1e-9)
    np.testing.assert_allclose(s["q75"], np.quantile(ref.astype(np.float64), 0.75, axis=0))
    # the outputs were fitted on the model's answers to the *scaled* reference
    scaled = (ref - np.float32(s["mean"])) * (1 / np.asarray(s["std"])).astype(np.float32)
    want = fit_feature_stats(ort_run(model_dir, scaled))
    np.testing.assert_allclose(stats["outputs"]["y"]["mean"], want["mean"], rtol=1e-5)
    assert stats["outputs"]["y"]["reference_counts"] == want["reference_counts"]

    with Runtime(tmp_path / "repo", warmup=False) as rt:
        x = reference(64, seed=2)
        got = rt.infer("lin", {"x": x}).outputs["y"]
        scaled = (x - np.float32(s["mean"])) * (1 / np.asarray(s["std"])).astype(np.float32)
        np.testing.assert_allclose(got, ort_run(model_dir, scaled), rtol=1e-5, atol=1e-5)
        x[3, 1] = np.nan  # income: imputed with the fitted median
        got = rt.infer("lin", {"x": x[3:4]}).outputs["y"]
        x[3, 1] = s["median"][1]
        scaled = (x[3:4] - np.float32(s["mean"])) * (1 / np.asarray(s["std"])).astype(np.float32)
        np.testing.assert_allclose(got, ort_run(model_dir, scaled), rtol=1e-5, atol=1e-5)
        # a fresh sample of the reference distribution: no drift, in or out
        for start in range(0, 1000, 50):
            rt.infer("lin", {"x": reference(1000, seed=3)[start : start + 50]})
        report = rt.get_model("lin").drift_report()
        assert report["inputs"]["x"]["flagged"] == [] and report["outputs"]["y"]["flagged"] == []
        assert report["inputs"]["x"]["worst"]["psi"] < 0.05


def test_fit_csv_with_header_and_missing_values(tmp_path, capsys):
    model_dir = make_model(tmp_path / "repo", CONTRACT)
    ref = reference(500, seed=4).astype(np.float64)
    lines = [",".join(NAMES)] + [",".join(f"{v:.6f}" for v in row) for row in ref]
    lines[10] = lines[10].replace(lines[10].split(",")[1], "", 1)  # empty income: missing
    (tmp_path / "ref.csv").write_text("\n".join(lines) + "\n\n")
    assert fit(model_dir, tmp_path / "ref.csv", "--bins", "5") == 0
    s = json.loads((model_dir / "1" / "stats.json").read_text())["inputs"]["x"]
    assert s["feature_names"] == NAMES and s["rows"] == 500
    assert s["missing_rate"][1] == pytest.approx(1 / 500) and s["missing_rate"][0] == 0
    assert len(s["bin_edges"][0]) == 4 and sum(s["reference_counts"][1]) == 499
    np.testing.assert_allclose(s["mean"][0], ref[:, 0].mean(), rtol=1e-6)
    assert "1 missing values (NaN/inf)" in capsys.readouterr().out


def test_fit_csv_without_header_takes_the_contract_names(tmp_path):
    model_dir = make_model(tmp_path / "repo", CONTRACT)
    np.savetxt(tmp_path / "ref.csv", reference(100, seed=5), delimiter=",")
    assert fit(model_dir, tmp_path / "ref.csv") == 0
    s = json.loads((model_dir / "1" / "stats.json").read_text())["inputs"]["x"]
    assert s["feature_names"] == NAMES and s["rows"] == 100


def test_fit_npz_by_input_name_or_single_array(tmp_path):
    model_dir = make_model(tmp_path / "repo")
    np.savez(tmp_path / "named.npz", x=reference(200, seed=6), other=np.zeros(3))
    assert fit(model_dir, tmp_path / "named.npz") == 0
    assert json.loads((model_dir / "1" / "stats.json").read_text())["inputs"]["x"]["rows"] == 200
    np.savez(tmp_path / "single.npz", data=reference(300, seed=7))
    assert fit(model_dir, tmp_path / "single.npz", "--input", "x") == 0
    assert json.loads((model_dir / "1" / "stats.json").read_text())["inputs"]["x"]["rows"] == 300


def test_fit_leaves_out_the_rows_the_contract_refuses(tmp_path, capsys):
    contract = {"feature_names": NAMES, "missing": "reject", "min": -1e6, "max": 1e6,
                "features": {"score": {"min": -1, "max": 1, "out_of_range": "clip"}}}  # fmt: skip
    model_dir = make_model(tmp_path / "repo", contract)
    ref = reference(400, seed=8)
    ref[17, 4] = np.nan  # refused: missing
    ref[30, 2] = 2e6  # refused: out of range
    np.save(tmp_path / "ref.npy", ref)
    assert fit(model_dir, tmp_path / "ref.npy") == 0
    out = capsys.readouterr().out
    assert "2 reference row(s) refused by the contract are left out; the first: model 'lin': " \
        "input 'x' row 17, feature 'score' (index 4): value nan is not allowed" in out  # fmt: skip
    stats = json.loads((model_dir / "1" / "stats.json").read_text())
    s = stats["inputs"]["x"]
    assert s["rows"] == 398 and stats["outputs"]["y"]["rows"] == 398
    # the clipped feature is described as the server sees it
    assert s["min"][4] >= -1 and s["max"][4] <= 1
    keep = np.ones(400, bool)
    keep[[17, 30]] = False
    np.testing.assert_allclose(s["mean"][0], ref[keep, 0].astype(np.float64).mean(), rtol=1e-9)


def test_fit_keeps_other_inputs_and_fits_outputs_only_with_every_input(tmp_path, capsys):
    root = tmp_path / "repo"
    onnx_models.make_repo(root, {"add": onnx_models.write_add_two_inputs},
                          configs={"add": {"max_batch_size": 8}})  # fmt: skip
    rng = np.random.default_rng(9)
    np.savez(tmp_path / "a.npz", a=rng.normal(0, 1, (100, 4)).astype(np.float32))
    assert fit(root / "add", tmp_path / "a.npz") == 0
    assert "outputs not fitted: the model also needs input(s) 'b'" in capsys.readouterr().out
    a, b = rng.normal(0, 1, (2, 100, 4)).astype(np.float32)
    np.savez(tmp_path / "ab.npz", a=a, b=b + 10)
    assert fit(root / "add", tmp_path / "ab.npz") == 0
    stats = json.loads((root / "add" / "1" / "stats.json").read_text())
    assert set(stats["inputs"]) == {"a", "b"} and set(stats["outputs"]) == {"sum"}
    np.testing.assert_allclose(stats["outputs"]["sum"]["mean"], (a + b + 10).mean(0), rtol=1e-5)
    np.savez(tmp_path / "b.npz", b=b)
    assert fit(root / "add", tmp_path / "b.npz") == 0  # refits b, keeps a and the outputs
    again = json.loads((root / "add" / "1" / "stats.json").read_text())
    assert again["inputs"]["a"] == stats["inputs"]["a"] and again["outputs"] == stats["outputs"]
    assert again["inputs"]["b"]["mean"] != stats["inputs"]["b"]["mean"]


# --------------------------------------------------------------------------- errors


def _error(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.npy", None, "missing.npy does not exist"),
        ("ref.txt", "1,2", "use .npy, .npz or .csv (got '.txt')"),
        ("short.npy", np.zeros((10, 5), np.float32),
         "data for input 'x' has 5 columns, but the input takes 6 features"),
        ("flat.npy", np.zeros(10, np.float32), "data for input 'x' must be [rows, 6]"),
        ("one.npy", np.zeros((1, 6), np.float32), "needs at least 2 rows, got 1"),
        ("text.npy", np.array([["a"] * 6] * 3), "has dtype <U1; expected numbers"),
        ("objects.npy", np.array([[{}] * 6] * 3, dtype=object), "cannot read"),
        ("bad.csv", "1,2,3,4,5,6\n1,2,x,4,5,6\n", "bad.csv line 2, column 3: 'x' is not a number"),
        ("ragged.csv", "1,2,3,4,5,6\n1,2,3\n", "ragged.csv line 2: 3 values, expected 6"),
        ("names.csv", "age,income,height,weight,tenure,score\n" + "1,2,3,4,5,6\n" * 3,
         "the CSV header differs from input 'x' contract.feature_names at column 5: 'tenure' "
         "vs 'score'"),
        ("dup.csv", "a,a,b,c,d,e\n1,2,3,4,5,6\n", "column name 'a' appears twice"),
        ("head.csv", "a,b,c,d,e,f\n", "has a header but no rows"),
        ("empty.csv", "\n\n", "is empty"),
        ("two.npz", {"p": np.zeros((3, 6)), "q": np.zeros((3, 6))},
         "the data has arrays 'p', 'q'; none is named 'x'"),
    ],
)  # fmt: skip
def test_fit_data_errors_are_clear(tmp_path, capsys, name, content, message):
    model_dir = make_model(tmp_path / "repo", CONTRACT)
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, dict):
        np.savez(path, **content)
    elif content is not None:
        np.save(path, content, allow_pickle=True)
    assert fit(model_dir, path) == 2
    err = _error(capsys)
    assert err.startswith("steadyserve fit: error: ") and message in err, err
    assert not (model_dir / "1" / "stats.json").exists()


def test_fit_model_errors_are_clear(tmp_path, capsys):
    model_dir = make_model(tmp_path / "repo")
    np.save(tmp_path / "ref.npy", reference(10, seed=0))
    assert fit(tmp_path / "repo" / "nope", tmp_path / "ref.npy") == 2
    assert "model directory" in _error(capsys)
    assert fit(model_dir, tmp_path / "ref.npy", "--version", "4") == 2
    assert "has no version 4 (versions: 1)" in _error(capsys)
    assert fit(model_dir, tmp_path / "ref.npy", "--input", "z") == 2
    assert "model 'lin' has no input 'z' (inputs: x)" in _error(capsys)
    assert fit(model_dir, tmp_path / "ref.npy", "--bins", "1") == 2
    assert "--bins must be an integer 2..1024" in _error(capsys)
    (tmp_path / "repo" / "empty").mkdir()
    assert fit(tmp_path / "repo" / "empty", tmp_path / "ref.npy") == 2
    assert "has no <version>/model.onnx" in _error(capsys)


def test_fit_refuses_data_the_contract_refuses_entirely(tmp_path, capsys):
    model_dir = make_model(tmp_path / "repo", {"min": 0, "max": 1})
    np.save(tmp_path / "ref.npy", reference(10, seed=0) + 1e3)
    assert fit(model_dir, tmp_path / "ref.npy") == 2
    assert "the contract refuses 10 of the 10 rows" in _error(capsys)


# --------------------------------------------------------------------------- scikit-learn


SCALERS = [
    StandardScaler(),
    StandardScaler(with_mean=False),
    StandardScaler(with_std=False),
    MinMaxScaler(),
    RobustScaler(),
    RobustScaler(with_centering=False),
    RobustScaler(quantile_range=(10, 90), unit_variance=True),
]
SCALING = {"StandardScaler": "standard", "MinMaxScaler": "minmax", "RobustScaler": "robust"}


@pytest.fixture(scope="module")
def scaler_data():
    x = reference(1000, seed=11).astype(np.float64)
    x[:, 5] = 3.0  # a constant feature: no spread, left unscaled (as scikit-learn does)
    return x


@pytest.mark.parametrize("scaler", SCALERS, ids=repr)
def test_sklearn_scaler_parameters_give_the_scalers_result(tmp_path, scaler_data, scaler):
    scaler.fit(scaler_data)
    contract = {"scaling": SCALING[type(scaler).__name__]}
    onnx_models.make_repo(
        tmp_path,
        {"ident": functools.partial(onnx_models.write_identity, dims=(-1, N))},
        configs={"ident": {"max_batch_size": 64,
                           "inputs": [{"name": "input", "contract": contract}]}},
    )  # fmt: skip
    stats = stats_from_sklearn(scaler, names=NAMES)
    write_stats(tmp_path / "ident" / "1" / "stats.json", {"format": "steadyserve.stats/1",
                                                          "inputs": {"input": stats}})  # fmt: skip
    x = reference(64, seed=12)
    with Runtime(tmp_path, warmup=False) as rt:
        got = rt.infer("ident", {"input": x}).outputs["output"]
    want = scaler.transform(x.astype(np.float64))
    assert_float32_close(got, want, x)


def assert_float32_close(got, want, x):
    """Equal up to a few float32 roundings of the inputs' magnitude, in output units: the
    served path computes (x - offset) * scale in float32, scikit-learn in float64."""
    x = x.astype(np.float64)
    slope = np.where(np.ptp(x, axis=0) > 0, np.ptp(want, axis=0) / np.ptp(x, axis=0), 1.0)
    tolerance = 4 * np.finfo(np.float32).eps * (np.abs(x).max(axis=0) * slope + np.abs(want))
    error = np.abs(got - want)
    assert (error <= tolerance).all(), f"max error {error.max()} (tolerance {tolerance})"


def test_sklearn_scalers_that_a_contract_cannot_express(scaler_data):
    with pytest.raises(ValueError, match="not fitted"):
        stats_from_sklearn(StandardScaler())
    with pytest.raises(ValueError, match=r"feature_range=\(0, 1\)"):
        stats_from_sklearn(MinMaxScaler(feature_range=(-1, 1)).fit(scaler_data))
    with pytest.raises(ValueError, match="out_of_range: clip"):
        stats_from_sklearn(MinMaxScaler(clip=True).fit(scaler_data))
    from sklearn.preprocessing import MaxAbsScaler

    with pytest.raises(ValueError, match="unsupported scaler MaxAbsScaler"):
        stats_from_sklearn(MaxAbsScaler().fit(scaler_data))
    with pytest.raises(ValueError, match="2 feature names for a scaler of 6 features"):
        stats_from_sklearn(StandardScaler().fit(scaler_data), names=["a", "b"])


def test_sklearn_scaler_feeds_the_native_transform_directly(scaler_data):
    """The same parameters through build_transform (no model): in-process use."""
    from steadyserve.config import ContractConfig, DriftConfig
    from steadyserve.features.transform import build_transform

    scaler = RobustScaler().fit(scaler_data)
    t = build_transform("m", "x", N, ContractConfig(scaling="robust"), DriftConfig(),
                        stats_from_sklearn(scaler), "test")  # fmt: skip
    x = reference(10, seed=13)
    want = scaler.transform(x.astype(np.float64))
    assert_float32_close(t.apply(x), want, x)
    with pytest.raises(InvalidArgumentError):
        t.apply(np.full((1, N), np.nan, np.float32))  # missing: reject by default


def test_contract_module_still_exports_the_features_api():
    """README documents ``steadyserve.contract.stats_from_sklearn``: the compatibility
    module re-exports the names that moved to steadyserve.features."""
    import steadyserve.contract as contract
    from steadyserve import features
    from steadyserve.features import fit, transform

    assert contract.stats_from_sklearn is stats_from_sklearn
    assert contract.fit_model is fit.fit_model
    assert contract._sub_window is transform._sub_window
    for name in features.__all__:
        assert getattr(contract, name) is getattr(features, name)
