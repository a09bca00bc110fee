"""OnnxBackend on real ONNX Runtime sessions built from tests/onnx_models.py."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import steadyserve.config
from onnx_models import (
    write_add_two_inputs,
    write_fixed_shape,
    write_identity,
    write_int64_input,
    write_linear,
    write_sequence_output,
    write_tunable_compute,
)
from steadyserve.backends import OnnxBackend
from steadyserve.config import OnnxRuntimeConfig
from steadyserve.datatypes import V2_TO_NUMPY, TensorSpec
from steadyserve.errors import ConfigError, InternalError, UnavailableError

CUDA_AVAILABLE = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture
def linear(tmp_path):
    path = tmp_path / "linear.onnx"
    w, b = write_linear(path, n_in=4, n_out=3)
    backend = OnnxBackend.load(path)
    yield backend, w, b
    backend.close()


def test_specs_come_from_the_file(linear):
    backend, _, _ = linear
    assert backend.inputs == [TensorSpec("x", "FP32", [-1, 4])]
    assert backend.outputs == [TensorSpec("y", "FP32", [-1, 3])]
    assert backend.providers == ["CPUExecutionProvider"]


@pytest.mark.parametrize("dtype", ["FP32", "FP64"])
def test_run_equals_numpy(tmp_path, dtype):
    path = tmp_path / "linear.onnx"
    w, b = write_linear(path, n_in=5, n_out=2, dtype=dtype, seed=3)
    backend = OnnxBackend.load(path)
    x = np.random.default_rng(1).standard_normal((7, 5)).astype(w.dtype)
    out = backend.run({"x": x})
    assert list(out) == ["y"] and out["y"].dtype == w.dtype and out["y"].shape == (7, 2)
    np.testing.assert_allclose(out["y"], x @ w + b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("datatype", list(V2_TO_NUMPY))
def test_every_v2_datatype_round_trips(tmp_path, datatype):
    path = tmp_path / "identity.onnx"
    write_identity(path, datatype, dims=(-1, 3))
    backend = OnnxBackend.load(path)
    assert backend.inputs == [TensorSpec("input", datatype, [-1, 3])]
    assert backend.outputs == [TensorSpec("output", datatype, [-1, 3])]
    x = (np.arange(6).reshape(2, 3) % 2).astype(V2_TO_NUMPY[datatype])
    if datatype == "BYTES":  # strings, as ONNX Runtime takes and gives them
        x = x.astype(str).astype(object)
    np.testing.assert_array_equal(backend.run({"input": x})["output"], x)


def test_symbolic_and_fixed_dims(tmp_path):
    write_identity(tmp_path / "m.onnx", "FP32", dims=(-1, 3, -1))
    backend = OnnxBackend.load(tmp_path / "m.onnx")
    assert backend.inputs[0].shape == (-1, 3, -1)


def test_fixed_shape_model(tmp_path):
    write_fixed_shape(tmp_path / "fixed.onnx")
    backend = OnnxBackend.load(tmp_path / "fixed.onnx")
    assert backend.inputs == [TensorSpec("x", "FP32", [2, 3])]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(backend.run({"x": x})["y"], 2 * x)
    assert backend.zero_inputs(None)["x"].shape == (2, 3)


def test_two_inputs(tmp_path):
    write_add_two_inputs(tmp_path / "add.onnx")
    backend = OnnxBackend.load(tmp_path / "add.onnx")
    assert [s.name for s in backend.inputs] == ["a", "b"]
    a, b = np.ones((2, 4), np.float32), np.full((2, 4), 2.5, np.float32)
    np.testing.assert_array_equal(backend.run({"a": a, "b": b})["sum"], a + b)


def test_int64_input_and_output_selection(tmp_path):
    write_int64_input(tmp_path / "ids.onnx")
    backend = OnnxBackend.load(tmp_path / "ids.onnx")
    assert backend.inputs == [TensorSpec("ids", "INT64", [-1, 3])]
    assert [o.name for o in backend.outputs] == ["doubled", "as_float"]
    ids = np.array([[1, 2, 3], [2**40, -5, 0]], dtype=np.int64)
    out = backend.run({"ids": ids}, ["as_float"])
    assert list(out) == ["as_float"] and out["as_float"].dtype == np.float32
    np.testing.assert_array_equal(backend.run({"ids": ids})["doubled"], ids * 2)


def test_session_options_are_applied(tmp_path):
    write_identity(tmp_path / "m.onnx")
    options = OnnxRuntimeConfig(
        intra_op_threads=2, inter_op_threads=3, allow_spinning=True, graph_optimization="basic"
    )
    so = OnnxBackend.load(tmp_path / "m.onnx", options).session.get_session_options()
    assert (so.intra_op_num_threads, so.inter_op_num_threads) == (2, 3)
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert so.get_session_config_entry("session.inter_op.allow_spinning") == "1"


def test_defaults_do_not_spin(tmp_path):
    """ORT's own default spins idle pool threads; on a small machine that burns a core."""
    write_identity(tmp_path / "m.onnx")
    so = OnnxBackend.load(tmp_path / "m.onnx").session.get_session_options()
    assert (so.intra_op_num_threads, so.inter_op_num_threads) == (1, 1)
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.get_session_config_entry("session.inter_op.allow_spinning") == "0"


@pytest.mark.parametrize(
    ("level", "expected"),
    [("disable", "ORT_DISABLE_ALL"), ("extended", "ORT_ENABLE_EXTENDED")],
)
def test_graph_optimization_levels(tmp_path, level, expected):
    write_identity(tmp_path / "m.onnx")
    so = OnnxBackend.load(
        tmp_path / "m.onnx", OnnxRuntimeConfig(graph_optimization=level)
    ).session.get_session_options()
    assert so.graph_optimization_level == getattr(ort.GraphOptimizationLevel, expected)


def test_string_tensors_are_bytes(tmp_path):
    path = tmp_path / "strings.onnx"
    write_identity(path, "BYTES")
    backend = OnnxBackend.load(path)
    assert [(s.name, s.datatype) for s in backend.inputs + backend.outputs] == [
        ("input", "BYTES"),
        ("output", "BYTES"),
    ]
    zeros = backend.zero_inputs(2)["input"]
    assert zeros.shape == (2, 4) and zeros.tolist() == [[""] * 4] * 2
    assert backend.run({"input": zeros})["output"].tolist() == [[""] * 4] * 2


def test_sequence_output_is_refused_with_a_hint(tmp_path):
    path = tmp_path / "seq.onnx"
    write_sequence_output(path)
    with pytest.raises(ConfigError) as info:
        OnnxBackend.load(path)
    message = str(info.value)
    assert str(path) in message and "output 'items'" in message and "seq(tensor(float))" in message
    assert "zipmap" in message


def test_missing_model_file(tmp_path):
    with pytest.raises(ConfigError, match=f"model file {tmp_path / 'absent.onnx'} does not exist"):
        OnnxBackend.load(tmp_path / "absent.onnx")


def test_corrupt_model_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07 this is not a protobuf model")
    with pytest.raises(ConfigError, match=f"cannot load ONNX model {path}"):
        OnnxBackend.load(path)


@pytest.mark.skipif(CUDA_AVAILABLE, reason="CUDA is available here; the refusal cannot be seen")
def test_cuda_requested_without_cuda(tmp_path):
    path = tmp_path / "m.onnx"
    write_identity(path)
    with pytest.raises(UnavailableError) as info:
        OnnxBackend.load(path, OnnxRuntimeConfig(device="cuda"))
    message = str(info.value)
    assert str(path) in message and "CPUExecutionProvider" in message
    assert "pip install 'steadyserve[gpu]'" in message and "onnxruntime.device: cpu" in message


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs onnxruntime-gpu and a CUDA device")
def test_cuda_session(tmp_path):
    path = tmp_path / "linear.onnx"
    w, b = write_linear(path)
    backend = OnnxBackend.load(path, OnnxRuntimeConfig(device="cuda", device_id=0))
    assert backend.providers[0] == "CUDAExecutionProvider"
    x = np.ones((3, 4), np.float32)
    np.testing.assert_allclose(backend.run({"x": x})["y"], x @ w + b, rtol=1e-4, atol=1e-4)


def test_runtime_failure_is_internal_error_naming_the_model(linear):
    backend, _, _ = linear
    with pytest.raises(InternalError) as info:
        backend.run({"x": np.zeros((2, 5), np.float32)})
    assert str(backend.path) in str(info.value) and "ONNX Runtime failed" in str(info.value)


def test_warmup_times_each_batch_size(linear):
    backend, _, _ = linear
    timings = backend.warmup(backend.zero_inputs, [1, 8, 64])
    assert list(timings) == [1, 8, 64]
    assert all(isinstance(t, float) and 0 < t < 1 for t in timings.values())
    assert backend.zero_inputs(8)["x"].shape == (8, 4)


def test_concurrent_runs_from_threads(linear):
    backend, w, b = linear
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((n % 7 + 1, 4)).astype(np.float32) for n in range(64)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda x: backend.run({"x": x})["y"], batches))
    for x, y in zip(batches, results, strict=True):
        np.testing.assert_allclose(y, x @ w + b, rtol=1e-5, atol=1e-5)


def test_closed_backend_refuses_to_run(linear):
    backend, _, _ = linear
    backend.close()
    backend.close()  # idempotent
    assert backend.session is None
    with pytest.raises(UnavailableError, match="closed"):
        backend.run({"x": np.zeros((1, 4), np.float32)})


def test_without_onnxruntime_the_package_imports_and_load_says_what_to_install(tmp_path):
    """Runs in a child process where `import onnxruntime` fails, as on a machine without it."""
    write_identity(tmp_path / "m.onnx")
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "from steadyserve.backends import OnnxBackend\n"
        "from steadyserve.errors import BackendUnavailableError\n"
        "try:\n"
        f"    OnnxBackend.load({str(tmp_path / 'm.onnx')!r})\n"
        "except BackendUnavailableError as exc:\n"
        "    print(exc)\n"
    )
    package_root = str(Path(steadyserve.config.__file__).parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "ONNX Runtime is not installed" in done.stdout
    assert (
        "pip install 'steadyserve[cpu]'" in done.stdout
        and "pip install 'steadyserve[gpu]'" in done.stdout
    )


def _busy(rows):
    """Inputs of write_tunable_compute that keep a batch busy for milliseconds."""
    return {
        "x": np.zeros((rows, 512), dtype=np.float32),
        "work": np.full((rows, 1), 40, dtype=np.int64),
    }


def _one_row(backend):
    return lambda rows: backend.zero_inputs(rows)


def test_auto_threads_keep_one_thread_for_a_fast_model(tmp_path, caplog):
    """intra_op_threads: auto does not even try more threads when one row takes
    microseconds: hand-offs between threads would cost more than they save."""
    write_identity(tmp_path / "m.onnx")
    backend = OnnxBackend.load(tmp_path / "m.onnx")  # the default is auto
    backend.warmup(_one_row(backend), [1, 8])
    assert backend.intra_op_threads == 1
    assert backend.session.get_session_options().intra_op_num_threads == 1
    assert "intra_op_threads auto" not in caplog.text


def test_auto_threads_are_chosen_from_the_warmup_timings(tmp_path, caplog):
    """A model slow enough for threads to matter is timed with one thread and with one
    per core; the session kept runs with the count the log line reports."""
    from steadyserve.backends.onnx import auto_thread_count

    write_tunable_compute(tmp_path / "m.onnx", width=512)
    backend = OnnxBackend.load(tmp_path / "m.onnx")
    with caplog.at_level("INFO", logger="steadyserve.backend"):
        timings = backend.warmup(_busy, [1, 4])
    assert set(timings) == {1, 4}
    threads = backend.session.get_session_options().intra_op_num_threads
    assert threads == backend.intra_op_threads
    if auto_thread_count() < 2:
        assert threads == 1 and "intra_op_threads auto" not in caplog.text
    else:
        assert threads in (1, auto_thread_count())
        assert f"intra_op_threads auto: {threads} " in caplog.text


def test_explicit_threads_are_never_tuned(tmp_path, caplog):
    write_tunable_compute(tmp_path / "m.onnx", width=512)
    backend = OnnxBackend.load(tmp_path / "m.onnx", OnnxRuntimeConfig(intra_op_threads=1))
    with caplog.at_level("INFO", logger="steadyserve.backend"):
        backend.warmup(_busy, [1])
    assert backend.session.get_session_options().intra_op_num_threads == 1
    assert "intra_op_threads auto" not in caplog.text
