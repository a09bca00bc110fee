"""Backup-model failover in process: triggers, circuit breaker, last resort, load-time checks.

Every model here is a tiny linear model (x FP32 [-1, 4] -> y FP32 [-1, 3]); ``main``
has ``lite`` as its backup, and the two differ in their weights, so an answer shows
which model computed it. Faults are injected with ``Runtime.inject_fault``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time

import numpy as np
import pytest

import steadyserve
from onnx_models import linear_answer, make_repo, write_identity, write_linear
from steadyserve.config import CircuitConfig
from steadyserve.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)
from steadyserve.routing import CLOSED, HALF_OPEN, OPEN, CircuitBreaker

X = np.arange(8, dtype=np.float32).reshape(2, 4) / 8.0
T = 10.0  # seconds: a timeout no test should come near


def linear(seed: int, n_in: int = 4, n_out: int = 3):
    return functools.partial(write_linear, n_in=n_in, n_out=n_out, seed=seed)


def expected(seed: int, x: np.ndarray = X) -> np.ndarray:
    return linear_answer(seed, x)


def failover(**extra) -> dict:
    return {"backup": "lite", "failover": extra}


@pytest.fixture
def runtime(tmp_path):
    """``runtime(configs, models=None, allow=True)``: a Runtime over main (seed 1) and lite
    (seed 2), plus any extra models; closed at the end of the test."""
    opened = []

    def _runtime(configs=None, models=None, allow=True, **kwargs):
        root = tmp_path / f"repo{len(opened)}"
        make_repo(root, models or {"main": linear(1), "lite": linear(2)}, configs=configs or {})
        rt = steadyserve.Runtime(root, allow_fault_injection=allow, **kwargs)
        opened.append(rt)
        return rt

    yield _runtime
    for rt in opened:
        rt.close()


def skipped(rt, model: str) -> dict[str, int]:
    return {s["reason"]: s["count"] for s in rt.failover_report()["skipped"] if s["model"] == model}


def circuit(rt, model: str = "main") -> str:
    return rt.failover_report()["circuits"][model]["state"]


# -- the triggers ------------------------------------------------------------------------


def test_healthy_primary_answers_without_failover(runtime):
    rt = runtime({"main": failover()})
    result = rt.infer("main", {"x": X})
    assert (result.model_name, result.model_version) == ("main", "1")
    assert result.parameters == {}
    np.testing.assert_allclose(result["y"], expected(1), rtol=1e-5)


def test_execution_error_fails_over_to_backup(runtime):
    rt = runtime({"main": failover()})
    rt.inject_fault("main", "error")
    result = rt.infer("main", {"x": X}, timeout=T)
    assert (result.model_name, result.model_version) == ("lite", "1")
    np.testing.assert_allclose(result["y"], expected(2), rtol=1e-5)
    assert result.parameters["failover"] is True
    assert result.parameters["failover_from"] == "main"
    assert "main: execution_error" in result.parameters["failover_reason"]
    assert "injected fault: error" in result.parameters["failover_reason"]
    report = rt.failover_report()
    assert report["failovers"] == [{"model": "main", "answered_by": "lite", "count": 1}]
    assert skipped(rt, "main") == {"execution_error": 1}
    assert (
        rt.metrics.registry.get_sample_value(
            "steadyserve_failovers_total", {"model": "main", "answered_by": "lite"}
        )
        == 1
    )
    assert (
        rt.metrics.registry.get_sample_value(
            "steadyserve_failover_triggers_total", {"model": "main", "reason": "execution_error"}
        )
        == 1
    )


def test_async_path_fails_over_too(runtime):
    rt = runtime({"main": failover()})
    rt.inject_fault("main", "error")

    async def go():
        return await rt.infer_async("main", {"x": X}, timeout=T)

    result = asyncio.run(go())
    assert result.model_name == "lite"
    assert result.parameters["failover_from"] == "main"


def test_hang_is_terminated_after_the_timeout_and_backup_answers(runtime):
    rt = runtime({"main": failover(execution_timeout_ms=100)})
    rt.inject_fault("main", "hang")
    started = time.monotonic()
    result = rt.infer("main", {"x": X}, timeout=5.0)  # the deadline leaves room for the backup
    elapsed = time.monotonic() - started
    assert result.model_name == "lite"
    np.testing.assert_allclose(result["y"], expected(2), rtol=1e-5)
    reason = result.parameters["failover_reason"]
    assert "main: execution_timeout" in reason and "terminated" in reason
    assert skipped(rt, "main") == {"execution_timeout": 1}
    # The watchdog cannot fire before the timeout; the upper bound is only a sanity bound.
    assert 0.09 <= elapsed < 5.0
    rt.clear_fault("main")
    assert rt.infer("main", {"x": X}, timeout=T).model_name == "main"  # the executor is free


def test_nan_outputs_fail_over(runtime):
    rt = runtime({"main": failover(output_checks=[{"name": "y"}])})
    rt.inject_fault("main", "nan")
    result = rt.infer("main", {"x": X}, timeout=T)
    assert result.model_name == "lite"
    assert np.isfinite(result["y"]).all()
    assert "main: bad_output" in result.parameters["failover_reason"]
    assert "non-finite" in result.parameters["failover_reason"]


def test_nan_without_output_checks_is_answered_as_is(runtime):
    # Output checks are opt-in: without them NaN is a (bad) answer, not a failure.
    rt = runtime({"main": failover()})
    rt.inject_fault("main", "nan")
    result = rt.infer("main", {"x": X}, timeout=T)
    assert result.model_name == "main" and np.isnan(result["y"]).all()


def test_output_outside_the_configured_range_fails_over(runtime):
    rt = runtime({"main": failover(output_checks=[{"name": "y", "min": -1000.0, "max": -999.0}])})
    result = rt.infer("main", {"x": X}, timeout=T)
    assert result.model_name == "lite"
    assert "is outside [-1000, -999]" in result.parameters["failover_reason"]


def test_primary_that_failed_to_load_fails_over(runtime, tmp_path):
    def broken(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not an onnx file")

    rt = runtime({"main": failover()}, models={"main": broken, "lite": linear(2)})
    assert [(e.name, e.state) for e in rt.model_index()] == [
        ("lite", "READY"),
        ("main", "UNAVAILABLE"),
    ]
    result = rt.infer("main", {"x": X}, timeout=T)
    assert result.model_name == "lite"
    assert "main: not_ready" in result.parameters["failover_reason"]


def test_every_request_of_a_failed_batch_is_answered_by_the_backup(runtime):
    # Batches close only when full (8 rows): the 8 requests share one batch on main.
    config = failover()
    config.update(max_batch_size=8, batching={"max_queue_delay_us": 10_000_000})
    rt = runtime({"main": config})
    rt.inject_fault("main", "error")

    async def go():
        rows = [X[:1] + i for i in range(8)]
        results = await asyncio.gather(*(rt.infer_async("main", {"x": r}, timeout=T) for r in rows))
        return rows, results

    rows, results = asyncio.run(go())
    assert [r.model_name for r in results] == ["lite"] * 8
    for row, result in zip(rows, results, strict=True):
        np.testing.assert_allclose(result["y"], expected(2, row), rtol=1e-5)
    stats = rt.get_model("main").statistics()
    assert (stats.execution_count, stats.fail.count, stats.success.count) == (1, 8, 0)


def test_backup_chain_is_walked(runtime):
    models = {"main": linear(1), "mid": linear(3), "lite": linear(2)}
    rt = runtime({"main": {"backup": "mid"}, "mid": {"backup": "lite"}}, models=models)
    rt.inject_fault("main", "error")
    rt.inject_fault("mid", "error")
    result = rt.infer("main", {"x": X}, timeout=T)
    assert result.model_name == "lite"
    assert result.parameters["failover_from"] == "main"
    reason = result.parameters["failover_reason"]
    assert "main: execution_error" in reason and "mid: execution_error" in reason


def test_bad_request_is_not_retried_on_the_backup(runtime):
    rt = runtime({"main": failover()})
    with pytest.raises(InvalidArgumentError, match="model 'main'"):
        rt.infer("main", {"x": np.zeros((1, 5), np.float32)})
    assert rt.failover_report()["failovers"] == []


# -- deadline-based failover -------------------------------------------------------------


def test_primary_estimated_to_miss_the_deadline_goes_to_the_backup(runtime):
    rt = runtime({"main": failover()})
    rt.inject_fault("main", "slow", delay_ms=400)
    x = X[:1]
    # One slow batch teaches main's latency estimate that it now takes >= 400 ms.
    assert rt.infer("main", {"x": x}, timeout=T).model_name == "main"
    before = rt.get_model("main").statistics().execution_count
    result = rt.infer("main", {"x": x}, timeout=0.2)  # main would take 400 ms, lite fits
    assert result.model_name == "lite"
    assert "main: deadline" in result.parameters["failover_reason"]
    assert skipped(rt, "main")["deadline"] >= 1
    # Without a deadline nothing can be missed: main answers, slowly.
    assert rt.infer("main", {"x": x}).model_name == "main"
    assert rt.get_model("main").statistics().execution_count >= before + 1


def test_primary_is_taken_back_once_it_is_fast_again(runtime):
    # Regression: a model skipped for its deadline ran no batches, so its latency estimate
    # stayed at the slow value and every request went to the backup for good.
    rt = runtime({"main": failover()})
    rt.inject_fault("main", "slow", delay_ms=400)
    x = X[:1]
    rt.infer("main", {"x": x}, timeout=T)
    assert rt.infer("main", {"x": x}, timeout=0.2).model_name == "lite"
    rt.clear_fault("main")
    give_up = time.monotonic() + 20.0  # generous: it takes ~2 s here
    answered_by = "lite"
    while answered_by != "main" and time.monotonic() < give_up:
        with contextlib.suppress(DeadlineExceededError):  # a stall of a shared machine
            answered_by = rt.infer("main", {"x": x}, timeout=0.2).model_name
        time.sleep(0.01)
    assert answered_by == "main"
    assert rt.router.refreshes >= 1


# -- circuit breaker ---------------------------------------------------------------------

CIRCUIT = {"consecutive_failures": 3, "open_s": 1.0, "half_open_probes": 2, "min_requests": 100}


def test_circuit_opens_after_the_threshold_then_half_opens_and_closes(runtime, caplog):
    caplog.set_level(logging.WARNING, logger="steadyserve.routing")
    clock = FakeClock()
    rt = runtime({"main": failover(circuit=CIRCUIT)}, clock=clock)
    gauge = functools.partial(
        rt.metrics.registry.get_sample_value, "steadyserve_circuit_state", {"model": "main"}
    )
    assert circuit(rt) == CLOSED and gauge() == 0
    rt.inject_fault("main", "error")
    for _ in range(3):
        assert circuit(rt) == CLOSED
        assert rt.infer("main", {"x": X}, timeout=T).model_name == "lite"
    assert circuit(rt) == OPEN and gauge() == 2
    assert rt.failover_report()["circuits"]["main"]["reason"].startswith("3 failures in a row")
    main = rt.get_model("main")
    failed = main.statistics().fail.count
    assert failed == 3

    # Open: straight to the backup, main is not even tried.
    result = rt.infer("main", {"x": X}, timeout=T)
    assert (
        result.model_name == "lite" and "main: circuit_open" in result.parameters["failover_reason"]
    )
    assert main.statistics().fail.count == failed

    # Healed, and the cool-down passes: half-open lets probes through; 2 good ones close it.
    rt.clear_fault("main")
    clock.now += CIRCUIT["open_s"] + 0.05  # the cool-down passes, no sleeping
    rt.router.tick()
    assert rt.infer("main", {"x": X}, timeout=T).model_name == "main"
    assert circuit(rt) == HALF_OPEN and gauge() == 1
    assert rt.infer("main", {"x": X}, timeout=T).model_name == "main"
    assert circuit(rt) == CLOSED and gauge() == 0
    assert rt.failover_report()["circuits"]["main"]["reason"] == "2 probes succeeded"

    transitions = [r.getMessage() for r in caplog.records if r.name == "steadyserve.routing"]
    assert [m.split(": ", 1)[1].split(" (")[0] for m in transitions] == [
        "closed -> open",
        "open -> half_open",
        "half_open -> closed",
    ]
    assert all(m.startswith("circuit of model 'main'") for m in transitions)
    for state in ("open", "half_open", "closed"):
        assert (
            rt.metrics.registry.get_sample_value(
                "steadyserve_circuit_transitions_total", {"model": "main", "state": state}
            )
            == 1
        )


def test_failed_probe_reopens_the_circuit(runtime):
    clock = FakeClock()
    rt = runtime({"main": failover(circuit=CIRCUIT)}, clock=clock)
    rt.inject_fault("main", "error")
    for _ in range(3):
        rt.infer("main", {"x": X}, timeout=T)
    assert circuit(rt) == OPEN
    clock.now += CIRCUIT["open_s"] + 0.05
    rt.router.tick()
    result = rt.infer("main", {"x": X}, timeout=T)  # the probe fails: the backup answers it
    assert result.model_name == "lite"
    report = rt.failover_report()["circuits"]["main"]
    assert (report["state"], report["opened"]) == (OPEN, 2)
    assert report["reason"].startswith("probe failed: execution_error")


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_consecutive_failures_and_success_resets_the_run():
    clock = FakeClock()
    b = CircuitBreaker("m", CircuitConfig(consecutive_failures=3, min_requests=100), clock)
    for ok in (False, False, True, False, False):
        b.record_batch(ok, 1, "boom")
    assert b.state == CLOSED
    b.record_batch(False, 1, "boom")
    assert b.state == OPEN and b.last_reason == "3 failures in a row, last: boom"


def test_breaker_counts_every_request_of_a_failed_batch():
    b = CircuitBreaker("m", CircuitConfig(consecutive_failures=5, min_requests=100), FakeClock())
    b.record_batch(False, 4, "boom")
    assert b.state == CLOSED
    b.record_batch(False, 2, "boom")
    assert b.state == OPEN and b.last_reason == "6 failures in a row, last: boom"


def test_breaker_failure_rate_over_the_sliding_window():
    clock = FakeClock()
    config = CircuitConfig(window_s=10, min_requests=10, failure_rate=0.5, consecutive_failures=100)
    b = CircuitBreaker("m", config, clock)
    for _ in range(4):  # 4 of 12 failed
        b.record_batch(False, 1, "old")
        b.record_batch(True, 2)
    assert b.state == CLOSED
    # They slide out of the window: had they stayed, the rate below would be 9 of 22.
    clock.now += 11
    for _ in range(4):
        b.record_batch(False, 1, "new")
        b.record_batch(True, 1)
    assert b.state == CLOSED  # 4 of 8 in the window: fewer than min_requests
    b.record_batch(True, 1)
    assert b.state == CLOSED  # 4 of 9
    b.record_batch(False, 1, "new")
    assert b.state == OPEN  # 5 of 10
    assert b.last_reason == "5 of 10 requests failed in 10 s, last: new"


def test_breaker_half_open_after_the_cool_down_needs_every_probe():
    clock = FakeClock()
    changes = []
    config = CircuitConfig(consecutive_failures=1, open_s=5, half_open_probes=2)
    b = CircuitBreaker("m", config, clock, on_change=lambda *a: changes.append(a[1:3]))
    b.record_batch(False, 1, "boom")
    assert b.state == OPEN
    clock.now += 4.9
    b.tick()
    assert b.state == OPEN  # still cooling down
    clock.now += 0.2
    b.tick()
    assert b.state == HALF_OPEN
    b.record_batch(True, 1)
    assert b.state == HALF_OPEN
    b.record_batch(True, 1)
    assert b.state == CLOSED
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


def test_breaker_half_open_reopens_on_a_failed_probe():
    clock = FakeClock()
    b = CircuitBreaker("m", CircuitConfig(consecutive_failures=1, open_s=5), clock)
    b.record_batch(False, 1, "boom")
    clock.now += 6
    b.tick()
    b.record_batch(False, 1, "again")
    assert b.state == OPEN and b.last_reason == "probe failed: again"


# -- the last resort ---------------------------------------------------------------------


def test_backup_failing_too_is_unavailable_naming_both(runtime):
    checks = {"output_checks": [{"name": "y"}]}
    rt = runtime({"main": failover(**checks), "lite": {"failover": checks}})
    rt.inject_fault("main", "error")
    rt.inject_fault("lite", "nan")
    with pytest.raises(UnavailableError) as info:
        rt.infer("main", {"x": X}, timeout=T)
    message = str(info.value)
    assert message.startswith("model 'main' could not answer: ")
    assert "main: execution_error (model 'main': injected fault: error)" in message
    assert "lite: bad_output (model 'lite' version 1: output 'y' has a non-finite" in message


def test_default_output_is_the_last_resort_and_is_marked(runtime):
    rt = runtime({"main": failover(default_output={"y": [0.5, 0.25, 0.25]})})
    rt.inject_fault("main", "error")
    rt.inject_fault("lite", "error")
    result = rt.infer("main", {"x": X}, timeout=T)
    assert (result.model_name, result.model_version) == ("main", "default")
    np.testing.assert_array_equal(result["y"], np.array([[0.5, 0.25, 0.25]] * 2, np.float32))
    assert result.parameters["default_output"] is True and result.parameters["failover"] is True
    reason = result.parameters["failover_reason"]
    assert "main: execution_error" in reason and "lite: execution_error" in reason
    assert {"model": "main", "answered_by": "default_output", "count": 1} in (
        rt.failover_report()["failovers"]
    )


# -- refused at load ---------------------------------------------------------------------


def _refusal(rt, name: str) -> str:
    entries = [e for e in rt.model_index() if e.name == name]
    assert entries and all(e.state == "UNAVAILABLE" for e in entries), entries
    with pytest.raises(UnavailableError):
        rt.get_model(name)
    return entries[0].reason


def test_cycle_is_refused_at_load(runtime):
    models = {"a": linear(1), "b": linear(2), "c": linear(3)}
    rt = runtime({"a": {"backup": "b"}, "b": {"backup": "a"}, "c": {"backup": "c"}}, models=models)
    assert "config.yaml: backup: backup chain has a cycle: a -> b -> a" in _refusal(rt, "a")
    assert "backup chain has a cycle: b -> a -> b" in _refusal(rt, "b")
    assert "backup chain has a cycle: c -> c" in _refusal(rt, "c")


def test_unknown_backup_is_refused_at_load(runtime):
    rt = runtime({"main": {"backup": "nosuch"}})
    assert "backup: backup 'nosuch' is not a model in the repository" in _refusal(rt, "main")
    assert rt.get_model("lite").ready


def test_signature_mismatch_is_refused_at_load(runtime):
    models = {
        "a": linear(1),
        "b": linear(1),
        "c": linear(1),
        "wide_in": linear(3, n_in=5),
        "wide_out": linear(4, n_out=5),
        "small": linear(5),
    }
    configs = {
        "a": {"backup": "wide_in"},
        "b": {"backup": "wide_out"},
        "c": {"backup": "small"},
        "small": {"max_batch_size": 4},
    }
    rt = runtime(configs, models=models)
    assert "backup: backup 'wide_in' has inputs" in _refusal(rt, "a")
    assert "backup 'wide_out' output 'y' has shape [-1, 5], 'b' gives [-1, 3]" in _refusal(rt, "b")
    assert "backup 'small' takes at most 4 rows per request" in _refusal(rt, "c")
    for name in ("wide_in", "wide_out", "small"):  # the backups themselves serve
        assert rt.get_model(name).ready


def test_default_output_that_does_not_fit_is_refused_at_load(runtime):
    rt = runtime({"main": failover(default_output={"y": [0.5, 0.5]})})
    reason = _refusal(rt, "main")
    assert "failover.default_output['y'] has 2 values" in reason and "[3]" in reason
    rt2 = runtime({"main": failover(default_output={"z": [1.0]})})
    assert "names output 'z', which model 'main' does not have" in _refusal(rt2, "main")


def test_default_output_for_a_non_fp32_output_is_refused_at_load(runtime):
    ints = functools.partial(write_identity, datatype="INT64", dims=(-1, 2))
    rt = runtime(
        {"ints": {"failover": {"default_output": {"output": [1.0, 2.0]}}}},
        models={"ints": ints},
    )
    reason = _refusal(rt, "ints")
    assert "output 'output' of model 'ints' is INT64" in reason and "FP32" in reason


# -- fault injection API -----------------------------------------------------------------


def test_fault_injection_is_refused_unless_allowed(runtime):
    rt = runtime({"main": failover()}, allow=False)
    with pytest.raises(PermissionDeniedError, match="--allow-fault-injection"):
        rt.inject_fault("main", "error")
    with pytest.raises(PermissionDeniedError):
        rt.clear_fault("main")


def test_fault_injection_arguments_are_checked(runtime):
    rt = runtime({"main": failover()})
    with pytest.raises(NotFoundError, match="nosuch"):
        rt.inject_fault("nosuch", "error")
    with pytest.raises(InvalidArgumentError, match="unknown fault 'explode'"):
        rt.inject_fault("main", "explode")
    with pytest.raises(InvalidArgumentError, match="delay_ms > 0"):
        rt.inject_fault("main", "slow")
    fault = rt.inject_fault("main", "slow", delay_ms=5)
    assert fault.describe() == "slow (5 ms)"
    rt.clear_fault("main")
    assert rt.infer("main", {"x": X}).model_name == "main"


def test_hung_batch_whose_callers_gave_up_still_counts_against_the_circuit(runtime):
    """Regression: when every request of a hung batch expired before the execution timeout
    cut the batch off, no caller was left to report the failure and the circuit stayed
    closed. The model now reports such failures to the circuit itself."""
    rt = runtime(
        {
            "main": failover(
                execution_timeout_ms=300,
                on_deadline_miss=False,
                circuit={"consecutive_failures": 1},
            )
        }
    )
    rt.inject_fault("main", "hang")
    with pytest.raises(DeadlineExceededError):  # expires long before the hang is cut off
        rt.infer("main", {"x": X[:1]}, timeout=0.05)
    assert circuit(rt) == CLOSED  # the batch still hangs: nothing known yet
    deadline = time.monotonic() + T
    while circuit(rt) != OPEN and time.monotonic() < deadline:
        time.sleep(0.02)
    assert circuit(rt) == OPEN
    rt.clear_fault("main")


def test_an_inline_backup_drained_before_its_primary_still_answers(tmp_path):
    """Inline models run on the submitting thread, in load order (by name): the backup
    'a' is drained before its primary 'b' fails, and must be drained again."""
    root = tmp_path / "repo"
    inline = {"execution": "inline", "batching": {"max_queue_delay_us": 0}}
    make_repo(
        root,
        {"a": linear(2), "b": linear(1)},
        configs={
            "a": inline,
            "b": {
                **inline,
                "backup": "a",
                "failover": {"output_checks": [{"name": "y", "max": -1000.0}]},
            },
        },
    )
    with steadyserve.Runtime(root) as rt:
        assert rt.get_model("a").inline and rt.get_model("b").inline
        result = rt.infer("b", {"x": X}, timeout=T)
        assert result.model_name == "a"
        np.testing.assert_allclose(result["y"], expected(2), rtol=1e-5)
