"""Failover drill: steady load on the demo `tabular` while faults are injected into it.

One run does:

1. builds the demo repository (``tabular``, backup ``tabular-lite``, execution timeout
   50 ms, output checks on ``probabilities``) and starts
   ``python -m steadyserve serve REPO --allow-fault-injection`` on 127.0.0.1 (ports 0);
2. measures capacity: a closed loop (``pyload.run_load``, concurrency 32) on the healthy
   server; the drill then offers ``--load`` (default 70 %) of that rate;
3. runs an open-loop load (requests sent on a fixed schedule, whatever the answers do;
   latency is measured from the scheduled send time, so a stalled server cannot hide
   its queueing) of single-row requests with a 1 s gRPC deadline, through the phases

       healthy 5 s | error 5 s | healthy 5 s | hang 5 s | nan 5 s | heal 10 s

   (faults injected and cleared on the server's HTTP port, as ``steadyserve fault``
   does) while a poller reads ``GET /v2/failover`` every 50 ms for the circuit of
   ``tabular``;
4. prints a table per phase (requests, answered by each model, client-visible errors,
   p50 / p99 / max latency), the circuit's transitions with the time to open after each
   fault and the time to close after healing, writes
   ``benchmarks/results/failover_<date>.json`` and a timeline
   ``benchmarks/results/failover_<date>.png`` (throughput by answering model per 100 ms,
   errors, p99 per 100 ms, circuit state).

    python benchmarks/failover_drill.py
    python benchmarks/failover_drill.py --load 0.5 --phase-s 3 --heal-s 8 --keep

The load generator is Python (one asyncio loop, ~300 µs of CPU per request) and shares
the machine's cores with the server: the capacity it measures is that of this client and
server together on this machine, not the server's limit (see ``grpc_load.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from common import (
    MODEL,
    N_FEATURES,
    RESULTS_DIR,
    build_demo_repo,
    eprint,
    loadavg,
    machine_info,
    percentiles,
    proc_cpu_seconds,
    stamp,
    write_json,
)
from frames import GRPC_METHOD, request_bytes
from grpc_load import READY_RE, Server
from pyload import run_load

BACKUP = "tabular-lite"
DEADLINE_S = 1.0  # the gRPC deadline of every drill request
BIN_S = 0.1
POLL_S = 0.05


def phases(phase_s: float, heal_s: float) -> list[tuple[str, str | None, float]]:
    """(name, fault injected at its start or "clear", seconds)."""
    return [
        ("healthy", None, phase_s),
        ("error", "error", phase_s),
        ("healthy again", "clear", phase_s),
        ("hang", "hang", phase_s),
        ("nan", "nan", phase_s),
        ("heal", "clear", heal_s),
    ]


# --------------------------------------------------------------------------- HTTP side port


def post_fault(http: str, kind: str) -> dict:
    body = json.dumps({"kind": kind}).encode()
    request = urllib.request.Request(
        f"{http}/v2/models/{MODEL}/fault",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


class CircuitPoller(threading.Thread):
    """Reads the circuit of MODEL every POLL_S; turns (poll time, since_s) into change times."""

    def __init__(self, http: str, t0: float):
        super().__init__(name="circuit-poller", daemon=True)
        self.http = http
        self.t0 = t0
        self.samples: list[tuple[float, str]] = []  # (drill time, state)
        self.changes: list[tuple[float, str, str]] = []  # (drill time of the change, state, why)
        self._halt = threading.Event()

    def run(self) -> None:
        last = None
        while not self._halt.is_set():
            sent = time.perf_counter()
            try:
                circuit = get_json(f"{self.http}/v2/failover")["circuits"][MODEL]
            except Exception as exc:  # keep polling; the drill reports what it saw
                eprint(f"poll failed: {exc}")
                self._halt.wait(POLL_S)
                continue
            now = (sent + time.perf_counter()) / 2 - self.t0
            state = circuit["state"]
            self.samples.append((now, state))
            changed_at = now - circuit["since_s"]
            # A new state, or the same state entered again between two polls (e.g. open ->
            # half_open -> open): its since_s tells when.
            if last is None or state != last[0] or abs(changed_at - last[1]) > 0.5:
                if last is not None:
                    self.changes.append((round(changed_at, 4), state, circuit["reason"]))
                last = (state, changed_at)
            self._halt.wait(POLL_S)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def _machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat, every process)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / ticks


class CpuSampler(threading.Thread):
    """Cores used per BIN_S by the server, by this drill client, and by everything else on
    the machine (other people's jobs on a shared host), to tell a stall's cause."""

    def __init__(self, server_pid: int, t0: float):
        super().__init__(name="cpu-sampler", daemon=True)
        self.server_pid = server_pid
        self.t0 = t0
        self.samples: list[tuple[float, float, float, float]] = []  # (t, server, client, others)
        self._halt = threading.Event()

    def run(self) -> None:
        me = os.getpid()
        last = None
        while not self._halt.is_set():
            now = time.perf_counter() - self.t0
            try:
                point = (
                    now,
                    proc_cpu_seconds(self.server_pid),
                    proc_cpu_seconds(me),
                    _machine_busy_s(),
                )
            except OSError:
                break
            if last is not None:
                dt = point[0] - last[0]
                server = (point[1] - last[1]) / dt
                client = (point[2] - last[2]) / dt
                total = (point[3] - last[3]) / dt
                self.samples.append(
                    (
                        round(last[0], 3),
                        round(server, 3),
                        round(client, 3),
                        round(max(0.0, total - server - client), 3),
                    )
                )
            last = point
            self._halt.wait(BIN_S)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


# --------------------------------------------------------------------------- the load


async def open_loop(url: str, payload: bytes, rate: float, schedule, t0: float, http: str):
    """Send `rate` requests/s on a fixed schedule until the phases end; returns the records
    (sent at, scheduled at, latency or None, answering model or error code, failover reason)."""
    from tritonclient.grpc import service_pb2 as pb

    channel = grpc.aio.insecure_channel(url)
    call = channel.unary_unary(GRPC_METHOD, request_serializer=None, response_deserializer=None)
    await call(payload, timeout=30)  # connected and warm
    records: list[tuple] = []
    perf = time.perf_counter
    total_s = sum(s for _, _, s in schedule)
    interval = 1.0 / rate
    tasks: set[asyncio.Task] = set()
    marks: list[tuple[float, str, str | None]] = []

    async def one(scheduled: float) -> None:
        sent = perf() - t0
        try:
            raw = await call(payload, timeout=DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            done = perf() - t0
            records.append((sent, scheduled, done - scheduled, "error:" + exc.code().name, ""))
            return
        done = perf() - t0
        resp = pb.ModelInferResponse.FromString(raw)
        why = ""
        if "failover_reason" in resp.parameters:
            why = resp.parameters["failover_reason"].string_param
        name = "default_output" if "default_output" in resp.parameters else resp.model_name
        records.append((sent, scheduled, done - scheduled, name, why))

    async def conductor() -> None:
        start = 0.0
        for name, fault, seconds in schedule:
            delay = start - (perf() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            if fault is not None:
                at = perf() - t0
                await asyncio.to_thread(post_fault, http, fault)
                eprint(f"  t={at:6.2f} s  {name}: fault {fault}")
                marks.append((at, name, fault))
            else:
                marks.append((perf() - t0, name, None))
            start += seconds

    conduct = asyncio.create_task(conductor())
    n = 0
    while True:
        now = perf() - t0
        if now >= total_s:
            break
        due = min(int(now / interval) + 1, int(total_s / interval))
        while n < due:
            task = asyncio.create_task(one(n * interval))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        await asyncio.sleep(max(0.0, n * interval - (perf() - t0)))
    await conduct
    if tasks:
        await asyncio.gather(*tasks)
    await channel.close()
    return records, marks


# --------------------------------------------------------------------------- analysis


def phase_of(t: float, marks) -> str:
    name = marks[0][1]
    for at, phase, _ in marks:
        if t >= at:
            name = phase
    return name


def summarize(records, marks, changes, schedule) -> dict:
    per_phase = []
    for i, (at, name, fault) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else float("inf")
        rows = [r for r in records if at <= r[1] < end]
        ok = [r for r in rows if not r[3].startswith("error:")]
        errors: dict[str, int] = {}
        for r in rows:
            if r[3].startswith("error:"):
                errors[r[3][6:]] = errors.get(r[3][6:], 0) + 1
        lat = percentiles([r[2] for r in ok], ps=(50, 99))
        answered: dict[str, int] = {}
        for r in ok:
            answered[r[3]] = answered.get(r[3], 0) + 1
        triggers: dict[str, int] = {}
        for r in ok:
            for part in r[4].split("; ") if r[4] else []:
                head = part.split(" (", 1)[0]  # "tabular: execution_error"
                if head.startswith(f"{MODEL}: "):
                    kind = head[len(MODEL) + 2 :]
                    triggers[kind] = triggers.get(kind, 0) + 1
        per_phase.append(
            {
                "phase": name,
                "fault": fault,
                "start_s": round(at, 3),
                "requests": len(rows),
                "answered_by": answered,
                "client_errors": sum(errors.values()),
                "errors_by_code": errors,
                "failover_triggers": triggers,
                "latency_ms": lat,
            }
        )
    # Time to open after each fault; time to close after each clear.
    events = []
    for i, (at, name, fault) in enumerate(marks):
        if fault is None:
            continue
        end = marks[i + 1][0] if i + 1 < len(marks) else float("inf")
        after = [c for c in changes if at - 1e-3 <= c[0] < end]
        state_before = "closed"
        for c in changes:
            if c[0] < at:
                state_before = c[1]
        if fault == "clear":
            closed = next((c for c in after if c[1] == "closed"), None)
            events.append(
                {
                    "phase": name,
                    "event": "clear",
                    "state_before": state_before,
                    "time_to_close_s": None if closed is None else round(closed[0] - at, 3),
                }
            )
        else:
            opened = next((c for c in after if c[1] == "open"), None)
            events.append(
                {
                    "phase": name,
                    "event": fault,
                    "state_before": state_before,
                    # Already open: the next half-open probe fails and it reopens.
                    "reopened": state_before != "closed",
                    "time_to_open_s": None if opened is None else round(opened[0] - at, 3),
                    "open_reason": None if opened is None else opened[2],
                }
            )
    return {"phases": per_phase, "circuit_events": events}


def bins(records, total_s: float) -> dict:
    n = int(np.ceil(total_s / BIN_S)) + 1
    edges = np.arange(n + 1) * BIN_S
    models = [MODEL, BACKUP, "default_output"]
    by_model = {m: np.zeros(n) for m in models}
    errors = np.zeros(n)
    p99 = np.full(n, np.nan)
    lag_p99 = np.full(n, np.nan)
    lat_by_bin: list[list[float]] = [[] for _ in range(n)]
    lag_by_bin: list[list[float]] = [[] for _ in range(n)]
    for sent, scheduled, latency, name, _ in records:
        lag_by_bin[min(n - 1, int(scheduled / BIN_S))].append(sent - scheduled)
        done_bin = min(n - 1, int((scheduled + latency) / BIN_S))
        if name.startswith("error:"):
            errors[done_bin] += 1
            continue
        by_model.setdefault(name, np.zeros(n))[done_bin] += 1
        lat_by_bin[min(n - 1, int(scheduled / BIN_S))].append(latency)
    for i, lat in enumerate(lat_by_bin):
        if lat:
            p99[i] = np.percentile(lat, 99) * 1e3
        if lag_by_bin[i]:
            lag_p99[i] = np.percentile(lag_by_bin[i], 99) * 1e3
    return {
        "bin_s": BIN_S,
        "t_s": (edges[:-1]).round(3).tolist(),
        "answered_per_s": {m: (v / BIN_S).tolist() for m, v in by_model.items()},
        "errors": errors.tolist(),
        "p99_ms": [None if np.isnan(v) else round(float(v), 3) for v in p99],
        # How late the client sent (a starved client shows here, not in the server).
        "send_lag_p99_ms": [None if np.isnan(v) else round(float(v), 3) for v in lag_p99],
    }


def plot(timeline: dict, marks, samples, cpu, summary, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.asarray(timeline["t_s"])
    fig, axes = plt.subplots(
        5, 1, figsize=(12, 11), sharex=True, gridspec_kw={"height_ratios": [3, 1, 2, 1.5, 0.6]}
    )
    ax = axes[0]
    colors = {MODEL: "tab:blue", BACKUP: "tab:orange", "default_output": "tab:gray"}
    series = [(m, np.asarray(v)) for m, v in timeline["answered_per_s"].items() if np.any(v)]
    ax.stackplot(
        t,
        *[v for _, v in series],
        labels=[f"answered by {m}" for m, _ in series],
        colors=[colors.get(m) for m, _ in series],
        step="post",
        alpha=0.85,
    )
    ax.set_ylabel("answers / s\n(100 ms bins)")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title, fontsize=10)

    ax = axes[1]
    ax.bar(t, np.asarray(timeline["errors"]) / BIN_S, width=BIN_S, align="edge", color="tab:red")
    ax.set_ylabel("client errors / s")
    errors_total = sum(p["client_errors"] for p in summary["phases"])
    ax.text(0.01, 0.8, f"client-visible errors: {errors_total}", transform=ax.transAxes, fontsize=9)
    ax.set_ylim(0, max(1.0, ax.get_ylim()[1]))

    ax = axes[2]
    p99 = np.array([np.nan if v is None else v for v in timeline["p99_ms"]], dtype=float)
    ax.step(t, p99, where="post", color="black", lw=1, label="p99 latency")
    lag = np.array([np.nan if v is None else v for v in timeline["send_lag_p99_ms"]], dtype=float)
    ax.step(
        t,
        np.maximum(lag, 0.1),
        where="post",
        color="tab:green",
        lw=0.8,
        alpha=0.8,
        label="p99 client send lag",
    )
    ax.legend(loc="upper left", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("p99 latency, ms\n(by send time)")
    ax.axhline(50, color="tab:purple", ls=":", lw=1)
    ax.text(
        t[-1],
        50,
        " execution timeout 50 ms",
        va="center",
        ha="right",
        fontsize=8,
        color="tab:purple",
    )

    ax = axes[3]
    if cpu:
        c = np.asarray(cpu)
        ax.stackplot(
            c[:, 0],
            c[:, 1],
            c[:, 2],
            c[:, 3],
            step="post",
            labels=["server", "drill client", "other processes"],
            colors=["tab:blue", "tab:cyan", "tab:gray"],
            alpha=0.8,
        )
        ax.axhline(os.cpu_count() or 2, color="k", lw=0.8)
        ax.legend(loc="upper left", fontsize=7, ncol=3)
    ax.set_ylabel("CPU cores")

    ax = axes[4]
    state_color = {"closed": "tab:green", "half_open": "gold", "open": "tab:red"}
    for (a, s), (b, _) in zip(samples, samples[1:] + [(t[-1] + BIN_S, None)], strict=True):
        ax.axvspan(a, b, color=state_color.get(s, "white"), lw=0)
    ax.set_yticks([])
    ax.set_ylabel("circuit", rotation=0, ha="right", va="center")
    ax.set_xlabel("drill time, s")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in state_color.values()]
    ax.legend(handles, list(state_color), loc="upper right", ncol=3, fontsize=7)

    for a in axes:
        for at, _, _ in marks:
            a.axvline(at, color="k", lw=0.6, ls="--")
    for at, name, _ in marks:
        axes[0].text(at + 0.05, axes[0].get_ylim()[1] * 0.97, name, va="top", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _seconds(event: dict, key: str, missing: str) -> str:
    if key not in event:
        return "-"
    return missing if event[key] is None else f"{event[key]:.3f} s"


def table(summary: dict) -> str:
    lines = [
        "| phase | requests | answered by tabular | by tabular-lite | client errors | "
        "p50 ms | p99 ms | max ms | failover triggers |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for p in summary["phases"]:
        lat = p["latency_ms"]
        trig = ", ".join(f"{k} {v}" for k, v in sorted(p["failover_triggers"].items())) or "-"
        lines.append(
            f"| {p['phase']} | {p['requests']} | {p['answered_by'].get(MODEL, 0)} | "
            f"{p['answered_by'].get(BACKUP, 0)} | {p['client_errors']} | "
            f"{lat.get('p50_ms', '-')} | {lat.get('p99_ms', '-')} | {lat.get('max_ms', '-')} | "
            f"{trig} |"
        )
    lines.append("")
    lines.append("| at | event | circuit before | time to open | time to close |")
    lines.append("| --- | --- | --- | ---: | ---: |")
    for e in summary["circuit_events"]:
        lines.append(
            f"| {e['phase']} | {e['event']} | {e['state_before']} | "
            f"{_seconds(e, 'time_to_open_s', 'did not open')}"
            f"{' (reopened)' if e.get('reopened') and e.get('time_to_open_s') is not None else ''}"
            f" | {_seconds(e, 'time_to_close_s', 'did not close')} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--load", type=float, default=0.7, help="share of capacity to offer")
    ap.add_argument("--rate", type=float, help="offer this many req/s (skips the capacity run)")
    ap.add_argument("--phase-s", type=float, default=5.0, help="seconds per phase")
    ap.add_argument("--heal-s", type=float, default=10.0, help="seconds after the final heal")
    ap.add_argument("--capacity-s", type=float, default=3.0, help="closed-loop seconds")
    ap.add_argument(
        "--phases",
        metavar="NAME:FAULT:S,...",
        help="another schedule, e.g. healthy::3,hang:hang:8,heal:clear:4 (FAULT empty = none)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (server log)")
    args = ap.parse_args()
    if not 0 < args.load <= 1.5:
        ap.error("--load must be in (0, 1.5]")

    tmp = Path(tempfile.mkdtemp(prefix="steadyserve-failover-"))
    info = machine_info()
    eprint(f"load average at start: {info['loadavg_at_start']}")
    demo = build_demo_repo(tmp / "repo")
    cmd = [
        sys.executable,
        "-m",
        "steadyserve",
        "serve",
        str(demo.root),
        "--allow-fault-injection",
        "--host",
        "127.0.0.1",
        "--grpc-port",
        "0",
        "--http-port",
        "0",
        "--log-level",
        "warning",
    ]
    server = Server("steadyserve", cmd, READY_RE, tmp / "server.log", 120)
    grpc_url = f"{server.match.group(1)}:{server.match.group(2)}"
    http = f"http://{server.match.group(3)}:{server.match.group(4)}"
    try:
        rows = np.random.default_rng(0).standard_normal((1, N_FEATURES)).astype(np.float32)
        payload = request_bytes(rows)
        if args.rate:
            capacity = None
            rate = args.rate
        else:
            eprint(f"capacity: closed loop, concurrency 32, {args.capacity_s:g} s ...")
            capacity = asyncio.run(run_load(grpc_url, 32, args.capacity_s, 1.0, 1, payload))
            rate = round(capacity["req_per_s"] * args.load, 1)
            eprint(
                f"  {capacity['req_per_s']} req/s (p99 {capacity['latency'].get('p99_ms')} ms); "
                f"offering {rate} req/s"
            )
        schedule = phases(args.phase_s, args.heal_s)
        if args.phases:
            schedule = []
            for item in args.phases.split(","):
                phase, fault, seconds = item.split(":")
                schedule.append((phase, fault or None, float(seconds)))
        total_s = sum(s for _, _, s in schedule)
        t0 = time.perf_counter()
        poller = CircuitPoller(http, t0)
        poller.start()
        cpu = CpuSampler(server.pid, t0)
        cpu.start()
        load_before = loadavg()
        records, marks = asyncio.run(open_loop(grpc_url, payload, rate, schedule, t0, http))
        poller.stop()
        cpu.stop()
        load_after = loadavg()
        report = get_json(f"{http}/v2/failover")
        with urllib.request.urlopen(f"{http}/metrics", timeout=10) as response:
            metrics = [
                line
                for line in response.read().decode().splitlines()
                if line.startswith(
                    ("steadyserve_failover", "steadyserve_circuit", "steadyserve_requests_total")
                )
            ]
    finally:
        server.stop()

    summary = summarize(records, marks, poller.changes, schedule)
    timeline = bins(records, total_s)
    lags = [r[0] - r[1] for r in records]
    name = f"failover_{stamp()}"
    result = {
        "benchmark": "failover_drill",
        "machine": info,
        "loadavg_before_drill": load_before,
        "loadavg_after_drill": load_after,
        "capacity": capacity,
        "offered_req_per_s": rate,
        "load_share": None if args.rate else args.load,
        "deadline_s": DEADLINE_S,
        "demo_config": demo.config_text,
        "schedule": [{"phase": n, "fault": f, "seconds": s} for n, f, s in schedule],
        "sent": len(records),
        "client_errors": sum(1 for r in records if r[3].startswith("error:")),
        "client_send_lag_ms": percentiles(lags, ps=(50, 99)),
        **summary,
        "circuit_changes": [{"t_s": t, "state": s, "reason": why} for t, s, why in poller.changes],
        "server_report": report,
        "server_metrics": metrics,
        "timeline": timeline,
        "cpu_cores": {
            "columns": ["t_s", "server", "drill_client", "others"],
            "samples": cpu.samples,
        },
    }
    path = write_json(result, f"{name}.json")
    png = RESULTS_DIR / f"{name}.png"
    title = (
        f"failover drill: {rate:g} req/s offered to '{MODEL}' (backup '{BACKUP}'), "
        f"deadline {DEADLINE_S:g} s; nproc {info['nproc']}, load {load_before}"
    )
    plot(timeline, marks, poller.samples, cpu.samples, summary, png, title)
    print(table(summary))
    print()
    share = f" = {args.load:.0%} of {capacity['req_per_s']} req/s closed-loop capacity"
    print(
        f"offered {rate} req/s"
        + (share if capacity else "")
        + f"; sent {len(records)}, client errors {result['client_errors']}; "
        f"send lag p99 {result['client_send_lag_ms'].get('p99_ms')} ms; "
        f"load {load_before} -> {load_after}"
    )
    print("circuit changes:", ", ".join(f"{t:.2f} s {s}" for t, s, _ in poller.changes))
    print(f"wrote {path} and {png}")
    if args.keep:
        print(f"kept {tmp} (server.log)")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
