"""Shared fixtures: real `steadyserve serve` processes on loopback.

The server runs as a subprocess (``python -m steadyserve serve REPO --host 127.0.0.1
--grpc-port 0 --http-port 0``) and prints ``steadyserve ready grpc=HOST:PORT
http=HOST:PORT`` once it listens; the fixture reads the ports from that line.

Both gRPC frontends are tested: the session ``server`` (and so ``client``) and the
servers ``launch`` starts are parametrized over ``FRONTENDS`` through the ``frontend``
fixture (test ids ``[native]`` / ``[grpcio]``). A test that is about one frontend only
says so: ``@pytest.mark.parametrize("frontend", ["grpcio"])`` (``only_frontend``).
``start_server`` itself starts the CLI default (native) unless given ``--frontend``.

Never import ``steadyserve.server`` or ``steadyserve._proto`` in the test process:
protobuf's default descriptor pool cannot hold both our ``inference.*`` messages and
tritonclient's.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import onnx_models

# "not-ready" when a required model does not serve (tests of broken models start so).
READY_LINE = re.compile(r"^steadyserve (?:ready|not-ready) grpc=(\S+:\d+) http=(\S+:\d+)$")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0

# Features of the linear models (and of the demo models).
N_FEATURES = 32
N_OUTPUTS = 4

FRONTENDS = ("native", "grpcio")
# Flags that only the grpcio frontend has: a native run of a test passing them through
# ``launch`` is skipped, visibly (the test is about grpcio's own limits).
GRPCIO_ONLY_FLAGS = ("--max-concurrent-rpcs", "--max-pending-rpcs")


def only_frontend(*names: str):
    """Mark a test as being about these frontends only (it runs once per name). Session
    scope, so that it also applies to the session ``server``."""
    return pytest.mark.parametrize("frontend", names, scope="session")


@dataclass
class ServerProcess:
    """A running `steadyserve serve`; ``grpc`` is "127.0.0.1:PORT", ``http`` a base URL."""

    proc: subprocess.Popen
    repo: Path
    stderr_path: Path
    grpc: str = ""
    http: str = ""
    stdout_lines: list[str] = field(default_factory=list)

    def wait_for_output(self, text: str, timeout: float = 10.0) -> str:
        """All stdout so far, once it contains ``text`` (fails the test after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            out = "\n".join(self.stdout_lines)
            if text in out:
                return out
            if time.monotonic() > deadline:
                pytest.fail(f"server stdout lacks {text!r} after {timeout} s:\n{out}")
            time.sleep(0.05)

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def send_signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """Exit code once it exits; kills it and fails the test if it does not in time."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            pytest.fail(
                f"server did not exit within {timeout} s of SIGTERM; "
                f"stderr:\n{self.stderr()[-4000:]}"
            )

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        if self.proc.poll() is None:
            self.send_signal(signal.SIGTERM)
        return self.wait(timeout)


def _pump(stream, lines: queue.Queue, sink: list[str]) -> None:
    """Read the server's stdout until it closes, so the pipe never fills up."""
    with stream:
        for line in stream:
            sink.append(line.rstrip("\n"))
            lines.put(line.rstrip("\n"))
    lines.put(None)


def start_server(
    repo: Path | None, *args: str, log_dir: Path, name: str = "server"
) -> ServerProcess:
    """Start `python -m steadyserve serve REPO ...` on 127.0.0.1, ports 0; wait until ready."""
    cmd = [sys.executable, "-m", "steadyserve", "serve"]
    if repo is not None:
        cmd.append(str(repo))
    cmd += ["--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0", *args]
    stderr_path = log_dir / f"{name}.stderr.log"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    server = ServerProcess(proc=proc, repo=repo or log_dir, stderr_path=stderr_path)
    lines: queue.Queue = queue.Queue()
    threading.Thread(
        target=_pump, args=(proc.stdout, lines, server.stdout_lines), daemon=True
    ).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        remaining = deadline - time.monotonic()
        try:
            line = lines.get(timeout=max(0.01, remaining))
        except queue.Empty:
            line = ""
            if remaining <= 0:
                proc.kill()
                proc.wait(timeout=10)
                pytest.fail(
                    f"server printed no ready line within {START_TIMEOUT_S} s; "
                    f"stderr:\n{server.stderr()[-4000:]}"
                )
            continue
        if line is None:
            rc = proc.wait(timeout=10)
            pytest.fail(
                f"server exited with {rc} before it was ready; stdout: {server.stdout_lines}\n"
                f"stderr:\n{server.stderr()[-4000:]}"
            )
        match = READY_LINE.match(line)
        if match:
            server.grpc = match.group(1)
            server.http = f"http://{match.group(2)}"
            return server


def linear_config(max_batch_size: int = 16, delay_us: int = 2000, **extra) -> dict:
    return {
        "max_batch_size": max_batch_size,
        "batching": {"max_queue_delay_us": delay_us, **extra.pop("batching", {})},
        **extra,
    }


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory) -> Path:
    """The demo models plus small test models.

    - ``linear``: x FP32 [-1, 32] -> y FP32 [-1, 4], max_batch_size 16
    - ``linear_batch``: same weights, used only by the concurrency test (its statistics
      are not disturbed by other tests), max_batch_size 32, 20 ms queue delay
    - ``add``: a + b, FP32 [-1, 4] (two inputs)
    - ``fixed``: FP32 [2, 3] -> 2 * x, no batching (max_batch_size 0)
    - ``tabular``, ``tabular-lite``: the demo models
    """
    from steadyserve.demo import build_demo_repository

    root = tmp_path_factory.mktemp("repo")
    build_demo_repository(root)
    linear = functools.partial(onnx_models.write_linear, n_in=N_FEATURES, n_out=N_OUTPUTS, seed=7)
    onnx_models.make_repo(
        root,
        {
            "linear": linear,
            "linear_batch": linear,
            "add": onnx_models.write_add_two_inputs,
            "fixed": onnx_models.write_fixed_shape,
        },
        configs={
            "linear": linear_config(16, 2000),
            "linear_batch": linear_config(32, 20000, batching={"preferred_batch_sizes": [32]}),
            "add": linear_config(8, 1000),
            "fixed": {"max_batch_size": 0},
        },
    )
    return root


@pytest.fixture(scope="session", params=FRONTENDS)
def frontend(request) -> str:
    """The gRPC frontend (``--frontend``) of the servers a test uses."""
    return request.param


@pytest.fixture(scope="session")
def server(model_repo, tmp_path_factory, frontend):
    """One server per frontend for the whole session; teardown checks it exits 0 on SIGTERM."""
    proc = start_server(
        model_repo, "--frontend", frontend, log_dir=tmp_path_factory.mktemp(f"logs-{frontend}")
    )
    yield proc
    rc = proc.stop()
    assert rc == 0, f"server exited with {rc} on SIGTERM; stderr:\n{proc.stderr()[-4000:]}"


@pytest.fixture
def launch(tmp_path, frontend):
    """Start extra servers (``launch(repo, *flags)``) with the test's ``--frontend`` unless the
    flags name one; any still running at the end are killed."""
    started: list[ServerProcess] = []

    def _launch(repo: Path | None, *args: str, name: str = "server") -> ServerProcess:
        if "--frontend" not in args:
            if frontend == "native" and any(f in args for f in GRPCIO_ONLY_FLAGS):
                pytest.skip(f"{' '.join(args)}: flags of the grpcio frontend only")
            args = ("--frontend", frontend, *args)
        proc = start_server(repo, *args, log_dir=tmp_path, name=f"{name}{len(started)}")
        started.append(proc)
        return proc

    yield _launch
    for proc in started:
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def client(server):
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(server.grpc)
    yield c
    c.close()


# --------------------------------------------------------------------- a real Alertmanager

ALERTMANAGER = shutil.which("prometheus-alertmanager") or (
    "/usr/bin/prometheus-alertmanager"
    if os.access("/usr/bin/prometheus-alertmanager", os.X_OK)
    else None
)
WAIT_S = 30.0  # the bound of a wait for something asynchronous


def wait_for(predicate, what: str, timeout: float = WAIT_S):
    """``predicate()`` once it is truthy, polled; fails the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def alertmanager(tmp_path):
    """A real Alertmanager on 127.0.0.1 (a free port it picks itself; read from its log),
    clustering off, a route with a receiver that sends nowhere. Its base URL."""
    if ALERTMANAGER is None:
        pytest.skip("no prometheus-alertmanager (apt-get install prometheus-alertmanager)")
    config = tmp_path / "alertmanager.yml"
    config.write_text('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
    log_path = tmp_path / "alertmanager.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [
                ALERTMANAGER,
                f"--config.file={config}",
                f"--storage.path={tmp_path / 'am-data'}",
                "--web.listen-address=127.0.0.1:0",
                "--cluster.listen-address=",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        listening = re.compile(r'msg="Listening on" address=127\.0\.0\.1:(\d+)')

        def port():
            if proc.poll() is not None:
                pytest.fail(f"alertmanager exited: {log_path.read_text()[-2000:]}")
            found = listening.search(log_path.read_text(errors="replace"))
            return found and found.group(1)

        url = f"http://127.0.0.1:{wait_for(port, 'alertmanager to listen')}"
        wait_for(lambda: _alertmanager_ready(url), "alertmanager to be ready")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _alertmanager_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def am_alerts(url: str, alertname: str, model: str) -> list[dict]:
    """The active alerts named ``alertname`` of ``model`` in the Alertmanager at ``url``."""
    query = urllib.parse.urlencode(
        [("active", "true"), ("filter", f'alertname="{alertname}"'), ("filter", f'model="{model}"')]
    )
    with urllib.request.urlopen(f"{url}/api/v2/alerts?{query}", timeout=10) as response:
        return json.loads(response.read())
