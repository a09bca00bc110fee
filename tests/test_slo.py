"""Latency SLOs in-process: deadlines, admission control, expiry, priorities, shedding.

Every test asserts what was executed (``statistics().execution_count`` and
``inference_count``) and what was answered, never how long anything took. To put
requests in a known queue state, a model's one executor is made busy on purpose with
the "hang" fault: a blocker batch starts (``batcher_stats()["batches"]`` says when),
hangs until the test clears the fault, and everything submitted meanwhile waits in
the queue. Each test has a model of its own, so statistics and the latency model of
one test never leak into another.
"""

from __future__ import annotations

import asyncio
import functools
import re
import threading
import time
from collections import Counter

import numpy as np
import pytest

import steadyserve
from onnx_models import make_repo, write_tunable_compute
from steadyserve.config import load_model_config
from steadyserve.errors import (
    ConfigError,
    DeadlineExceededError,
    InvalidArgumentError,
    ResourceExhaustedError,
)

WIDTH = 32
LONG = 60_000  # ms: a deadline no test reaches
TEACH_S = 0.3  # how long a taught execution hangs (the latency model then knows >= this)


def _config(max_batch_size: int = 8, *, slo: dict | None = None, **batching) -> dict:
    return {
        "max_batch_size": max_batch_size,
        "batching": {"max_queue_delay_us": 0, **batching},
        "slo": slo or {},
    }


MODELS = {
    "admission": _config(),
    "expiry_admission": _config(),
    "expiry_fifo": _config(slo={"admission_control": False}),
    "expiry_sync": _config(slo={"admission_control": False}),
    "default_deadline": _config(slo={"default_deadline_ms": 150}),
    "priority": _config(1, slo={"priority_levels": 3}),
    "full": _config(max_queue_size=2),
    "level_cap": _config(slo={"priority_levels": 2, "priority_queues": {2: {"max_queue_size": 1}}}),
    "evict": _config(max_queue_size=2, slo={"priority_levels": 2}),
    "batch_cap": _config(slo={"latency_ms": 200, "default_deadline_ms": LONG}),
    "report": _config(slo={"latency_ms": 5000, "margin_ms": 1}),
}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    root = tmp_path_factory.mktemp("slo_repo")
    build = functools.partial(write_tunable_compute, width=WIDTH)
    make_repo(root, {name: build for name in MODELS}, configs=MODELS)
    rt = steadyserve.Runtime(root, allow_fault_injection=True)
    yield rt
    rt.close()


def rows(n: int = 1, tag: float = 0.0, work: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the tunable model: ``tag`` comes back in output "tag"."""
    x = np.zeros((n, WIDTH), np.float32)
    x[:, 0] = tag
    return {"x": x, "work": np.full((n, 1), work, np.int64)}


def executed(model) -> tuple[int, int]:
    """(batches, rows) executed, once the executor has recorded every batch it formed.

    An answer reaches its caller just before its batch is counted in statistics(); the
    core counts a batch when it forms it. Waiting until the two agree (and nothing is
    queued) makes the figures final, so "never executed" can be asserted exactly.
    """
    deadline = time.monotonic() + 20
    while True:
        core = model.batcher_stats()
        s = model.statistics()
        if s.execution_count == core["batches"] and core["queued_requests"] == 0:
            assert s.inference_count <= core["rows_executed"]
            return s.execution_count, s.inference_count
        assert time.monotonic() < deadline, f"statistics never caught up with the core: {core}"
        time.sleep(0.002)


async def wait_for(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


class Busy:
    """``async with Busy(rt, name):`` the model's executor runs a hanging blocker batch
    (1 row, tag -1) for the whole block; the fault is cleared on exit. ``hold_s`` keeps
    it hanging at least that long after the block (its execution time is then known to
    be >= hold_s, which teaches the latency model)."""

    def __init__(self, rt, name: str, hold_s: float = 0.0, blocker: dict | None = None):
        self.rt, self.name, self.hold_s = rt, name, hold_s
        self.model = rt.get_model(name)
        self.blocker_inputs = blocker if blocker is not None else rows(tag=-1)
        self.blocker: asyncio.Future | None = None

    async def __aenter__(self) -> Busy:
        formed = self.model.batcher_stats()["batches"]
        self.rt.inject_fault(self.name, "hang")
        self.blocker = asyncio.ensure_future(
            self.rt.infer_async(self.name, self.blocker_inputs, priority=1)
        )
        await wait_for(
            lambda: self.model.batcher_stats()["batches"] > formed, "the blocker batch to start"
        )
        self.started = time.monotonic()  # the batch is executing (hanging) since before now
        return self

    async def __aexit__(self, *exc) -> None:
        remaining = self.started + self.hold_s - time.monotonic()
        if remaining > 0:
            await asyncio.sleep(remaining)
        self.rt.clear_fault(self.name)
        await asyncio.gather(self.blocker, return_exceptions=True)


def submit(rt, name: str, inputs: dict, **kw) -> asyncio.Future:
    return asyncio.ensure_future(rt.infer_async(name, inputs, **kw))


async def settle(*futures):
    return await asyncio.gather(*futures, return_exceptions=True)


# -- admission control -------------------------------------------------------------------


def test_request_that_cannot_meet_its_deadline_is_refused_without_executing(runtime):
    """Once the latency model knows a batch takes >= 300 ms, a request with a 100 ms
    deadline is refused at submit (DEADLINE_EXCEEDED naming the estimate and the
    deadline) and never executed; one with a 60 s deadline is admitted and executed."""
    model = runtime.get_model("admission")

    async def main():
        async with Busy(runtime, "admission", hold_s=TEACH_S):
            pass  # teaches: a 1-row batch takes >= TEACH_S
        assert model.estimate_ms(1) >= TEACH_S * 1000
        before = executed(model)
        refused_before = model.refusals()["admission"]
        with pytest.raises(DeadlineExceededError) as err:
            await runtime.infer_async("admission", rows(), timeout=0.1)
        message = str(err.value)
        match = re.search(r"estimated completion in ([\d.]+) ms .*deadline in ([\d.]+) ms", message)
        assert match, message
        estimate_ms, deadline_ms = float(match.group(1)), float(match.group(2))
        assert estimate_ms >= TEACH_S * 1000 > 100 >= deadline_ms
        assert "admission" in message
        assert model.refusals()["admission"] == refused_before + 1
        assert executed(model) == before  # refused, not executed

        out = await runtime.infer_async("admission", rows(tag=5), timeout=LONG / 1000)
        assert out["tag"][0, 0] == 5
        assert executed(model) == (before[0] + 1, before[1] + 1)

    asyncio.run(main())


# -- expiry while queued -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["expiry_admission", "expiry_fifo"])
def test_request_expiring_in_the_queue_is_answered_at_its_deadline_and_never_executed(
    runtime, name
):
    """Behind a busy executor, a request with a 50 ms deadline is answered
    DEADLINE_EXCEEDED while the executor is still busy (at its deadline, not after the
    batch ahead), and it is never executed - with admission control on (the estimate
    said it would fit) and off."""
    model = runtime.get_model(name)

    async def main():
        before = executed(model)
        expired_before = model.refusals()["expired_in_queue"]
        async with Busy(runtime, name) as busy:
            with pytest.raises(DeadlineExceededError, match="deadline"):
                await runtime.infer_async(name, rows(tag=1), timeout=0.05)
            assert not busy.blocker.done()  # answered while the blocker still hangs
        assert (await busy.blocker)["tag"][0, 0] == -1
        assert executed(model) == (before[0] + 1, before[1] + 1)  # the blocker only
        assert model.refusals()["expired_in_queue"] == expired_before + 1
        assert model.queue_depth == 0

    asyncio.run(main())


def test_sync_infer_expires_at_its_deadline_without_executing(runtime):
    model = runtime.get_model("expiry_sync")
    runtime.inject_fault("expiry_sync", "hang")
    formed = model.batcher_stats()["batches"]
    before = executed(model)
    results = {}
    blocker = threading.Thread(
        target=lambda: results.setdefault("blocker", runtime.infer("expiry_sync", rows(tag=-1)))
    )
    blocker.start()
    try:
        deadline = time.monotonic() + 20
        while model.batcher_stats()["batches"] == formed:
            assert time.monotonic() < deadline, "the blocker batch did not start"
            time.sleep(0.002)
        with pytest.raises(DeadlineExceededError):
            runtime.infer("expiry_sync", rows(tag=1), timeout=0.05)
        assert blocker.is_alive()
    finally:
        runtime.clear_fault("expiry_sync")
        blocker.join(20)
    assert results["blocker"]["tag"][0, 0] == -1
    assert executed(model) == (before[0] + 1, before[1] + 1)
    assert model.refusals()["expired_in_queue"] == 1


def test_default_deadline_applies_to_requests_without_one(runtime):
    """slo.default_deadline_ms (150 ms) is the deadline of a request that brings none."""
    model = runtime.get_model("default_deadline")

    async def main():
        before = executed(model)
        async with Busy(runtime, "default_deadline"):
            with pytest.raises(DeadlineExceededError):
                await runtime.infer_async("default_deadline", rows(tag=1))
        assert executed(model)[0] == before[0] + 1  # the blocker's batch only

    asyncio.run(main())


# -- priorities --------------------------------------------------------------------------


def test_priorities_order_execution(runtime):
    """Triton's reading of `priority`: 1 is the highest level, 0 the default (here the
    lowest, 3). Queued behind a busy executor, higher levels run first, FIFO within a
    level (max_batch_size 1: one request per execution, so the order is visible)."""
    model = runtime.get_model("priority")

    async def main():
        order: list[int] = []
        plan = [(3, 1), (2, 2), (1, 3), (0, 4), (2, 5), (1, 6)]  # (priority, tag)
        before = executed(model)
        async with Busy(runtime, "priority"):
            futures = []
            for priority, tag in plan:
                f = submit(runtime, "priority", rows(tag=tag), priority=priority)
                f.add_done_callback(lambda f: order.append(int(f.result()["tag"][0, 0])))
                futures.append(f)
            await wait_for(lambda: model.queue_depth == len(plan), "all requests to queue")
        await settle(*futures)
        assert order == [3, 6, 2, 5, 1, 4]
        assert executed(model) == (before[0] + 7, before[1] + 7)

    asyncio.run(main())


def test_priority_outside_the_levels_is_invalid(runtime):
    with pytest.raises(InvalidArgumentError, match="priority 4 is outside 0..3"):
        runtime.infer("priority", rows(), priority=4)


# -- queue limits and shedding -----------------------------------------------------------


def test_full_queue_refuses_at_once(runtime):
    model = runtime.get_model("full")

    async def main():
        before = executed(model)
        async with Busy(runtime, "full"):
            queued = [submit(runtime, "full", rows(tag=t)) for t in (1, 2)]
            await wait_for(lambda: model.queue_depth == 2, "two queued requests")
            with pytest.raises(ResourceExhaustedError, match=r"queue is full.*max_queue_size 2"):
                await runtime.infer_async("full", rows(tag=3))
        results = await settle(*queued)
        assert [r["tag"][0, 0] for r in results] == [1, 2]
        # The blocker's batch, then the two queued requests together in one batch.
        assert executed(model) == (before[0] + 2, before[1] + 3)
        assert model.refusals()["queue_full"] == 1

    asyncio.run(main())


def test_priority_level_queue_cap(runtime):
    """priority_queues {2: {max_queue_size: 1}}: the second queued level-2 request is
    refused, while level 1 still queues."""
    model = runtime.get_model("level_cap")

    async def main():
        before = executed(model)
        async with Busy(runtime, "level_cap"):
            low = submit(runtime, "level_cap", rows(tag=1), priority=2)
            await wait_for(lambda: model.queue_depth == 1, "the level-2 request to queue")
            with pytest.raises(ResourceExhaustedError, match="priority level 2 is full"):
                await runtime.infer_async("level_cap", rows(tag=2), priority=2)
            high = submit(runtime, "level_cap", rows(tag=3), priority=1)
            await wait_for(lambda: model.queue_depth == 2, "the level-1 request to queue")
        results = await settle(low, high)
        assert sorted(r["tag"][0, 0] for r in results) == [1, 3]
        assert executed(model)[1] == before[1] + 3
        assert model.refusals()["queue_full"] == 1

    asyncio.run(main())


def test_full_queue_sheds_the_lowest_level_for_a_higher_one(runtime):
    """max_queue_size 2, two levels: a level-1 request arriving at a full queue evicts
    the newest level-2 request (answered RESOURCE_EXHAUSTED, never executed); when only
    level 1 is queued, the next one is refused."""
    model = runtime.get_model("evict")

    async def main():
        before = executed(model)
        async with Busy(runtime, "evict"):
            old_low = submit(runtime, "evict", rows(tag=1), priority=2)
            new_low = submit(runtime, "evict", rows(tag=2), priority=2)
            await wait_for(lambda: model.queue_depth == 2, "two level-2 requests to queue")
            high1 = submit(runtime, "evict", rows(tag=3), priority=1)
            with pytest.raises(ResourceExhaustedError, match="higher priority"):
                await new_low  # the newest of the lowest level goes first
            high2 = submit(runtime, "evict", rows(tag=4), priority=1)
            with pytest.raises(ResourceExhaustedError, match="higher priority"):
                await old_low
            with pytest.raises(ResourceExhaustedError, match="queue is full"):
                await runtime.infer_async("evict", rows(tag=5), priority=1)
        results = await settle(high1, high2)
        assert [r["tag"][0, 0] for r in results] == [3, 4]
        assert executed(model)[1] == before[1] + 3  # blocker + the two level-1 requests
        refusals = model.refusals()
        assert refusals["shed_for_priority"] == 2 and refusals["queue_full"] == 1

    asyncio.run(main())


# -- the SLO batch cap -------------------------------------------------------------------


def test_batches_are_capped_so_estimated_execution_fits_the_slo(runtime):
    """latency_ms 200: once an 8-row batch is known to take >= 300 ms, the batcher forms
    batches no larger than the largest size whose estimate (+ margin) fits 200 ms."""
    model = runtime.get_model("batch_cap")
    assert model.slo_report()["batch_cap"] == 8

    async def teach():
        async with Busy(runtime, "batch_cap", hold_s=TEACH_S, blocker=rows(8, tag=-1)):
            pass

    asyncio.run(teach())
    margin_ms = model.config.slo.margin_ms
    cap = max(b for b in range(1, 9) if model.estimate_ms(b) + margin_ms <= 200)
    # Sizes 1, 2, 4 and 8 were measured at warm-up (microseconds): 4 still fits, 8 no more.
    assert 4 <= cap < 8 and model.slo_report()["batch_cap"] == cap
    executed(model)
    before = {size: b.count for size, b in model.statistics().batch_stats.items()}

    async def queue_eight():
        async with Busy(runtime, "batch_cap"):
            queued = [submit(runtime, "batch_cap", rows(tag=t)) for t in range(8)]
            await wait_for(lambda: model.queue_depth == 8, "eight queued requests")
        return await settle(*queued)

    results = asyncio.run(queue_eight())
    assert sorted(r["tag"][0, 0] for r in results) == list(range(8))
    executed(model)  # every formed batch recorded
    after = {size: b.count for size, b in model.statistics().batch_stats.items()}
    formed = Counter({size: n - before.get(size, 0) for size, n in after.items()})
    # The 1-row blocker, then the 8 queued rows (one batch of 8 without the cap) in batches
    # of at most `cap`. (Not exactly `cap` and `8 - cap`: on a loaded machine the blocker's
    # own hang can teach the model that one row is slow too, and the cap shrinks further.)
    assert sum(size * n for size, n in formed.items()) == 1 + 8
    assert formed[1] >= 1
    assert max(size for size, n in formed.items() if n) <= cap < 8


def test_queue_delay_longer_than_the_slo_is_refused(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("batching:\n  max_queue_delay_us: 30000\nslo:\n  latency_ms: 20\n")
    with pytest.raises(
        ConfigError, match=r"batching.max_queue_delay_us.*shorter than slo.latency_ms"
    ):
        load_model_config(path)


# -- figures -----------------------------------------------------------------------------


def test_slo_report_statistics_and_metrics_agree(runtime):
    """slo_report, statistics(), refusals() and the Prometheus registry tell one story."""
    model = runtime.get_model("report")

    async def main():
        for t in range(5):
            await runtime.infer_async("report", rows(tag=t))
        async with Busy(runtime, "report", hold_s=TEACH_S):
            pass  # teaches >= 300 ms for 1 row: a 100 ms deadline is refused below
        with pytest.raises(DeadlineExceededError):
            await runtime.infer_async("report", rows(), timeout=0.1)
        async with Busy(runtime, "report"):
            ok = submit(runtime, "report", rows(tag=9))
            await wait_for(lambda: model.queue_depth == 1, "a queued request")
        await ok

    asyncio.run(main())
    executed(model)  # every formed batch recorded
    report = model.slo_report()
    stats = model.statistics()
    assert report["answered"] == stats.success.count == 8  # 5 + 2 blockers + 1
    assert report["within_slo"] == report["answered"] - stats.slo_missed
    assert report["attainment"] == pytest.approx(report["within_slo"] / report["answered"])
    assert report["goodput_per_s"] > 0
    assert report["refused"] == model.refusals()
    assert report["refused"]["admission"] == 1
    assert stats.refused["DEADLINE_EXCEEDED"] == 1
    assert stats.execution_count == 8
    assert report["execution_estimate_ms"][1] >= TEACH_S * 1000
    assert report["queue_ms_recent"]["p50"] is not None

    registry = runtime.metrics.registry
    labels = {"model": "report", "version": "1"}

    def value(name, **extra):
        v = registry.get_sample_value(name, {**labels, **extra})
        return 0.0 if v is None else v

    assert value("steadyserve_slo_requests_total", result="met") == report["within_slo"]
    assert value("steadyserve_slo_requests_total", result="missed") == stats.slo_missed
    for reason, count in report["refused"].items():
        assert value("steadyserve_refused_requests_total", reason=reason) == count, reason
    assert value("steadyserve_requests_total", outcome="deadline_exceeded") == 1
    assert value("steadyserve_batch_execution_estimate_seconds", batch_size="1") == pytest.approx(
        model.estimate_ms(1) / 1000
    )
    assert value("steadyserve_slo_batch_cap") == report["batch_cap"]
    assert value("steadyserve_slo_latency_seconds") == 5.0
    assert value("steadyserve_executing_batches") == 0
    assert value("steadyserve_queue_duration_seconds_count") == stats.queue.count
    assert value("steadyserve_compute_duration_seconds_count") == stats.execution_count
