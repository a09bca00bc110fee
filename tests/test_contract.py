"""Feature contracts: the native fused pass (validate, impute, clip, scale, count) against a
numpy reference implementation, every policy through a served model, and the errors."""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import onnx_models
from steadyserve import Runtime, _core
from steadyserve.errors import ConfigError, InvalidArgumentError
from steadyserve.features.stats import fit_stats, write_stats
from steadyserve.features.transform import build_transform

# Policy codes of _core.FeatureTransform.
NONE, REJECT, CLIP = 0, 1, 2  # range policy ("allow" = NONE: count only)
MISSING_REJECT, MISSING_IMPUTE = 0, 1

INF = float("inf")


# --------------------------------------------------------------------------- the reference


def _fmt(value: float) -> str:
    return "%.9g" % float(value)  # the core's format for values and limits  # noqa: UP031


def reference_apply(x, p):
    """What FeatureTransform.apply must do, in plain numpy.

    Returns ("refused", message) or ("ok", y, counts [n, bins], missing [n], out_of_range [n]).
    """
    x = np.asarray(x, dtype=np.float32).reshape(-1, p["n"])
    lo, hi = p["lo"], p["hi"]
    finite = np.isfinite(x)
    with np.errstate(invalid="ignore"):
        outside = finite & ((x < lo) | (x > hi))
    refused = (~finite & (p["missing_policy"] == MISSING_REJECT)) | (
        outside & (p["range_policy"] == REJECT)
    )
    if refused.any():
        r, f = np.argwhere(refused)[0]  # the first row, then its first feature
        v = x[r, f]
        feature = f"'{p['names'][f]}' (index {f})" if p["names"] else str(f)
        if not np.isfinite(v):
            rule = "is not allowed (NaN/inf policy: reject)"
        else:
            rule = f"is outside [{_fmt(lo[f])}, {_fmt(hi[f])}] (range policy: reject)"
        return "refused", f"model 'm': input 'x' row {r}, feature {feature}: value {_fmt(v)} {rule}"
    v = np.where(finite, x, p["impute"])
    clip = p["range_policy"] == CLIP
    v = np.where(clip, np.minimum(np.maximum(v, lo), hi), v).astype(np.float32)
    y = (v - p["offset"]) * p["scale"]
    bins = p["bins"]
    counts = np.zeros((p["n"], max(bins, 1)), dtype=np.uint64)
    if bins:
        for f in range(p["n"]):
            b = np.searchsorted(p["edges"][f], v[finite[:, f], f], side="right")
            counts[f] = np.bincount(b, minlength=bins)
    return "ok", y, counts, (~finite).sum(axis=0), outside.sum(axis=0)


def make_transform(p, **window):
    return _core.FeatureTransform(
        "m",
        "x",
        list(p["names"] or []),
        p["lo"].tolist(),
        p["hi"].tolist(),
        p["range_policy"].tolist(),
        p["missing_policy"].tolist(),
        p["impute"].tolist(),
        p["offset"].tolist(),
        p["scale"].tolist(),
        bins=p["bins"],
        edges=p["edges"].ravel().tolist() if p["bins"] else [],
        sub_windows=window.get("sub_windows", 4),
        sub_window_rows=window.get("sub_window_rows", 1 << 20),
    )


small = st.floats(-6, 6, width=32)


def _vector(draw, n, elements, dtype=np.float32):
    return draw(hnp.arrays(dtype, n, elements=elements))


@st.composite
def transforms(draw):
    """Per-feature parameters: bounds (some open), policies, imputation, scaling, edges."""
    n = draw(st.integers(1, 20))  # covers the 8-wide blocks and the remainder loop
    a, b = _vector(draw, n, small), _vector(draw, n, small)
    kind = _vector(draw, n, st.sampled_from([0, 1, 2, 3]), np.uint8)  # both, lo, hi, none
    lo = np.where(kind <= 1, np.minimum(a, b), -INF).astype(np.float32)
    hi = np.where((kind == 0) | (kind == 2), np.maximum(a, b), INF).astype(np.float32)
    # Half the examples refuse nothing, so that the accept path gets its share.
    lenient = draw(st.booleans())
    range_choices = [NONE, CLIP] if lenient else [NONE, REJECT, CLIP]
    missing_choices = [MISSING_IMPUTE] if lenient else [MISSING_REJECT, MISSING_IMPUTE]
    bins = draw(st.sampled_from([0, 2, 3, 5, 10, 17]))
    edges = np.sort(_vector(draw, (n, max(bins - 1, 0)), small), axis=1)
    return {
        "n": n,
        "names": [f"c{f}" for f in range(n)] if draw(st.booleans()) else None,
        "lo": lo,
        "hi": hi,
        "range_policy": _vector(draw, n, st.sampled_from(range_choices), np.uint8),
        "missing_policy": _vector(draw, n, st.sampled_from(missing_choices), np.uint8),
        "impute": _vector(draw, n, small),
        "offset": _vector(draw, n, small),
        "scale": _vector(draw, n, st.floats(-3, 3, width=32)),
        "bins": bins,
        "edges": edges,
    }


@st.composite
def matrices(draw, p):
    """Rows mixing ordinary values, NaN, +-inf, far out-of-range values and values exactly
    on the bounds and the bin edges (where < vs <= matters)."""
    rows = draw(st.integers(0, 12))
    exact = np.concatenate([p["lo"], p["hi"], p["edges"].ravel()])
    exact = sorted({float(v) for v in exact if np.isfinite(v)})
    value = st.one_of(
        st.floats(-8, 8, width=32),
        st.sampled_from([float("nan"), INF, -INF, 1e30, -1e30, 0.0, -0.0]),
        *([st.sampled_from(exact)] if exact else []),
    )
    return _vector(draw, (rows, p["n"]), value)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_fused_pass_matches_numpy_reference(data):
    p = data.draw(transforms())
    t = make_transform(p)
    batches = [data.draw(matrices(p)) for _ in range(data.draw(st.integers(1, 3)))]
    counts = np.zeros((p["n"], max(p["bins"], 1)), np.uint64)
    missing = np.zeros(p["n"], np.uint64)
    out_of_range = np.zeros(p["n"], np.uint64)
    rows = 0
    for x in batches:
        before = x.copy()
        want = reference_apply(x, p)
        if want[0] == "refused":
            with pytest.raises(InvalidArgumentError) as err:
                t.apply(x)
            assert str(err.value) == want[1]
        else:
            y = t.apply(x)
            assert y.dtype == np.float32 and y.shape == x.shape
            np.testing.assert_array_equal(y, want[1])  # bit for bit: same float32 operations
            counts += want[2]
            missing += want[3].astype(np.uint64)
            out_of_range += want[4].astype(np.uint64)
            rows += len(x)
        np.testing.assert_array_equal(x, before)  # the caller's array is never written
        # A refused request leaves no trace in the counts.
        snap = t.snapshot()
        assert snap["rows"] == rows
        if p["bins"]:
            np.testing.assert_array_equal(snap["counts"], counts)
        np.testing.assert_array_equal(snap["missing"], missing)
        np.testing.assert_array_equal(snap["out_of_range"], out_of_range)


def _params(n=4, **kw):
    p = {
        "n": n,
        "names": None,
        "lo": np.full(n, -INF, np.float32),
        "hi": np.full(n, INF, np.float32),
        "range_policy": np.zeros(n, np.uint8),
        "missing_policy": np.full(n, MISSING_IMPUTE, np.uint8),
        "impute": np.zeros(n, np.float32),
        "offset": np.zeros(n, np.float32),
        "scale": np.ones(n, np.float32),
        "bins": 0,
        "edges": np.zeros((n, 0), np.float32),
    }
    for k, v in kw.items():
        p[k] = np.asarray(v, dtype=p[k].dtype) if isinstance(p[k], np.ndarray) else v
    return p


def test_one_row_as_a_vector():
    p = _params(3, offset=[1, 2, 3], scale=[2, 2, 2], bins=2, edges=[[0], [0], [0]])
    t = make_transform(p)
    y = t.apply(np.array([1, 2, -3], np.float32))
    assert y.shape == (3,)
    np.testing.assert_array_equal(y, [0, 0, -12])
    assert t.snapshot()["counts"].tolist() == [[0, 1], [0, 1], [1, 0]]


def test_empty_request_is_accepted_and_counts_nothing():
    t = make_transform(_params(2, bins=2, edges=[[0], [0]]))
    assert t.apply(np.zeros((0, 2), np.float32)).shape == (0, 2)
    assert t.snapshot()["rows"] == 0


def test_rejection_names_the_first_row_then_the_first_feature():
    p = _params(
        3,
        names=["age", "income", "score"],
        lo=[0, 0, -1],
        hi=[120, 1e6, 1],
        range_policy=[REJECT, REJECT, REJECT],
        missing_policy=[MISSING_REJECT] * 3,
    )
    t = make_transform(p)
    x = np.array([[30, 5e4, 0.5], [30, 5e4, 2.5], [1, np.inf, 0]], np.float32)
    with pytest.raises(InvalidArgumentError) as err:
        t.apply(x)
    assert str(err.value) == (
        "model 'm': input 'x' row 1, feature 'score' (index 2): value 2.5 is outside "
        "[-1, 1] (range policy: reject)"
    )
    assert err.value.grpc_code == "INVALID_ARGUMENT"
    with pytest.raises(InvalidArgumentError, match=r"row 0, feature 'income' \(index 1\): "
                       r"value inf is not allowed \(NaN/inf policy: reject\)"):  # fmt: skip
        t.apply(x[2:])
    # without names, the index alone
    p["names"] = None
    with pytest.raises(InvalidArgumentError, match=r"row 0, feature 1: value inf is not"):
        make_transform(p).apply(x[2:])


def test_clip_imputes_first_then_clips():
    p = _params(2, lo=[-1, -1], hi=[1, 1], range_policy=[CLIP, CLIP], impute=[5, -0.5])
    y = make_transform(p).apply(np.array([[np.nan, np.nan], [3, -3]], np.float32))
    np.testing.assert_array_equal(y, [[1, -0.5], [1, -1]])


@pytest.mark.parametrize(
    "array, error, match",
    [
        (np.zeros((4, 8), np.float32)[:, ::2], TypeError, "C-contiguous float32"),
        (np.zeros((4, 4), np.float32).T[:, :4][::2], TypeError, "C-contiguous float32"),
        (np.zeros((2, 4), np.float64), TypeError, "C-contiguous float32"),
        (np.zeros((2, 4), np.int32), TypeError, "C-contiguous float32"),
        (np.zeros((2, 5), np.float32), ValueError, r"shape \[rows, 4\]"),
        (np.zeros((2, 2, 4), np.float32), ValueError, r"shape \[rows, 4\]"),
        (np.zeros((), np.float32), ValueError, r"shape \[rows, 4\]"),
        ([[0.0, 0.0, 0.0, 0.0]], TypeError, "incompatible function arguments"),  # not an array
    ],
)
def test_apply_refuses_arrays_it_cannot_read_in_place(array, error, match):
    t = make_transform(_params(4))
    with pytest.raises(error, match=match):
        t.apply(array)
    with pytest.raises(error, match=match):
        t.observe(array)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"lo": [2, 0, 0, 0], "hi": [1, 1, 1, 1]}, r"feature 0: range \[2, 1\] is empty"),
        ({"lo": [np.nan, 0, 0, 0]}, "is empty"),
        ({"scale": [np.inf, 1, 1, 1]}, "must be finite"),
        ({"impute": [np.nan, 0, 0, 0]}, "must be finite"),
        ({"range_policy": [3, 0, 0, 0]}, "unknown policy for feature 0"),
        ({"bins": 1, "edges": np.zeros((4, 0))}, "bins must be 0 .off. or 2..1024"),
        ({"bins": 3, "edges": np.zeros((4, 1))}, "expected 8 bin edges, got 4"),
        ({"bins": 3, "edges": [[1, 0]] * 4}, "must be finite and ascending"),
        ({"names": ["a", "b"]}, "2 feature names for 4 features"),
    ],
)
def test_constructor_checks_its_parameters(change, match):
    p = _params(4)
    for k, v in change.items():
        p[k] = np.asarray(v, dtype=np.float32 if k != "range_policy" else np.uint8) if (
            k not in ("bins", "names")
        ) else v  # fmt: skip
    with pytest.raises(InvalidArgumentError, match=match):
        make_transform(p)


# --------------------------------------------------------------------------- served model

IDENTITY = functools.partial(onnx_models.write_identity, datatype="FP32", dims=(-1, 4))


def _runtime(tmp_path, contract, *, stats=None, drift=None):
    """An identity model (output = the model-ready input) behind ``contract``."""
    config = {"max_batch_size": 8, "inputs": [{"name": "input", "contract": contract}]}
    if drift:
        config["drift"] = drift
    onnx_models.make_repo(tmp_path, {"ident": IDENTITY}, configs={"ident": config})
    if stats is not None:
        write_stats(tmp_path / "ident" / "1" / "stats.json", stats)
    return Runtime(tmp_path, warmup=False)


REF = np.random.default_rng(0).normal([1, -2, 10, 0], [2, 0.5, 3, 1], (500, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def ref_stats():
    return fit_stats({"input": REF}, names={"input": ["a", "b", "c", "d"]})


def _serve(rt, x):
    return rt.infer("ident", {"input": np.asarray(x, np.float32)}).outputs["output"]


@pytest.mark.parametrize("scaling", ["none", "standard", "minmax", "robust"])
def test_scaling_through_the_server_path(tmp_path, ref_stats, scaling):
    s = ref_stats["inputs"]["input"]
    offset, spread = {
        "none": (np.zeros(4), np.ones(4)),
        "standard": (np.array(s["mean"]), np.array(s["std"])),
        "minmax": (np.array(s["min"]), np.array(s["max"]) - np.array(s["min"])),
        "robust": (np.array(s["median"]), np.array(s["q75"]) - np.array(s["q25"])),
    }[scaling]
    with _runtime(tmp_path, {"scaling": scaling}, stats=ref_stats) as rt:
        x = REF[:7]
        want = (x - offset.astype(np.float32)) * (1 / spread).astype(np.float32)
        np.testing.assert_array_equal(_serve(rt, x), want.astype(np.float32))


def test_missing_policies_through_the_server_path(tmp_path, ref_stats):
    s = ref_stats["inputs"]["input"]
    contract = {
        "missing": "reject",
        "features": {
            "a": {"missing": "mean"},
            "b": {"missing": "median"},
            2: {"missing": "constant", "missing_value": -7.5},
        },
    }
    with _runtime(tmp_path, contract, stats=ref_stats) as rt:
        y = _serve(rt, [[np.nan, np.inf, -np.inf, 1.0]])
        want = np.float32([s["mean"][0], s["median"][1], -7.5, 1.0])
        np.testing.assert_array_equal(y[0], want)
        with pytest.raises(InvalidArgumentError) as err:
            _serve(rt, [[0, 0, 0, 0], [0, 0, 0, np.nan]])
        assert str(err.value) == (
            "model 'ident': input 'input' row 1, feature 'd' (index 3): value nan is not "
            "allowed (NaN/inf policy: reject)"
        )


def test_range_policies_through_the_server_path(tmp_path):
    contract = {
        "feature_names": ["a", "b", "c", "d"],
        "min": -1,
        "max": 1,
        "out_of_range": "reject",
        "missing": "constant",
        "features": {"b": {"out_of_range": "clip"}, "c": {"out_of_range": "allow"},
                     "d": {"min": 0, "max": 100}},
    }  # fmt: skip
    with _runtime(tmp_path, contract) as rt:
        np.testing.assert_array_equal(_serve(rt, [[1, 5, 5, 50]]), [[1, 1, 5, 50]])
        np.testing.assert_array_equal(_serve(rt, [[-1, -5, -5, 0]]), [[-1, -1, -5, 0]])
        with pytest.raises(InvalidArgumentError) as err:
            _serve(rt, [[1.5, 0, 0, 0]])
        assert str(err.value) == (
            "model 'ident': input 'input' row 0, feature 'a' (index 0): value 1.5 is outside "
            "[-1, 1] (range policy: reject)"
        )
        with pytest.raises(InvalidArgumentError, match=r"feature 'd' \(index 3\): value -0.5 "
                           r"is outside \[0, 100\]"):  # fmt: skip
            _serve(rt, [[0, 0, 0, -0.5]])
        report = rt.get_model("ident").drift_report()["inputs"]["input"]
        # 2 accepted rows; b and c were out of range in both (clipped / allowed), d never
        assert report["rows"] == 2
        assert [f["out_of_range_rate"] for f in report["features"]] == [0.0, 1.0, 1.0, 0.0]


def test_dtype_coercion_is_safe(tmp_path):
    with _runtime(tmp_path, {"min": -10, "max": 10}) as rt:
        # float64 / int values that float32 holds exactly are converted...
        np.testing.assert_array_equal(
            rt.infer("ident", {"input": np.array([[0.5, 2, -3, 4]])}).outputs["output"],
            [[0.5, 2, -3, 4]],
        )
        np.testing.assert_array_equal(
            rt.infer("ident", {"input": np.array([[1, 2, 3, 4]], np.int32)}).outputs["output"],
            [[1, 2, 3, 4]],
        )
        # ...values that would change are refused, naming the input and the value
        with pytest.raises(InvalidArgumentError, match=r"input 'input': value 0.1 .*FP32"):
            rt.infer("ident", {"input": np.array([[0.1, 0, 0, 0]])})


@pytest.mark.parametrize(
    "contract, stats, match",
    [
        ({"features": {"zz": {"min": 0}}}, None, r"contract.features.zz: no feature named 'zz'"),
        ({"features": {7: {"min": 0}}}, None, r"contract.features.7: no feature 7 \(0..3\)"),
        ({"feature_names": ["a", "b"]}, None, r"2 feature names for 4 features"),
        ({"scaling": "standard"}, None, r"stats.json not found: run `steadyserve fit`"),
        ({"missing": "median"}, None, r"stats.json not found: run `steadyserve fit`"),
        ({"scaling": "standard"}, {"format": "steadyserve.stats/1", "inputs": {}},
         r"has no stats for input 'input' \(run `steadyserve fit`\)"),
        ({"scaling": "robust"}, {"format": "steadyserve.stats/1", "inputs": {"input": {
            "mean": [0] * 4}}}, r"the stats file has no 'median'"),
        ({"scaling": "standard"}, {"format": "steadyserve.stats/1", "inputs": {"input": {
            "mean": [0] * 3, "std": [1] * 3}}}, r"stats 'mean' must be 4 finite numbers"),
        ({}, {"format": "other"}, None),  # a stats file only drift needs: no stats needed...
    ],
)  # fmt: skip
def test_contract_config_errors_name_the_problem(tmp_path, contract, stats, match):
    config = {"max_batch_size": 8, "inputs": [{"name": "input", "contract": contract}]}
    onnx_models.make_repo(tmp_path, {"ident": IDENTITY}, configs={"ident": config})
    if stats is not None:
        write_stats(tmp_path / "ident" / "1" / "stats.json", stats)
    with Runtime(tmp_path, warmup=False) as rt:
        (entry,) = rt.model_index()
        if match is None:
            # ...but an unreadable stats file next to the model is still an error
            assert entry.state == "UNAVAILABLE" and "'format' must be" in entry.reason
        else:
            assert entry.state == "UNAVAILABLE", entry
            assert re.search(match, entry.reason), entry.reason


def test_contract_needs_an_fp32_matrix_input(tmp_path):
    config = {"max_batch_size": 8, "inputs": [{"name": "ids", "contract": {"min": 0}}]}
    onnx_models.make_repo(
        tmp_path, {"ints": onnx_models.write_int64_input}, configs={"ints": config}
    )
    with Runtime(tmp_path, warmup=False) as rt:
        (entry,) = rt.model_index()
        assert entry.state == "UNAVAILABLE"
        assert "a feature contract needs an FP32 [batch, features] input" in entry.reason


def test_build_transform_resolves_names_and_indexes(ref_stats):
    from steadyserve.config import ContractConfig, DriftConfig

    contract = ContractConfig(
        feature_names=["a", "b", "c", "d"],
        features={"c": {"min": 0, "max": 1, "out_of_range": "clip"}, "1": {"missing": "mean"}},
    )
    t = build_transform("m", "x", 4, contract, DriftConfig(), ref_stats["inputs"]["input"], "w")
    y = t.apply(np.array([[5, np.nan, 5, 5]], np.float32))
    mean = ref_stats["inputs"]["input"]["mean"]
    np.testing.assert_array_equal(y, np.float32([[5, mean[1], 1, 5]]))
    with pytest.raises(ConfigError, match="no feature named 'e'"):
        build_transform("m", "x", 4, ContractConfig(features={"e": {}}), DriftConfig(), {}, "w")
