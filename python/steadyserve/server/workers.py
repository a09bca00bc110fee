"""Several server processes on one port: the way past one Python thread's GIL.

``steadyserve serve --workers N`` starts N ordinary server processes on the same
gRPC and HTTP ports and supervises them: one ready line once every worker is up,
SIGTERM / SIGINT forwarded to each (each drains its in-flight requests), exit 0
when all exited 0. How the ports are shared depends on the frontend:

- native: this supervisor makes the listening sockets itself and hands each worker
  its own pair (``--grpc-fd`` / ``--http-fd``): per port, one SO_REUSEPORT group of
  N sockets that only this supervisor made, since the port is first checked free
  with a bind without SO_REUSEPORT (``ports.listen_group``). One socket per worker
  rather than one socket shared by all: on a shared socket the kernel hands each new
  connection to the first worker waiting in accept, so an idle server put every
  connection on one worker (measured: 24 connections, 24 on one worker; at once, 20
  of 24), while a group spreads them by hash (11 / 13). Once every worker is up the
  supervisor closes its copies.
- grpcio: grpc.aio cannot serve a socket it is handed, so each worker binds the
  ports with SO_REUSEPORT and the kernel spreads new connections across them. The
  supervisor first checks that the ports are free (bound without SO_REUSEPORT: a
  stranger listening there is an error, not company), and resolves port 0 once with
  a bound, never listening, SO_REUSEPORT placeholder that keeps the port until the
  workers hold it.

Each worker has its own batcher, statistics, circuit breakers and drift windows.
So that a scrape or a report describes the whole server whichever worker it
reaches, the supervisor makes a private directory (mode 0700, removed at exit) and
gives each worker its index and that directory (``--worker-index I --worker-dir
DIR``); each worker serves its own figures on ``DIR/worker-I.sock`` and the one that
answers /metrics, ModelStatistics, drift or failover asks the others and merges
(``siblings.py``, ``monitoring/aggregate.py``).
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from .announce import parse_start_line, start_line
from .ports import check_free, hostport, listen_group, reuseport_socket


def reserve_port(host: str, port: int, what: str) -> socket.socket:
    """A bound (never listening: it takes no connections) SO_REUSEPORT socket on
    host:port, once the port is checked free; port 0 picks one."""
    check_free(host, port, what)
    return reuseport_socket(host, port, what)


def run_workers(
    count: int,
    worker_argv,
    host: str,
    grpc_port: int,
    http_port: int,
    *,
    hand_sockets: bool,
    ready_timeout_s: float = 300.0,
) -> int:
    """Start ``count`` workers, print one ready line, forward stop signals, return the
    exit code. ``worker_argv(index, worker_dir, grpc_port, http_port, fds)`` gives each
    one's command line; ``worker_dir`` is the private directory of this run's workers'
    sockets; ``fds`` is the worker's (gRPC, HTTP) listening sockets with
    ``hand_sockets`` (native), else None (each worker binds with SO_REUSEPORT itself)."""
    worker_dir = tempfile.mkdtemp(prefix="steadyserve-workers-")  # mode 0700
    try:
        return _run_workers(
            count,
            lambda index, *ports: worker_argv(index, worker_dir, *ports),
            host,
            grpc_port,
            http_port,
            hand_sockets=hand_sockets,
            ready_timeout_s=ready_timeout_s,
        )
    finally:
        shutil.rmtree(worker_dir, ignore_errors=True)


def _run_workers(
    count: int,
    worker_argv,
    host: str,
    grpc_port: int,
    http_port: int,
    *,
    hand_sockets: bool,
    ready_timeout_s: float,
) -> int:
    held: list[socket.socket] = []  # the supervisor's sockets, closed once workers hold them
    try:
        if hand_sockets:
            grpc_group = listen_group(host, grpc_port, count, "gRPC")
            held += grpc_group
            http_group = listen_group(host, http_port, count, "HTTP")
            held += http_group
            pairs = [(g.fileno(), h.fileno()) for g, h in zip(grpc_group, http_group, strict=True)]
            grpc_port, http_port = grpc_group[0].getsockname()[1], http_group[0].getsockname()[1]
        else:
            for port, what in ((grpc_port, "gRPC"), (http_port, "HTTP")):
                held.append(reserve_port(host, port, what))
            grpc_port, http_port = (sock.getsockname()[1] for sock in held)
            pairs = [None] * count
    except BaseException:
        for sock in held:
            sock.close()
        raise
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
    workers_ready: list[bool] = []  # what each worker's start-up line said
    banner: list[str] = []

    def relay(proc: subprocess.Popen, index: int) -> None:
        # Worker stdout: the first worker's banner is shown once; ready lines are counted.
        for line in proc.stdout:
            started = parse_start_line(line)
            if started is not None:
                workers_ready.append(started[0])
                ready.release()
                continue
            if index == 0:
                banner.append(line)

    try:
        for index in range(count):
            fds = pairs[index]
            proc = subprocess.Popen(
                worker_argv(index, grpc_port, http_port, fds),
                stdout=subprocess.PIPE,
                text=True,
                pass_fds=fds or (),
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
        for sock in held:
            sock.close()
    # The same ready line as one server prints (clients and tests parse it exactly).
    print(
        start_line(all(workers_ready), hostport(host, grpc_port), hostport(host, http_port)),
        flush=True,
    )
    how = "listening sockets of the supervisor" if hand_sockets else "SO_REUSEPORT"
    print(f"\n  workers: {count} processes on these ports ({how})", flush=True)
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
