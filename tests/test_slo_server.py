"""Latency SLOs through the gRPC server: a real `steadyserve serve` and tritonclient.

The model is ``write_tunable_compute``: a request's ``work`` input sets how many
[batch, 256] x [256, 256] steps its batch runs, so a "blocker" request with a large
``work`` keeps the model's one executor busy for about a second while the test queues
other requests behind it. When the blocker is executing is read from /metrics
(``steadyserve_executing_batches``), how many requests wait from
``steadyserve_queue_depth``; what was executed from ModelStatistics. No assertion is
about how long anything took.
"""

from __future__ import annotations

import functools
import re
import threading
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

import onnx_models
from conftest import start_server

WIDTH = 256
T = 30.0  # client timeout of calls that are not about deadlines
BLOCK_WORK = 100_000  # ~1 s of compute for a 1-row batch on this machine (more under load)
TEACH_WORK = 80_000  # ~0.8 s


def _config(max_batch_size: int = 8, *, slo: dict | None = None, **batching) -> dict:
    return {
        "max_batch_size": max_batch_size,
        "batching": {"max_queue_delay_us": 0, **batching},
        "slo": slo or {},
        # The model's cost depends on its input (warm-up sees a fast model): keep its
        # batches off the event loop, where a long one would stall every answer.
        "execution": "threads",
    }


MODELS = {
    "admit": _config(),
    "fifo": _config(slo={"admission_control": False}),
    "prio": _config(1, slo={"priority_levels": 3}),
    "shed": _config(
        max_queue_size=2,
        slo={"priority_levels": 2, "priority_queues": {2: {"max_queue_size": 1}}},
    ),
}


@pytest.fixture(scope="module")
def slo_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("slo_server_repo")
    build = functools.partial(onnx_models.write_tunable_compute, width=WIDTH)
    onnx_models.make_repo(root, {name: build for name in MODELS}, configs=MODELS)
    proc = start_server(root, log_dir=tmp_path_factory.mktemp("slo_logs"), name="slo")
    yield proc
    rc = proc.stop()
    assert rc == 0, f"server exited with {rc}; stderr:\n{proc.stderr()[-4000:]}"


@pytest.fixture(scope="module")
def client(slo_server):
    c = grpcclient.InferenceServerClient(slo_server.grpc)
    yield c
    c.close()


def inputs(tag: float = 0.0, work: int = 0):
    x = np.zeros((1, WIDTH), np.float32)
    x[0, 0] = tag
    a = grpcclient.InferInput("x", [1, WIDTH], "FP32")
    a.set_data_from_numpy(x)
    w = grpcclient.InferInput("work", [1, 1], "INT64")
    w.set_data_from_numpy(np.full((1, 1), work, np.int64))
    return [a, w]


def metric(server, name: str, model: str, **labels) -> float:
    """One sample of /metrics (0 when absent)."""
    with urllib.request.urlopen(f"{server.http}/metrics", timeout=T) as resp:
        text = resp.read().decode()
    want = {"model": model, **labels} if model else labels
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in want.items()):
                return sample.value
    return 0.0


def model_refusals(server, model: str) -> dict[str, float]:
    """steadyserve_refused_requests_total of ``model``, by reason."""
    with urllib.request.urlopen(f"{server.http}/metrics", timeout=T) as resp:
        text = resp.read().decode()
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "steadyserve_refused_requests_total"
        and sample.labels.get("model") == model
    }


def wait_metric(server, name: str, model: str, value: float, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while metric(server, name, model) != value:
        if time.monotonic() > deadline:
            pytest.fail(f"{name}{{model={model}}} never became {value}")
        time.sleep(0.005)


def executed(server, client, model: str) -> tuple[int, int]:
    """(batches, rows) executed, from ModelStatistics, once nothing is queued or executing.

    An answer leaves the server just before its batch is counted in the statistics, so
    wait until every batch formed is recorded: then "never executed" is exact.
    """
    wait_metric(server, "steadyserve_queue_depth", model, 0)
    wait_metric(server, "steadyserve_executing_batches", model, 0)
    stats = client.get_inference_statistics(model, as_json=True, client_timeout=T)
    s = stats["model_stats"][0]
    return int(s.get("execution_count", 0)), int(s.get("inference_count", 0))


class Answers:
    """Callbacks of async_infer: answers by tag, in arrival order."""

    def __init__(self):
        self.lock = threading.Lock()
        self.order: list[object] = []
        self.by_tag: dict[object, object] = {}
        self.cond = threading.Condition(self.lock)

    def callback(self, tag):
        def done(result, error):
            with self.cond:
                value = error if error is not None else float(result.as_numpy("tag")[0, 0])
                self.by_tag[tag] = value
                self.order.append(tag)
                self.cond.notify_all()

        return done

    def wait(self, tags, timeout: float = 60.0) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: all(t in self.by_tag for t in tags), timeout):
                pytest.fail(f"no answer for {[t for t in tags if t not in self.by_tag]}")


class Busy:
    """``with Busy(server, client, model):`` the model executes a ~1 s blocker (tag -1)
    during the block; on exit, waits for its answer."""

    def __init__(self, server, client, model: str, answers: Answers, work: int = BLOCK_WORK):
        self.server, self.client, self.model, self.answers = server, client, model, answers
        self.work = work

    def __enter__(self):
        self.client.async_infer(
            self.model,
            inputs(-1, self.work),
            callback=self.answers.callback("blocker"),
            priority=1,
            client_timeout=T,
        )
        wait_metric(self.server, "steadyserve_executing_batches", self.model, 1)
        return self

    def __exit__(self, *exc):
        self.answers.wait(["blocker"])
        assert self.answers.by_tag["blocker"] == -1.0


def send(client, answers: Answers, model: str, key: str, **kw) -> None:
    """async_infer of one row (tag 0, work 0); its answer goes to answers.by_tag[key]."""
    kw.setdefault("client_timeout", T)
    client.async_infer(model, inputs(), callback=answers.callback(key), **kw)


def status(error) -> str:
    assert isinstance(error, InferenceServerException), error
    return error.status()


# -- tests -------------------------------------------------------------------------------


def test_admission_refusal_over_grpc_names_estimate_and_deadline(slo_server, client):
    """After a ~0.8 s execution, a request whose `timeout` parameter (100 ms) or gRPC
    deadline (300 ms) cannot be met is refused at once, without executing."""
    client.infer("admit", inputs(work=TEACH_WORK), client_timeout=T)  # teaches the estimate
    before = executed(slo_server, client, "admit")
    admission = metric(
        slo_server, "steadyserve_refused_requests_total", "admit", reason="admission"
    )
    estimate = metric(
        slo_server, "steadyserve_batch_execution_estimate_seconds", "admit", batch_size="1"
    )
    assert estimate > 0.3

    with pytest.raises(InferenceServerException) as err:
        client.infer("admit", inputs(), timeout=100_000, client_timeout=T)  # 100 ms, in µs
    assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    match = re.search(
        r"estimated completion in ([\d.]+) ms .*deadline in ([\d.]+) ms", err.value.message()
    )
    assert match, err.value.message()
    assert float(match.group(1)) > 300 and float(match.group(2)) <= 100

    with pytest.raises(InferenceServerException) as err:
        client.infer("admit", inputs(), client_timeout=0.3)  # the gRPC deadline
    assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"

    assert executed(slo_server, client, "admit") == before
    after = metric(slo_server, "steadyserve_refused_requests_total", "admit", reason="admission")
    assert after == admission + 2
    # A deadline that can be met is admitted.
    result = client.infer("admit", inputs(tag=7), client_timeout=T)
    assert result.as_numpy("tag")[0, 0] == 7
    assert executed(slo_server, client, "admit")[0] == before[0] + 1


def test_deadline_passing_in_the_queue_is_answered_and_never_executed(slo_server, client):
    """Admission control off: behind a busy executor, a request with a 300 ms gRPC
    deadline and one with a 100 ms `timeout` parameter both get DEADLINE_EXCEEDED
    while the blocker still runs, and neither is ever executed."""
    answers = Answers()
    before = executed(slo_server, client, "fifo")
    with Busy(slo_server, client, "fifo", answers):
        send(client, answers, "fifo", "grpc_deadline", client_timeout=0.3)
        send(client, answers, "fifo", "timeout_param", timeout=100_000)
        answers.wait(["grpc_deadline", "timeout_param"])
        assert "blocker" not in answers.by_tag  # answered at their deadlines
    assert status(answers.by_tag["grpc_deadline"]) == "StatusCode.DEADLINE_EXCEEDED"
    error = answers.by_tag["timeout_param"]
    assert status(error) == "StatusCode.DEADLINE_EXCEEDED"
    # The server's own answer (gRPC's would say just "Deadline Exceeded"): expired while
    # queued, or - on a badly overloaded machine - already past when it reached the model.
    assert "not executed" in error.message() or "already passed" in error.message()
    assert executed(slo_server, client, "fifo") == (before[0] + 1, before[1] + 1)  # blocker
    refused = model_refusals(slo_server, "fifo")
    assert refused["expired_in_queue"] >= 1, refused
    # The gRPC-deadline request expires 1 ms before the client's deadline; on a loaded
    # machine the client's RST_STREAM can beat that by a hair (the native frontend reads
    # it at once), and the request is then withdrawn as cancelled - still never executed.
    gone = refused["expired_in_queue"] + refused["deadline_passed"] + refused.get("cancelled", 0)
    assert gone == 2, refused


def test_priorities_order_execution_over_grpc(slo_server, client):
    """`priority` as Triton reads it (1 highest, 0 default = lowest of 3 here): queued
    behind a busy executor, level 1 runs first, then 2, then 3; FIFO within a level."""
    answers = Answers()
    plan = [(3, 1), (2, 2), (1, 3), (0, 4), (2, 5), (1, 6)]  # (priority, tag)
    before = executed(slo_server, client, "prio")
    with Busy(slo_server, client, "prio", answers):
        for n, (priority, tag) in enumerate(plan, start=1):
            # work 1000 (~10 ms each): answers leave the server well apart, in order
            client.async_infer(
                "prio",
                inputs(tag, work=1000),
                callback=answers.callback(tag),
                priority=priority,
                client_timeout=T,
            )
            wait_metric(slo_server, "steadyserve_queue_depth", "prio", n)
    answers.wait([tag for _, tag in plan])
    assert [t for t in answers.order if t != "blocker"] == [3, 6, 2, 5, 1, 4]
    assert executed(slo_server, client, "prio") == (before[0] + 7, before[1] + 7)


def test_queue_caps_eviction_and_full_queue_over_grpc(slo_server, client):
    """max_queue_size 2, level 2 capped at 1: a second level-2 request is refused; a
    level-1 request at a full queue evicts the queued level-2 one (RESOURCE_EXHAUSTED,
    never executed); with only level 1 queued, the next is refused."""
    answers = Answers()
    before = executed(slo_server, client, "shed")
    with Busy(slo_server, client, "shed", answers):
        send(client, answers, "shed", "low1", priority=2)
        wait_metric(slo_server, "steadyserve_queue_depth", "shed", 1)
        send(client, answers, "shed", "low2", priority=2)
        answers.wait(["low2"])
        send(client, answers, "shed", "high1", priority=1)
        wait_metric(slo_server, "steadyserve_queue_depth", "shed", 2)
        send(client, answers, "shed", "high2", priority=1)
        answers.wait(["low1"])
        send(client, answers, "shed", "high3", priority=1)
        answers.wait(["high3"])
        assert "blocker" not in answers.by_tag
    answers.wait(["high1", "high2"])
    low2, low1, high3 = (answers.by_tag[t] for t in ("low2", "low1", "high3"))
    assert status(low2) == "StatusCode.RESOURCE_EXHAUSTED"
    assert "priority level 2 is full" in low2.message()
    assert status(low1) == "StatusCode.RESOURCE_EXHAUSTED"
    assert "higher priority" in low1.message()
    assert status(high3) == "StatusCode.RESOURCE_EXHAUSTED"
    assert "queue is full" in high3.message()
    assert answers.by_tag["high1"] == 0.0 and answers.by_tag["high2"] == 0.0
    assert executed(slo_server, client, "shed")[1] == before[1] + 3  # blocker, high1, high2
    reasons = ("queue_full", "shed_for_priority")
    counts = {
        r: metric(slo_server, "steadyserve_refused_requests_total", "shed", reason=r)
        for r in reasons
    }
    assert counts == {"queue_full": 2, "shed_for_priority": 1}


def test_transport_limits_refuse_before_the_model_sees_anything(tmp_path, launch):
    """--max-concurrent-rpcs 1: while one RPC is served, gRPC refuses the next with
    RESOURCE_EXHAUSTED at once; it never reaches the model. (--max-pending-rpcs, gRPC's
    own backlog limit, only acts while the event loop falls behind: the benchmark
    shows it; here it must simply be accepted.)"""
    repo = onnx_models.make_repo(
        tmp_path / "repo",
        {"door": functools.partial(onnx_models.write_tunable_compute, width=WIDTH)},
        configs={"door": _config(slo={"admission_control": False})},
    )
    proc = launch(repo, "--max-concurrent-rpcs", "1", "--max-pending-rpcs", "8", name="door")
    answers = Answers()
    with grpcclient.InferenceServerClient(proc.grpc) as c:
        before = executed(proc, c, "door")
        with Busy(proc, c, "door", answers):
            send(c, answers, "door", "refused")
            answers.wait(["refused"])
            assert "blocker" not in answers.by_tag
        refused = answers.by_tag["refused"]
        assert status(refused) == "StatusCode.RESOURCE_EXHAUSTED", refused.message()
        assert executed(proc, c, "door") == (before[0] + 1, before[1] + 1)  # the blocker only
        assert sum(model_refusals(proc, "door").values()) == 0  # the model never saw it
        assert metric(proc, "steadyserve_event_loop_lag_seconds_count", "") > 0
