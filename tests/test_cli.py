"""The `steadyserve` command line: usage errors are clear and exit with code 2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

import onnx_models

T = 60.0


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "steadyserve", *args],
        capture_output=True,
        text=True,
        timeout=T,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def test_version():
    done = _run("version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("steadyserve ")


def test_no_command_prints_help():
    done = _run()
    assert done.returncode == 2
    assert "serve" in done.stderr


def test_serve_without_repository():
    done = _run("serve")
    assert done.returncode == 2
    assert "model repository" in done.stderr
    assert "--demo" in done.stderr


def test_serve_missing_repository(tmp_path):
    missing = tmp_path / "nowhere"
    done = _run("serve", str(missing))
    assert done.returncode == 2
    assert str(missing) in done.stderr and "does not exist" in done.stderr


def test_serve_repository_is_a_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"")
    done = _run("serve", str(path))
    assert done.returncode == 2
    assert "not a directory" in done.stderr


def test_serve_repo_and_demo_together(tmp_path):
    done = _run("serve", str(tmp_path), "--demo")
    assert done.returncode == 2
    assert "--demo" in done.stderr


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--grpc-port", "70000"], "--grpc-port"),
        (["--http-port", "-1"], "--http-port"),
        (["--grace-s", "-1"], "--grace-s"),
        (["--max-message-mb", "0"], "--max-message-mb"),
    ],
)
def test_serve_invalid_option(tmp_path, flags, named):
    done = _run("serve", str(tmp_path), *flags)
    assert done.returncode == 2
    assert named in done.stderr


def test_serve_without_onnxruntime_says_what_to_install(tmp_path):
    """An `onnxruntime` that fails to import stands in for a missing one."""
    fake = tmp_path / "fake"
    (fake / "onnxruntime").mkdir(parents=True)
    (fake / "onnxruntime" / "__init__.py").write_text(
        'raise ImportError("onnxruntime is not installed (simulated)")\n'
    )
    path = os.pathsep.join(p for p in (str(fake), os.environ.get("PYTHONPATH", "")) if p)
    repo = tmp_path / "repo"
    repo.mkdir()
    done = _run("serve", str(repo), env={"PYTHONPATH": path})
    assert done.returncode == 2
    assert "pip install 'steadyserve[cpu]'" in done.stderr
    assert "steadyserve[gpu]" in done.stderr


def test_serve_demo_starts_and_stops(tmp_path, launch):
    proc = launch(None, "--demo", "--demo-dir", str(tmp_path / "demo"))
    assert proc.stdout_lines[0].startswith("steadyserve ready grpc=127.0.0.1:")
    # The banner shows a tritonclient example with the first model's real input.
    out = proc.wait_for_output("result = client.infer(")
    assert 'grpcclient.InferInput("features", [1, 32], "FP32")' in out
    assert (tmp_path / "demo" / "tabular" / "1" / "model.onnx").exists()
    assert proc.stop() == 0


def test_serve_port_in_use(tmp_path):
    """A port held by another socket (without SO_REUSEPORT) is a clear start-up error."""
    repo = onnx_models.make_repo(tmp_path / "repo", {"identity": onnx_models.write_identity})
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = _run(
            "serve", str(repo), "--host", "127.0.0.1", "--grpc-port", str(port), "--http-port", "0"
        )
    assert done.returncode == 1
    assert f"cannot bind the gRPC port 127.0.0.1:{port}" in done.stderr
    assert "steadyserve ready" not in done.stdout
