"""`steadyserve serve --workers N`: N server processes behind one gRPC and HTTP port.

native: the supervisor listens and the workers serve its sockets; grpcio: the
workers bind the ports with SO_REUSEPORT. Either way more than one worker answers
(each worker's own figures, on its socket in the supervisor's worker directory, say
so; what the ports answer is the whole server's: test_workers_metrics.py).
"""

from __future__ import annotations

import functools
import json
import time
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from conftest import start_server
from onnx_models import make_repo, write_linear
from test_workers_metrics import worker_dir_of, worker_get

T = 30.0
CONNECTIONS = 24
# A channel of its own per client: grpc shares connections between channels to the same
# address by default, and the test needs separate connections to reach separate workers.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def test_workers_share_the_ports_answer_and_stop_cleanly(tmp_path, frontend):
    w, b = write_linear(tmp_path / "reference.onnx", n_in=4, n_out=3, seed=7)
    repo = make_repo(
        tmp_path / "repo", {"linear": functools.partial(write_linear, n_in=4, n_out=3, seed=7)}
    )
    server = start_server(
        repo, "--workers", "2", "--frontend", frontend, log_dir=tmp_path, name="workers"
    )
    clients = []
    try:
        workers = children(server.proc.pid)
        assert len(workers) == 2
        assert "workers: 2 processes" in server.wait_for_output("workers: 2")
        # Separate connections, held open: each answers correctly whichever worker it
        # reached; each worker's own statistics then say how many it served.
        for i in range(CONNECTIONS):
            client = grpcclient.InferenceServerClient(server.grpc, channel_args=OWN_CONNECTION)
            clients.append(client)
            x = np.full((1, 4), i, np.float32)
            inp = grpcclient.InferInput("x", [1, 4], "FP32")
            inp.set_data_from_numpy(x)
            y = client.infer("linear", [inp], client_timeout=T).as_numpy("y")
            np.testing.assert_allclose(y, x @ w + b, rtol=1e-5, atol=1e-5)
        worker_dir, _ = worker_dir_of(server)
        counts = [
            json.loads(worker_get(worker_dir, i, "/statistics?name=linear"))[0]["statistics"][
                "inference_count"
            ]
            for i in (0, 1)
        ]
        assert all(counts), f"one worker answered everything: {counts}"
        assert sum(counts) == CONNECTIONS
        stats = clients[0].get_inference_statistics("linear", as_json=True, client_timeout=T)
        assert int(stats["model_stats"][0]["inference_count"]) == CONNECTIONS  # the sum
        with urllib.request.urlopen(f"{server.http}/v2/health/ready", timeout=T) as resp:
            assert resp.status == 200
    finally:
        for client in clients:
            client.close()
        rc = server.stop()
    assert rc == 0, server.stderr()[-4000:]
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)


def test_workers_die_with_a_killed_supervisor(tmp_path, frontend):
    repo = make_repo(tmp_path / "repo", {"linear": write_linear})
    server = start_server(
        repo, "--workers", "2", "--frontend", frontend, log_dir=tmp_path, name="killed"
    )
    workers = children(server.proc.pid)
    server.proc.kill()  # no chance to forward anything
    server.proc.wait(timeout=T)
    deadline = time.monotonic() + T
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
