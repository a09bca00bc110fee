#!/usr/bin/env python
"""Hot reload under load: failed requests, the latency bump of a swap, time to serve.

One native server serves the demo repository in explicit model control mode.
h2load sends ModelInfer for ``tabular`` at a fixed rate (open loop, well below
saturation, so latency shows the swap rather than queueing) while this script
reloads the model N times: each time it copies the latest version directory to
a new version and posts ``/v2/repository/models/tabular/load``; the server loads
and warms up the new version beside the live one and swaps it in.

Reported, from the same run:

* failed requests: h2load's failed/errored and non-200 answers; and, since a gRPC
  error is an HTTP 200 with a grpc-status trailer that h2load cannot see, a second
  client (grpcio, one call at a time) that checks every answer: its gRPC errors,
  and answers from any model but ``tabular`` (a failover to the backup would hide
  a failed swap) or with the wrong probabilities;
* the latency bump: p50/p99/p99.9 of requests sent while a load was in progress
  (request to answer: loading, warming up, swapping, draining) against requests
  sent in the quiet time between loads, from h2load's per-request log;
* time to serve: from the load request to the new version serving (the load call
  returns once it serves), per reload, and the server's own histogram.

    python benchmarks/reload_bench.py [--reloads 20] [--rate 1000] [--gap-s 1.0]

Writes ``benchmarks/results/reload_<date>.json``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from common import (
    MODEL,
    N_FEATURES,
    build_demo_repo,
    eprint,
    h2load_cmd,
    machine_info,
    md_table,
    parse_h2load,
    percentiles,
    read_h2load_log,
    serve_cmd,
    spread,
    stamp,
    write_json,
)
from frames import grpc_frame, request_bytes
from grpc_load import GRPC_METHOD, READY_RE, Server, check_answer, metric_samples, metrics_text


def load(http: str, model: str, timeout: float = 120.0) -> float:
    """POST the load request; seconds until the new version serves (the call returns)."""
    request = urllib.request.Request(
        f"{http}/v2/repository/models/{model}/load", data=b"{}", method="POST"
    )
    request.add_header("Content-Type", "application/json")
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        answer.read()
    return time.perf_counter() - start


def new_version(repo: Path, model: str) -> int:
    """Copy the latest version directory of ``model`` to the next number."""
    versions = sorted(int(p.name) for p in (repo / model).iterdir() if p.name.isdigit())
    latest = versions[-1]
    shutil.copytree(repo / model / str(latest), repo / model / str(latest + 1))
    return latest + 1


class CheckingClient:
    """One call at a time over one channel; every answer parsed and checked."""

    def __init__(self, url: str, payload: bytes, want: np.ndarray):
        import grpc

        self._channel = grpc.insecure_channel(url)
        self._call = self._channel.unary_unary(
            GRPC_METHOD, request_serializer=None, response_deserializer=None
        )
        self._payload, self._want = payload, want
        self.answered = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                answer = check_answer(self._call(self._payload, timeout=30), self._want)
                if answer["model_name"] != MODEL:
                    raise RuntimeError(f"answered by {answer['model_name']}")
                self.answered += 1
            except Exception as exc:  # every failure is what this client is for
                self.errors.append(repr(exc)[:300])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self._channel.close()


def latency_split(log: np.ndarray, windows: list[tuple[float, float]], margin_s: float):
    """Latencies (s) of requests sent inside a load window vs. well outside all of them.

    ``log`` rows are h2load's (start µs since the epoch, status, duration µs)."""
    start_s = log[:, 0] / 1e6
    inside = np.zeros(len(log), bool)
    near = np.zeros(len(log), bool)
    for a, b in windows:
        inside |= (start_s >= a) & (start_s <= b)
        near |= (start_s >= a - margin_s) & (start_s <= b + margin_s)
    durations = log[:, 2] / 1e6
    return durations[inside], durations[~near]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reloads", type=int, default=20)
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s in all")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--gap-s", type=float, default=1.0, help="quiet time between loads")
    parser.add_argument("--margin-s", type=float, default=0.2, help="kept off 'quiet' samples")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="reload-bench-"))
    demo = build_demo_repo(tmp / "repo")
    row = np.random.default_rng(0).standard_normal((1, N_FEATURES)).astype(np.float32)
    frame = tmp / "tabular.frame"
    payload = request_bytes(row, model=MODEL)
    frame.write_bytes(grpc_frame(payload))
    from common import INPUT, ort_session

    want = ort_session(demo.model_path).run(None, {INPUT: row})[0]
    cmd = serve_cmd(
        demo.root, "--model-control-mode", "explicit", "--load-model", "*", "--log-level", "warning"
    )
    server = Server("native", cmd, READY_RE, tmp / "server.log", 120)
    grpc_url = f"{server.match.group(1)}:{server.match.group(2)}"
    http = f"http://{server.match.group(3)}:{server.match.group(4)}"
    try:
        load(http, MODEL)  # warm the path once (not measured)
        duration = args.reloads * (args.gap_s + 1.0) + 3.0
        log = tmp / "h2load.log"
        h2 = h2load_cmd(
            grpc_url,
            frame,
            args.connections,
            4,
            duration,
            0.0,
            log,
            rps=args.rate / args.connections,
        )
        driver = subprocess.Popen(h2, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        checker = CheckingClient(grpc_url, payload, want)
        time.sleep(1.5)
        windows, seconds = [], []
        for i in range(args.reloads):
            version = new_version(demo.root, MODEL)
            t0 = time.time()
            seconds.append(load(http, MODEL))
            windows.append((t0, time.time()))
            eprint(f"reload {i + 1}/{args.reloads}: version {version} serves after "
                   f"{seconds[-1] * 1000:.0f} ms")  # fmt: skip
            time.sleep(args.gap_s)
        checker.stop()
        out, _ = driver.communicate(timeout=duration + 60)
        after = metric_samples(metrics_text(http))
    finally:
        server.stop()
    h = parse_h2load(out)
    data = read_h2load_log(log)
    during, quiet = latency_split(data, windows, args.margin_s)
    load_hist = {
        k: v
        for k, v in after.items()
        if k.startswith("steadyserve_model_load_duration_seconds_")
        and f"model={MODEL}" in k
        and not k.endswith("_created")
    }
    result = {
        "machine": machine_info(),
        "args": vars(args),
        "h2load": h,
        "non_200": int((data[:, 1] != 200).sum()),
        "checking_client": {"answered": checker.answered, "errors": checker.errors[:20]},
        "latency_during_load_s": percentiles(during),
        "latency_quiet_s": percentiles(quiet),
        "samples": {"during_load": int(len(during)), "quiet": int(len(quiet))},
        "time_to_serve_s": spread(seconds),
        "time_to_serve_each_s": [round(s, 4) for s in seconds],
        "server_load_histogram": load_hist,
    }
    path = write_json(result, f"reload_{stamp()}.json")
    failed = (
        h.get("requests", {}).get("failed", 0)
        + h.get("requests", {}).get("errored", 0)
        + result["non_200"]
        + len(checker.errors)
    )
    ms = 1000.0
    print(f"\n{args.reloads} reloads of '{MODEL}' under {args.rate:.0f} req/s ({path.name})\n")
    print(
        md_table(
            ["", "requests", "p50 ms", "p99 ms", "p99.9 ms"],
            [
                [label, n, f"{p['p50_ms']:.3f}", f"{p['p99_ms']:.3f}", f"{p['p99.9_ms']:.3f}"]
                for label, n, p in (
                    ("sent while a load ran", len(during), result["latency_during_load_s"]),
                    ("sent between loads", len(quiet), result["latency_quiet_s"]),
                )
            ],
        )
    )
    t = result["time_to_serve_s"]
    print(
        f"\nfailed requests: {failed} (h2load {h.get('requests')}, checking client "
        f"{checker.answered} answered, {len(checker.errors)} errors); "
        f"time to serve: median {t['median'] * ms:.0f} ms, "
        f"min {t['min'] * ms:.0f}, max {t['max'] * ms:.0f} ms"
    )


if __name__ == "__main__":
    main()
