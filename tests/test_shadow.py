"""Shadow traffic: a share of live batches mirrored to a candidate version and compared.

Real models (built here), a real Runtime serving version 1, the candidate's own ONNX
Runtime session; each figure is checked against ONNX Runtime run directly on the same
inputs. Batch counts are made deterministic by sending requests one after the other
(one request per batch) or by holding the live model with an injected hang.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time

import numpy as np
import onnx
import onnxruntime as ort
import prometheus_client
import pytest
from onnx import TensorProto, helper, numpy_helper

import steadyserve
from onnx_models import IR_VERSION, OPSET, make_repo, write_linear
from steadyserve.backends.onnx import OnnxBackend
from steadyserve.config import ShadowConfig
from steadyserve.errors import ConfigError
from steadyserve.lifecycle.shadow import ShadowMirror

N_IN, N_OUT = 4, 3
# Per version of "single": v2 is within the default tolerance of v1, v3 is not.
OFFSETS = {1: 0.0, 2: 5e-5, 3: 1e-2}
WAIT_S = 30.0


def _linear_by_version(path, seeds, n_out=N_OUT):
    write_linear(path, n_in=N_IN, n_out=n_out, seed=seeds[int(path.parent.name)])


def _shifted(path):
    """Width-1 rows: version v is version 1 plus OFFSETS[v]."""
    write_linear(path, n_in=N_IN, n_out=1, seed=3)
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.name == "b":
            b = numpy_helper.to_array(init) + np.float32(OFFSETS[int(path.parent.name)])
            init.CopyFrom(numpy_helper.from_array(b.astype(np.float32), "b"))
    onnx.save_model(model, str(path))


def _write_odd_rows_fail(path, seed=2):
    """Like version 2 of "clf", but Reshape(x, [-1, 8]) first: batches of an odd number
    of rows fail inside ONNX Runtime (a candidate that fails at run, not at load)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N_IN, N_OUT)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "pairs"], ["xp"]),
            helper.make_node("Reshape", ["xp", "rows"], ["xr"]),
            helper.make_node("MatMul", ["xr", "W"], ["y"]),
        ],
        "odd_rows_fail",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", N_IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N_OUT])],
        initializer=[
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(np.array([-1, 2 * N_IN], np.int64), "pairs"),
            numpy_helper.from_array(np.array([-1, N_IN], np.int64), "rows"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.save_model(model, str(path))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    make_repo(
        root,
        {
            # v2 has other weights: some rows' argmax differs, some agrees.
            "clf": functools.partial(_linear_by_version, seeds={1: 1, 2: 2}),
            "same": functools.partial(_linear_by_version, seeds={1: 1, 2: 1}),
            # Held by an injected hang (busy test): one request per batch, one executor.
            "busy": functools.partial(_linear_by_version, seeds={1: 1, 2: 2}),
        },
        configs={
            "clf": {"max_batch_size": 8, "batching": {"max_queue_delay_us": 500}},
            "same": {"max_batch_size": 8},
            "busy": {"max_batch_size": 1, "instances": 1},
        },
        versions=(1, 2),
    )
    make_repo(root, {"single": _shifted}, {"single": {"max_batch_size": 8}}, versions=(1, 2, 3))
    return root


@pytest.fixture(scope="module")
def rt(repo):
    runtime = steadyserve.Runtime(repo, models=["clf", "same", "single"], all_versions=True)
    yield runtime
    runtime.close()


@pytest.fixture
def shadow(rt):
    """shadow(runtime, name, candidate, version, **ShadowConfig fields): a mirror attached
    to version 1 of ``name``; ``candidate`` is a version number (its file in the repository)
    or a backend. Detached and closed at the end, loaded candidates closed."""
    made: list[tuple] = []

    def attach(name, candidate, version=2, *, runtime=rt, output=None, metrics=True, **fields):
        live = runtime.get_model(name, "1")
        loaded = None
        if isinstance(candidate, int):
            path = runtime.repository / name / str(candidate) / "model.onnx"
            candidate = loaded = OnnxBackend.load(path, live.config.onnxruntime)
        config = ShadowConfig(version=version, **{"fraction": 1.0, **fields})
        mirror = ShadowMirror(
            live, candidate, str(version), config, output, runtime.metrics if metrics else None
        )
        live.executor.shadow = mirror
        made.append((live, mirror, loaded))
        return mirror

    yield attach
    for live, mirror, loaded in made:
        live.executor.shadow = None
        mirror.close()
        if loaded is not None:
            loaded.close()


def ort_run(repo, name, version, x):
    session = ort.InferenceSession(str(repo / name / str(version) / "model.onnx"))
    return session.run(None, {"x": x})[0]


def requests(seed, count, max_rows=4):
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal((int(rng.integers(1, max_rows + 1)), N_IN)).astype(np.float32)
        for _ in range(count)
    ]


def executions(rt, name) -> int:
    return rt.get_model(name, "1").statistics().execution_count


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT_S} s: {what}")
        time.sleep(0.005)


def shadow_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("steadyserve-shadow-")]


# -- answers and sampling -----------------------------------------------------------------


def test_answers_stay_the_live_versions_under_concurrent_mirroring(repo, rt, shadow):
    mirror = shadow("clf", 2)
    before = executions(rt, "clf")
    sent = {i: requests(i, 25) for i in range(6)}
    answers: dict[int, list] = {}

    def client(i):
        answers[i] = [rt.infer("clf", {"x": x}, version="1") for x in sent[i]]

    threads = [threading.Thread(target=client, args=(i,)) for i in sent]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, xs in sent.items():
        for x, result in zip(xs, answers[i], strict=True):
            assert result.model_version == "1"
            np.testing.assert_array_equal(result["y"], ort_run(repo, "clf", 1, x))
    assert mirror.wait_idle(WAIT_S)
    report = mirror.report()
    batches = report["batches"]
    # fraction 1: every live batch was sampled, and each sampled one is accounted for.
    sampled = batches["mirrored"] + batches["dropped_busy"] + batches["dropped_queue_full"]
    assert sampled == executions(rt, "clf") - before
    assert batches["mirrored"] == batches["compared"] > 0
    assert batches["failed"] == 0
    assert report["rows"]["compared"] > 0


def test_fraction_mirrors_exactly_that_share_of_batches(rt, shadow):
    mirror = shadow("clf", 2, fraction=0.1)
    before = executions(rt, "clf")
    for x in requests(1, 45):  # one after the other: one request per batch, none waiting
        rt.infer("clf", {"x": x}, version="1")
    assert executions(rt, "clf") - before == 45
    assert mirror.wait_idle(WAIT_S)
    batches = mirror.report()["batches"]
    assert batches["mirrored"] == 4  # batches 10, 20, 30 and 40
    assert batches["compared"] == 4
    assert batches["dropped_busy"] == batches["dropped_queue_full"] == 0


def test_fraction_counts_concurrent_batches_too(rt, shadow):
    mirror = shadow("clf", 2, fraction=0.25)
    before = executions(rt, "clf")
    threads = [
        threading.Thread(target=lambda i=i: [rt.infer("clf", {"x": x}) for x in requests(i, 30)])
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    batches = mirror.report()["batches"]
    sampled = batches["mirrored"] + batches["dropped_busy"] + batches["dropped_queue_full"]
    assert sampled == (executions(rt, "clf") - before) // 4


# -- agreement ----------------------------------------------------------------------------


def test_agreement_equals_both_versions_run_directly(repo, rt, shadow):
    mirror = shadow("clf", 2, max_pending_batches=1024)
    sent = requests(2, 40)
    for x in sent:
        rt.infer("clf", {"x": x}, version="1")
    assert mirror.wait_idle(WAIT_S)
    live = [ort_run(repo, "clf", 1, x) for x in sent]
    cand = [ort_run(repo, "clf", 2, x) for x in sent]
    agree = sum(int(np.sum(a.argmax(1) == b.argmax(1))) for a, b in zip(live, cand, strict=True))
    rows = sum(len(x) for x in sent)
    diff = np.concatenate(
        [np.abs(a.astype(np.float64) - b) for a, b in zip(live, cand, strict=True)]
    )
    assert 0 < agree < rows  # the versions differ on some rows, not all: a real test

    report = mirror.report()
    assert report["batches"]["compared"] == report["batches"]["mirrored"] == len(sent)
    assert report["rows"] == {"compared": rows, "agree": agree, "disagree": rows - agree}
    assert report["agreement"] == agree / rows
    assert report["mean_abs_diff"] == pytest.approx(diff.mean(), rel=1e-6)
    assert report["shadow_run_ms_mean"] >= 0
    assert (report["model"], report["live_version"], report["shadow_version"]) == ("clf", "1", "2")
    assert report["fraction"] == 1.0


def test_identical_versions_agree_fully(rt, shadow):
    mirror = shadow("same", 2)
    for x in requests(3, 10):
        rt.infer("same", {"x": x}, version="1")
    assert mirror.wait_idle(WAIT_S)
    report = mirror.report()
    assert report["batches"]["compared"] == 10
    assert report["agreement"] == 1.0
    assert report["mean_abs_diff"] == 0.0


@pytest.mark.parametrize(("version", "agreement"), [(2, 1.0), (3, 0.0)])
def test_single_value_rows_agree_within_tolerance(rt, shadow, version, agreement):
    mirror = shadow("single", version, version=version, tolerance=1e-4)
    for x in requests(4, 10):
        rt.infer("single", {"x": x}, version="1")
    assert mirror.wait_idle(WAIT_S)
    report = mirror.report()
    assert report["batches"]["compared"] == 10
    assert report["agreement"] == agreement
    assert report["mean_abs_diff"] == pytest.approx(OFFSETS[version], rel=0.05)


def test_no_rows_compared_reports_none(rt, shadow):
    report = shadow("clf", 2).report()
    assert report["agreement"] is None
    assert report["mean_abs_diff"] is None
    assert report["shadow_run_ms_mean"] is None
    assert report["rows"] == {"compared": 0, "agree": 0, "disagree": 0}


# -- failures and load --------------------------------------------------------------------


def test_closed_candidate_counts_failed_batches_and_serving_goes_on(repo, rt, shadow, caplog):
    candidate = OnnxBackend.load(repo / "clf" / "2" / "model.onnx")
    mirror = shadow("clf", candidate)
    candidate.close()
    sent = requests(5, 12)
    with caplog.at_level(logging.WARNING, logger="steadyserve.lifecycle.shadow"):
        for x in sent:
            result = rt.infer("clf", {"x": x}, version="1")
            np.testing.assert_array_equal(result["y"], ort_run(repo, "clf", 1, x))
        assert mirror.wait_idle(WAIT_S)
    report = mirror.report()
    assert report["batches"]["failed"] == report["batches"]["mirrored"] == 12
    assert report["batches"]["compared"] == 0
    assert report["agreement"] is None
    logged = [r for r in caplog.records if r.name == "steadyserve.lifecycle.shadow"]
    assert len(logged) == 1  # once, not once per batch
    assert "closed" in logged[0].getMessage()


def test_candidate_failing_at_run_fails_only_its_batches(repo, rt, shadow, tmp_path):
    path = tmp_path / "odd.onnx"
    _write_odd_rows_fail(path)
    candidate = OnnxBackend.load(path)
    mirror = shadow("clf", candidate)
    rng = np.random.default_rng(6)
    sent = [rng.standard_normal((rows, N_IN)).astype(np.float32) for rows in (1, 2, 3, 4, 2)]
    for x in sent:
        result = rt.infer("clf", {"x": x}, version="1")
        np.testing.assert_array_equal(result["y"], ort_run(repo, "clf", 1, x))
    assert mirror.wait_idle(WAIT_S)
    report = mirror.report()
    assert report["batches"]["failed"] == 2  # the batches of 1 and 3 rows
    assert report["batches"]["compared"] == 3
    assert report["rows"]["compared"] == 8
    candidate.close()


def test_sampled_batch_dropped_while_live_requests_wait(repo, shadow):
    with steadyserve.Runtime(
        repo, models=["busy"], all_versions=True, allow_fault_injection=True
    ) as runtime:
        live = runtime.get_model("busy", "1")
        mirror = shadow("busy", 2, runtime=runtime, metrics=False)
        x_a, x_b = requests(7, 2, max_rows=1)
        results = {}

        def send(key, x):
            results[key] = runtime.infer("busy", {"x": x}, version="1")

        runtime.inject_fault("busy", "hang", version="1")
        first = threading.Thread(target=send, args=("a", x_a))
        first.start()
        wait_until(lambda: live.batcher_stats()["executing"] == 1, "request a executing")
        second = threading.Thread(target=send, args=("b", x_b))
        second.start()
        wait_until(lambda: live.queue_depth == 1, "request b waiting behind a")
        runtime.clear_fault("busy", version="1")
        first.join(WAIT_S)
        second.join(WAIT_S)
        assert mirror.wait_idle(WAIT_S)
        batches = mirror.report()["batches"]
        # a's batch finished with b waiting: dropped; b's with nothing waiting: compared.
        assert batches["dropped_busy"] == 1
        assert batches["mirrored"] == batches["compared"] == 1
        np.testing.assert_array_equal(results["a"]["y"], ort_run(repo, "busy", 1, x_a))
        np.testing.assert_array_equal(results["b"]["y"], ort_run(repo, "busy", 1, x_b))
        live.executor.shadow = None


class _GatedBackend:
    """A candidate whose runs wait for ``gate`` (``entered`` is set once one is waiting):
    holds the shadow worker so that mirrored batches pile up."""

    def __init__(self, backend):
        self.inputs, self.outputs, self.path = backend.inputs, backend.outputs, backend.path
        self.entered = threading.Event()
        self.gate = threading.Event()
        self._session = backend.session

    @property
    def session(self):
        return self

    def run(self, names, feeds):
        self.entered.set()
        assert self.gate.wait(WAIT_S)
        return self._session.run(names, feeds)


@pytest.fixture
def gated(repo):
    backend = OnnxBackend.load(repo / "clf" / "2" / "model.onnx")
    gated = _GatedBackend(backend)
    yield gated
    gated.gate.set()
    backend.close()


def test_pending_queue_full_drops_and_counts(rt, shadow, gated):
    mirror = shadow("clf", gated, max_pending_batches=2)
    sent = requests(8, 6)
    rt.infer("clf", {"x": sent[0]}, version="1")
    assert gated.entered.wait(WAIT_S)  # the worker holds batch 1
    for x in sent[1:]:  # 2 and 3 wait for the worker, 4-6 find the queue full
        rt.infer("clf", {"x": x}, version="1")
    batches = mirror.report()["batches"]
    assert batches["mirrored"] == 3
    assert batches["dropped_queue_full"] == 3
    gated.gate.set()
    assert mirror.wait_idle(WAIT_S)
    assert mirror.report()["batches"]["compared"] == 3


def test_close_discards_pending_is_idempotent_and_stops_the_worker(rt, shadow, gated):
    mirror = shadow("clf", gated, max_pending_batches=4)
    (worker,) = [t for t in shadow_threads() if t.name == "steadyserve-shadow-clf"]
    sent = requests(9, 3)
    rt.infer("clf", {"x": sent[0]}, version="1")
    assert gated.entered.wait(WAIT_S)
    if sys.platform.startswith("linux"):  # the worker runs at the lowest priority
        assert os.getpriority(os.PRIO_PROCESS, worker.native_id) == 19
    for x in sent[1:]:
        rt.infer("clf", {"x": x}, version="1")
    mirror.close(timeout=0.01)  # the worker is held: 2 pending are discarded
    gated.gate.set()  # the batch it holds is finished, then it stops
    mirror.close()
    mirror.close()
    assert not worker.is_alive() and not mirror.running
    batches = mirror.report()["batches"]
    assert batches == {
        "mirrored": 3,
        "compared": 1,
        "failed": 0,
        "dropped_busy": 0,
        "dropped_queue_full": 0,
        "discarded": 2,
    }
    # Still attached after close: a batch is served and the mirror takes nothing.
    rt.infer("clf", {"x": sent[0]}, version="1")
    assert mirror.report()["batches"] == batches


# -- metrics and compatibility ------------------------------------------------------------


def test_metrics_in_the_runtime_registry(rt, shadow):
    registry = rt.metrics.registry

    def sample(name, **labels):
        return registry.get_sample_value(name, {"model": "clf", "version": "2", **labels})

    rows_before = {
        r: sample("steadyserve_shadow_rows_total", result=r) or 0 for r in ("agree", "disagree")
    }
    compared_before = sample("steadyserve_shadow_batches_total", outcome="compared") or 0
    mirror = shadow("clf", 2)
    for x in requests(10, 8):
        rt.infer("clf", {"x": x}, version="1")
    assert mirror.wait_idle(WAIT_S)
    report = mirror.report()
    text = prometheus_client.generate_latest(registry).decode()
    for family in (
        "steadyserve_shadow_rows_total",
        "steadyserve_shadow_batches_total",
        "steadyserve_shadow_agreement_ratio",
    ):
        assert family in text
    for result in ("agree", "disagree"):
        added = sample("steadyserve_shadow_rows_total", result=result) - rows_before[result]
        assert added == report["rows"][result]
    assert sample("steadyserve_shadow_batches_total", outcome="compared") - compared_before == 8
    assert sample("steadyserve_shadow_batches_total", outcome="dropped_busy") is not None
    assert sample("steadyserve_shadow_agreement_ratio") == pytest.approx(report["agreement"])
    mirror.close()
    assert sample("steadyserve_shadow_agreement_ratio") is None  # a running mirror's figure


def test_check_compatible_names_what_differs(rt, repo, tmp_path):
    live = rt.get_model("clf", "1")
    same = OnnxBackend.load(repo / "clf" / "2" / "model.onnx")
    wider = tmp_path / "wider.onnx"
    write_linear(wider, n_in=N_IN + 1, n_out=N_OUT)
    fp64 = tmp_path / "fp64.onnx"
    write_linear(fp64, n_in=N_IN, n_out=N_OUT, dtype="FP64")
    try:
        assert ShadowMirror.check_compatible(live, same, None) is None
        assert ShadowMirror.check_compatible(live, same, "y") is None
        assert "no output 'score'" in ShadowMirror.check_compatible(live, same, "score")
        reason = ShadowMirror.check_compatible(live, OnnxBackend.load(wider), None)
        assert "input 'x'" in reason and "[-1, 5]" in reason
        reason = ShadowMirror.check_compatible(live, OnnxBackend.load(fp64), None)
        assert "FP64" in reason and "FP32" in reason
        with pytest.raises(ConfigError, match="shadow version 3 cannot mirror version 1"):
            ShadowMirror(live, OnnxBackend.load(wider), "3", ShadowConfig(version=3), None, None)
        assert not shadow_threads()  # a refused mirror starts no thread
    finally:
        same.close()
