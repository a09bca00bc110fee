"""Request ids and the request log, over both gRPC frontends.

Every ModelInfer answer carries ``x-request-id``: the client's own header, else the
request's V2 ``id``, else one the server made (distinct per call); refusals too.
With ``--log-sample-rate`` each sampled request is one JSON log line with that id.
"""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from conftest import N_FEATURES

T = 10.0


def _request(model: str = "linear", request_id: str = "") -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, N_FEATURES])
    tensor.contents.fp32_contents.extend(np.ones(N_FEATURES, np.float32).tolist())
    return request


def _header(pairs) -> str | None:
    for key, value in pairs or ():
        if key == "x-request-id":
            return value
    return None


def _call(address: str, request, metadata=()) -> str | None:
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        _, call = stub.ModelInfer.with_call(request, metadata=metadata, timeout=T)
        return _header(call.initial_metadata())


def _refused(address: str, request, metadata=()) -> tuple[grpc.StatusCode, str | None]:
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, metadata=metadata, timeout=T)
    error = info.value
    return error.code(), _header(error.trailing_metadata()) or _header(error.initial_metadata())


def test_answers_carry_the_request_id(server):
    assert _call(server.grpc, _request(), [("x-request-id", "client-7")]) == "client-7"
    assert _call(server.grpc, _request(request_id="v2-8")) == "v2-8"
    # The header wins over the V2 id.
    assert _call(server.grpc, _request(request_id="v2-9"), [("x-request-id", "hdr-9")]) == "hdr-9"
    made = {_call(server.grpc, _request()) for _ in range(3)}
    assert len(made) == 3 and all(made) and all(len(i) >= 16 for i in made)


def test_refusals_carry_the_request_id(server):
    code, request_id = _refused(server.grpc, _request("nope"), [("x-request-id", "gone-1")])
    assert code == grpc.StatusCode.NOT_FOUND and request_id == "gone-1"
    code, request_id = _refused(server.grpc, _request("nope"))
    assert code == grpc.StatusCode.NOT_FOUND and request_id and len(request_id) >= 16


def _log_lines(proc) -> list[dict]:
    return [json.loads(line) for line in proc.stderr().splitlines() if line.strip()]


def test_sampled_requests_are_logged_as_json_with_their_id(model_repo, launch):
    proc = launch(model_repo, "--log-sample-rate", "1")
    ids = [f"logged-{i}" for i in range(5)]
    for request_id in ids:
        _call(proc.grpc, _request(), [("x-request-id", request_id)])
    _refused(proc.grpc, _request("nope"), [("x-request-id", "refused-1")])
    assert proc.stop() == 0
    lines = _log_lines(proc)  # every line is JSON (json.loads raises otherwise)
    requests = [e for e in lines if e.get("logger") == "steadyserve.requests"]
    logged = {e["request_id"]: e for e in requests if e.get("msg") == "request"}
    assert set(ids) <= set(logged)
    for request_id in ids:
        entry = logged[request_id]
        assert entry["status"] == "OK" and entry["latency_ms"] > 0
        assert entry.get("answered_by", entry.get("model")) == "linear"
    assert all(e["ts"] and e["level"] for e in lines)


def test_sampling_rate_is_honoured(model_repo, launch):
    proc = launch(model_repo, "--log-sample-rate", "0.25")
    # One connection: the native frontend samples per I/O thread, exactly on each.
    with grpc.insecure_channel(proc.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for i in range(40):
            stub.ModelInfer(_request(), metadata=[("x-request-id", f"s-{i}")], timeout=T)
    assert proc.stop() == 0
    logged = [
        e
        for e in _log_lines(proc)
        if e.get("logger") == "steadyserve.requests" and "request_id" in e
    ]
    assert len(logged) == 10  # every fourth, deterministically


def test_no_request_lines_by_default_and_text_format(model_repo, launch):
    proc = launch(model_repo, "--log-format", "text")
    _call(proc.grpc, _request(), [("x-request-id", "quiet-1")])
    assert proc.stop() == 0
    text = proc.stderr()
    assert "quiet-1" not in text
    assert "server started" in text and not text.lstrip().startswith("{")
