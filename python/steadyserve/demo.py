"""A ready-to-serve demo repository, built from nothing in about a second.

Two models for the same synthetic tabular task, so failover and benchmarks have a
realistic pair: ``tabular`` (an MLP, the primary) and ``tabular-lite`` (logistic
regression: cheaper, less accurate, the natural backup). Both come with a feature contract
(NaN / inf and values outside [-10, 10] refused, features named f00..f31) and a stats
file fitted on held-out rows of the same distribution (never the training rows: a
model is more confident on the rows it was trained on, so its answers there make a
prediction-drift reference that fresh healthy traffic drifts from), so drift against
it shows up in ``drift_report()``,
``GET /v2/models/tabular/drift`` and /metrics. Both are trained here with
plain numpy from a fixed seed and written with the onnx helper API: no downloads,
and the same bytes every time on a given machine.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .features.stats import fit_stats, write_stats

N_FEATURES = 32
N_CLASSES = 2
TRAIN_ROWS = 4096
TRAIN_SEED = 0
REFERENCE_ROWS = 4096  # held out: the stats file's rows
REFERENCE_SEED = 1
OPSET = 17
IR_VERSION = 8  # readable by onnxruntime >= 1.17 (the oldest we support)

# The label rule: linear in the first 8 features plus an interaction and a square, so
# the MLP (~92% on fresh rows) clearly beats logistic regression (~78%); the other 21
# features are noise, as in real tables.
_LINEAR = np.linspace(1.0, -1.0, 8)

_CONFIG_TEMPLATE = """\
# Demo model written by steadyserve.demo.build_demo_repository.
# Every key is optional; down to `warmup` the values are the defaults spelled out.
max_batch_size: 64
batching:
  preferred_batch_sizes: []
  max_queue_delay_us: 0   # 0 = batch only what is queued; raise it to trade latency for throughput
  max_queue_size: 1024
instances: 1
onnxruntime:
  device: cpu
  intra_op_threads: auto  # one thread, unless the warm-up shows more make one row faster
  inter_op_threads: 1
  allow_spinning: false   # a spinning thread pool burns a core even when idle
  graph_optimization: all
  warmup: true
# The feature contract of the input, checked and counted in the same native pass that
# copies each row into its batch. stats.json next to model.onnx holds the statistics and
# the drift reference of held-out rows (written like `steadyserve fit` writes it).
inputs:
  - name: features
    contract:
      feature_names: [{names}]
      missing: reject         # NaN / inf -> INVALID_ARGUMENT naming the row and the feature
      min: -10.0
      max: 10.0
      out_of_range: reject    # the features are N(0, 1): |x| > 10 (p ~ 1e-23) is a bug upstream
      scaling: none           # the model was trained on the raw features (already N(0, 1))
      stats: stats.json
drift:                        # live window vs the reference, per feature and per output
  window_rows: 10000
  sub_windows: 10             # the window slides by 1000 rows
  psi_threshold: 0.2
  min_rows: 200
"""

FEATURE_NAMES = [f"f{i:02d}" for i in range(N_FEATURES)]

# tabular-lite answers for tabular when tabular fails, so that
# `steadyserve serve --demo --allow-fault-injection` plus `steadyserve fault` is a complete drill.
_FAILOVER_PRIMARY = """\
backup: tabular-lite          # answers when this model fails (same inputs and outputs)
failover:
  # A batch of 64 rows runs in ~0.05 ms (p99) here: 50 ms is ~1000x that, enough to ride out
  # the scheduling stalls of a busy host, and short enough that a request caught in a hung
  # batch still gets the backup's answer well inside a typical 100 ms - 1 s deadline.
  execution_timeout_ms: 50
  output_checks:              # a batch with a bad output fails over as a whole
    - name: probabilities
      finite: true
      min: 0.0
      max: 1.0
  on_deadline_miss: true      # estimated to miss the deadline while the backup is not: backup
  circuit:                    # the defaults, spelled out
    window_s: 10.0
    min_requests: 20
    failure_rate: 0.5
    consecutive_failures: 5
    open_s: 5.0
    half_open_probes: 3
"""
_FAILOVER_BACKUP = """\
failover:
  output_checks:              # the last link: a bad answer becomes a clear UNAVAILABLE
    - name: probabilities
      finite: true
      min: 0.0
      max: 1.0
"""


def demo_dataset(n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the demo task: features float32 [n_rows, 32] ~ N(0, 1), labels int64 in {0, 1}."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_rows, N_FEATURES))
    score = x[:, :8] @ _LINEAR + 1.5 * x[:, 8] * x[:, 9] + (x[:, 10] ** 2 - 0.45)
    return x.astype(np.float32), (score > 0).astype(np.int64)


def _train(
    x: np.ndarray, y: np.ndarray, sizes: list[int], steps: int, lr: float
) -> list[np.ndarray]:
    """Full-batch Adam on softmax cross-entropy, ReLU between layers, all in float32 (the
    exported type, and half the cost of float64)."""
    rng = np.random.default_rng(TRAIN_SEED)
    params: list[np.ndarray] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        w = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)  # He init
        params += [w.astype(np.float32), np.zeros(fan_out, np.float32)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    target = np.eye(N_CLASSES, dtype=np.float32)[y]
    layers = len(params) // 2
    for t in range(1, steps + 1):
        acts = [x]
        for i in range(layers):
            z = acts[-1] @ params[2 * i] + params[2 * i + 1]
            acts.append(np.maximum(z, 0.0) if i < layers - 1 else z)
        grad = (_softmax(acts[-1]) - target) / len(x)
        grads: list[np.ndarray] = [np.empty(0)] * len(params)
        for i in reversed(range(layers)):
            grads[2 * i] = acts[i].T @ grad
            grads[2 * i + 1] = grad.sum(axis=0)
            if i > 0:
                grad = (grad @ params[2 * i].T) * (acts[i] > 0)
        for k, g in enumerate(grads):
            m[k] = beta1 * m[k] + (1 - beta1) * g
            v[k] = beta2 * v[k] + (1 - beta2) * g * g
            params[k] -= lr * (m[k] / (1 - beta1**t)) / (np.sqrt(v[k] / (1 - beta2**t)) + eps)
    return params


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _logits(params: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    h = x
    for i in range(len(params) // 2):
        h = h @ params[2 * i] + params[2 * i + 1]
        if i < len(params) // 2 - 1:
            h = np.maximum(h, 0.0)
    return h


def _predict(params: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    return _logits(params, x).argmax(axis=1)


def _export(params: list[np.ndarray], name: str, doc: str, accuracy: float) -> onnx.ModelProto:
    nodes, inits = [], []
    current = "features"
    layers = len(params) // 2
    for i in range(layers):
        w, b = f"W{i + 1}", f"b{i + 1}"
        inits += [
            numpy_helper.from_array(params[2 * i], w),
            numpy_helper.from_array(params[2 * i + 1], b),
        ]
        nodes += [
            helper.make_node("MatMul", [current, w], [f"matmul{i + 1}"]),
            helper.make_node("Add", [f"matmul{i + 1}", b], [f"logits{i + 1}"]),
        ]
        current = f"logits{i + 1}"
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [current], [f"relu{i + 1}"]))
            current = f"relu{i + 1}"
    nodes.append(helper.make_node("Softmax", [current], ["probabilities"], axis=-1))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", N_FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", N_CLASSES])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="steadyserve.demo",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"train_accuracy": f"{accuracy:.4f}"})
    onnx.checker.check_model(model)
    return model


def _one_blas_thread():
    # Matrices this small run ~3x slower when OpenBLAS splits them over busy cores, and
    # one thread keeps the summation order (hence the bytes) fixed. threadpoolctl comes
    # with scikit-learn; without it training is just slower.
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def build_demo_repository(root: Path | str) -> Path:
    """Write ``root/tabular`` and ``root/tabular-lite`` (config.yaml, 1/model.onnx,
    1/stats.json); returns root.

    Both models: input "features" FP32 [-1, 32] -> output "probabilities" FP32 [-1, 2].
    """
    root = Path(root)
    x, y = demo_dataset(TRAIN_ROWS, TRAIN_SEED)
    reference, _ = demo_dataset(REFERENCE_ROWS, REFERENCE_SEED)
    models = {
        "tabular": ([N_FEATURES, 64, 32, N_CLASSES], 150, 0.01, "MLP 32-64-32-2 (ReLU, softmax)"),
        "tabular-lite": ([N_FEATURES, N_CLASSES], 200, 0.05, "logistic regression 32-2 (softmax)"),
    }
    with _one_blas_thread():
        for name, (sizes, steps, lr, what) in models.items():
            params = _train(x, y, sizes, steps, lr)
            accuracy = float((_predict(params, x) == y).mean())
            doc = f"steadyserve demo: {what}, trained on demo_dataset({TRAIN_ROWS}, {TRAIN_SEED})"
            model = _export(params, name.replace("-", "_"), doc, accuracy)
            version_dir = root / name / "1"
            version_dir.mkdir(parents=True, exist_ok=True)
            onnx.save_model(model, str(version_dir / "model.onnx"))
            failover = _FAILOVER_PRIMARY if name == "tabular" else _FAILOVER_BACKUP
            (root / name / "config.yaml").write_text(_CONFIG + failover, encoding="utf-8")
            # The contract's stats and drift reference: held-out features, and the
            # model's answers on them (prediction drift).
            probabilities = _softmax(_logits(params, reference)).astype(np.float32)
            stats = fit_stats(
                {"features": reference},
                {"probabilities": probabilities},
                names={"features": FEATURE_NAMES},
            )
            write_stats(version_dir / "stats.json", stats)
    return root


_CONFIG = _CONFIG_TEMPLATE.replace("{names}", ", ".join(FEATURE_NAMES))

__all__ = ["FEATURE_NAMES", "build_demo_repository", "demo_dataset"]
