"""Readiness means the same everywhere: the start-up line, /v2/health/ready and
grpc.health.v1 agree, and a model config marks ``required: false`` does not hold
readiness back."""

from __future__ import annotations

import functools
import json
import time
import urllib.error
import urllib.request

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from onnx_models import make_repo, write_linear

T = 10.0


def _ready_http(server) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(server.http + "/v2/health/ready", timeout=T) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _ready_grpc(server, service: str = "") -> int:
    with grpc.insecure_channel(server.grpc) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=T).status


def _repo(root, broken_required: bool):
    make_repo(root, {"good": functools.partial(write_linear, seed=1)})
    broken = root / "broken" / "1" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not onnx")
    (root / "broken" / "config.yaml").write_text(yaml.safe_dump({"required": broken_required}))
    return root


def test_a_required_model_that_fails_makes_every_probe_say_not_ready(tmp_path, launch):
    server = launch(_repo(tmp_path / "repo", broken_required=True))
    assert server.stdout_lines[0].startswith("steadyserve not-ready grpc=127.0.0.1:")
    deadline = time.monotonic() + T  # the banner follows the start-up line
    while not any("NOT READY" in line for line in server.stdout_lines):
        assert time.monotonic() < deadline, server.stdout_lines
        time.sleep(0.01)
    banner = "\n".join(server.stdout_lines)
    assert "NOT READY: broken:" in banner and "model.onnx" in banner
    assert _ready_http(server) == (503, {"ready": False})
    assert _ready_grpc(server) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert _ready_grpc(server, "good") == health_pb2.HealthCheckResponse.SERVING
    assert _ready_grpc(server, "broken") == health_pb2.HealthCheckResponse.NOT_SERVING


def test_an_optional_model_that_fails_leaves_the_server_ready(tmp_path, launch):
    server = launch(_repo(tmp_path / "repo", broken_required=False))
    assert server.stdout_lines[0].startswith("steadyserve ready grpc=127.0.0.1:")
    assert _ready_http(server) == (200, {"ready": True})
    assert _ready_grpc(server) == health_pb2.HealthCheckResponse.SERVING
    assert _ready_grpc(server, "broken") == health_pb2.HealthCheckResponse.NOT_SERVING
