"""End-to-end cost of the feature contract: gRPC throughput with it on vs off, in one run.

One server, two copies of the demo's `tabular` MLP:

- ``tabular``: the whole contract on: NaN/inf and values outside [-10, 10] refused,
  standard scaling from stats.json, drift counted on the input (32 features x 10 bins)
  and on the output (prediction drift);
- ``tabular-off``: the same model.onnx with no contract, no stats.json (nothing
  validated, scaled or counted beyond the usual shape and datatype checks).

Both are driven by h2load with pre-serialized request frames (``frames.py``), closed loop,
interleaved (on, off, then off, on, ...) and repeated; the ratio on/off of req/s is
computed per repeat (paired), then the median. Every run is checked against the server's
own counters (``steadyserve_requests_total`` by outcome), since h2load counts a gRPC error
as HTTP 200. The answers of both models are checked against ONNX Runtime first (for
``tabular`` on the standard-scaled row). Writes ``benchmarks/results/contract_e2e_<date>.json``.

    python benchmarks/contract_e2e.py                        # c = 1, 64; 3 x 5 s each
    python benchmarks/contract_e2e.py --repeats 15 --duration 1 --warmup 0.3
    python benchmarks/contract_e2e.py --concurrency 16 --rows 64 --repeats 5

The contract's own work is ~0.1-0.2 µs per row (see bench_transform.py) against ~1 ms of
server CPU per gRPC request, far below what a shared machine can resolve: an A/A run (two
copies of the same model) differs by up to +-15% per pair. Many short interleaved pairs
(the second line) cancel slow drifts in the neighbours' load better than a few long ones.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import yaml
from common import (
    INPUT,
    MODEL,
    N_FEATURES,
    eprint,
    loadavg,
    machine_info,
    ort_session,
    spread,
    stamp,
    write_json,
)
from frames import grpc_frame, request_bytes
from grpc_load import (
    READY_RE,
    Server,
    build_repo,
    grpc_call,
    metric_samples,
    metrics_text,
    run_driver,
)
from pyload import check_response

OFF = f"{MODEL}-off"


def prepare(root: Path) -> tuple[Path, dict]:
    """The demo repository with `tabular` (contract on, scaling standard) and `tabular-off`."""
    demo = build_repo(root, allow_stand_in=False)
    on_dir, off_dir = demo.root / MODEL, demo.root / OFF
    config = yaml.safe_load((on_dir / "config.yaml").read_text())
    config["inputs"][0]["contract"]["scaling"] = "standard"
    (on_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    off = {k: v for k, v in config.items() if k not in ("inputs", "drift")}
    (off_dir / "1").mkdir(parents=True)
    shutil.copy(on_dir / "1" / "model.onnx", off_dir / "1" / "model.onnx")
    (off_dir / "config.yaml").write_text(yaml.safe_dump(off, sort_keys=False))
    stats = json.loads((on_dir / "1" / "stats.json").read_text())["inputs"][INPUT]
    return demo.root, {"on": config, "off": off, "stats": stats, "model_path": demo.model_path}


def outcomes(after: dict[str, float], before: dict[str, float], model: str) -> dict[str, float]:
    """{outcome: requests} of `model` from steadyserve_requests_total deltas."""
    out: dict[str, float] = {}
    for key, value in after.items():
        if key.startswith("steadyserve_requests_total{") and f"model={model}," in key:
            outcome = key.split("outcome=", 1)[1].split(",", 1)[0].rstrip("}")
            delta = value - before.get(key, 0)
            if delta:
                out[outcome] = out.get(outcome, 0) + delta
    return out


def main() -> None:  # noqa: C901 - one linear script
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--rows", type=int, default=1, help="rows per request (default 1)")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="driver warm-up seconds per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mode", choices=["conns", "streams"], default="conns")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, frames)")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    args = ap.parse_args()
    if args.repeats < 1 or args.rows < 1 or any(c < 1 for c in args.concurrency):
        ap.error("--repeats, --rows and --concurrency must be integers >= 1")
    if not shutil.which("h2load"):
        sys.exit("h2load is needed (Debian/Ubuntu: apt install nghttp2-client)")

    info = machine_info()
    eprint(f"nproc {info['nproc']}, load {info['loadavg_at_start']}")
    tmpdir = Path(tempfile.mkdtemp(prefix="sscontract-"))
    result: dict = {
        "benchmark": "contract_e2e",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": info,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "repeats": args.repeats,
        "rows_per_request": args.rows,
        "mode": args.mode,
    }
    server = None
    try:
        repo, setup = prepare(tmpdir / "repo")
        result["configs"] = {"on": setup["on"], "off": setup["off"]}
        rows = np.random.default_rng(0).standard_normal((args.rows, N_FEATURES))
        rows = rows.astype(np.float32)
        cmd = [sys.executable, "-m", "steadyserve", "serve", str(repo), "--host", "127.0.0.1",
               "--grpc-port", "0", "--http-port", "0"]  # fmt: skip
        server = Server("steadyserve", cmd, READY_RE, tmpdir / "steadyserve.log", 120)
        url = f"{server.match.group(1)}:{server.match.group(2)}"
        http = f"{server.match.group(3)}:{server.match.group(4)}"

        # Correctness first: both answers against ONNX Runtime.
        session = ort_session(setup["model_path"])
        s = setup["stats"]
        scaled = (rows - np.float32(s["mean"])) * (1 / np.asarray(s["std"])).astype(np.float32)
        frames = {}
        for name, feed in (("on", scaled), ("off", rows)):
            model = MODEL if name == "on" else OFF
            payload = request_bytes(rows, model=model)
            got = check_response(grpc_call(url, payload), rows=args.rows)
            want = session.run(None, {INPUT: feed})[0]
            np.testing.assert_allclose(
                np.asarray(got["values"]).reshape(want.shape), want, rtol=1e-4, atol=1e-5
            )
            frames[name] = tmpdir / f"{name}.frame"
            frames[name].write_bytes(grpc_frame(payload))
        eprint(f"server at {url} (http {http}): both answers match ONNX Runtime")

        for name in ("on", "off"):
            run_driver("h2load", url, frames[name], 16, "conns", 2.0, 0.5, server.pid, tmpdir)
        eprint("warmed up")

        runs = []
        for r in range(args.repeats):
            for c in args.concurrency:
                for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
                    model = MODEL if name == "on" else OFF
                    before = metric_samples(metrics_text(http))
                    rec = run_driver("h2load", url, frames[name], c, args.mode, args.duration,
                                     args.warmup, server.pid, tmpdir)  # fmt: skip
                    seen = outcomes(metric_samples(metrics_text(http)), before, model)
                    in_flight = rec["connections"] * rec["streams_per_conn"]
                    failed = {k: v for k, v in seen.items() if k not in ("success", "cancelled")}
                    rec.update(
                        contract=name,
                        repeat=r,
                        server_outcomes=seen,
                        verified=not failed
                        and seen.get("cancelled", 0) <= in_flight
                        and seen.get("success", 0) >= rec["requests"]["succeeded"],
                    )
                    runs.append(rec)
                    eprint(
                        f"r{r} c={c:<3d} contract {name:3s} {rec['req_per_s']:8.1f} req/s  "
                        f"p50 {rec['latency']['p50_ms']:.3f} ms  srv CPU "
                        f"{rec['server_cpu_us_per_req']:.1f} us/req  verified={rec['verified']}"
                        f"  load {rec['loadavg_after'][0]}"
                    )
        with urllib.request.urlopen(f"http://{http}/v2/models/{MODEL}/drift", timeout=10) as f:
            report = json.loads(f.read())
        result["drift_rows_in_window"] = report["inputs"][INPUT]["rows"]
        result["runs"] = runs
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            eprint(f"kept {tmpdir}")
        else:
            shutil.rmtree(tmpdir, ignore_errors=True)

    summary = {}
    for c in args.concurrency:
        pairs = []
        for r in range(args.repeats):
            on = next(x for x in runs if x["repeat"] == r and x["concurrency"] == c
                      and x["contract"] == "on")  # fmt: skip
            off = next(x for x in runs if x["repeat"] == r and x["concurrency"] == c
                       and x["contract"] == "off")  # fmt: skip
            pairs.append((on, off))
        summary[c] = {
            "on_req_per_s": spread([on["req_per_s"] for on, _ in pairs]),
            "off_req_per_s": spread([off["req_per_s"] for _, off in pairs]),
            "throughput_ratio": spread([on["req_per_s"] / off["req_per_s"] for on, off in pairs]),
            "on_p50_ms": spread([on["latency"]["p50_ms"] for on, _ in pairs]),
            "off_p50_ms": spread([off["latency"]["p50_ms"] for _, off in pairs]),
            "cpu_us_per_req_delta": spread(
                [on["server_cpu_us_per_req"] - off["server_cpu_us_per_req"] for on, off in pairs]
            ),
            "off_cpu_us_per_req": spread([off["server_cpu_us_per_req"] for _, off in pairs]),
            "all_verified": all(on["verified"] and off["verified"] for on, off in pairs),
        }
    result["summary"] = {str(k): v for k, v in summary.items()}
    result["loadavg_at_end"] = loadavg()
    if not args.no_save:
        eprint(f"wrote {write_json(result, f'contract_e2e_{stamp()}.json')}")

    def rng(d: dict, fmt: str = ".0f") -> str:
        return f"{d['median']:{fmt}} [{d['min']:{fmt}}-{d['max']:{fmt}}]"

    print(
        f"\n### Feature contract on vs off, gRPC ModelInfer, {args.rows} row(s) a request, "
        f"h2load ({args.mode}), {args.repeats} x {args.duration:g} s per point "
        f"(median [min-max])\n{result['when']}, nproc {info['nproc']}, load at start "
        f"{info['loadavg_at_start']}, at end {result['loadavg_at_end']}; rows in the drift "
        f"window at the end: {result['drift_rows_in_window']}\n"
    )
    print(
        "| c | contract off req/s | contract on req/s | on / off | p50 ms off / on "
        "| server CPU µs/req off | Δ CPU µs/req (on - off) | verified |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for c, e in summary.items():
        print(
            f"| {c} | {rng(e['off_req_per_s'])} | {rng(e['on_req_per_s'])} | "
            f"{rng(e['throughput_ratio'], '.3f')} | {e['off_p50_ms']['median']:.3f} / "
            f"{e['on_p50_ms']['median']:.3f} | {rng(e['off_cpu_us_per_req'])} | "
            f"{rng(e['cpu_us_per_req_delta'], '+.1f')} | {e['all_verified']} |"
        )
    worst = min(e["throughput_ratio"]["median"] for e in summary.values())
    print(
        f"\nAim: contract costs < 5% of throughput: worst median ratio {worst:.3f} -> "
        f"{'met' if worst >= 0.95 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
