"""Memory of the native frontend: RSS over a long run, and per open connection.

1. **Soak.** ``--requests`` (default 1M) ModelInfer calls at ``-c`` 64 connections (one
   stream each) in chunks of ``--chunk`` (100k) h2load runs; the server's RSS
   (``VmRSS`` of /proc/PID/status) is sampled before the first chunk and after each one.
   Reported: first (after the first chunk, allocator warm-up done) / last / max RSS and the
   growth from first to last (aim: within 10 %), and the server's success count against
   h2load's (every chunk's connections are new, so connection churn is soaked too).
2. **Idle connections.** RSS with ``--idle-connections`` (1000) idle HTTP/2 connections
   open (TCP + client preface + SETTINGS, the server's SETTINGS acknowledged, no stream)
   minus RSS before, divided by their number. The server does not publish its frontend's
   own accounting (``GrpcFrontend.stats()``: ``connection_memory_bytes``,
   ``connections_open``) on /metrics, so the same is repeated against a small harness
   (``--_harness``: ``Runtime`` + ``_core.GrpcFrontend`` in one process, stats on request)
   that reads them while the connections are open.

    python benchmarks/memory_soak.py                          # demo model, native frontend
    python benchmarks/memory_soak.py --requests 200000 --idle-connections 500

``grpc_load.py`` runs both parts (``--parts memory``) against its native server; this
script starts its own. Output: a markdown table, ``results/memory_<date>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import (
    MODEL,
    N_FEATURES,
    eprint,
    fmt_spread,
    h2load_cmd,
    loadavg,
    machine_info,
    md_table,
    parse_h2load,
    rss_bytes,
    spread,
    stamp,
    write_json,
)

MiB = 1024 * 1024
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_SETTINGS, _ACK = 4, 1


# --------------------------------------------------------------------------- soak


def soak(
    url: str,
    pid: int,
    frame: Path,
    *,
    requests: int = 1_000_000,
    chunk: int = 100_000,
    concurrency: int = 64,
    server_success=None,
) -> dict:
    """`requests` calls in h2load runs of `chunk`, RSS after each; `server_success()` (if
    given) returns the server's success count, diffed over the whole soak."""
    ok0 = server_success() if server_success else None
    samples = [{"requests": 0, "rss_bytes": rss_bytes(pid), "loadavg": loadavg()}]
    done = 0
    rates = []
    while done < requests:
        n = min(chunk, requests - done)
        cmd = h2load_cmd(url, frame, concurrency, 1, None, 0, None, requests=n)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        h = parse_h2load(out.stdout)
        got = h.get("requests", {}).get("succeeded", 0)
        if out.returncode != 0 or got != n:
            raise RuntimeError(
                f"h2load chunk failed ({out.returncode}, {got}/{n} succeeded):\n"
                f"$ {' '.join(cmd)}\n{out.stdout[-3000:]}{out.stderr[-2000:]}"
            )
        done += n
        rates.append(h.get("req_per_s", 0.0))
        samples.append({"requests": done, "rss_bytes": rss_bytes(pid), "loadavg": loadavg()})
        eprint(
            f"soak {done:>8d} requests: RSS {samples[-1]['rss_bytes'] / MiB:.1f} MiB, "
            f"{rates[-1]:.0f} req/s"
        )
    ok1 = server_success() if server_success else None
    rss = [s["rss_bytes"] for s in samples[1:]]
    first, last = rss[0], rss[-1]
    out = {
        "requests": requests,
        "chunk": chunk,
        "concurrency": concurrency,
        "samples": samples,
        "req_per_s": spread(rates),
        "rss_before_bytes": samples[0]["rss_bytes"],
        "rss_first_bytes": first,
        "rss_last_bytes": last,
        "rss_max_bytes": max(rss),
        "growth_pct": round(100.0 * (last - first) / first, 2),
        "growth_from_before_pct": round(
            100.0 * (last - samples[0]["rss_bytes"]) / samples[0]["rss_bytes"], 2
        ),
    }
    if ok0 is not None and ok1 is not None:
        out["server_success"] = ok1 - ok0
        out["verified"] = ok1 - ok0 >= requests
    return out


# --------------------------------------------------------------------------- idle connections


def _frame(ftype: int, flags: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, ftype, flags, 0) + payload


async def _open_one(host: str, port: int):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(_PREFACE + _frame(_SETTINGS, 0))
    await writer.drain()
    # The server's first frame is its SETTINGS; acknowledge it, then stay silent.
    head = await asyncio.wait_for(reader.readexactly(9), 10)
    length = (head[0] << 16) | (head[1] << 8) | head[2]
    if head[3] != _SETTINGS:
        raise RuntimeError(f"expected the server's SETTINGS, got frame type {head[3]}")
    await reader.readexactly(length)
    writer.write(_frame(_SETTINGS, _ACK))
    await writer.drain()
    return reader, writer


def with_idle_connections(host: str, port: int, n: int, measure, settle_s: float = 1.0):
    """Open `n` idle HTTP/2 connections (100 at a time), wait `settle_s`, return
    ``measure()`` taken while they are all open, then close them."""

    async def run():
        conns = []
        try:
            for i in range(0, n, 100):
                conns += await asyncio.gather(
                    *(_open_one(host, port) for _ in range(min(100, n - i)))
                )
            await asyncio.sleep(settle_s)
            return await asyncio.to_thread(measure)
        finally:
            for _, writer in conns:
                writer.close()
            await asyncio.sleep(0.2)

    return asyncio.run(run())


def idle_connection_memory(host: str, port: int, pid: int, n: int = 1000) -> dict:
    """RSS of `pid` with `n` idle connections open minus RSS before, per connection."""
    before = rss_bytes(pid)
    during = with_idle_connections(host, port, n, lambda: rss_bytes(pid))
    time.sleep(0.5)
    return {
        "connections": n,
        "rss_before_bytes": before,
        "rss_open_bytes": during,
        "rss_after_close_bytes": rss_bytes(pid),
        "rss_per_connection_bytes": round((during - before) / n, 1),
    }


class Harness:
    """``Runtime`` + ``_core.GrpcFrontend`` in a child process (``--_harness REPO``) that
    prints ``GrpcFrontend.stats()`` (and its RSS) when asked on stdin."""

    def __init__(self, repo: Path, io_threads: int = 0):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--_harness", str(repo), "--io-threads", str(io_threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("harness ready port="):
            self.proc.kill()
            raise RuntimeError(f"harness did not start: {line}{self.proc.stderr.read()[-3000:]}")
        self.port = int(line.split("=", 1)[1])

    def stats(self) -> dict:
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def harness_connection_memory(repo: Path, n: int = 1000) -> dict:
    """The frontend's own accounting with `n` idle connections open (and the harness's RSS)."""
    h = Harness(repo)
    try:
        before = h.stats()
        during = with_idle_connections("127.0.0.1", h.port, n, h.stats)
    finally:
        h.stop()
    open_ = during.get("connections_open", 0)
    return {
        "connections": n,
        "stats_before": before,
        "stats_open": during,
        "connection_memory_bytes_per_connection": (
            round(during["connection_memory_bytes"] / open_, 1) if open_ else None
        ),
        "rss_per_connection_bytes": round((during["rss_bytes"] - before["rss_bytes"]) / n, 1),
    }


def _harness_main(repo: str, io_threads: int) -> None:
    from steadyserve import _core
    from steadyserve.runtime import Runtime

    rt = Runtime(repo, models=[MODEL], allow_inline=False)
    fe = _core.GrpcFrontend(rt.core, host="127.0.0.1", port=0, io_threads=io_threads)
    fe.start()
    print(f"harness ready port={fe.port}", flush=True)
    try:
        for line in sys.stdin:
            if line.strip() == "stats":
                stats = dict(fe.stats())
                stats["rss_bytes"] = rss_bytes(os.getpid())
                print(json.dumps(stats), flush=True)
    finally:
        fe.shutdown()
        fe.wait_idle(2.0)
        rt.close()
        fe.stop()


# --------------------------------------------------------------------------- report


def report(soak_result: dict | None, idle: dict | None, harness: dict | None) -> str:
    lines = []
    if soak_result:
        s = soak_result
        lines.append(
            f"Soak: {s['requests']:,} requests at c={s['concurrency']} in chunks of "
            f"{s['chunk']:,} ({fmt_spread(s['req_per_s'])} req/s per chunk)"
            + (
                f", server counted {s['server_success']:,} successes"
                if "server_success" in s
                else ""
            )  # fmt: skip
            + "\n"
        )
        lines.append(
            md_table(
                [
                    "RSS before",
                    "first (after chunk 1)",
                    "last",
                    "max",
                    "growth first->last",
                    "aim <= 10 %",
                ],  # fmt: skip
                [
                    [
                        f"{s['rss_before_bytes'] / MiB:.1f} MiB",
                        f"{s['rss_first_bytes'] / MiB:.1f} MiB",
                        f"{s['rss_last_bytes'] / MiB:.1f} MiB",
                        f"{s['rss_max_bytes'] / MiB:.1f} MiB",
                        f"{s['growth_pct']:+.2f} %",
                        "met" if abs(s["growth_pct"]) <= 10 else "NOT met",
                    ]
                ],  # fmt: skip
            )
        )
        lines.append(
            "\nRSS by requests: "
            + ", ".join(
                f"{x['requests'] // 1000}k {x['rss_bytes'] / MiB:.1f}" for x in s["samples"]
            )
            + " (MiB)\n"
        )
    if idle or harness:
        rows = []
        if idle:
            rows.append([
                "steadyserve serve (RSS)", idle["connections"],
                f"{idle['rss_before_bytes'] / MiB:.1f} -> {idle['rss_open_bytes'] / MiB:.1f} MiB",
                f"{idle['rss_per_connection_bytes'] / 1024:.2f} KiB", "-",
            ])  # fmt: skip
        if harness:
            st = harness["stats_open"]
            per = harness["connection_memory_bytes_per_connection"]
            rows.append([
                "harness (Runtime + GrpcFrontend)", harness["connections"],
                f"{harness['stats_before']['rss_bytes'] / MiB:.1f} -> "
                f"{st['rss_bytes'] / MiB:.1f} MiB",
                f"{harness['rss_per_connection_bytes'] / 1024:.2f} KiB",
                f"{per / 1024:.2f} KiB ({st['connection_memory_bytes']:,} B / "
                f"{st['connections_open']} open)" if per else "-",
            ])  # fmt: skip
        lines.append(
            md_table(
                [
                    "process",
                    "idle connections",
                    "RSS",
                    "RSS per connection",
                    "frontend's connection_memory_bytes / connections_open",
                ],  # fmt: skip
                rows,
                "lrrrr",
            )
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--chunk", type=int, default=100_000, help="requests between RSS samples")
    ap.add_argument("-c", "--concurrency", type=int, default=64)
    ap.add_argument("--idle-connections", type=int, default=1000)
    ap.add_argument("--server-arg", action="append", default=[], help="extra `serve` argument")
    ap.add_argument("--io-threads", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--_harness", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._harness:
        _harness_main(args._harness, args.io_threads)
        return
    if min(args.requests, args.chunk, args.concurrency) < 1 or args.idle_connections < 0:
        ap.error("--requests, --chunk and -c must be integers >= 1")

    from frames import grpc_frame, request_bytes
    from grpc_load import READY_RE, Server, build_repo, grpc_call, model_statistics
    from pyload import check_response

    result: dict = {"benchmark": "memory", "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "machine": machine_info()}  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="ssmem-"))
    server = None
    try:
        demo = build_repo(tmp / "repo", allow_stand_in=False)
        row = np.random.default_rng(0).standard_normal((1, N_FEATURES)).astype(np.float32)
        payload = request_bytes(row)
        frame = tmp / "f.bin"
        frame.write_bytes(grpc_frame(payload))
        cmd = [sys.executable, "-m", "steadyserve", "serve", str(demo.root), "--host",
               "127.0.0.1", "--grpc-port", "0", "--http-port", "0", "--frontend", "native",
               *args.server_arg]  # fmt: skip
        server = Server("native", cmd, READY_RE, tmp / "server.log", 120)
        host, port = server.match.group(1), int(server.match.group(2))
        url = f"{host}:{port}"
        check_response(grpc_call(url, payload))
        subprocess.run(h2load_cmd(url, frame, 16, 1, 2.0, 0.5, None), capture_output=True)
        result["soak"] = soak(
            url, server.pid, frame, requests=args.requests, chunk=args.chunk,
            concurrency=args.concurrency,
            server_success=lambda: model_statistics(url)["success"][0],
        )  # fmt: skip
        if args.idle_connections:
            result["idle_connections"] = idle_connection_memory(
                host, port, server.pid, args.idle_connections
            )
            server.stop()
            server = None
            result["harness"] = harness_connection_memory(demo.root, args.idle_connections)
    finally:
        if server is not None:
            server.stop()
        result["loadavg_at_end"] = loadavg()
        shutil.rmtree(tmp, ignore_errors=True)
    path = write_json(result, f"memory_{stamp()}.json")
    m = result["machine"]
    print(f"\nnproc {m['nproc']}, load {m['loadavg_at_start']} -> {result['loadavg_at_end']}\n")
    print(report(result.get("soak"), result.get("idle_connections"), result.get("harness")))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
