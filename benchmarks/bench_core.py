"""One request through the native core, measured alone (pytest-benchmark).

A 32-feature FP32 row goes in, a [1, 2] FP32 answer comes out; no ONNX Runtime, no
threads: each round is what the core does for one request around a model run, called
from Python in one thread.

- ``inprocess``: ``core.submit(model, "", {"x": row}, None, 0, 0)`` (a Pending) ->
  ``m.next_batch(0)`` (the batch of that one row) -> ``m.complete(buffer, [y], timings)``
  (scatter the output, answer) -> ``pending.wait()`` (the InferResult);
- ``wire``: the same with the ``ModelInferRequest`` bytes (built once with tritonclient's
  ``service_pb2``, wire-compatible with ours): ``core.submit_wire(data, 0, cq, tag)`` ->
  ``next_batch`` -> ``complete`` -> ``cq.drain(core)`` (the ``ModelInferResponse`` bytes);
- ``binding_floor``: four calls of ``_core.now_ns()``, the price of four crossings of the
  pybind11 boundary with no work (each round above makes four calls).

Aim: submit + complete of one row under 5 µs.

    python -m pytest benchmarks/bench_core.py --benchmark-only -q
"""

from __future__ import annotations

import numpy as np
import pytest

N_FEATURES = 32


@pytest.fixture(scope="module")
def core_and_model():
    import steadyserve._native  # noqa: F401  (hands the core our exception types first)
    from steadyserve import _core

    core = _core.InferenceCore(1024)
    m = _core.ModelCore(
        "m",
        "1",
        64,
        [("x", "FP32", [N_FEATURES], None)],
        [("y", "FP32", [2])],
        max_queue_delay_us=0,
        max_queue_size=1024,
        core=core,
    )
    core.add_model(m)
    m.ready = True
    yield _core, core, m
    m.stop()


def _row() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((1, N_FEATURES)).astype(np.float32)


def test_inprocess_submit_complete(benchmark, core_and_model):
    _core, core, m = core_and_model
    row = _row()
    out = np.array([[0.25, 0.75]], np.float32)
    timings = _core.BatchTimings()
    inputs = {"x": row}

    def one() -> object:
        p = core.submit("m", "", inputs, None, 0, 0)
        b = m.next_batch(0)
        m.complete(b.buffer, [out], timings)
        return p.wait()

    # Right answer first: one batch of one row, its output back.
    res = one()
    np.testing.assert_array_equal(res.outputs["y"], out)
    b_check = core.submit("m", "", inputs, None, 0, 0)
    batch = m.next_batch(0)
    assert batch.rows == 1 and batch.requests == 1
    np.testing.assert_array_equal(batch.inputs[0], row)
    m.complete(batch.buffer, [out], timings)
    b_check.wait()

    benchmark(one)
    assert core.requests_in_use == 0


def test_wire_submit_complete(benchmark, core_and_model):
    from tritonclient.grpc import service_pb2

    _core, core, m = core_and_model
    row = _row()
    req = service_pb2.ModelInferRequest(model_name="m")
    t = req.inputs.add()
    t.name, t.datatype = "x", "FP32"
    t.shape.extend([1, N_FEATURES])
    req.raw_input_contents.append(row.tobytes())
    data = req.SerializeToString()
    out = np.array([[0.25, 0.75]], np.float32)
    timings = _core.BatchTimings()
    cq = _core.CompletionQueue()

    def one() -> list:
        core.submit_wire(data, 0, cq, 7)
        b = m.next_batch(0)
        m.complete(b.buffer, [out], timings)
        return cq.drain(core)

    answers = one()
    assert len(answers) == 1
    tag, value, failed = answers[0]
    assert tag == 7 and not failed, value
    resp = service_pb2.ModelInferResponse.FromString(value)
    assert resp.model_name == "m" and resp.outputs[0].name == "y"
    assert list(resp.outputs[0].shape) == [1, 2]
    np.testing.assert_array_equal(np.frombuffer(resp.raw_output_contents[0], np.float32), out[0])

    benchmark(one)
    assert core.requests_in_use == 0


def test_binding_floor(benchmark):
    from steadyserve import _core

    now = _core.now_ns

    def four() -> int:
        now()
        now()
        now()
        return now()

    benchmark(four)
