#!/usr/bin/env python
"""What observability costs serving: metrics scraped, alerts evaluated and sent,
logs, against all of them off, in one run.

Three native servers on the demo repository, measured in turn (interleaved,
``--repeats`` rounds) with h2load at ``-c`` connections:

* ``off``: nobody scrapes /metrics, no alert receiver, no request lines (the core
  still counts: its counters are not optional);
* ``on``: a scraper reads /metrics every second while h2load runs (as Prometheus
  would, only more often), alerts are evaluated every second and sent to an
  Alertmanager stand-in (a local HTTP server that accepts the posts), default logs;
* ``on+requests``: the same with ``--log-sample-rate 0.01`` (one request line in 100).

Reported: req/s of each, and each ratio against ``off`` in the same round (median
and spread over the rounds).

    python benchmarks/observability_cost.py [--repeats 3] [--duration 4] [-c 64]

Writes ``benchmarks/results/observability_<date>.json``.
"""

from __future__ import annotations

import argparse
import http.server
import subprocess
import tempfile
import threading
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
    serve_cmd,
    spread,
    stamp,
    write_json,
)
from frames import grpc_frame, request_bytes
from grpc_load import READY_RE, Server


class _Sink(http.server.BaseHTTPRequestHandler):
    """An Alertmanager stand-in: accepts POST /api/v2/alerts, counts them."""

    posts = 0

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).posts += 1
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


class Scraper:
    """GET /metrics every ``interval`` seconds while running."""

    def __init__(self, http: str, interval: float = 1.0):
        self._url, self._interval = f"{http}/metrics", interval
        self._stop = threading.Event()
        self.scrapes = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with urllib.request.urlopen(self._url, timeout=10) as answer:
                answer.read()
            self.scrapes += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("-c", "--connections", type=int, default=64)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="obs-cost-"))
    demo = build_demo_repo(tmp / "repo")
    row = np.random.default_rng(0).standard_normal((1, N_FEATURES)).astype(np.float32)
    frame = tmp / "tabular.frame"
    frame.write_bytes(grpc_frame(request_bytes(row, model=MODEL)))
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    alertmanager = f"http://127.0.0.1:{sink.server_address[1]}"
    base = serve_cmd(demo.root)
    alerts = ["--alertmanager-url", alertmanager, "--alert-interval-s", "1"]
    configs = {
        "off": ([], False),
        "on": (alerts, True),
        "on+requests": ([*alerts, "--log-sample-rate", "0.01"], True),
    }
    servers = {}
    try:
        for name, (flags, _) in configs.items():
            servers[name] = Server(name, base + flags, READY_RE, tmp / f"{name}.log", 120)
        rounds: list[dict] = []
        for r in range(args.repeats):
            result = {}
            for name, (_, scraped) in configs.items():
                m = servers[name].match
                grpc_url, base_url = (
                    f"{m.group(1)}:{m.group(2)}",
                    f"http://{m.group(3)}:{m.group(4)}",
                )
                scraper = Scraper(base_url) if scraped else None
                cmd = h2load_cmd(grpc_url, frame, args.connections, 1, args.duration, 1.0, None)
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                if scraper is not None:
                    scraper.stop()
                h = parse_h2load(done.stdout)
                result[name] = {
                    "req_per_s": h.get("req_per_s", 0.0),
                    "failed": h.get("requests", {}).get("failed"),
                    "scrapes": scraper.scrapes if scraper else 0,
                }
                eprint(f"round {r + 1} {name}: {result[name]['req_per_s']:.0f} req/s")
            rounds.append(result)
    finally:
        for server in servers.values():
            server.stop()
        sink.shutdown()
    ratios = {
        name: spread([rnd[name]["req_per_s"] / rnd["off"]["req_per_s"] for rnd in rounds])
        for name in configs
        if name != "off"
    }
    rates = {name: spread([rnd[name]["req_per_s"] for rnd in rounds]) for name in configs}
    out = {
        "machine": machine_info(),
        "args": vars(args),
        "rounds": rounds,
        "req_per_s": rates,
        "ratio_vs_off": ratios,
        "alert_posts": _Sink.posts,
    }
    path = write_json(out, f"observability_{stamp()}.json")
    print(
        f"\nobservability cost, h2load c={args.connections}, {args.repeats} rounds ({path.name})\n"
    )
    print(
        md_table(
            ["server", "req/s (median)", "ratio vs off (median, min-max)"],
            [
                [
                    name,
                    f"{rates[name]['median']:.0f}",
                    "1"
                    if name == "off"
                    else f"{ratios[name]['median']:.3f} ({ratios[name]['min']:.3f}-"
                    f"{ratios[name]['max']:.3f})",
                ]
                for name in configs
            ],
        )
    )
    print(f"\nalert posts received by the stand-in: {_Sink.posts}")


if __name__ == "__main__":
    main()
