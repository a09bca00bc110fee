"""Several server processes on one port: the way past one Python thread's GIL.

``steadyserve serve --workers N`` starts N ordinary server processes on the same
gRPC and HTTP ports (SO_REUSEPORT: the kernel spreads new connections across
them) and supervises them: one ready line once every worker is up, SIGTERM /
SIGINT forwarded to each (each drains its in-flight requests), exit 0 when all
exited 0. Port 0 is resolved here, once, by binding a placeholder socket with
SO_REUSEPORT (bound, never listening: it takes no connections) that keeps the
port reserved until the workers hold it.

Each worker has its own batcher, statistics and metrics: a Prometheus scrape
reaches one worker at random, so scrape each worker's own port or sum in the
query (``sum by (model) (...)``).
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import sys
import threading
import time

READY_PREFIX = "steadyserve ready "


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """A bound (not listening) SO_REUSEPORT socket on host:port; port 0 picks one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock, sock.getsockname()[1]


def run_workers(
    count: int,
    worker_argv,
    host: str,
    grpc_port: int,
    http_port: int,
    ready_timeout_s: float = 300.0,
) -> int:
    """Start ``count`` workers (``worker_argv(grpc_port, http_port)`` gives each one's
    command line), print one ready line, forward stop signals, return the exit code."""
    grpc_sock, grpc_port = reserve_port(host, grpc_port)
    http_sock, http_port = reserve_port(host, http_port)
    stop = threading.Event()
    procs: list[subprocess.Popen] = []

    signalled: set[int] = set()

    def forward(signum, frame):
        stop.set()
        for proc in procs:  # once each: a second SIGTERM would only be logged as a repeat
            if proc.poll() is None and proc.pid not in signalled:
                signalled.add(proc.pid)
                proc.send_signal(signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    ready = threading.Semaphore(0)
    banner: list[str] = []

    def relay(proc: subprocess.Popen, index: int) -> None:
        # Worker stdout: the first worker's banner is shown once; ready lines are counted.
        for line in proc.stdout:
            if line.startswith(READY_PREFIX):
                ready.release()
                continue
            if index == 0:
                banner.append(line)

    try:
        for index in range(count):
            proc = subprocess.Popen(
                worker_argv(grpc_port, http_port),
                stdout=subprocess.PIPE,
                text=True,
                preexec_fn=_die_with_parent,
            )
            procs.append(proc)
            threading.Thread(target=relay, args=(proc, index), daemon=True).start()
        deadline = time.monotonic() + ready_timeout_s
        for _ in range(count):
            while not ready.acquire(timeout=0.2):
                if stop.is_set() or any(p.poll() is not None for p in procs):
                    forward(signal.SIGTERM, None)
                    return _wait_all(procs, failed_start=not stop.is_set())
                if time.monotonic() > deadline:
                    print(
                        f"steadyserve: workers not ready after {ready_timeout_s:g} s",
                        file=sys.stderr,
                    )
                    forward(signal.SIGTERM, None)
                    _wait_all(procs)
                    return 1
    finally:
        grpc_sock.close()
        http_sock.close()
    # The same ready line as one server prints (clients and tests parse it exactly).
    print(f"{READY_PREFIX}grpc={host}:{grpc_port} http={host}:{http_port}", flush=True)
    print(f"\n  workers: {count} processes on these ports (SO_REUSEPORT)", flush=True)
    time.sleep(0.1)  # let the first worker's banner arrive
    sys.stdout.write("".join(banner))
    sys.stdout.flush()
    while not stop.is_set() and all(p.poll() is None for p in procs):
        stop.wait(0.5)
    forward(signal.SIGTERM, None)  # one worker died: stop the others too
    return _wait_all(procs)


def _die_with_parent() -> None:
    """In the worker, before exec: SIGTERM it if the supervisor dies (Linux), so a
    killed supervisor never leaves workers holding the ports."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _wait_all(procs: list[subprocess.Popen], failed_start: bool = False) -> int:
    codes = []
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=120)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        codes.append(proc.returncode)
    return 1 if failed_start or any(codes) else 0
