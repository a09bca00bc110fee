"""The demo repository: valid, servable, deterministic, and the models actually learned."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from steadyserve.backends import OnnxBackend
from steadyserve.config import ModelConfig
from steadyserve.datatypes import TensorSpec
from steadyserve.demo import build_demo_repository, demo_dataset
from steadyserve.repository import scan_repository

NAMES = ["tabular", "tabular-lite"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    assert build_demo_repository(root) == root
    return root


@pytest.fixture(scope="module")
def fresh_rows():
    # a seed the training never saw
    return demo_dataset(4096, seed=2024)


def test_layout_and_configs_are_valid(repo):
    models = scan_repository(repo)
    assert list(models) == NAMES
    for name in NAMES:
        src = models[name]
        assert src.error is None
        assert src.versions == {1: repo / name / "1" / "model.onnx"}
        assert src.selected_versions() == [1]
        c = src.config
        assert c.max_batch_size == 64 and c.onnxruntime.intra_op_threads == "auto"
        # the file spells out the defaults; it must not drift from the schema's
        assert c.batching == ModelConfig().batching and c.onnxruntime == ModelConfig().onnxruntime


def test_specs(repo):
    for name in NAMES:
        backend = OnnxBackend.load(repo / name / "1" / "model.onnx")
        assert backend.inputs == [TensorSpec("features", "FP32", [-1, 32])]
        assert backend.outputs == [TensorSpec("probabilities", "FP32", [-1, 2])]


def test_models_run_and_give_probabilities(repo, fresh_rows):
    x, _ = fresh_rows
    for name in NAMES:
        backend = OnnxBackend.load(repo / name / "1" / "model.onnx")
        for batch in (1, 64, len(x)):
            p = backend.run({"features": x[:batch]})["probabilities"]
            assert p.shape == (batch, 2) and p.dtype == np.float32
            assert np.all(p >= 0) and np.allclose(p.sum(axis=1), 1, atol=1e-5)


def test_mlp_learned_the_rule_and_beats_the_lite_model(repo, fresh_rows):
    x, y = fresh_rows
    chance = max(y.mean(), 1 - y.mean())  # majority class
    acc = {}
    for name in NAMES:
        backend = OnnxBackend.load(repo / name / "1" / "model.onnx")
        acc[name] = float(
            (backend.run({"features": x})["probabilities"].argmax(axis=1) == y).mean()
        )
    assert acc["tabular"] > 0.85 > chance + 0.2
    assert chance + 0.1 < acc["tabular-lite"] < acc["tabular"] - 0.05


def test_training_accuracy_is_recorded(repo):
    for name in NAMES:
        model = onnx.load(str(repo / name / "1" / "model.onnx"))
        props = {p.key: p.value for p in model.metadata_props}
        assert 0.5 < float(props["train_accuracy"]) <= 1.0
        assert model.ir_version == 8 and model.opset_import[0].version == 17


def test_builds_are_byte_identical(repo, tmp_path):
    build_demo_repository(tmp_path)
    for name in NAMES:
        for rel in ("1/model.onnx", "config.yaml"):
            assert (tmp_path / name / rel).read_bytes() == (repo / name / rel).read_bytes(), (
                f"{name}/{rel}"
            )


def test_dataset_is_deterministic_and_balanced_enough():
    x1, y1 = demo_dataset(1000, seed=7)
    x2, y2 = demo_dataset(1000, seed=7)
    assert x1.dtype == np.float32 and x1.shape == (1000, 32) and y1.dtype == np.int64
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert 0.35 < y1.mean() < 0.65


def test_fresh_in_distribution_rows_do_not_look_drifted(tmp_path):
    """The demo's drift reference comes from held-out rows: on fresh rows of the same
    distribution its prediction drift is as small as its input drift (fitted on the
    training rows, the outputs read a PSI near 0.09 here)."""
    import steadyserve
    from steadyserve.demo import build_demo_repository, demo_dataset

    build_demo_repository(tmp_path)
    with steadyserve.Runtime(tmp_path) as rt:
        x, _ = demo_dataset(4000, 12345)
        for i in range(0, len(x), 50):
            rt.infer("tabular", {"features": x[i : i + 50].astype(np.float32)})
        report = rt.get_model("tabular").drift_report()
    inputs = [f["psi"] for f in report["inputs"]["features"]["features"]]
    outputs = [f["psi"] for f in report["outputs"]["probabilities"]["features"]]
    assert max(inputs) < 0.03
    assert max(outputs) < 0.03, outputs
