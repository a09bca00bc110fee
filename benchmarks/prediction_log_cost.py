#!/usr/bin/env python
"""What the prediction log costs serving: the demo model over the native gRPC
frontend with the log off, at 1% sampling and at 100%, in one run.

Three native servers, each on its own copy of the demo repository (the sample rate
is the model's ``prediction_log.sample_rate``), measured in turn (interleaved,
``--repeats`` rounds) with h2load at ``-c`` connections:

* ``off``: no ``--prediction-log`` (the core draws nothing, the executor hands
  nothing over);
* ``1%``: ``--prediction-log DIR`` and ``sample_rate: 0.01``;
* ``100%``: every request logged: raw and scaled inputs and outputs copied per
  batch, written as Parquet by the writer thread.

Reported: req/s of each, each ratio against ``off`` in the same round (median and
spread over the rounds), and per logged server the records written and dropped (a
writer that falls behind drops, it never slows requests: the drops say whether it
kept up).

    python benchmarks/prediction_log_cost.py [--repeats 3] [--duration 4] [-c 64]

Writes ``benchmarks/results/prediction_log_<date>.json``.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
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
    override_config,
    parse_h2load,
    serve_cmd,
    spread,
    stamp,
    write_json,
)
from frames import grpc_frame, request_bytes
from grpc_load import READY_RE, Server, metric_samples, metrics_text

RATES = {"off": None, "1%": 0.01, "100%": 1.0}


def _repo(root: Path, rate: float | None) -> Path:
    demo = build_demo_repo(root)
    if rate is not None:
        override_config(demo.root, [f"prediction_log.sample_rate={rate}"])
    return demo.root


def _log_counts(http: str) -> dict[str, float]:
    samples = metric_samples(metrics_text(http), "steadyserve_prediction_log_")
    written = sum(
        v for k, v in samples.items() if k.startswith("steadyserve_prediction_log_records_total")
    )
    dropped = sum(
        v for k, v in samples.items() if k.startswith("steadyserve_prediction_log_dropped_total")
    )
    return {"written": written, "dropped": dropped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("-c", "--connections", type=int, default=64)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="predlog-cost-"))
    row = np.random.default_rng(0).standard_normal((1, N_FEATURES)).astype(np.float32)
    frame = tmp / "tabular.frame"
    frame.write_bytes(grpc_frame(request_bytes(row, model=MODEL)))
    servers = {}
    try:
        for name, rate in RATES.items():
            repo = _repo(tmp / f"repo-{len(servers)}", rate)
            cmd = serve_cmd(repo)
            if rate is not None:
                cmd += ["--prediction-log", str(tmp / f"log-{len(servers)}")]
            servers[name] = Server(name, cmd, READY_RE, tmp / f"server-{len(servers)}.log", 120)
        rounds: list[dict] = []
        for r in range(args.repeats):
            result = {}
            for name in RATES:
                m = servers[name].match
                grpc_url, http = f"{m.group(1)}:{m.group(2)}", f"{m.group(3)}:{m.group(4)}"
                before = _log_counts(http)
                cmd = h2load_cmd(grpc_url, frame, args.connections, 1, args.duration, 1.0, None)
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                h = parse_h2load(done.stdout)
                after = _log_counts(http)
                result[name] = {
                    "req_per_s": h.get("req_per_s", 0.0),
                    "time_for_request": h.get("time_for_request"),
                    "failed": h.get("requests", {}).get("failed"),
                    "succeeded": h.get("requests", {}).get("succeeded"),
                    "written": after["written"] - before["written"],
                    "dropped": after["dropped"] - before["dropped"],
                }
                t = result[name]["time_for_request"] or {}
                eprint(
                    f"round {r + 1} {name}: {result[name]['req_per_s']:.0f} req/s, latency mean "
                    f"{t.get('mean')} max {t.get('max')}, written {result[name]['written']:.0f}, "
                    f"dropped {result[name]['dropped']:.0f}"
                )
            rounds.append(result)
    finally:
        for server in servers.values():
            server.stop()
    ratios = {
        name: spread([rnd[name]["req_per_s"] / rnd["off"]["req_per_s"] for rnd in rounds])
        for name in RATES
        if name != "off"
    }
    rates = {name: spread([rnd[name]["req_per_s"] for rnd in rounds]) for name in RATES}
    out = {
        "machine": machine_info(),
        "args": vars(args),
        "rounds": rounds,
        "req_per_s": rates,
        "ratio_vs_off": ratios,
    }
    path = write_json(out, f"prediction_log_{stamp()}.json")
    print(
        f"\nprediction log cost, h2load c={args.connections}, {args.repeats} rounds ({path.name})\n"
    )
    print(
        md_table(
            ["server", "req/s (median)", "ratio vs off (median, min-max)", "written", "dropped"],
            [
                [
                    name,
                    f"{rates[name]['median']:.0f}",
                    "1"
                    if name == "off"
                    else f"{ratios[name]['median']:.3f} ({ratios[name]['min']:.3f}-"
                    f"{ratios[name]['max']:.3f})",
                    f"{sum(rnd[name]['written'] for rnd in rounds):.0f}",
                    f"{sum(rnd[name]['dropped'] for rnd in rounds):.0f}",
                ]
                for name in RATES
            ],
        )
    )


if __name__ == "__main__":
    main()
