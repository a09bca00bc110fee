"""Failover end to end: a real `steadyserve serve --allow-fault-injection`, tritonclient,
`steadyserve fault` and the HTTP side port (POST /v2/models/{name}/fault, GET /v2/failover).

The repository holds the demo models (``tabular`` with ``tabular-lite`` as its backup) and
one small primary per test (x FP32 [-1, 32] -> y FP32 [-1, 4]), each with ``lite`` as
its backup, so a test's faults and circuits never meet another test's.
"""

from __future__ import annotations

import functools
import json
import queue
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

import onnx_models
from conftest import N_FEATURES, N_OUTPUTS, start_server

T = 10.0  # seconds: the client timeout of every call
NO_TRIP = {"consecutive_failures": 10_000, "min_requests": 10_000}  # circuit stays closed

MODELS = {
    "err": {"backup": "lite", "failover": {"circuit": NO_TRIP}},
    "hang": {"backup": "lite", "failover": {"execution_timeout_ms": 100, "circuit": NO_TRIP}},
    "nan": {
        "backup": "lite",
        "failover": {"output_checks": [{"name": "y"}], "circuit": NO_TRIP},
    },
    "both": {"backup": "lite2", "failover": {"circuit": NO_TRIP}},
    "lite": {},
    "lite2": {},
}


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory):
    from steadyserve.demo import build_demo_repository

    root = tmp_path_factory.mktemp("failover_repo")
    build_demo_repository(root)
    onnx_models.make_repo(
        root,
        {
            name: functools.partial(
                onnx_models.write_linear,
                n_in=N_FEATURES,
                n_out=N_OUTPUTS,
                seed=7 if name.startswith("lite") else 1,
            )
            for name in MODELS
        },
        configs=MODELS,
    )
    proc = start_server(
        root,
        "--allow-fault-injection",
        log_dir=tmp_path_factory.mktemp("failover_logs"),
        name="failover",
    )
    yield proc
    rc = proc.stop()
    assert rc == 0, f"server exited with {rc}; stderr:\n{proc.stderr()[-4000:]}"


@pytest.fixture(scope="module")
def client(fault_server):
    c = grpcclient.InferenceServerClient(fault_server.grpc)
    yield c
    c.close()


def linear_inputs(rows: int = 2):
    x = np.linspace(-1, 1, rows * N_FEATURES, dtype=np.float32).reshape(rows, N_FEATURES)
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return [inp]


def demo_inputs(rows: int = 2):
    x = np.linspace(-1, 1, rows * 32, dtype=np.float32).reshape(rows, 32)
    inp = grpcclient.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return [inp]


def params(result) -> dict:
    out = {}
    for key, value in result.get_response().parameters.items():
        out[key] = getattr(value, value.WhichOneof("parameter_choice"))
    return out


def answered_by(result) -> tuple[str, str]:
    response = result.get_response()
    return response.model_name, response.model_version


def fault_cli(server, *args: str) -> subprocess.CompletedProcess:
    url = server.http.removeprefix("http://")
    return subprocess.run(
        [sys.executable, "-m", "steadyserve", "fault", "--url", url, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def post_fault(server, model: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{server.http}/v2/models/{model}/fault",
        data=data,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=T) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=T) as response:
        return json.loads(response.read())


def infer_many(client, model: str, inputs, n: int) -> list:
    """``n`` requests in flight together; every answer or error, in completion order."""
    done: queue.Queue = queue.Queue()
    for _ in range(n):
        client.async_infer(
            model,
            inputs,
            callback=lambda result, error: done.put(error or result),
            client_timeout=T,
        )
    return [done.get(timeout=2 * T) for _ in range(n)]


# -- the triggers, through the server ------------------------------------------------------


def test_error_via_cli_is_answered_by_the_backup_with_zero_client_errors(fault_server, client):
    assert answered_by(client.infer("err", linear_inputs(), client_timeout=T)) == ("err", "1")
    done = fault_cli(fault_server, "err", "error")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "model 'err': fault injected: error"

    answers = infer_many(client, "err", linear_inputs(), 24)
    errors = [a for a in answers if isinstance(a, InferenceServerException)]
    assert errors == []
    assert {answered_by(a) for a in answers} == {("lite", "1")}
    p = params(answers[0])
    assert p["failover"] is True and p["failover_from"] == "err"
    assert "err: execution_error" in p["failover_reason"]

    done = fault_cli(fault_server, "err", "clear")
    assert (done.returncode, done.stdout.strip()) == (0, "model 'err': fault cleared")
    result = client.infer("err", linear_inputs(), client_timeout=T)
    assert answered_by(result) == ("err", "1") and params(result) == {}


def test_hang_is_terminated_and_the_backup_answers_in_time(fault_server, client):
    status, answer = post_fault(fault_server, "hang", {"kind": "hang"})
    assert (status, answer["fault"]) == (200, "hang")
    try:
        # The client waits 5 s; the hung batch is terminated after 100 ms.
        answers = infer_many(client, "hang", linear_inputs(), 4)
    finally:
        post_fault(fault_server, "hang", {"kind": "clear"})
    assert [a for a in answers if isinstance(a, InferenceServerException)] == []
    assert {answered_by(a) for a in answers} == {("lite", "1")}
    reason = params(answers[0])["failover_reason"]
    assert "hang: execution_timeout" in reason and "execution_timeout_ms 100" in reason


def test_nan_outputs_are_answered_by_the_backup(fault_server, client):
    assert post_fault(fault_server, "nan", {"kind": "nan"})[0] == 200
    try:
        result = client.infer("nan", linear_inputs(), client_timeout=T)
    finally:
        post_fault(fault_server, "nan", {"kind": "clear"})
    assert answered_by(result) == ("lite", "1")
    assert np.isfinite(result.as_numpy("y")).all()
    assert "nan: bad_output" in params(result)["failover_reason"]


def test_backup_failing_too_is_a_clear_unavailable(fault_server, client):
    for model in ("both", "lite2"):
        assert fault_cli(fault_server, model, "error").returncode == 0
    try:
        with pytest.raises(InferenceServerException) as info:
            client.infer("both", linear_inputs(), client_timeout=T)
    finally:
        for model in ("both", "lite2"):
            fault_cli(fault_server, model, "clear")
    assert info.value.status() == "StatusCode.UNAVAILABLE"
    message = info.value.message()
    assert "model 'both' could not answer" in message
    assert "both: execution_error" in message and "lite2: execution_error" in message


def test_demo_circuit_opens_and_is_reported(fault_server, client):
    # The demo's tabular: backup tabular-lite, circuit opens after 5 failures in a row.
    report = get_json(f"{fault_server.http}/v2/failover")
    assert report["backups"]["tabular"] == "tabular-lite"
    assert report["circuits"]["tabular"]["state"] == "closed"
    assert fault_cli(fault_server, "tabular", "error").returncode == 0
    try:
        answers = [client.infer("tabular", demo_inputs(), client_timeout=T) for _ in range(8)]
    finally:
        fault_cli(fault_server, "tabular", "clear")
    assert {answered_by(a) for a in answers} == {("tabular-lite", "1")}
    assert "tabular: circuit_open" in params(answers[-1])["failover_reason"]
    report = get_json(f"{fault_server.http}/v2/failover")
    circuit = report["circuits"]["tabular"]
    assert circuit["state"] == "open" and circuit["opened"] == 1
    assert circuit["reason"].startswith("5 failures in a row")
    skipped = {(s["model"], s["reason"]): s["count"] for s in report["skipped"]}
    assert skipped[("tabular", "execution_error")] == 5
    assert skipped[("tabular", "circuit_open")] == 3
    with urllib.request.urlopen(f"{fault_server.http}/metrics", timeout=T) as response:
        metrics = response.read().decode()
    assert 'steadyserve_circuit_state{model="tabular"} 2.0' in metrics
    assert 'steadyserve_failovers_total{answered_by="tabular-lite",model="tabular"} 8.0' in metrics


# -- the fault endpoint and CLI: refusals --------------------------------------------------


def test_fault_requests_are_checked(fault_server):
    status, answer = post_fault(fault_server, "nosuch", {"kind": "error"})
    assert status == 404 and "model 'nosuch' not found" in answer["error"]
    status, answer = post_fault(fault_server, "err", {"kind": "explode"})
    assert status == 400 and "unknown fault 'explode'" in answer["error"]
    status, answer = post_fault(fault_server, "err", {"kind": "slow"})
    assert status == 400 and "delay_ms > 0" in answer["error"]
    status, answer = post_fault(fault_server, "err", b"not json")
    assert status == 400 and "not JSON" in answer["error"]

    done = fault_cli(fault_server, "nosuch", "error")
    assert done.returncode == 1
    assert "refused (HTTP 404): model 'nosuch' not found" in done.stderr
    done = fault_cli(fault_server, "err", "slow")
    assert done.returncode == 2 and "needs --delay-ms" in done.stderr
    done = fault_cli(fault_server, "err", "slow", "--delay-ms", "5")
    assert (done.returncode, done.stdout.strip()) == (0, "model 'err': fault injected: slow (5 ms)")
    assert fault_cli(fault_server, "err", "clear").returncode == 0


def test_fault_injection_is_refused_without_the_flag(tmp_path, launch):
    repo = onnx_models.make_repo(tmp_path / "repo", {"m": onnx_models.write_linear})
    server = launch(repo)
    status, answer = post_fault(server, "m", {"kind": "error"})
    assert status == 403
    assert (
        "fault injection is off: start the server with --allow-fault-injection" in (answer["error"])
    )
    done = fault_cli(server, "m", "error")
    assert done.returncode == 1
    assert "refused (HTTP 403): fault injection is off" in done.stderr
    assert server.stop() == 0
