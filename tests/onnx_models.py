"""Small ONNX models for tests, built with the onnx helper API (no downloads, milliseconds).

Each ``write_*`` writes one model file and returns what a test needs to compute the
expected output. ``make_repo`` lays several out as a model repository. A -1 in ``dims``
becomes a symbolic dimension (the first one is named "batch"), as exporters write them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # what onnxruntime >= 1.17 reads; newer onnx writes a newer one by default

# V2 datatype -> ONNX element type ("BYTES": string tensors).
ELEM_TYPE: dict[str, int] = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _shape(dims: Sequence[int]) -> list[int | str]:
    out: list[int | str] = []
    for i, d in enumerate(dims):
        out.append(("batch" if i == 0 else f"d{i}") if d == -1 else int(d))
    return out


def _value(name: str, datatype: str, dims: Sequence[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, ELEM_TYPE[datatype], _shape(dims))


def _save(path: Path | str, graph: onnx.GraphProto) -> Path:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="steadyserve-tests"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def write_linear(
    path: Path | str, n_in: int = 4, n_out: int = 3, dtype: str = "FP32", seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """y = x @ W + b; input "x" [batch, n_in], output "y" [batch, n_out]. Returns (W, b)."""
    np_dtype = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16}[dtype]
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n_in, n_out)).astype(np_dtype)
    b = rng.standard_normal(n_out).astype(np_dtype)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "linear",
        [_value("x", dtype, [-1, n_in])],
        [_value("y", dtype, [-1, n_out])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    _save(path, graph)
    return w, b


def linear_answer(seed: int, x: np.ndarray) -> np.ndarray:
    """What ``write_linear(..., seed=seed)`` (4 in, 3 out) answers for ``x``: the same draws."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    return x @ w + b


def linear_seed(y: np.ndarray, x: np.ndarray, seeds) -> int:
    """The seed whose ``write_linear`` weights computed ``y`` from ``x``."""
    for seed in seeds:
        if np.allclose(y, linear_answer(seed, x), atol=1e-5):
            return seed
    raise AssertionError(f"answer {y} is from none of the seeds {seeds}")


def write_identity(path: Path | str, datatype: str = "FP32", dims: Sequence[int] = (-1, 4)) -> None:
    """output = input, for any datatype (including "BYTES", string tensors)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "identity",
        [_value("input", datatype, dims)],
        [_value("output", datatype, dims)],
    )
    _save(path, graph)


def write_add_two_inputs(
    path: Path | str, datatype: str = "FP32", dims: Sequence[int] = (-1, 4)
) -> None:
    """sum = a + b; two inputs of the same datatype and shape."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"])],
        "add_two_inputs",
        [_value("a", datatype, dims), _value("b", datatype, dims)],
        [_value("sum", datatype, dims)],
    )
    _save(path, graph)


def write_fixed_shape(path: Path | str) -> None:
    """No batch dimension: "x" FP32 [2, 3] -> "y" = 2 * x, FP32 [2, 3] (for max_batch_size: 0)."""
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "fixed_shape",
        [_value("x", "FP32", [2, 3])],
        [_value("y", "FP32", [2, 3])],
        initializer=[two],
    )
    _save(path, graph)


def write_int64_input(path: Path | str, width: int = 3) -> None:
    """ "ids" INT64 [batch, width] -> "doubled" INT64 (= 2 * ids) and "as_float" FP32 (= ids)."""
    two = numpy_helper.from_array(np.array(2, dtype=np.int64), "two")
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["ids", "two"], ["doubled"]),
            helper.make_node("Cast", ["ids"], ["as_float"], to=TensorProto.FLOAT),
        ],
        "int64_input",
        [_value("ids", "INT64", [-1, width])],
        [_value("doubled", "INT64", [-1, width]), _value("as_float", "FP32", [-1, width])],
        initializer=[two],
    )
    _save(path, graph)


def write_sequence_output(path: Path | str) -> None:
    """ "x" FP32 [batch, 2] -> "items", a sequence of tensors (a type steadyserve refuses)."""
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x", "x"], ["items"])],
        "sequence_output",
        [_value("x", "FP32", [-1, 2])],
        [helper.make_tensor_sequence_value_info("items", TensorProto.FLOAT, ["batch", 2])],
    )
    _save(path, graph)


Builder = Callable[[Path], Any]


def make_repo(
    root: Path | str,
    models: Mapping[str, Builder],
    configs: Mapping[str, Mapping[str, Any]] | None = None,
    versions: Sequence[int] = (1,),
) -> Path:
    """Write ``root/<name>/<version>/model.onnx`` with each builder (called with the file path;
    bind arguments with functools.partial) and ``root/<name>/config.yaml`` from ``configs``."""
    root = Path(root)
    for name, build in models.items():
        for version in versions:
            target = root / name / str(version) / "model.onnx"
            target.parent.mkdir(parents=True, exist_ok=True)
            build(target)
        if configs and name in configs:
            (root / name / "config.yaml").write_text(yaml.safe_dump(dict(configs[name])))
    return root


def write_tunable_compute(path: Path | str, width: int = 256, seed: int = 0) -> None:
    """A model whose execution time the caller controls (for SLO and overload tests).

    Inputs: "x" FP32 [batch, width] and "work" INT64 [batch, 1]. The batch runs
    ``max(work)`` iterations of h = tanh(h @ W) on [batch, width] (an ONNX Loop), so one
    request with a large ``work`` keeps the executor busy for as long as a test needs,
    while requests with work 0 or 1 cost microseconds. Outputs: "y" FP32 [batch, 1], the
    row sum of the final h, and "tag" FP32 [batch, 1] = x[:, 0] (lets a test tell answers
    apart, e.g. to see the order in which requests were executed).
    """
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["h_in", "W"], ["hw"]),
            helper.make_node("Tanh", ["hw"], ["h_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "step",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["batch", width]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["batch", width]),
        ],
    )
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["work"], ["trips"], keepdims=0),
            helper.make_node("Loop", ["trips", "", "x"], ["h"], body=body),
            helper.make_node("ReduceSum", ["h", "axis1"], ["y"], keepdims=1),
            helper.make_node("Slice", ["x", "zero", "one", "one"], ["tag"]),
        ],
        "tunable_compute",
        [_value("x", "FP32", [-1, width]), _value("work", "INT64", [-1, 1])],
        [_value("y", "FP32", [-1, 1]), _value("tag", "FP32", [-1, 1])],
        initializer=[
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
        ],
    )
    _save(path, graph)
