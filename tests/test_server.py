"""The gRPC server end to end: a real `steadyserve serve` process and real clients."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import onnx_models

T = 10.0  # seconds: the client timeout of every call
N_FEATURES = 32  # the linear test models: x FP32 [-1, 32] -> y FP32 [-1, 4]
N_OUTPUTS = 4


def _ort(model_repo, name: str, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(
        str(model_repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _infer_linear(client, x: np.ndarray, model: str = "linear") -> np.ndarray:
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp], client_timeout=T).as_numpy("y")


def _http_get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=T) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


# -- health and metadata -----------------------------------------------------------------


def test_ready_line_and_example(server):
    assert server.stdout_lines[0].startswith("steadyserve ready grpc=127.0.0.1:")
    assert server.grpc.startswith("127.0.0.1:") and not server.grpc.endswith(":0")


def test_live_and_ready(client):
    assert client.is_server_live(client_timeout=T)
    assert client.is_server_ready(client_timeout=T)
    assert client.is_model_ready("linear", client_timeout=T)
    assert client.is_model_ready("tabular", client_timeout=T)
    assert not client.is_model_ready("no-such-model", client_timeout=T)


def test_server_metadata(client):
    meta = client.get_server_metadata(as_json=True, client_timeout=T)
    assert meta["name"] == "steadyserve"
    assert meta["version"]
    assert "model_configuration" in meta["extensions"]
    assert "statistics" in meta["extensions"]


def test_model_metadata(client):
    meta = client.get_model_metadata("linear", as_json=True, client_timeout=T)
    assert meta["name"] == "linear"
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", str(N_FEATURES)]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": ["-1", str(N_OUTPUTS)]}]
    demo = client.get_model_metadata("tabular", as_json=True, client_timeout=T)
    assert demo["inputs"][0]["name"] == "features"
    assert demo["inputs"][0]["shape"] == ["-1", "32"]


def test_model_metadata_unknown_model(client):
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("no-such-model", client_timeout=T)
    assert err.value.status() == "StatusCode.NOT_FOUND"
    assert "no-such-model" in err.value.message()


def test_model_config(client):
    cfg = client.get_model_config("linear", as_json=True, client_timeout=T)["config"]
    assert cfg["name"] == "linear"
    assert cfg["platform"] == "onnxruntime_onnx"
    assert cfg["backend"] == "onnxruntime"
    assert cfg["max_batch_size"] == 16
    # dims exclude the batch dimension when the model batches (Triton's convention)
    assert cfg["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [str(N_FEATURES)]}]
    assert cfg["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": [str(N_OUTPUTS)]}]
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == "2000"
    assert cfg["instance_group"][0]["count"] == 1
    assert cfg["instance_group"][0]["kind"] == "KIND_CPU"

    batch = client.get_model_config("linear_batch", as_json=True, client_timeout=T)["config"]
    assert batch["dynamic_batching"]["preferred_batch_size"] == [32]

    fixed = client.get_model_config("fixed", as_json=True, client_timeout=T)["config"]
    assert fixed.get("max_batch_size", 0) == 0
    assert fixed["input"][0]["dims"] == ["2", "3"]  # no batch dim to drop
    assert "dynamic_batching" not in fixed


def test_repository_index(client):
    index = client.get_model_repository_index(as_json=True, client_timeout=T)["models"]
    by_name = {m["name"]: m for m in index}
    assert {"linear", "linear_batch", "add", "fixed", "tabular", "tabular-lite"} <= set(by_name)
    assert all(m["state"] == "READY" for m in by_name.values())
    assert by_name["linear"]["version"] == "1"


def test_statistics_all_and_one(client):
    _infer_linear(client, np.zeros((1, N_FEATURES), np.float32))
    everything = client.get_inference_statistics(as_json=True, client_timeout=T)["model_stats"]
    assert {"linear", "tabular", "fixed"} <= {s["name"] for s in everything}
    one = client.get_inference_statistics("linear", as_json=True, client_timeout=T)["model_stats"]
    assert [s["name"] for s in one] == ["linear"]
    assert int(one[0]["inference_count"]) >= 1
    assert int(one[0]["inference_stats"]["success"]["count"]) >= 1


# -- inference ---------------------------------------------------------------------------


def test_infer_raw_matches_onnxruntime(client, model_repo):
    x = np.random.default_rng(1).standard_normal((3, N_FEATURES)).astype(np.float32)
    y = _infer_linear(client, x)
    assert y.shape == (3, N_OUTPUTS) and y.dtype == np.float32
    np.testing.assert_allclose(y, _ort(model_repo, "linear", x), rtol=1e-5, atol=1e-6)


def test_infer_demo_model(client, model_repo):
    x = np.random.default_rng(2).standard_normal((5, 32)).astype(np.float32)
    inp = grpcclient.InferInput("features", [5, 32], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("tabular", [inp], client_timeout=T)
    probs = result.as_numpy("probabilities")
    np.testing.assert_allclose(probs, _ort(model_repo, "tabular", x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    response = result.get_response()
    assert response.model_name == "tabular" and response.model_version == "1"


def test_infer_typed_contents_matches_onnxruntime(server, model_repo):
    """tritonclient always sends raw bytes; send typed fp32_contents through the raw stub."""
    x = np.random.default_rng(3).standard_normal((2, N_FEATURES)).astype(np.float32)
    request = service_pb2.ModelInferRequest(model_name="linear", id="typed-1")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, N_FEATURES])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(server.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request, timeout=T)
    assert response.id == "typed-1"
    assert [o.name for o in response.outputs] == ["y"]
    assert list(response.outputs[0].shape) == [2, N_OUTPUTS]
    y = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(2, N_OUTPUTS)
    np.testing.assert_allclose(y, _ort(model_repo, "linear", x), rtol=1e-5, atol=1e-6)


def test_infer_two_inputs_and_fixed_shape(client):
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 4), np.float32)
    inputs = [
        grpcclient.InferInput("a", [2, 4], "FP32"),
        grpcclient.InferInput("b", [2, 4], "FP32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    out = client.infer("add", inputs, client_timeout=T).as_numpy("sum")
    np.testing.assert_array_equal(out, a + b)

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    inp = grpcclient.InferInput("x", [2, 3], "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_array_equal(
        client.infer("fixed", [inp], client_timeout=T).as_numpy("y"), 2 * x
    )


def test_infer_with_deadline_timeout_and_priority_parameters(client):
    """A generous gRPC deadline and Triton's `timeout` parameter (µs) both pass; the
    `priority` parameter reaches the model (one level: 1 is that level, 2 is refused)."""
    x = np.ones((1, N_FEATURES), np.float32)
    inp = grpcclient.InferInput("x", [1, N_FEATURES], "FP32")
    inp.set_data_from_numpy(x)
    y1 = client.infer("linear", [inp], client_timeout=T).as_numpy("y")
    y2 = client.infer("linear", [inp], timeout=5_000_000, client_timeout=T).as_numpy("y")
    np.testing.assert_array_equal(y1, y2)
    y3 = client.infer("linear", [inp], priority=1, client_timeout=T).as_numpy("y")
    np.testing.assert_array_equal(y1, y3)
    with pytest.raises(InferenceServerException) as err:
        client.infer("linear", [inp], priority=2, client_timeout=T)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "priority 2 is outside 0..1" in err.value.message()


def test_timeout_parameter_too_short_is_deadline_exceeded(client):
    inp = grpcclient.InferInput("x", [1, N_FEATURES], "FP32")
    inp.set_data_from_numpy(np.ones((1, N_FEATURES), np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("linear", [inp], timeout=1, client_timeout=T)  # 1 µs
    assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert "linear" in err.value.message()


def test_concurrent_requests_are_batched_and_answered_in_order(client, model_repo):
    """200 single-row requests in flight at once: each gets its own row; they share batches."""
    n = 200
    x = np.random.default_rng(4).standard_normal((n, N_FEATURES)).astype(np.float32)
    expected = _ort(model_repo, "linear_batch", x)
    before = client.get_inference_statistics("linear_batch", as_json=True, client_timeout=T)
    before = before["model_stats"][0]

    results: dict[int, object] = {}
    done = threading.Event()
    lock = threading.Lock()

    def callback(i, result, error):
        with lock:
            results[i] = error if error is not None else result.as_numpy("y")
            if len(results) == n:
                done.set()

    for i in range(n):
        inp = grpcclient.InferInput("x", [1, N_FEATURES], "FP32")
        inp.set_data_from_numpy(x[i : i + 1])
        client.async_infer(
            "linear_batch",
            [inp],
            callback=lambda result, error, i=i: callback(i, result, error),
            client_timeout=30.0,
        )
    assert done.wait(60), f"only {len(results)} of {n} requests answered"
    errors = {i: r for i, r in results.items() if isinstance(r, Exception)}
    assert not errors, f"{len(errors)} failed, e.g. {next(iter(errors.values()))}"
    for i in range(n):
        np.testing.assert_allclose(results[i], expected[i : i + 1], rtol=1e-5, atol=1e-6)

    after = client.get_inference_statistics("linear_batch", as_json=True, client_timeout=T)
    after = after["model_stats"][0]
    inferences = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    assert inferences == n
    assert 0 < executions < inferences, (executions, inferences)
    assert any(int(b["batch_size"]) > 1 for b in after.get("batch_stats", []))


# -- health, reflection, HTTP ------------------------------------------------------------


def test_grpc_health(server):
    with grpc.insecure_channel(server.grpc) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=T).status == serving
        for name in ("linear", "tabular", "tabular-lite", "fixed"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=T)
            assert response.status == serving, name
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(health_pb2.HealthCheckRequest(service="no-such-model"), timeout=T)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_services(server):
    with grpc.insecure_channel(server.grpc) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = list(stub.ServerReflectionInfo(iter([request]), timeout=T))
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def test_unimplemented_method(server):
    with grpc.insecure_channel(server.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.SystemSharedMemoryStatus(
                service_pb2.SystemSharedMemoryStatusRequest(name="x"), timeout=T
            )
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_http_probes_and_metrics(server, client):
    status, body, _ = _http_get(f"{server.http}/v2/health/live")
    assert status == 200
    status, body, _ = _http_get(f"{server.http}/v2/health/ready")
    assert status == 200 and json.loads(body) == {"ready": True}
    assert _http_get(f"{server.http}/v2/models/linear/ready")[0] == 200
    assert _http_get(f"{server.http}/v2/models/no-such-model/ready")[0] == 404

    _infer_linear(client, np.zeros((1, N_FEATURES), np.float32))
    status, body, content_type = _http_get(f"{server.http}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    assert b"steadyserve_" in body


def test_logs_are_json_lines(server):
    lines = [line for line in server.stderr().splitlines() if line.strip()]
    assert lines, "the server logged nothing"
    for line in lines:
        entry = json.loads(line)
        assert {"ts", "level", "logger", "msg"} <= set(entry), entry
    assert any(json.loads(line)["msg"] == "server started" for line in lines)


# -- shutdown ----------------------------------------------------------------------------


def test_sigterm_drains_in_flight_requests(tmp_path, launch):
    """Requests waiting in a batch queue when SIGTERM arrives are all answered; exit 0."""
    repo = onnx_models.make_repo(
        tmp_path / "repo",
        {"slow": lambda p: onnx_models.write_linear(p, n_in=N_FEATURES, n_out=N_OUTPUTS)},
        configs={
            # Batches close after 3 s unless full: requests sit in the queue meanwhile.
            "slow": {
                "max_batch_size": 64,
                "batching": {"max_queue_delay_us": 3_000_000, "preferred_batch_sizes": [64]},
            }
        },
    )
    proc = launch(repo, "--grace-s", "20")
    n = 20
    results: dict[int, object] = {}
    done = threading.Event()
    lock = threading.Lock()

    def callback(i, result, error):
        with lock:
            results[i] = error if error is not None else result.as_numpy("y")
            if len(results) == n:
                done.set()

    with grpcclient.InferenceServerClient(proc.grpc) as client:
        x = np.random.default_rng(5).standard_normal((n, N_FEATURES)).astype(np.float32)
        for i in range(n):
            inp = grpcclient.InferInput("x", [1, N_FEATURES], "FP32")
            inp.set_data_from_numpy(x[i : i + 1])
            client.async_infer(
                "slow",
                [inp],
                callback=lambda result, error, i=i: callback(i, result, error),
                client_timeout=30.0,
            )
        # Let them reach the server's queue. (steadyserve_queue_depth would say when, but
        # it is only updated after a batch runs.)
        done.wait(1.0)
        assert len(results) == 0, "the batch closed before SIGTERM; the test proves nothing"
        proc.send_signal(signal.SIGTERM)
        # While it drains, the readiness probe says 503 (the HTTP port closes last).
        for _ in range(100):
            if _http_get(f"{proc.http}/v2/health/ready")[0] == 503:
                break
            time.sleep(0.01)
        else:
            pytest.fail("readiness stayed 200 after SIGTERM")
        assert len(results) < n, "the batch closed before the probe; the test proves less"
        assert done.wait(30), f"only {len(results)} of {n} answered after SIGTERM"
    errors = [r for r in results.values() if isinstance(r, Exception)]
    assert not errors, f"{len(errors)} in-flight requests failed, e.g. {errors[0]}"
    rc = proc.wait()
    assert rc == 0, f"exit code {rc}; stderr:\n{proc.stderr()[-4000:]}"
