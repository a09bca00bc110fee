"""Both gRPC frontends, end to end: ``--frontend native`` (C++ HTTP/2, other methods
bridged to Python) and ``--frontend grpcio`` (grpc.aio) serve the same protocol.

Tests taking ``server``/``client``/``launch``/``frontend`` run once per frontend (ids
``[native]`` / ``[grpcio]``, see conftest); the cross-frontend comparison starts one
server of each.
"""

from __future__ import annotations

import functools
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import h2_peer as hp
import onnx_models
from conftest import FRONTENDS, N_FEATURES, N_OUTPUTS, only_frontend, start_server

T = 10.0  # seconds: the client timeout of every call
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _linear_reference(model_repo, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(
        str(model_repo / "linear" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"x": x})[0]


def _linear_input(x: np.ndarray, name: str = "x") -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


# -- inference ---------------------------------------------------------------------------


def test_unary_and_async_infer(client, model_repo):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, N_FEATURES)).astype(np.float32)
    y = client.infer("linear", [_linear_input(x)], request_id="u1", client_timeout=T)
    assert y.get_response().id == "u1"
    np.testing.assert_allclose(y.as_numpy("y"), _linear_reference(model_repo, x), rtol=1e-5)

    n = 8
    xs = rng.standard_normal((n, 1, N_FEATURES)).astype(np.float32)
    got: dict[int, object] = {}
    done = threading.Event()
    lock = threading.Lock()

    def callback(i, result, error):
        with lock:
            got[i] = error if error is not None else result.as_numpy("y")
            if len(got) == n:
                done.set()

    for i in range(n):
        client.async_infer(
            "linear",
            [_linear_input(xs[i])],
            callback=functools.partial(callback, i),
            client_timeout=T,
        )
    assert done.wait(T), f"{len(got)} of {n} async answers"
    for i in range(n):
        assert not isinstance(got[i], Exception), got[i]
        np.testing.assert_allclose(got[i], _linear_reference(model_repo, xs[i]), rtol=1e-5)


def test_stream_infer_answers_each_request_and_survives_a_bad_one(client, model_repo):
    """ModelStreamInfer: every request gets its answer in the stream; an invalid one (in
    the middle) gets its error there and the stream goes on; the stream ends OK."""
    rng = np.random.default_rng(12)
    n = 6
    xs = rng.standard_normal((n, 1, N_FEATURES)).astype(np.float32)
    results: dict[str, np.ndarray] = {}
    errors: list[InferenceServerException] = []
    lock = threading.Lock()
    all_in = threading.Event()

    def callback(result, error):
        with lock:
            if error is not None:
                errors.append(error)
            else:
                results[result.get_response().id] = result.as_numpy("y")
            if len(results) + len(errors) == n + 2:
                all_in.set()

    client.start_stream(callback=callback, stream_timeout=30.0)
    try:
        for i in range(n):
            if i == n // 2:  # an input of the wrong width, then an unknown model
                bad = np.zeros((1, N_FEATURES + 1), np.float32)
                client.async_stream_infer("linear", [_linear_input(bad)], request_id="bad")
                client.async_stream_infer(
                    "no-such-model", [_linear_input(xs[i])], request_id="unknown"
                )
            client.async_stream_infer("linear", [_linear_input(xs[i])], request_id=str(i))
        assert all_in.wait(T), f"{len(results)} answers and {len(errors)} errors of {n + 2}"
    finally:
        client.stop_stream()  # half-close; returns once the server ended the stream
    # A stream that ended with an error status would have added one more error.
    assert len(errors) == 2, [str(e) for e in errors]
    messages = sorted(str(e) for e in errors)
    assert any("no-such-model" in m for m in messages), messages
    assert any("'x'" in m for m in messages), messages
    assert sorted(results) == sorted(str(i) for i in range(n))
    for i in range(n):
        np.testing.assert_allclose(results[str(i)], _linear_reference(model_repo, xs[i]), rtol=1e-5)


# -- health, reflection, unknown methods (bridged on the native frontend) ----------------


def test_health_check_and_watch(server):
    with grpc.insecure_channel(server.grpc) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=T).status == SERVING
        assert stub.Check(health_pb2.HealthCheckRequest(service="add"), timeout=T).status == SERVING
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(health_pb2.HealthCheckRequest(service="no-such-model"), timeout=T)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        watch = stub.Watch(health_pb2.HealthCheckRequest(service="linear"), timeout=T)
        assert next(watch).status == SERVING
        watch.cancel()  # the server's handler must go (and the server keep serving)
        unknown = stub.Watch(health_pb2.HealthCheckRequest(service="nothing"), timeout=T)
        assert next(unknown).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        unknown.cancel()

        # A deadline ends a Watch that has nothing more to say.
        short = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
        assert next(short).status == SERVING
        with pytest.raises(grpc.RpcError) as err:
            next(short)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=T).status == SERVING


def test_reflection_answers_each_request_of_a_stream(server):
    with grpc.insecure_channel(server.grpc) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="inference.GRPCInferenceService"
            ),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Symbol"),
        ]
        responses = list(stub.ServerReflectionInfo(iter(requests), timeout=T))
    assert len(responses) == 3
    names = {s.name for s in responses[0].list_services_response.service}
    assert names == {
        "inference.GRPCInferenceService",
        "steadyserve.v1.Feedback",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    assert responses[1].file_descriptor_response.file_descriptor_proto
    assert responses[2].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_unknown_methods_are_unimplemented(server, frontend):
    with grpc.insecure_channel(server.grpc) as channel:
        unary = channel.unary_unary("/no.such.Service/Method")
        with pytest.raises(grpc.RpcError) as err:
            unary(b"", timeout=T)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        if frontend == "native":  # grpcio words it its own way
            assert err.value.details() == "steadyserve does not implement /no.such.Service/Method"
        streaming = channel.stream_stream("/inference.GRPCInferenceService/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as err:
            list(streaming(iter([b"", b""]), timeout=T))
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # ... and the server goes on serving.
        stub = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=T).status == SERVING


def test_malformed_bridged_requests_are_invalid_argument(server, frontend):
    with grpc.insecure_channel(server.grpc) as channel:
        metadata = channel.unary_unary("/inference.GRPCInferenceService/ModelMetadata")
        with pytest.raises(grpc.RpcError) as err:
            metadata(b"\xff\xff\xff", timeout=T)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ModelMetadataRequest" in err.value.details()
        if frontend == "native":  # grpcio answers a deserializer's failure INTERNAL itself
            check = channel.unary_unary("/grpc.health.v1.Health/Check")
            with pytest.raises(grpc.RpcError) as err:
                check(b"\xff\xff\xff", timeout=T)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "grpc.health.v1.HealthCheckRequest" in err.value.details()


@only_frontend("native")
def test_bridged_calls_end_at_their_deadline_and_on_reset(server):
    """On the wire (no client library deadline to hide behind): the server itself ends a
    bridged Watch at its grpc-timeout with DEADLINE_EXCEEDED, and a Watch the client
    resets is let go while the connection goes on serving."""
    watch = "/grpc.health.v1.Health/Watch"
    request = hp.grpc_frame(health_pb2.HealthCheckRequest(service="").SerializeToString())
    with hp.RawPeer(server.grpc) as peer:
        peer.handshake()
        t0 = time.monotonic()
        block = hp.request_block(watch, extra=[("grpc-timeout", "300m")])
        assert peer.send(hp.header_frames(1, block) + hp.data_frames(1, request))
        response = peer.read_response(1, timeout=5)
        elapsed = time.monotonic() - t0
        assert response.grpc_status == grpc.StatusCode.DEADLINE_EXCEEDED.value[0], response
        assert 0.25 < elapsed < 3, elapsed
        (first,) = response.messages
        assert health_pb2.HealthCheckResponse.FromString(first).status == SERVING

        assert peer.send(hp.header_frames(3, hp.request_block(watch)) + hp.data_frames(3, request))
        assert peer.next_frame(lambda f: f.type == hp.DATA and f.stream_id == 3) is not None
        assert peer.send(hp.rst_stream(3))
        check = hp.grpc_frame(health_pb2.HealthCheckRequest(service="linear").SerializeToString())
        block = hp.request_block("/grpc.health.v1.Health/Check")
        assert peer.send(hp.header_frames(5, block) + hp.data_frames(5, check))
        response = peer.read_response(5)
        assert response.grpc_status == 0, response
        (answer,) = response.messages
        assert health_pb2.HealthCheckResponse.FromString(answer).status == SERVING
        # Nothing more ever comes for the reset stream.
        assert not [f for f in peer.frames(0.3) if f.stream_id == 3]


# -- the same answers from both ----------------------------------------------------------


def _small_repo(root):
    linear = functools.partial(onnx_models.write_linear, n_in=N_FEATURES, n_out=N_OUTPUTS, seed=7)
    return onnx_models.make_repo(
        root,
        {"linear": linear, "fixed": onnx_models.write_fixed_shape, "quick": linear},
        configs={
            "linear": {"max_batch_size": 16, "batching": {"max_queue_delay_us": 2000}},
            "fixed": {"max_batch_size": 0},
            # Inline execution needs Python per request; the native frontend runs it on
            # an executor thread instead.
            "quick": {
                "max_batch_size": 8,
                "batching": {"max_queue_delay_us": 0},
                "execution": "inline",
            },
        },
    )


def _control_plane(address: str) -> list:
    """Every non-inference answer a client can get, as (what, message or status)."""
    out = []
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        calls = [
            ("ServerLive", service_pb2.ServerLiveRequest()),
            ("ServerReady", service_pb2.ServerReadyRequest()),
            ("ServerMetadata", service_pb2.ServerMetadataRequest()),
            ("RepositoryIndex", service_pb2.RepositoryIndexRequest()),
            ("RepositoryIndex", service_pb2.RepositoryIndexRequest(ready=True)),
            ("ModelStatistics", service_pb2.ModelStatisticsRequest()),
            ("ModelStatistics", service_pb2.ModelStatisticsRequest(name="nope")),
            ("ModelMetadata", service_pb2.ModelMetadataRequest(name="nope")),
            ("ModelMetadata", service_pb2.ModelMetadataRequest(name="../etc")),
            ("ModelReady", service_pb2.ModelReadyRequest(name="nope")),
        ]
        for model in ("linear", "fixed", "quick"):
            calls += [
                ("ModelReady", service_pb2.ModelReadyRequest(name=model)),
                ("ModelMetadata", service_pb2.ModelMetadataRequest(name=model)),
                ("ModelMetadata", service_pb2.ModelMetadataRequest(name=model, version="7")),
                ("ModelConfig", service_pb2.ModelConfigRequest(name=model)),
                ("ModelStatistics", service_pb2.ModelStatisticsRequest(name=model)),
            ]
        for method, request in calls:
            try:
                answer = getattr(stub, method)(request, timeout=T)
            except grpc.RpcError as exc:
                answer = (exc.code(), exc.details())
            out.append((method, str(request), answer))
    return out


def test_both_frontends_answer_the_control_plane_alike(tmp_path):
    repo = _small_repo(tmp_path / "repo")
    servers = {}
    try:
        for name in FRONTENDS:
            servers[name] = start_server(repo, "--frontend", name, log_dir=tmp_path, name=name)
        answers = {name: _control_plane(s.grpc) for name, s in servers.items()}
        # Not trivially equal: the answers carry content, and some are errors.
        assert any(isinstance(a, tuple) for _, _, a in answers["grpcio"])
        assert any(not isinstance(a, tuple) for _, _, a in answers["grpcio"])
        for mine, theirs in zip(answers["native"], answers["grpcio"], strict=True):
            assert mine == theirs

        # Both serve the inline model; only native moves it to an executor thread.
        x = np.ones((2, N_FEATURES), np.float32)
        for s in servers.values():
            with grpcclient.InferenceServerClient(s.grpc) as c:
                y = c.infer("quick", [_linear_input(x)], client_timeout=T).as_numpy("y")
                np.testing.assert_allclose(y, _linear_reference(repo, x), rtol=1e-5)
        note = "execution: inline runs on one executor thread"
        assert note in servers["native"].stderr()
        assert note not in servers["grpcio"].stderr()
    finally:
        for s in servers.values():
            assert s.stop() == 0, s.stderr()[-4000:]


# -- ports, flags, shutdown --------------------------------------------------------------


def _serve(repo, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "steadyserve", "serve", str(repo), "--host", "127.0.0.1"]
    cmd += ["--grpc-port", "0", "--http-port", "0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    return onnx_models.make_repo(
        tmp_path_factory.mktemp("tiny"), {"linear": onnx_models.write_linear}
    )


@pytest.mark.parametrize("port", ["--grpc-port", "--http-port"])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_an_error(tiny_repo, frontend, port, workers):
    """Another process listening on the port (with SO_REUSEPORT, which would let a
    SO_REUSEPORT server share it silently): start fails, naming the port."""
    with socket.socket() as stranger:
        stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        busy = stranger.getsockname()[1]
        proc = _serve(tiny_repo, "--frontend", frontend, "--workers", workers, port, str(busy))
    assert proc.returncode != 0, proc.stdout
    assert f"127.0.0.1:{busy}: address already in use" in proc.stderr, proc.stderr[-4000:]
    assert "steadyserve ready" not in proc.stdout


def test_flags_of_the_other_frontend_are_refused(tiny_repo):
    proc = _serve(tiny_repo, "--frontend", "native", "--max-concurrent-rpcs", "4", timeout=60)
    assert proc.returncode == 2
    assert "--max-concurrent-rpcs only apply to --frontend grpcio" in proc.stderr
    proc = _serve(tiny_repo, "--frontend", "grpcio", "--io-threads", "2", timeout=60)
    assert proc.returncode == 2
    assert "--io-threads only apply to --frontend native" in proc.stderr


@only_frontend("native")
def test_native_limits_are_taken(tiny_repo, launch):
    """The native frontend's flags reach it: one stream per connection is still served."""
    proc = launch(
        tiny_repo,
        "--max-connections",
        "8",
        "--max-concurrent-streams",
        "1",
        "--io-threads",
        "1",
        "--idle-timeout-s",
        "30",
    )
    with grpcclient.InferenceServerClient(proc.grpc) as c:
        x = np.ones((1, 4), np.float32)
        inp = grpcclient.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        assert c.infer("linear", [inp], client_timeout=T).as_numpy("y").shape == (1, 3)
    assert proc.stop() == 0, proc.stderr()[-4000:]


@only_frontend("native")
def test_frontend_figures_are_in_the_metrics(server, client):
    """/metrics carries the native frontend's own figures: connections open, requests it
    handled natively, calls it bridged; they move with real traffic."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    def figures() -> dict[str, float]:
        with urllib.request.urlopen(f"{server.http}/metrics", timeout=T) as resp:
            text = resp.read().decode()
        return {
            s.name: s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name.startswith("steadyserve_grpc_")
        }

    before = figures()
    x = np.ones((1, N_FEATURES), np.float32)
    inp = grpcclient.InferInput("x", [1, N_FEATURES], "FP32")
    inp.set_data_from_numpy(x)
    for _ in range(3):
        client.infer("linear", [inp], client_timeout=T)
    client.is_server_live()
    after = figures()
    assert after["steadyserve_grpc_connections"] >= 1
    assert (
        after["steadyserve_grpc_native_requests_total"]
        - before.get("steadyserve_grpc_native_requests_total", 0)
        >= 3
    )
    assert after["steadyserve_grpc_bridged_calls_total"] > before.get(
        "steadyserve_grpc_bridged_calls_total", 0
    )
    assert "steadyserve_grpc_protocol_errors_total" in after


def test_sigterm_tells_watchers_and_drains(tmp_path, launch):
    """SIGTERM: a health watcher hears NOT_SERVING, a request waiting in a batch queue
    is answered, and the server exits 0 once the grace period ends the watch."""
    repo = onnx_models.make_repo(
        tmp_path / "repo",
        {"slow": functools.partial(onnx_models.write_linear, n_in=4, n_out=3)},
        configs={"slow": {"max_batch_size": 8, "batching": {"max_queue_delay_us": 2_000_000}}},
    )
    proc = launch(repo, "--grace-s", "3")
    answered = threading.Event()
    outcome: list = []

    def callback(result, error):
        outcome.append(error if error is not None else result.as_numpy("y"))
        answered.set()

    with (
        grpc.insecure_channel(proc.grpc) as channel,
        grpcclient.InferenceServerClient(proc.grpc) as c,
    ):
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=30
        )
        assert next(watch).status == SERVING
        x = np.ones((1, 4), np.float32)
        inp = grpcclient.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        c.async_infer("slow", [inp], callback=callback, client_timeout=30)
        time.sleep(0.3)  # let it reach the queue (it waits there up to 2 s)
        assert not answered.is_set(), "the batch closed before SIGTERM; the test proves nothing"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert next(watch).status == NOT_SERVING
        assert answered.wait(10), "the queued request was not answered"
        assert not isinstance(outcome[0], Exception), outcome[0]
        with pytest.raises(grpc.RpcError):  # ended by the grace period, not by the client
            next(watch)
        rc = proc.wait()
    assert rc == 0, proc.stderr()[-4000:]
    assert time.monotonic() - t0 < 15


def test_many_sequential_calls_on_one_channel(server):
    """grpcio sends a WINDOW_UPDATE (and now and then a PING) with every answer it
    reads: thousands of calls one after another on one channel are no flood, and
    the connection is never closed under them. (``fixed`` does not batch: no queue
    delay per call.)"""
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    request = service_pb2.ModelInferRequest(model_name="fixed")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(server.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for i in range(6000):
            answer = stub.ModelInfer(request, timeout=T)
            if i % 1000 == 0:
                got = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(2, 3)
                np.testing.assert_array_equal(got, 2 * x)
