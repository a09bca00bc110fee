"""The in-process API: steadyserve.Runtime over a real repository of real ONNX models."""

from __future__ import annotations

import asyncio
import functools
import threading

import numpy as np
import onnxruntime as ort
import pytest

import steadyserve
from onnx_models import (
    make_repo,
    write_add_two_inputs,
    write_fixed_shape,
    write_int64_input,
    write_linear,
)
from steadyserve.errors import (
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    SteadyServeError,
    UnavailableError,
)

# A window far longer than any test: batches then close only when full, which
# makes batch counts deterministic.
LONG_WINDOW_US = 10_000_000


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    make_repo(
        root,
        {
            "linear": functools.partial(write_linear, n_in=4, n_out=3, seed=1),
            "add": write_add_two_inputs,
            "ids": write_int64_input,
            "fixed": write_fixed_shape,
            "batch8": functools.partial(write_linear, n_in=4, n_out=3, seed=1),
            "tiny_queue": functools.partial(write_linear, n_in=4, n_out=3, seed=1),
            "broken": functools.partial(write_linear, n_in=4, n_out=3, seed=1),
        },
        configs={
            "batch8": {
                "max_batch_size": 8,
                "batching": {"max_queue_delay_us": LONG_WINDOW_US},
                # A wide margin: the slack rule then closes a deadline's batch well before
                # it, however late a loaded machine wakes the dispatcher.
                "slo": {"margin_ms": 100},
            },
            "tiny_queue": {
                "max_batch_size": 8,
                "batching": {"max_queue_delay_us": LONG_WINDOW_US, "max_queue_size": 2},
            },
            "broken": {"max_batch_size": -3},
        },
    )
    return root


@pytest.fixture(scope="module")
def runtime(repo):
    rt = steadyserve.Runtime(repo)
    yield rt
    rt.close()


def reference(repo, model: str, feeds: dict) -> dict:
    session = ort.InferenceSession(str(repo / model / "1" / "model.onnx"))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def test_results_equal_onnxruntime_called_directly(repo, runtime):
    x = np.random.default_rng(0).standard_normal((7, 4)).astype(np.float32)
    result = runtime.infer("linear", {"x": x})
    np.testing.assert_array_equal(result["y"], reference(repo, "linear", {"x": x})["y"])
    assert (result.model_name, result.model_version) == ("linear", "1")


def test_two_inputs_and_int64(repo, runtime):
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    out = runtime.infer("add", {"a": a, "b": a * 10})
    np.testing.assert_array_equal(out["sum"], a * 11)
    ids = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64)
    out = runtime.infer("ids", {"ids": ids})
    np.testing.assert_array_equal(out["doubled"], ids * 2)
    np.testing.assert_array_equal(out["as_float"], ids.astype(np.float32))
    only = runtime.infer("ids", {"ids": ids}, outputs=["doubled"])
    assert list(only.outputs) == ["doubled"]


def test_fixed_shape_model_served_unbatched_without_config(runtime):
    model = runtime.get_model("fixed")
    assert model.max_batch_size == 0
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(runtime.infer("fixed", {"x": x})["y"], 2 * x)
    with pytest.raises(InvalidArgumentError, match=r"shape \[1, 2, 3\], expected \[2, 3\]"):
        runtime.infer("fixed", {"x": x[None]})


def test_concurrent_single_rows_from_threads_get_their_own_rows(repo, runtime):
    w, b = write_linear(repo / "scratch.onnx", n_in=4, n_out=3, seed=1)
    before = runtime.get_model("batch8").statistics()
    answers: dict[int, np.ndarray] = {}

    def client(i: int) -> None:
        answers[i] = runtime.infer("batch8", {"x": np.full((1, 4), i, np.float32)})["y"]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(64):
        expected = np.full((1, 4), i, np.float32) @ w + b
        np.testing.assert_allclose(answers[i], expected, rtol=1e-5, atol=1e-4)
    after = runtime.get_model("batch8").statistics()
    # 64 single rows, batches close only when full at 8 rows: exactly 8 executions.
    assert after.execution_count - before.execution_count == 8
    assert after.inference_count - before.inference_count == 64
    assert after.batch_stats[8].count >= 8


def test_concurrent_async_requests_get_their_own_rows(repo, runtime):
    w, b = write_linear(repo / "scratch.onnx", n_in=4, n_out=3, seed=1)

    async def main():
        return await asyncio.gather(
            *[
                runtime.infer_async("linear", {"x": np.full((1, 4), i, np.float32)})
                for i in range(200)
            ]
        )

    results = asyncio.run(main())
    for i, result in enumerate(results):
        np.testing.assert_allclose(
            result["y"], np.full((1, 4), i, np.float32) @ w + b, rtol=1e-5, atol=1e-4
        )


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"z": np.zeros((1, 4), np.float32)}, "has no input 'z' .inputs: x."),
        ({}, r"missing input 'x' \(FP32 \[-1, 4\]\)"),
        ({"x": np.zeros((1, 5), np.float32)}, r"shape \[1, 5\], expected \[-1, 4\]"),
        ({"x": np.zeros(4, np.float32)}, r"shape \[4\], expected \[-1, 4\]"),
        ({"x": np.zeros((0, 4), np.float32)}, "0 rows"),
        ({"x": np.zeros((65, 4), np.float32)}, "65 rows, more than max_batch_size 64"),
        ({"x": np.full((1, 4), 0.1, np.float64)}, "cannot be represented as FP32"),
        ({"x": np.array([["a", "b", "c", "d"]])}, "cannot convert"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message_and_serving_continues(runtime, inputs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        runtime.infer("linear", inputs)
    assert runtime.infer("linear", {"x": np.ones((1, 4), np.float32)})["y"].shape == (1, 3)


def test_lossless_conversion_is_accepted(runtime):
    ints = np.array([[1, 2, 3, 4]], dtype=np.int32)
    np.testing.assert_array_equal(
        runtime.infer("linear", {"x": ints})["y"],
        runtime.infer("linear", {"x": ints.astype(np.float32)})["y"],
    )


def test_unknown_model_version_and_path_tricks(runtime):
    with pytest.raises(NotFoundError, match="model 'nope' not found"):
        runtime.infer("nope", {"x": np.ones((1, 4), np.float32)})
    with pytest.raises(NotFoundError, match="no version '9'"):
        runtime.infer("linear", {"x": np.ones((1, 4), np.float32)}, version="9")
    for name in ["../linear", "a/b", "..", ""]:
        with pytest.raises(InvalidArgumentError):
            runtime.get_model(name)


def test_bad_config_is_isolated(runtime):
    index = {(e.name, e.state) for e in runtime.model_index()}
    assert ("broken", "UNAVAILABLE") in index and ("linear", "READY") in index
    reason = next(e.reason for e in runtime.model_index() if e.name == "broken")
    assert "config.yaml" in reason and "max_batch_size" in reason
    with pytest.raises(UnavailableError, match="broken"):
        runtime.get_model("broken")
    assert not runtime.ready()  # one model of the repository is not serving


def test_full_queue_refuses_and_deadline_drops_without_executing(runtime):
    model = runtime.get_model("tiny_queue")

    async def main():
        x = np.ones((1, 4), np.float32)
        first = asyncio.ensure_future(model.infer_async({"x": x}))
        second = asyncio.ensure_future(model.infer_async({"x": x}))
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhaustedError, match="max_queue_size 2"):
            await model.infer_async({"x": x})
        return first, second

    async def with_deadline():
        # Queued behind a 10 s window, a request with a 200 ms deadline is not left to
        # expire: deadline-aware batching closes its batch while the slack still covers
        # the estimated execution, and it is answered in time.
        batch8 = runtime.get_model("batch8")
        before = batch8.statistics().execution_count
        out = await runtime.infer_async("batch8", {"x": np.ones((1, 4), np.float32)}, timeout=0.2)
        assert out["y"].shape == (1, 3)
        assert batch8.statistics().execution_count == before + 1

    async def run():
        first, second = await main()
        await with_deadline()
        first.cancel()
        second.cancel()
        await asyncio.gather(first, second, return_exceptions=True)
        assert model.batcher_stats()["cancelled"] >= 2
        assert model.statistics().refused.get("RESOURCE_EXHAUSTED") == 1

    asyncio.run(run())


def test_close_drains_accepted_requests(repo):
    rt = steadyserve.Runtime(repo, models=["batch8"])
    results = {}

    def client(i):
        results[i] = rt.infer("batch8", {"x": np.full((1, 4), i, np.float32)})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    model = rt.get_model("batch8")
    for _ in range(1000):  # 3 rows wait for a batch of 8 behind a 10 s window
        if model.queue_depth == 3:
            break
        threading.Event().wait(0.01)
    assert model.queue_depth == 3
    rt.close()
    for t in threads:
        t.join(10)
    assert sorted(results) == [0, 1, 2]
    with pytest.raises(UnavailableError):
        rt.infer("batch8", {"x": np.ones((1, 4), np.float32)})


def test_runtime_refuses_unknown_model_selection(repo):
    with pytest.raises(steadyserve.ConfigError, match="no model named missing"):
        steadyserve.Runtime(repo, models=["missing"])


# -- execution mode ---------------------------------------------------------------------


def _inline_repo(root, configs):
    from onnx_models import write_tunable_compute

    return make_repo(
        root,
        {
            "fast": functools.partial(write_linear, n_in=4, n_out=3, seed=1),
            "tunable": functools.partial(write_tunable_compute, width=64),
        },
        configs=configs,
    )


def test_fast_model_runs_inline_and_threads_when_asked(tmp_path):
    repo = _inline_repo(tmp_path, {"tunable": {"execution": "threads"}})
    with steadyserve.Runtime(repo) as rt:
        fast, tunable = rt.get_model("fast"), rt.get_model("tunable")
        assert fast.inline and not tunable.inline
        before = {t.name for t in threading.enumerate()}
        x = np.ones((1, 4), np.float32)
        first, second = rt.infer("fast", {"x": x}), rt.infer("fast", {"x": x})
        np.testing.assert_array_equal(first["y"], second["y"])

        async def many():
            return await asyncio.gather(
                *[rt.infer_async("fast", {"x": np.full((1, 4), i, np.float32)}) for i in range(50)]
            )

        answers = asyncio.run(many())
        assert [float(a["y"][0, 0]) for a in answers] == [
            float(rt.infer("fast", {"x": np.full((1, 4), i, np.float32)})["y"][0, 0])
            for i in range(50)
        ]
        # Inline: the 50 requests submitted in one loop iteration shared batches, and no
        # executor thread was started for the fast model.
        assert fast.statistics().execution_count < fast.statistics().inference_count
        started = {t.name for t in threading.enumerate()} - before
        assert not any("exec-fast" in name for name in started)


def test_inline_model_moves_to_threads_after_a_long_batch(tmp_path):
    """Warm-up (work 0) saw a fast model, so `auto` chose inline; a request whose input
    makes a batch run long moves the model to executor threads for good."""
    repo = _inline_repo(tmp_path, {})
    with steadyserve.Runtime(repo) as rt:
        model = rt.get_model("tunable")
        assert model.inline
        x = np.zeros((1, 64), np.float32)
        rt.infer("tunable", {"x": x, "work": np.full((1, 1), 20000, np.int64)})
        assert not model.inline
        assert any("exec-tunable" in t.name for t in threading.enumerate())
        out = rt.infer("tunable", {"x": x, "work": np.zeros((1, 1), np.int64)})
        assert out["y"].shape == (1, 1)


def test_inline_execution_config_rules(tmp_path):
    repo = _inline_repo(
        tmp_path,
        {"fast": {"execution": "inline", "batching": {"max_queue_delay_us": 100}}},
    )
    with steadyserve.Runtime(repo) as rt:
        reason = next(e.reason for e in rt.model_index() if e.name == "fast")
        assert "execution" in reason and "max_queue_delay_us: 0" in reason


def test_batches_run_the_backends_current_session(tmp_path):
    """Regression: the executor kept the session it saw when it was built, so a session
    the warm-up put in its place (intra_op_threads: auto choosing more threads) was never
    run. Batches now run whatever session the backend holds: once it is closed, they fail
    (and the backup, if any, answers) instead of quietly running the old one."""
    repo = _inline_repo(tmp_path, {"tunable": {"execution": "threads"}})
    with steadyserve.Runtime(repo) as rt:
        model = rt.get_model("tunable")
        feeds = {"x": np.ones((1, 64), np.float32), "work": np.zeros((1, 1), np.int64)}
        assert rt.infer("tunable", feeds)["y"].shape == (1, 1)
        model.backend.close()
        with pytest.raises(SteadyServeError, match="closed"):
            rt.infer("tunable", feeds)
