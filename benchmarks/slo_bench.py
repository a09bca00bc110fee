"""Latency SLOs under overload: enforcement on vs off, in-process and over gRPC.

Three experiments (a fourth, below, compares the frontends), each comparing **on** (the
SLO model: ``slo.latency_ms`` 20, ``slo.margin_ms`` 6, admission control, deadlines; over
gRPC with ``--frontend grpcio`` also the server flag ``--max-pending-rpcs 8``) with **off**
(the same ONNX file with plain FIFO batching: ``slo.admission_control: false``, no SLO, no
deadline, no transport limits) in the same run, interleaved:

1. **in-process, open loop** - Poisson arrivals from an asyncio driver into
   ``Runtime.infer_async`` at 0.5x .. 3x the measured capacity. The demo model runs in
   ~20 us, far less than Python spends per request, so to make the *model* the
   bottleneck each batch gets 6 ms more (the ``slow`` fault, a sleep: a heavier model
   that costs no CPU; max_batch_size 8). Capacity = a closed loop with 256 requests in
   flight on "off".
2. **gRPC, open loop** - the same sweep against ``steadyserve serve`` on the plain demo
   model, where the Python transport (~1 ms of server CPU per request), not the model,
   is the bottleneck. Poisson arrivals from a small HTTP/2 client (below) that costs
   ~0.1 ms of CPU per request; "on" requests carry a 20 ms gRPC deadline
   (``grpc-timeout``), "off" requests none. Capacity = closed loop, 64 in flight, "off".
3. **gRPC, closed loop** - 128 clients each keeping one request in flight, every request
   with a 25 ms gRPC deadline (the load under which a Triton-based server answered 1% of
   its capacity in time), on vs off.
4. **frontend overload** (``frontend_overload``, run by ``grpc_load.py --parts overload``
   for each ``--frontend``) - h2load, 128 connections sending open loop at a multiple of
   the frontend's own c=64 throughput, 25 ms gRPC deadlines, with this script's HTTP/2
   client as a probe beside it (h2load cannot see a call's grpc-status).

Experiments 2 and 3 run ``--frontend grpcio`` by default (``--frontend native`` to change
it): this script's Python client offers ~10k req/s at most, below the native frontend's
capacity, so only h2load (experiment 4) overloads that one.

Figures per point: offered and answered req/s, **goodput** (answers within the SLO per
second), **attainment** (share of *answered* requests within the SLO; refused ones are
not answered), share **refused** (any error status), p50/p99 latency of answered
requests and p50/p99 of refusals, measured by the client from the *scheduled* send time
for in-process runs and from the send time over gRPC (the HTTP/2 client records how far
it fell behind its schedule: ``send_lag_p99_ms``). Each point is repeated (default 3);
tables show the median and [min-max]. Server-side refusal reasons come from /metrics
(``steadyserve_refused_requests_total``); refusals that gRPC's core made before the
server saw the call are the client's refusals minus the server's.

    python benchmarks/slo_bench.py                     # everything, ~5 min
    python benchmarks/slo_bench.py --only grpc --repeats 1 --duration 2

Results: ``benchmarks/results/slo_<date>.json`` and ``slo_<date>.png``.

The HTTP/2 load generator (``--_load``, run as a subprocess) speaks just enough HTTP/2
for unary gRPC: one pre-serialized request (tritonclient's ``ModelInferRequest``), HPACK
literals for the request headers, big flow-control windows, PING/SETTINGS acks. A call
is *answered* when its response carried a DATA frame (a gRPC message), *refused* when
it ended with trailers only (an error status) or was reset. It never decodes the
server's HPACK, so the status code of a refusal is not known client-side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from common import (
    RESULTS_DIR,
    fmt_spread,
    h2load_cmd,
    loadavg,
    machine_info,
    md_table,
    parse_h2load,
    read_h2load_log,
    spread,
    stamp,
)

SLO_MS = 20.0
CLOSED_DEADLINE_MS = 25.0
FACTORS = (0.5, 1.0, 1.5, 2.0, 3.0)
INPUT, OUTPUT, N_FEATURES = "features", "probabilities", 32
ON_MODEL, OFF_MODEL = "tabular_slo", "tabular_fifo"
MARGIN_MS = float(os.environ.get("SLO_BENCH_MARGIN_MS", "6"))  # slo.margin_ms of the "on" model
PENDING_RPCS = 8  # --max-pending-rpcs of the "on" server
INPROC_SLOW_MS = float(
    os.environ.get("SLO_BENCH_SLOW_MS", "6")
)  # added to every in-process batch (the "slow" fault)
INPROC_MAX_BATCH = 8
METHOD = "/inference.GRPCInferenceService/ModelInfer"
READY_RE = re.compile(r"steadyserve ready grpc=(\S+) http=(\S+)")


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- repository


def build_repo(root: Path, max_batch_size: int = 64, margin_ms: float = MARGIN_MS) -> Path:
    """The demo repository plus two copies of ``tabular``: the SLO model and plain FIFO."""
    import yaml

    from steadyserve.demo import build_demo_repository

    build_demo_repository(root)
    onnx_file = root / "tabular" / "1" / "model.onnx"
    configs = {
        ON_MODEL: {"latency_ms": SLO_MS, "margin_ms": margin_ms, "admission_control": True},
        OFF_MODEL: {"admission_control": False},
    }
    for name, slo in configs.items():
        (root / name / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy(onnx_file, root / name / "1" / "model.onnx")
        config = {
            "max_batch_size": max_batch_size,
            "batching": {"max_queue_delay_us": 0, "max_queue_size": 1024},
            "slo": slo,
        }
        (root / name / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


# --------------------------------------------------------------------------- summaries


def summarize(
    sent: np.ndarray, done: np.ndarray, ok: np.ndarray, duration: float, slo_ms: float
) -> dict:
    """Figures of one run from per-request send time, answer time (s) and success flag.

    Requests never answered (``done`` NaN) count as refused-by-silence: not answered.
    """
    n = int(sent.size)
    answered_mask = ok & ~np.isnan(done)
    latency_ms = (done - sent) * 1000.0
    good = answered_mask & (latency_ms <= slo_ms)
    refused_mask = ~ok & ~np.isnan(done)

    def pct(mask, p):
        return round(float(np.percentile(latency_ms[mask], p)), 3) if mask.any() else None

    answered = int(answered_mask.sum())
    return {
        "requests": n,
        "offered_per_s": round(n / duration, 1),
        "answered": answered,
        "answered_per_s": round(answered / duration, 1),
        "goodput_per_s": round(int(good.sum()) / duration, 1),
        "attainment": round(int(good.sum()) / answered, 4) if answered else None,
        "refused": int(refused_mask.sum()),
        "refused_share": round(int(refused_mask.sum()) / n, 4) if n else None,
        "unanswered": int(np.isnan(done).sum()),
        "p50_ms": pct(answered_mask, 50),
        "p99_ms": pct(answered_mask, 99),
        "refusal_p50_ms": pct(refused_mask, 50),
        "refusal_p99_ms": pct(refused_mask, 99),
    }


def poisson_arrivals(rate: float, duration: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(rate * duration * 1.3) + 16
    t = np.cumsum(rng.exponential(1.0 / rate, n))
    return t[t < duration]


# --------------------------------------------------------------------------- HTTP/2 client

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST, _SETTINGS, _PING, _GOAWAY, _WINDOW = 0, 1, 3, 4, 6, 7, 8
_END_STREAM, _END_HEADERS, _ACK = 0x1, 0x4, 0x1


def _hpack_str(value: bytes) -> bytes:
    if len(value) >= 127:
        raise ValueError("header too long for this minimal encoder")
    return bytes([len(value)]) + value


def _header_block(authority: str, timeout_ms: float | None) -> bytes:
    """HPACK (no Huffman, no indexing) for POST http://authority/METHOD, gRPC headers."""
    block = b"\x83\x86"  # :method POST, :scheme http (static table)
    block += b"\x04" + _hpack_str(METHOD.encode())  # :path, literal value
    block += b"\x01" + _hpack_str(authority.encode())  # :authority
    block += b"\x0f\x10" + _hpack_str(b"application/grpc")  # content-type (index 31)
    block += b"\x00" + _hpack_str(b"te") + _hpack_str(b"trailers")
    if timeout_ms:
        block += (
            b"\x00"
            + _hpack_str(b"grpc-timeout")
            + _hpack_str(f"{int(timeout_ms * 1000)}u".encode())
        )
    return block


def _frame(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, ftype, flags, stream) + payload


def request_message(rows: int = 1, model: str = ON_MODEL, seed: int = 0) -> bytes:
    """A serialized ModelInferRequest (tritonclient's messages; never steadyserve._proto)."""
    from tritonclient.grpc import service_pb2 as pb

    x = np.random.default_rng(seed).standard_normal((rows, N_FEATURES)).astype("<f4")
    req = pb.ModelInferRequest(model_name=model)
    tensor = req.inputs.add()
    tensor.name, tensor.datatype = INPUT, "FP32"
    tensor.shape.extend(x.shape)
    req.raw_input_contents.append(x.tobytes())
    return req.SerializeToString()


class _Conn:
    """One HTTP/2 connection carrying unary gRPC calls."""

    def __init__(self, host: str, port: int, index: int):
        self.index = index
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        big = 2**31 - 1
        settings = struct.pack(">HI", 0x4, big) + struct.pack(">HI", 0x3, big)
        self.sock.sendall(
            _PREFACE
            + _frame(_SETTINGS, 0, 0, settings)
            + _frame(_WINDOW, 0, 0, struct.pack(">I", big - 65535))
        )
        self.sock.setblocking(False)
        self.inbuf = bytearray()
        self.out = bytearray()
        self.next_stream = 1
        self.consumed = 0
        self.resets: dict[int, int] = {}  # RST_STREAM error code -> count

    def call(self, headers: bytes, body: bytes) -> int:
        stream = self.next_stream
        self.next_stream += 2
        self.out += _frame(_HEADERS, _END_HEADERS, stream, headers)
        self.out += _frame(_DATA, _END_STREAM, stream, body)
        return stream

    def flush(self) -> None:
        while self.out:
            try:
                sent = self.sock.send(self.out)
            except BlockingIOError:
                return
            del self.out[:sent]

    def receive(self, on_data, on_end) -> None:
        try:
            chunk = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buf = self.inbuf
        buf += chunk
        pos, end = 0, len(buf)
        while end - pos >= 9:
            hi, lo, ftype, flags, stream = struct.unpack_from(">BHBBI", buf, pos)
            length = (hi << 16) | lo
            if end - pos - 9 < length:
                break
            stream &= 0x7FFFFFFF
            if ftype == _DATA:
                if length:
                    on_data(self.index, stream)
                    self.consumed += length
                if flags & _END_STREAM:
                    on_end(self.index, stream)
            elif ftype == _HEADERS and flags & _END_STREAM:
                on_end(self.index, stream)
            elif ftype == _RST:
                code = struct.unpack_from(">I", buf, pos + 9)[0] if length >= 4 else -1
                self.resets[code] = self.resets.get(code, 0) + 1
                on_end(self.index, stream)
            elif ftype == _SETTINGS and not flags & _ACK:
                self.out += _frame(_SETTINGS, _ACK, 0, b"")
            elif ftype == _PING and not flags & _ACK:
                self.out += _frame(_PING, _ACK, 0, bytes(buf[pos + 9 : pos + 9 + length]))
            elif ftype == _GOAWAY:
                raise ConnectionError("the server sent GOAWAY")
            pos += 9 + length
        del buf[:pos]
        if self.consumed > 1 << 28:
            self.out += _frame(_WINDOW, 0, 0, struct.pack(">I", self.consumed))
            self.consumed = 0


def run_load(
    target: str,
    model: str,
    *,
    rate: float = 0.0,
    closed: int = 0,
    duration: float,
    deadline_ms: float | None,
    slo_ms: float,
    connections: int = 8,
    seed: int = 0,
    drain_s: float = 10.0,
) -> dict:
    """Open loop (Poisson at ``rate``/s) or closed loop (``closed`` calls in flight)."""
    host, port = target.rsplit(":", 1)
    body = struct.pack(">BI", 0, 0)  # placeholder, replaced below
    message = request_message(model=model, seed=seed)
    body = struct.pack(">BI", 0, len(message)) + message
    headers = _header_block(target, deadline_ms)
    conns = [_Conn(host, int(port), i) for i in range(connections)]
    selector = selectors.DefaultSelector()
    for c in conns:
        selector.register(c.sock, selectors.EVENT_READ, c)

    arrivals = poisson_arrivals(rate, duration, seed) if rate else np.zeros(0)
    n_max = arrivals.size if rate else int(closed * duration * 2000) + closed
    sent = np.full(n_max, np.nan)
    sched = np.full(n_max, np.nan)
    done = np.full(n_max, np.nan)
    ok = np.zeros(n_max, bool)
    inflight: dict[tuple[int, int], int] = {}
    count = 0
    clock = time.perf_counter
    t0 = clock() + 0.05
    t_end = t0 + duration

    def issue(conn_index: int, when: float) -> None:
        nonlocal count
        if count >= n_max:
            return
        i = count
        count += 1
        stream = conns[conn_index].call(headers, body)
        inflight[(conn_index, stream)] = i
        sched[i] = when
        sent[i] = clock()

    def on_data(conn_index: int, stream: int) -> None:
        i = inflight.get((conn_index, stream))
        if i is not None:
            ok[i] = True

    def on_end(conn_index: int, stream: int) -> None:
        i = inflight.pop((conn_index, stream), None)
        if i is None:
            return
        now = clock()
        done[i] = now
        if closed and now < t_end:
            issue(conn_index, now)

    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    if closed:
        for k in range(closed):
            issue(k % connections, t0)
    k = 0
    give_up = t_end + (deadline_ms / 1000.0 if deadline_ms else drain_s) + 1.0
    while True:
        now = clock()
        if rate:
            while k < arrivals.size and t0 + arrivals[k] <= now:
                issue(k % connections, t0 + arrivals[k])
                k += 1
        for c in conns:
            if c.out:
                c.flush()
        if now > give_up or (now > t_end and not inflight and (not rate or k >= arrivals.size)):
            break
        wake = t0 + arrivals[k] if rate and k < arrivals.size else now + 0.01
        for key, _ in selector.select(max(0.0, wake - clock())):
            key.data.receive(on_data, on_end)
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    for c in conns:
        c.sock.close()
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    sl = slice(0, count)
    out = summarize(sent[sl], done[sl], ok[sl], duration, slo_ms)
    lag = (sent[sl] - sched[sl]) * 1000.0
    out["send_lag_p99_ms"] = round(float(np.percentile(lag, 99)), 3) if count else None
    out["client_cpu_us_per_req"] = round(cpu / max(1, count) * 1e6, 1)
    resets: dict[str, int] = {}
    for c in conns:
        for code, n in c.resets.items():
            resets[str(code)] = resets.get(str(code), 0) + n
    out["stream_resets_by_h2_code"] = resets  # e.g. 7 REFUSED_STREAM, 8 CANCEL
    return out


def load_subprocess(**kwargs) -> dict:
    """run_load in a child process (its own GIL and CPU accounting)."""
    return load_result(load_start(**kwargs), kwargs["duration"])


def load_start(**kwargs) -> subprocess.Popen:
    """run_load in a child process, started; ``load_result`` waits for its figures."""
    return subprocess.Popen(
        [sys.executable, __file__, "--_load", json.dumps(kwargs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def load_result(proc: subprocess.Popen, duration: float) -> dict:
    try:
        out, err = proc.communicate(timeout=duration + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


# --------------------------------------------------------------------------- server


class Server:
    def __init__(self, repo: Path, log_path: Path, *flags: str):
        cmd = [
            sys.executable,
            "-m",
            "steadyserve",
            "serve",
            str(repo),
            "--host",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--log-level",
            "warning",
            *flags,
        ]
        self.flags = list(flags)
        with open(log_path, "w") as stderr:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True)
        deadline = time.monotonic() + 60
        while True:
            line = self.proc.stdout.readline()
            match = READY_RE.search(line or "")
            if match:
                self.grpc, self.http = match.group(1), match.group(2)
                break
            if not line and self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start; see {log_path}")

    def metrics(self) -> dict[str, float]:
        return scrape(self.http)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def scrape(http: str) -> dict[str, float]:
    """{"model:requests:outcome" or "model:refused:reason": count} from the server's /metrics."""
    text = urllib.request.urlopen(f"http://{http}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(
            r"(steadyserve_refused_requests_total|steadyserve_requests_total)\{(.*)\} (\S+)$",
            line,
        )
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            what = labels.get("reason") or labels.get("outcome")
            out[f"{labels['model']}:{m.group(1).split('_')[1]}:{what}"] = float(m.group(3))
    return out


def metric_delta(before: dict, after: dict, model: str) -> dict:
    return {
        k.split(":", 1)[1]: after[k] - before.get(k, 0.0)
        for k in after
        if k.startswith(model + ":") and after[k] - before.get(k, 0.0)
    }


# --------------------------------------------------------------------------- experiments


def grpc_experiments(args, tmp: Path) -> dict:
    repo = build_repo(tmp / "repo")
    # --max-pending-rpcs is grpc.aio's; the native frontend sheds overload in the core.
    on_flags = ["--max-pending-rpcs", str(PENDING_RPCS)] if args.frontend == "grpcio" else []
    frontend = ["--frontend", args.frontend]
    servers = {
        "on": Server(repo, tmp / "server_on.log", *frontend, *on_flags),
        "off": Server(repo, tmp / "server_off.log", *frontend),
    }
    models = {"on": ON_MODEL, "off": OFF_MODEL}
    deadlines = {"on": SLO_MS, "off": None}
    out: dict = {"servers": {m: s.flags for m, s in servers.items()}}
    try:
        for mode, server in servers.items():  # warm-up: connections, latency model
            load_subprocess(
                target=server.grpc,
                model=models[mode],
                rate=300.0,
                duration=1.0,
                deadline_ms=deadlines[mode],
                slo_ms=SLO_MS,
            )
        caps = []
        for r in range(2):
            cap = load_subprocess(
                target=servers["off"].grpc,
                model=OFF_MODEL,
                closed=64,
                duration=args.duration,
                deadline_ms=None,
                slo_ms=SLO_MS,
            )
            caps.append(cap["answered_per_s"])
            log(f"grpc capacity run {r}: {cap['answered_per_s']} req/s (load {loadavg()})")
        capacity = float(np.median(caps))
        out["capacity"] = {
            "req_per_s": capacity,
            "runs": caps,
            "how": "closed loop, 64 in flight, off server",
        }
        points = []
        for factor in args.factors:
            for rep in range(args.repeats):
                order = ("on", "off") if rep % 2 == 0 else ("off", "on")
                for mode in order:
                    server = servers[mode]
                    before = server.metrics()
                    load = loadavg()
                    res = load_subprocess(
                        target=server.grpc,
                        model=models[mode],
                        rate=factor * capacity,
                        duration=args.duration,
                        deadline_ms=deadlines[mode],
                        slo_ms=SLO_MS,
                        seed=rep,
                    )
                    res["server"] = metric_delta(before, server.metrics(), models[mode])
                    res.update(mode=mode, factor=factor, repeat=rep, loadavg=load)
                    points.append(res)
                    log(
                        f"grpc open {mode} {factor}x rep {rep}: goodput {res['goodput_per_s']} "
                        f"attain {res['attainment']} refused {res['refused_share']} "
                        f"p99 {res['p99_ms']} (load {load[0]})"
                    )
        out["open_loop"] = points
        closed = []
        for rep in range(args.repeats):
            for mode in ("on", "off") if rep % 2 == 0 else ("off", "on"):
                server = servers[mode]
                before = server.metrics()
                load = loadavg()
                res = load_subprocess(
                    target=server.grpc,
                    model=models[mode],
                    closed=128,
                    duration=args.duration,
                    deadline_ms=CLOSED_DEADLINE_MS,
                    slo_ms=CLOSED_DEADLINE_MS,
                    seed=rep,
                )
                res["server"] = metric_delta(before, server.metrics(), models[mode])
                res.update(mode=mode, repeat=rep, loadavg=load)
                closed.append(res)
                log(
                    f"grpc closed-128 {mode} rep {rep}: goodput {res['goodput_per_s']} "
                    f"refused {res['refused_share']} refusal p50/p99 {res['refusal_p50_ms']}/"
                    f"{res['refusal_p99_ms']} (load {load[0]})"
                )
        out["closed_loop_128"] = closed
    finally:
        for s in servers.values():
            s.stop()
    return out


async def _inprocess_open(rt, model, rate, duration, deadline_s, seed, x) -> dict:
    from steadyserve.errors import SteadyServeError

    loop = asyncio.get_running_loop()
    arrivals = poisson_arrivals(rate, duration, seed)
    n = arrivals.size
    done = np.full(n, np.nan)
    started = np.full(n, np.nan)
    ok = np.zeros(n, bool)
    t0 = loop.time() + 0.01
    sched = t0 + arrivals

    async def one(i: int) -> None:
        started[i] = loop.time()
        try:
            await rt.infer_async(model, {INPUT: x}, timeout=deadline_s)
            ok[i] = True
        except SteadyServeError:
            pass
        done[i] = loop.time()

    tasks = []
    i = 0
    while i < n:
        now = loop.time()
        while i < n and sched[i] <= now:
            tasks.append(loop.create_task(one(i)))
            i += 1
        if i < n:
            await asyncio.sleep(max(0.0, sched[i] - loop.time()))
    await asyncio.gather(*tasks)
    out = summarize(sched, done, ok, duration, SLO_MS)
    # How late the driver started requests (included in the latencies above).
    out["driver_lag_p99_ms"] = round(float(np.percentile(started - sched, 99)) * 1000, 3)
    return out


async def _inprocess_closed(rt, model, concurrency, duration, x) -> float:
    loop = asyncio.get_running_loop()
    end = loop.time() + duration
    count = 0

    async def worker():
        nonlocal count
        while loop.time() < end:
            await rt.infer_async(model, {INPUT: x})
            count += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / duration


def inprocess_experiments(args, tmp: Path) -> dict:
    import steadyserve

    repo = build_repo(tmp / "repo_inproc", max_batch_size=INPROC_MAX_BATCH)
    x = np.random.default_rng(0).standard_normal((1, N_FEATURES)).astype(np.float32)
    out: dict = {
        "emulated_model": f"demo tabular + {INPROC_SLOW_MS} ms per batch (fault 'slow'), "
        f"max_batch_size {INPROC_MAX_BATCH}"
    }
    rt = steadyserve.Runtime(repo, models=[ON_MODEL, OFF_MODEL], allow_fault_injection=True)
    try:
        for model in (ON_MODEL, OFF_MODEL):
            rt.inject_fault(model, "slow", delay_ms=INPROC_SLOW_MS)
        models = {"on": ON_MODEL, "off": OFF_MODEL}
        deadlines = {"on": SLO_MS / 1000.0, "off": None}

        async def main():
            for mode in ("on", "off"):  # warm-up: teaches the latency model the 4 ms
                await _inprocess_open(rt, models[mode], 200.0, 1.0, deadlines[mode], 99, x)
            caps = []
            for _ in range(2):
                caps.append(await _inprocess_closed(rt, OFF_MODEL, 256, args.duration, x))
                log(f"in-process capacity: {caps[-1]:.0f} req/s (load {loadavg()})")
            capacity = float(np.median(caps))
            points = []
            for factor in args.factors:
                for rep in range(args.repeats):
                    for mode in ("on", "off") if rep % 2 == 0 else ("off", "on"):
                        load = loadavg()
                        res = await _inprocess_open(
                            rt,
                            models[mode],
                            factor * capacity,
                            args.duration,
                            deadlines[mode],
                            rep,
                            x,
                        )
                        res.update(mode=mode, factor=factor, repeat=rep, loadavg=load)
                        points.append(res)
                        log(
                            f"in-process {mode} {factor}x rep {rep}: goodput "
                            f"{res['goodput_per_s']} attain {res['attainment']} refused "
                            f"{res['refused_share']} p99 {res['p99_ms']} (load {load[0]})"
                        )
                        await asyncio.sleep(0.3)  # let the queue of "off" drain
            return capacity, caps, points

        capacity, caps, points = asyncio.run(main())
        out["capacity"] = {
            "req_per_s": capacity,
            "runs": caps,
            "how": "closed loop, 256 in flight, off model",
        }
        out["open_loop"] = points
        out["slo_report_on"] = rt.get_model(ON_MODEL).slo_report()
    finally:
        rt.close()
    return out


# --------------------------------------------------------------------------- frontend overload


def frontend_overload(
    url: str,
    http: str,
    frame: Path,
    capacity: float,
    level: float | str,
    *,
    duration: float,
    workdir: Path,
    model: str = "tabular",
    clients: int = 128,
    streams: int = 32,
    deadline_ms: float = CLOSED_DEADLINE_MS,
    h2load_threads: int = 2,
    probe_rate: float = 400.0,
    tight_rate: float = 200.0,
    tight_deadline_ms: float = 1.0,
    door_rate: float = 200.0,
    seed: int = 0,
) -> dict:
    """Overload of one server: h2load with `clients` connections, each sending at
    ``level * capacity / clients`` requests/s (open loop, up to `streams` in flight per
    connection; ``level="max"``: as fast as h2load can), every request with a
    ``grpc-timeout`` of `deadline_ms`; beside it a probe (this script's HTTP/2 client,
    Poisson at `probe_rate`/s on 4 connections, same deadline) that sees each call's
    outcome, which h2load cannot: gRPC answers errors with HTTP 200 and h2load's log has
    no trailers. h2load's refusals come in bursts (a connection's reads meet a full
    queue), which the probe may miss; a second probe (`tight_rate`/s) asks for
    `tight_deadline_ms`, less than the queue's wait, so its calls are refused (at the door,
    or expired in the queue): the latency of a refusal under this load.

    Goodput (answers OK within the deadline per second) is bounded from the two sides that
    are known: the server's success count (over the run, less the probe's answers) and
    h2load's per-request latencies -- at least ``min(success, done) - late`` and at most
    ``min(success, on time)`` calls were answered OK in time. Refusals: the server's own
    counts by reason (``steadyserve_refused_requests_total``); calls that gRPC's core
    refused before the server saw them (grpcio) are h2load's done minus the server's
    answers and refusals. Refusal latency: the probe's, measured from its send time.
    """
    rps = None if level == "max" else float(level) * capacity / clients
    log = workdir / "overload.log"
    log.unlink(missing_ok=True)
    cmd = h2load_cmd(
        url, frame, clients, streams, duration, 0.0, log,
        headers=(f"grpc-timeout: {round(deadline_ms)}m",), rps=rps,
        threads=h2load_threads,
    )  # fmt: skip
    before = scrape(http)
    load0 = loadavg()
    h2 = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # The door probe: h2load again (a C client, so its timings are the server's and the
    # kernel's, not a starved Python loop's), one connection at `door_rate`/s, each call
    # with a grpc-timeout of 1 us - already past when it arrives, so every one is refused
    # DEADLINE_EXCEEDED at the door; its latencies are refusal latencies under the load.
    door_log = workdir / "door.log"
    door_log.unlink(missing_ok=True)
    door_cmd = h2load_cmd(
        url, frame, 1, 1, duration, 0.0, door_log, headers=("grpc-timeout: 1u",),
        rps=door_rate, threads=1,
    )  # fmt: skip
    door = subprocess.Popen(door_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    probe_s = max(0.5, duration - 1.0)
    probes = {
        name: load_start(
            target=url, model=model, rate=rate, duration=probe_s, deadline_ms=d,
            slo_ms=d, connections=4, seed=seed + i,
        )
        for i, (name, rate, d) in enumerate(
            (("probe", probe_rate, deadline_ms), ("tight_probe", tight_rate, tight_deadline_ms))
        )
        if rate
    }  # fmt: skip
    try:
        results = {name: load_result(proc, probe_s) for name, proc in probes.items()}
    finally:
        out, _ = h2.communicate(timeout=duration + 60)
        door_out, _ = door.communicate(timeout=duration + 60)
    probe = results["probe"]
    door_ms = read_h2load_log(door_log)[:, 2] / 1000.0 if door_log.exists() else np.zeros(0)
    door_probe = {
        "calls": int(door_ms.size),
        "refusal_p50_ms": round(float(np.percentile(door_ms, 50)), 3) if door_ms.size else None,
        "refusal_p99_ms": round(float(np.percentile(door_ms, 99)), 3) if door_ms.size else None,
        "h2load": parse_h2load(door_out),
    }
    time.sleep(0.3)  # the last answers and refusals reach the counters
    delta = metric_delta(before, scrape(http), model)
    if h2.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({h2.returncode}):\n{out[-3000:]}")
    h = parse_h2load(out)
    reqs = h.get("requests", {})
    done, started = reqs.get("done", 0), reqs.get("started", 0)
    lat_ms = read_h2load_log(log)[:, 2] / 1000.0
    late = int((lat_ms > deadline_ms).sum())
    on_time = int(lat_ms.size - late)
    success = max(0.0, delta.get("requests:success", 0.0)
                  - sum(r["answered"] for r in results.values()))  # fmt: skip
    refused = {k.split(":", 1)[1]: v for k, v in delta.items() if k.startswith("refused:")}
    errors = {
        k.split(":", 1)[1]: v
        for k, v in delta.items()
        if k.startswith("requests:") and k != "requests:success"
    }
    good_lo = max(0.0, min(success, done) - late)
    good_hi = min(success, on_time)
    pct = {p: round(float(np.percentile(lat_ms, p)), 3) for p in (50, 99)} if lat_ms.size else {}
    return {
        "level": level,
        "offered_target_per_s": round(rps * clients, 1) if rps else None,
        "offered_per_s": round(started / duration, 1),
        "done": done,
        "h2load": h,
        "h2load_latency_p50_ms": pct.get(50),
        "h2load_latency_p99_ms": pct.get(99),
        "late": late,
        "server_success": success,
        "server_errors_by_status": errors,
        "server_refused_by_reason": refused,
        # gRPC's core answered these itself (DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED)
        "refused_before_server": max(0.0, done - success - sum(errors.values())),
        "answered_ok_per_s": round(min(success, done) / duration, 1),
        "goodput_per_s": round(good_lo / duration, 1),
        "goodput_upper_per_s": round(good_hi / duration, 1),
        "goodput_vs_capacity": round(good_lo / duration / capacity, 4) if capacity else None,
        "refused_share": round(1.0 - min(success, done) / done, 4) if done else None,
        "probe": probe,
        "tight_probe": results.get("tight_probe"),
        "door_probe": door_probe,
        # every door call must have been refused at the door (deadline passed on arrival)
        "door_refused_by_server": delta.get("refused:deadline_passed", 0.0),
        "loadavg_before": load0,
        "loadavg_after": loadavg(),
        "command": " ".join(cmd),
    }


def overload_table(points: list[dict], capacity: dict[str, float]) -> str:
    """Markdown: one row per (server, level), median [min-max] over repeats."""
    rows = []
    for name in dict.fromkeys(p["server"] for p in points):
        for level in dict.fromkeys(p["level"] for p in points if p["server"] == name):
            sel = [p for p in points if p["server"] == name and p["level"] == level]

            def sp(f, sel=sel):
                vals = [v for v in (f(p) for p in sel) if v is not None]
                return spread(vals) if vals else None

            cap = capacity[name]
            rows.append([
                name,
                f"{level:g}x" if level != "max" else "max",
                f"{cap:.0f}",
                fmt_spread(sp(lambda p: p["offered_per_s"])),
                fmt_spread(sp(lambda p: p["answered_ok_per_s"])),
                fmt_spread(sp(lambda p: p["goodput_per_s"])),
                fmt_spread(sp(lambda p: p["goodput_vs_capacity"]), ".0%"),
                fmt_spread(sp(lambda p: p["refused_share"]), ".1%"),
                fmt_spread(sp(lambda p: p["probe"]["refusal_p50_ms"]), ".2f"),
                fmt_spread(sp(lambda p: p["probe"]["refusal_p99_ms"]), ".2f"),
                fmt_spread(sp(lambda p: p["probe"]["attainment"]), ".1%"),
                fmt_spread(sp(lambda p: (p.get("tight_probe") or {}).get("refusal_p50_ms")),
                           ".2f"),
                fmt_spread(sp(lambda p: (p.get("tight_probe") or {}).get("refused_share")),
                           ".0%"),
                fmt_spread(sp(lambda p: (p.get("door_probe") or {}).get("refusal_p50_ms")),
                           ".3f"),
                fmt_spread(sp(lambda p: p["h2load_latency_p50_ms"]), ".2f"),
            ])  # fmt: skip
    return md_table(
        [
            "server",
            "offered",
            "capacity req/s",
            "offered req/s",
            "answered OK req/s",
            "goodput req/s (lower bound)",
            "goodput / capacity",
            "refused",
            "refusal p50 ms (probe)",
            "refusal p99 ms (probe)",
            "probe answers in time",
            "1 ms probe: refusal p50 ms",
            "1 ms probe refused",
            "door probe (h2load, 1 us deadline): refusal p50 ms",
            "h2load p50 ms (all)",
        ],  # fmt: skip
        rows,
        "ll" + "r" * 13,
    )


# --------------------------------------------------------------------------- report


KEYS = ("goodput_per_s", "attainment", "refused_share", "p50_ms", "p99_ms")


def aggregate(points: list[dict], capacity: float) -> list[dict]:
    rows = []
    for factor in sorted({p["factor"] for p in points}):
        for mode in ("on", "off"):
            sel = [p for p in points if p["factor"] == factor and p["mode"] == mode]
            row = {"factor": factor, "mode": mode, "offered_per_s": round(factor * capacity, 1)}
            for key in KEYS:
                vals = [p[key] for p in sel if p[key] is not None]
                row[key] = spread(vals) if vals else None
            row["goodput_vs_capacity"] = spread([p["goodput_per_s"] / capacity for p in sel])
            row["loadavg_1m"] = spread([p["loadavg"][0] for p in sel])
            rows.append(row)
    return rows


def _fmt(s, scale=1.0, digits=0) -> str:
    if not s:
        return "-"
    med, lo, hi = (f"{s[k] * scale:.{digits}f}" for k in ("median", "min", "max"))
    return f"{med} [{lo}-{hi}]"


def table(rows: list[dict]) -> str:
    lines = [
        "| load | mode | offered req/s | goodput req/s | goodput / capacity "
        "| attainment of answered | refused | p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['factor']:g}x | {r['mode']} | {r['offered_per_s']:.0f} | "
            f"{_fmt(r['goodput_per_s'])} | {_fmt(r['goodput_vs_capacity'], 100)} % | "
            f"{_fmt(r['attainment'], 100, 1)} % | {_fmt(r['refused_share'], 100)} % | "
            f"{_fmt(r['p50_ms'], 1, 1)} | {_fmt(r['p99_ms'], 1, 1)} |"
        )
    return "\n".join(lines)


def closed_table(points: list[dict], capacity: float) -> str:
    lines = [
        "| mode | goodput req/s | goodput / capacity | refused | answered p99 ms "
        "| refusal p50 ms | refusal p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for mode in ("on", "off"):
        sel = [p for p in points if p["mode"] == mode]

        def sp(key, sel=sel):
            vals = [p[key] for p in sel if p[key] is not None]
            return spread(vals) if vals else None

        lines.append(
            f"| {mode} | {_fmt(sp('goodput_per_s'))} | "
            f"{_fmt(spread([p['goodput_per_s'] / capacity for p in sel]), 100)} % | "
            f"{_fmt(sp('refused_share'), 100)} % | {_fmt(sp('p99_ms'), 1, 1)} | "
            f"{_fmt(sp('refusal_p50_ms'), 1, 1)} | {_fmt(sp('refusal_p99_ms'), 1, 1)} |"
        )
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = [
        (k, v)
        for k, v in (
            ("in-process (model-bound)", result.get("inprocess")),
            ("gRPC (transport-bound)", result.get("grpc")),
        )
        if v
    ]
    if not sections:
        return
    fig, axes = plt.subplots(len(sections), 3, figsize=(15, 4.2 * len(sections)), squeeze=False)
    for row, (title, section) in enumerate(sections):
        rows = section["summary"]
        cap = section["capacity"]["req_per_s"]
        for mode, color in (("on", "tab:green"), ("off", "tab:red")):
            sel = [r for r in rows if r["mode"] == mode]
            xs = [r["factor"] for r in sel]
            label = "SLO enforcement on" if mode == "on" else "off (plain FIFO)"
            for ax, key, scale in (
                (axes[row][0], "goodput_vs_capacity", 100),
                (axes[row][1], "attainment", 100),
                (axes[row][2], "p99_ms", 1),
            ):
                med = [r[key]["median"] * scale if r[key] else np.nan for r in sel]
                lo = [(r[key]["median"] - r[key]["min"]) * scale if r[key] else 0 for r in sel]
                hi = [(r[key]["max"] - r[key]["median"]) * scale if r[key] else 0 for r in sel]
                ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, color=color, label=label)
        for r in (r for r in rows if r["mode"] == "on"):  # the machine is shared: say how much
            axes[row][0].annotate(
                f"load {r['loadavg_1m']['median']:.1f}",
                (r["factor"], r["goodput_vs_capacity"]["median"] * 100),
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
                fontsize=8,
                color="gray",
            )
        axes[row][0].set_ylabel(f"{title}\ngoodput, % of capacity ({cap:.0f} req/s)")
        axes[row][0].axhline(90, ls=":", color="gray")
        axes[row][1].set_ylabel(f"answered within {SLO_MS:g} ms, %")
        axes[row][1].axhline(99, ls=":", color="gray")
        axes[row][2].set_ylabel("p99 latency of answered, ms (log)")
        axes[row][2].set_yscale("log")
        axes[row][2].axhline(SLO_MS, ls=":", color="gray")
        for ax in axes[row]:
            ax.set_xlabel("offered load, x measured capacity (Poisson arrivals)")
            ax.grid(alpha=0.3)
        axes[row][0].legend()
    fig.suptitle(
        f"steadyserve: SLO {SLO_MS:g} ms under overload, median and min-max of "
        f"repeats; load average {result['machine']['loadavg_at_start']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", choices=("inprocess", "grpc"), help="run one experiment family")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per point (default 3)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats per point (default 3)")
    ap.add_argument(
        "--factors",
        type=lambda s: [float(v) for v in s.split(",")],
        default=list(FACTORS),
        help="load factors (default 0.5,1,1.5,2,3)",
    )
    ap.add_argument(
        "--frontend",
        choices=("grpcio", "native"),
        default="grpcio",
        help="gRPC frontend of the servers (default grpcio: this script's Python client "
        "cannot load the native one past its capacity; for that see frontend_overload, "
        "run by grpc_load.py --parts overload)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (server logs)")
    ap.add_argument("--_load", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._load:
        print(json.dumps(run_load(**json.loads(args._load))))
        return

    result: dict = {
        "benchmark": "slo",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine_info(),
        "slo_ms": SLO_MS,
        "closed_loop_deadline_ms": CLOSED_DEADLINE_MS,
        "duration_s": args.duration,
        "repeats": args.repeats,
    }
    tmp = Path(tempfile.mkdtemp(prefix="slo_bench_"))
    try:
        if args.only in (None, "inprocess"):
            section = inprocess_experiments(args, tmp)
            section["summary"] = aggregate(section["open_loop"], section["capacity"]["req_per_s"])
            result["inprocess"] = section
        if args.only in (None, "grpc"):
            section = grpc_experiments(args, tmp)
            section["summary"] = aggregate(section["open_loop"], section["capacity"]["req_per_s"])
            result["grpc"] = section
    finally:
        result["loadavg_at_end"] = loadavg()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    name = f"slo_{stamp()}"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    plot(result, RESULTS_DIR / f"{name}.png")
    m = result["machine"]
    print(
        f"\nnproc {m['nproc']}, load average {m['loadavg_at_start']} at start, "
        f"{result['loadavg_at_end']} at end; SLO {SLO_MS:g} ms\n"
    )
    for key, title in (("inprocess", "In-process, open loop"), ("grpc", "gRPC, open loop")):
        if key in result:
            cap = result[key]["capacity"]
            print(f"### {title} (capacity {cap['req_per_s']:.0f} req/s, runs {cap['runs']})\n")
            print(table(result[key]["summary"]) + "\n")
    if "grpc" in result:
        print(f"### gRPC, closed loop: 128 clients, {CLOSED_DEADLINE_MS:g} ms gRPC deadline\n")
        print(
            closed_table(result["grpc"]["closed_loop_128"], result["grpc"]["capacity"]["req_per_s"])
        )
    print(f"\nwrote {RESULTS_DIR / name}.json and .png")


if __name__ == "__main__":
    main()
