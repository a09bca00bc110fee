"""`steadyserve serve --workers N`: N server processes behind one gRPC and HTTP port."""

from __future__ import annotations

import functools
import time
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from conftest import start_server
from onnx_models import make_repo, write_linear

T = 30.0


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def test_workers_share_the_ports_answer_and_stop_cleanly(tmp_path):
    w, b = write_linear(tmp_path / "reference.onnx", n_in=4, n_out=3, seed=7)
    repo = make_repo(
        tmp_path / "repo", {"linear": functools.partial(write_linear, n_in=4, n_out=3, seed=7)}
    )
    server = start_server(repo, "--workers", "2", log_dir=tmp_path, name="workers")
    try:
        workers = children(server.proc.pid)
        assert len(workers) == 2
        assert "workers: 2 processes" in server.wait_for_output("workers: 2")
        # Separate connections: the kernel spreads them over the workers; every one of
        # them answers correctly whichever worker it reached.
        for i in range(8):
            with grpcclient.InferenceServerClient(server.grpc) as client:
                x = np.full((1, 4), i, np.float32)
                inp = grpcclient.InferInput("x", [1, 4], "FP32")
                inp.set_data_from_numpy(x)
                y = client.infer("linear", [inp], client_timeout=T).as_numpy("y")
                np.testing.assert_allclose(y, x @ w + b, rtol=1e-5, atol=1e-5)
        with urllib.request.urlopen(f"{server.http}/v2/health/ready", timeout=T) as resp:
            assert resp.status == 200
    finally:
        rc = server.stop()
    assert rc == 0, server.stderr()[-4000:]
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)


def test_workers_die_with_a_killed_supervisor(tmp_path):
    repo = make_repo(tmp_path / "repo", {"linear": write_linear})
    server = start_server(repo, "--workers", "2", log_dir=tmp_path, name="killed")
    workers = children(server.proc.pid)
    server.proc.kill()  # no chance to forward anything
    server.proc.wait(timeout=T)
    deadline = time.monotonic() + T
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
