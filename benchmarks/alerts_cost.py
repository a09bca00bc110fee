"""What alert evaluation costs serving: native gRPC throughput with the rules evaluated
every second and an Alertmanager URL set, against the same server with evaluation idle.

- **on**: ``--alert-interval-s 1 --alertmanager-url URL``, URL a real Alertmanager
  (``prometheus-alertmanager`` on 127.0.0.1, if installed) or else a local HTTP sink that
  answers 200;
- **off**: ``--alert-interval-s 3600`` and no receiver: the evaluator runs once at start,
  then waits (there is no switch that turns alerts off: every server evaluates).

Each run starts a fresh server on the demo repository and drives the ``tabular`` model
with h2load (1 row a request, ``-c`` connections x ``-m`` streams), on, off, off, on, ...
(``--repeats`` pairs, interleaved so that drifting machine load hits both alike). Reported:
req/s per run, the on/off ratio of the medians and of each pair, and the evaluator's own
CPU (``evaluation_cpu_s`` of GET /v2/alerts) per second of the run.

    python benchmarks/alerts_cost.py                   # 3 pairs (on, off), 10 s a run
    python benchmarks/alerts_cost.py --duration 5 --repeats 5 -c 4 -m 16
"""

from __future__ import annotations

import argparse
import http.server
import json
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from common import (
    INPUT,
    MODEL,
    N_FEATURES,
    eprint,
    h2load_cmd,
    loadavg,
    machine_info,
    md_table,
    parse_h2load,
    serve_cmd,
    spread,
    stamp,
    write_json,
)
from frames import grpc_frame, request_bytes
from grpc_load import READY_RE, Server, build_repo


class Sink:
    """An HTTP receiver on 127.0.0.1 that answers every POST 200 (a stand-in Alertmanager)."""

    def __init__(self):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_alertmanager(workdir: Path):
    """A real Alertmanager (clustering off) and its URL, or (None, None) if not installed."""
    binary = shutil.which("prometheus-alertmanager")
    if binary is None:
        return None, None
    config = workdir / "alertmanager.yml"
    config.write_text('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
    log = workdir / "alertmanager.log"
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={workdir / 'am-data'}",
            "--web.listen-address=127.0.0.1:0",
            "--cluster.listen-address=",
        ],
        stdout=open(log, "wb"),  # noqa: SIM115 - the process holds it
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = re.search(r'msg="Listening on" address=(127\.0\.0\.1:\d+)', log.read_text())
        if m:
            return proc, f"http://{m.group(1)}"
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"alertmanager did not start:\n{log.read_text()[-2000:]}")


def one_run(repo: Path, frame: Path, flags: list[str], args, workdir: Path, name: str) -> dict:
    cmd = serve_cmd(repo, *flags)
    server = Server(name, cmd, READY_RE, workdir / f"{name}.log", timeout=120)
    try:
        grpc_url = f"{server.match.group(1)}:{server.match.group(2)}"
        http_url = f"http://{server.match.group(3)}:{server.match.group(4)}"
        before = json.loads(urllib.request.urlopen(f"{http_url}/v2/alerts", timeout=10).read())
        t0 = time.monotonic()
        cmd = h2load_cmd(grpc_url, frame, args.c, args.m, args.duration, args.warmup, None)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 120)
        seconds = time.monotonic() - t0
        if out.returncode != 0:
            raise RuntimeError(f"h2load failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
        after = json.loads(urllib.request.urlopen(f"{http_url}/v2/alerts", timeout=10).read())
        metrics = urllib.request.urlopen(f"{http_url}/metrics", timeout=10).read().decode()
    finally:
        server.stop()
    h2 = parse_h2load(out.stdout)
    ok = sum(
        float(v)
        for v in re.findall(
            rf'steadyserve_requests_total{{model="{MODEL}",outcome="success",version="\d+"}} (\S+)',
            metrics,
        )
    )
    return {
        "req_per_s": h2.get("req_per_s"),
        "h2load_requests": h2.get("requests"),
        "server_success": ok,
        "evaluations": after["evaluations"] - before["evaluations"],
        "evaluation_cpu_s": round(after["evaluation_cpu_s"] - before["evaluation_cpu_s"], 6),
        "evaluator_cpu_share": round(
            (after["evaluation_cpu_s"] - before["evaluation_cpu_s"]) / seconds, 6
        ),
        "last_evaluation_ms": after["last_evaluation_ms"],
        "firing": after["firing"],
        "receivers": after["receivers"],
        "loadavg": loadavg(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds a run")
    ap.add_argument("--warmup", type=float, default=2.0, help="h2load warm-up seconds a run")
    ap.add_argument("--repeats", type=int, default=3, help="(on, off) pairs")
    ap.add_argument("-c", type=int, default=4, help="h2load connections (default 4)")
    ap.add_argument("-m", type=int, default=16, help="streams per connection (default 16)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="alerts-cost-") as tmp:
        workdir = Path(tmp)
        repo = build_repo(workdir / "repo", allow_stand_in=False).root
        row = np.random.default_rng(0).standard_normal((1, N_FEATURES)).astype(np.float32)
        frame = workdir / "tabular.frame"
        frame.write_bytes(grpc_frame(request_bytes(row, model=MODEL, input_name=INPUT)))
        am_proc, am_url = start_alertmanager(workdir)
        sink = None
        if am_url is None:
            sink = Sink()
            am_url = sink.url
        modes = {
            "on": ["--alert-interval-s", "1", "--alertmanager-url", am_url],
            "off": ["--alert-interval-s", "3600"],
        }
        runs: dict[str, list[dict]] = {"on": [], "off": []}
        try:
            for i in range(args.repeats):
                # on, off, then off, on, ...: whatever favours a pair's first (or second)
                # run favours each mode alike
                for mode in ("on", "off") if i % 2 == 0 else ("off", "on"):
                    rec = one_run(repo, frame, modes[mode], args, workdir, f"{mode}{i}")
                    runs[mode].append(rec)
                    eprint(
                        f"{mode} #{i + 1}: {rec['req_per_s']:.0f} req/s, "
                        f"{rec['evaluations']} evaluations, "
                        f"evaluator CPU {100 * rec['evaluator_cpu_share']:.3f}%"
                    )
        finally:
            if am_proc is not None:
                am_proc.terminate()
                am_proc.wait(timeout=10)
            if sink is not None:
                sink.stop()

    on = [r["req_per_s"] for r in runs["on"]]
    off = [r["req_per_s"] for r in runs["off"]]
    pairs = [a / b for a, b in zip(on, off, strict=True)]
    result = {
        "machine": machine_info(),
        "args": vars(args),
        "receiver": "alertmanager" if am_proc is not None else "http sink",
        "runs": runs,
        "on_req_per_s": spread(on),
        "off_req_per_s": spread(off),
        "ratio_of_medians": round(statistics.median(on) / statistics.median(off), 4),
        "pair_ratios": spread(pairs),
    }
    path = write_json(result, f"alerts_cost_{stamp()}.json")
    print(
        md_table(
            ["", "req/s median", "min", "max", "spread", "evaluator CPU"],
            [
                [
                    mode,
                    f"{result[f'{mode}_req_per_s']['median']:.0f}",
                    f"{result[f'{mode}_req_per_s']['min']:.0f}",
                    f"{result[f'{mode}_req_per_s']['max']:.0f}",
                    f"{result[f'{mode}_req_per_s']['spread_pct']:.1f}%",
                    f"{100 * statistics.median(r['evaluator_cpu_share'] for r in runs[mode]):.3f}%",
                ]
                for mode in ("on", "off")
            ],
        )
    )
    print(
        f"\non/off: {result['ratio_of_medians']:.3f} (medians); pairs "
        f"{', '.join(f'{p:.3f}' for p in pairs)}\nwritten: {path}"
    )


if __name__ == "__main__":
    main()
