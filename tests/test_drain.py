"""SIGTERM under load, as Kubernetes sends it: readiness turns NOT_SERVING at once,
every request already sent is answered, the process exits 0 within the grace period.

Three clients send without pause, each on its own channel, to a model whose batches
wait up to 50 ms (so requests are always queued when the signal comes); a health
watcher plays the load balancer. Requests sent after the signal are refused by then
(GOAWAY): the pod is out of the endpoints by the time Kubernetes sends SIGTERM (the
manifests' preStop sleep), so a real client sends none.
"""

from __future__ import annotations

import functools
import signal
import threading
import time

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

import onnx_models

GRACE_S = 10.0


def _request() -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend(np.ones(4, np.float32).tolist())
    return request


def test_sigterm_under_load_answers_everything_sent(tmp_path, launch):
    repo = onnx_models.make_repo(
        tmp_path / "repo",
        {"m": functools.partial(onnx_models.write_linear, n_in=4, n_out=3)},
        configs={"m": {"max_batch_size": 64, "batching": {"max_queue_delay_us": 50_000}}},
    )
    proc = launch(repo, "--grace-s", str(GRACE_S))
    signalled = threading.Event()
    stop = threading.Event()
    lock = threading.Lock()
    before: list = []  # (error or None, finished at) of calls started before SIGTERM
    after_codes: list = []  # codes of calls started after it

    def client() -> None:
        with grpc.insecure_channel(proc.grpc) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            while not stop.is_set():
                started_before = not signalled.is_set()
                try:
                    stub.ModelInfer(_request(), timeout=30)
                    error = None
                except grpc.RpcError as exc:
                    error = exc.code()
                with lock:
                    if started_before:
                        before.append((error, time.monotonic()))
                    else:
                        after_codes.append(error)
                if error is not None and not started_before:
                    return  # refused: this one is gone, as a load balancer would see

    with grpc.insecure_channel(proc.grpc) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=60
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(before) < 60:  # under load for a while
            assert time.monotonic() < deadline
            time.sleep(0.01)
        t0 = time.monotonic()
        signalled.set()
        proc.send_signal(signal.SIGTERM)
        status = next(watch).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        rc = proc.wait(GRACE_S + 10)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    elapsed = time.monotonic() - t0
    assert rc == 0, proc.stderr()[-4000:]
    assert elapsed < GRACE_S + 5
    errors = [e for e, _ in before if e is not None]
    assert not errors, errors  # every call started before SIGTERM was answered
    # ... including the ones queued when it came, answered while the server drained.
    assert any(finished > t0 for _, finished in before)
    assert all(code == grpc.StatusCode.UNAVAILABLE for code in after_codes if code)
