"""gRPC end to end: steadyserve vs a no-op grpc.aio server vs raw ONNX Runtime, in one run.

One run does:

1. builds the demo repository in a temp dir (``steadyserve.demo.build_demo_repository``,
   in a subprocess) and starts ``python -m steadyserve serve REPO`` on 127.0.0.1 (ports 0);
2. sends one request frame with a real gRPC client and checks the answer against plain ONNX
   Runtime on the same row; starts ``noop_server.py`` returning the very same response bytes
   (the transport limit) and checks it too;
3. drives both with h2load (pre-serialized gRPC frames, closed loop) at each concurrency,
   interleaving the two servers (noop, steadyserve, then steadyserve, noop, ...) and repeating;
   per run: req/s, latency percentiles from h2load's per-request ``--log-file``, CPU per request
   of the server and of h2load, load average. For steadyserve it also diffs the server's
   ModelStatistics (success / fail counters: h2load counts HTTP 200 as success even when
   the grpc-status trailer is an error, so every run is checked against the server's own
   count), batch sizes formed and queue / compute time;
4. times raw ONNX Runtime (same session options) at the batch sizes the server formed: the
   compute limit for each concurrency;
5. prints a markdown table and writes ``benchmarks/results/grpc_<date>.json``.

    python benchmarks/grpc_load.py                            # c = 1, 16, 64; 3 x 5 s each
    python benchmarks/grpc_load.py --concurrency 64 --repeats 5 --duration 10
    python benchmarks/grpc_load.py --noop-only                # transport + ORT parts only
    python benchmarks/grpc_load.py --driver pyload            # without h2load (Python client)

Concurrency C means C HTTP/2 connections with one stream each (``--mode conns``, like C
independent clients) or one connection with C concurrent streams (``--mode streams``, like
one shared gRPC channel); ``--mode both`` runs each.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from common import (
    INPUT,
    MODEL,
    N_FEATURES,
    ORT_SETTINGS,
    build_demo_repo,
    eprint,
    loadavg,
    machine_info,
    ort_rows_per_s,
    ort_session,
    override_config,
    percentiles,
    proc_cpu_seconds,
    spread,
    stamp,
    thread_cpu_seconds,
    write_json,
)
from frames import GRPC_METHOD, grpc_frame, request_bytes
from pyload import check_response

HERE = Path(__file__).resolve().parent
READY_RE = re.compile(r"steadyserve ready grpc=(\S+):(\d+) http=(\S+):(\d+)")
NOOP_RE = re.compile(r"noop ready grpc=(\S+):(\d+)")
REFERENCE_BATCHES = [1, 2, 4, 8, 16, 32, 64]


# --------------------------------------------------------------------------- processes


class Server:
    def __init__(self, name: str, cmd: list[str], ready_re: re.Pattern, log: Path, timeout: float):
        self.name = name
        self.cmd = cmd
        self.log = log
        self._fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, stdout=self._fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while True:
            text = log.read_text(errors="replace")
            m = ready_re.search(text)
            if m:
                self.match = m
                return
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {self.proc.returncode} before it was ready:\n"
                    f"$ {' '.join(cmd)}\n{text[-3000:]}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} not ready after {timeout:.0f} s:\n{text[-3000:]}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()


def grpc_call(url: str, payload: bytes, timeout: float = 30.0) -> bytes:
    import grpc

    with grpc.insecure_channel(url) as ch:
        call = ch.unary_unary(GRPC_METHOD, request_serializer=None, response_deserializer=None)
        return call(payload, timeout=timeout)


# --------------------------------------------------------------------------- server statistics


def model_statistics(url: str) -> dict | None:
    """ModelStatistics of the `tabular` model via tritonclient (counts as ints), or None."""
    try:
        import tritonclient.grpc as tc

        with tc.InferenceServerClient(url) as client:
            js = client.get_inference_statistics(model_name=MODEL, as_json=True)
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"[:300]}
    stats = (js.get("model_stats") or [{}])[0]
    inf = stats.get("inference_stats", {})

    def dur(d: dict | None) -> tuple[int, int]:
        d = d or {}
        return int(d.get("count", 0)), int(d.get("ns", 0))

    out = {
        "inference_count": int(stats.get("inference_count", 0)),
        "execution_count": int(stats.get("execution_count", 0)),
    }
    for k in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        out[k] = dur(inf.get(k))
    out["batch"] = {
        int(b["batch_size"]): (
            dur(b.get("compute_infer"))[0],
            dur(b.get("compute_infer"))[1],
        )
        for b in stats.get("batch_stats", [])
    }
    return out


def stats_delta(after: dict | None, before: dict | None) -> dict | None:
    if not after or not before or "error" in after or "error" in before:
        return after
    d: dict = {}
    for k in ("inference_count", "execution_count"):
        d[k] = after[k] - before[k]
    for k in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        d[k] = (after[k][0] - before[k][0], after[k][1] - before[k][1])
    batch = {}
    for b, (n, ns) in after["batch"].items():
        n0, ns0 = before["batch"].get(b, (0, 0))
        if n - n0:
            batch[b] = (n - n0, ns - ns0)
    d["batch"] = dict(sorted(batch.items()))
    return d


def metrics_text(http: str) -> str | None:
    try:
        with urllib.request.urlopen(f"http://{http}/metrics", timeout=10) as r:
            return r.read().decode()
    except Exception:
        return None


def metric_samples(text: str | None, prefix: str = "steadyserve_") -> dict[str, float]:
    """{'name{labels}': value} for every sample whose name starts with `prefix`."""
    if not text:
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith(prefix):
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}"] = s.value
    return out


def batch_hist_mean(after: dict[str, float], before: dict[str, float]) -> float | None:
    """Mean batch size from the `steadyserve_batch_size` histogram's _sum / _count deltas."""
    s = sum(
        v - before.get(k, 0) for k, v in after.items() if k.startswith("steadyserve_batch_size_sum")
    )
    n = sum(
        v - before.get(k, 0)
        for k, v in after.items()
        if k.startswith("steadyserve_batch_size_count")
    )
    return round(s / n, 2) if n else None


# --------------------------------------------------------------------------- drivers


def parse_h2load(text: str) -> dict:
    out: dict = {}
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    if m:
        out["finished_s"] = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
        out["req_per_s"] = float(m.group(3))
    m = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        text,
    )
    if m:
        keys = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
        out["requests"] = dict(zip(keys, map(int, m.groups()), strict=True))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        out["status"] = dict(zip(("2xx", "3xx", "4xx", "5xx"), map(int, m.groups()), strict=True))
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", text)
    if m:
        out["time_for_request"] = dict(zip(("min", "max", "mean", "sd"), m.groups(), strict=True))
    return out


def h2load_cmd(url: str, frame: Path, c: int, m: int, duration: float, warmup: float, log: Path):
    return [
        "h2load",
        "-D", f"{int(duration * 1000)}ms",
        "--warm-up-time", f"{int(warmup * 1000)}ms",
        "-c", str(c),
        "-m", str(m),
        "-t", "1",
        "-H", "content-type: application/grpc",
        "-H", "te: trailers",
        "-d", str(frame),
        "--log-file", str(log),
        f"http://{url}{GRPC_METHOD}",
    ]  # fmt: skip


def run_driver(
    driver: str,
    url: str,
    frame: Path,
    concurrency: int,
    mode: str,
    duration: float,
    warmup: float,
    server_pid: int,
    workdir: Path,
) -> dict:
    """One measured run against one server; samples the server's CPU over the measured part."""
    c, m = (concurrency, 1) if mode == "conns" else (1, concurrency)
    log = workdir / "h2load.log"
    log.unlink(missing_ok=True)  # h2load appends to an existing log file
    if driver == "h2load":
        cmd = h2load_cmd(url, frame, c, m, duration, warmup, log)
    else:
        cmd = [
            sys.executable, str(HERE / "pyload.py"), "--url", url, "-c", str(concurrency),
            "--channels", str(c), "-D", str(duration), "--warmup", str(warmup), "--json",
        ]  # fmt: skip
    load_before = loadavg()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t_start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # The driver's warm-up then its measured window: sample the server's CPU around the latter.
    time.sleep(max(0.0, t_start + warmup + (0.3 if driver == "pyload" else 0.0) - time.monotonic()))
    cpu0, w0 = proc_cpu_seconds(server_pid), time.monotonic()
    threads0 = thread_cpu_seconds(server_pid)
    time.sleep(max(0.0, w0 + duration - time.monotonic()))
    cpu1, w1 = proc_cpu_seconds(server_pid), time.monotonic()
    threads1 = thread_cpu_seconds(server_pid)
    out, _ = proc.communicate(timeout=duration + warmup + 120)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    rec: dict = {"concurrency": concurrency, "mode": mode, "connections": c, "streams_per_conn": m}
    if driver == "h2load":
        h = parse_h2load(out)
        rec.update(h)
        data = np.loadtxt(log, dtype=np.int64, ndmin=2) if log.stat().st_size else np.zeros((0, 3))
        ok = data[:, 1] == 200 if len(data) else np.zeros(0, bool)
        rec["non_200"] = int((~ok).sum())
        rec["latency"] = percentiles(data[ok, 2] / 1e6 if len(data) else [])
        done = h.get("requests", {}).get("succeeded", 0)
    else:
        js = json.loads(out.strip().splitlines()[-1])
        rec.update({k: js[k] for k in ("req_per_s", "succeeded", "errors", "latency")})
        rec["client_cpu_us_per_req"] = js["client_cpu_us_per_req"]
        done = js["succeeded"]
    client_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    rec["driver_cpu_us_per_req"] = round(1e6 * client_cpu / max(done, 1), 1)
    rate = rec.get("req_per_s") or 1.0
    rec["server_cpu_util"] = round((cpu1 - cpu0) / (w1 - w0), 2)
    rec["server_cpu_us_per_req"] = round(1e6 * (cpu1 - cpu0) / (w1 - w0) / rate, 1)
    # The main thread runs the asyncio loop (all handler Python); the others are gRPC's
    # poller, executors, ONNX Runtime. Sorted busiest first, µs of CPU per request.
    per_thread = sorted(
        ((t, threads1[t] - threads0.get(t, 0.0)) for t in threads1), key=lambda x: -x[1]
    )
    rec["server_cpu_us_per_req_by_thread"] = {
        ("main" if t == server_pid else str(t)): round(1e6 * v / (w1 - w0) / rate, 1)
        for t, v in per_thread
        if v > 0
    }
    rec["loadavg_before"] = load_before
    rec["loadavg_after"] = loadavg()
    return rec


# --------------------------------------------------------------------------- main


def build_repo(root: Path, allow_stand_in: bool):
    """The demo repository, built in a subprocess so that this process never imports
    steadyserve (whose protobuf messages would clash with tritonclient's)."""
    code = (
        "import sys; from pathlib import Path; from steadyserve.demo import build_demo_repository;"
        "print(build_demo_repository(Path(sys.argv[1])))"
    )
    r = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True)
    if r.returncode != 0:
        if not allow_stand_in:
            raise RuntimeError(f"building the demo repository failed:\n{r.stderr[-3000:]}")
        return build_demo_repo(root, allow_stand_in=True)  # stand-in (no steadyserve import)
    from common import demo_repo_at

    return demo_repo_at(Path(r.stdout.strip().splitlines()[-1]))


def main() -> None:  # noqa: C901 - one linear script
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="driver warm-up seconds per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mode", choices=["conns", "streams", "both"], default="conns")
    ap.add_argument(
        "--noop-mode",
        action="append",
        default=[],
        choices=["future", "thread"],
        help="also run noop_server.py in this --mode (e.g. thread: the cost of handing each "
        "request to a worker thread and back, with no work)",
    )
    ap.add_argument("--driver", choices=["auto", "h2load", "pyload"], default="auto")
    ap.add_argument(
        "--noop-only", action="store_true", help="no steadyserve server (tooling check)"
    )
    ap.add_argument("--server-arg", action="append", default=[], help="extra `serve` argument")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the demo's tabular/config.yaml, e.g. batching.max_queue_delay_us=500",
    )
    ap.add_argument("--ready-timeout", type=float, default=120.0)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, frames)")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    args = ap.parse_args()
    if args.repeats < 1 or any(c < 1 for c in args.concurrency):
        ap.error("--repeats and --concurrency must be integers >= 1")
    driver = args.driver
    if driver == "auto":
        driver = "h2load" if shutil.which("h2load") else "pyload"
    modes = ["conns", "streams"] if args.mode == "both" else [args.mode]

    info = machine_info()
    eprint(f"nproc {info['nproc']}, load {info['loadavg_at_start']}, driver {driver}")
    tmpdir = Path(tempfile.mkdtemp(prefix="ssgrpc-"))
    servers: list[Server] = []
    result: dict = {
        "benchmark": "grpc",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": info,
        "driver": driver,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "repeats": args.repeats,
        "ort_settings": ORT_SETTINGS,
    }
    try:
        demo = build_repo(tmpdir / "repo", allow_stand_in=args.noop_only)
        result["model_source"] = demo.source
        result["config_overrides"] = args.set
        result["model_config"] = override_config(demo.root, args.set) or demo.config_text
        row = np.random.default_rng(0).standard_normal((1, N_FEATURES)).astype(np.float32)
        payload = request_bytes(row)
        frame = tmpdir / "tabular.frame"
        frame.write_bytes(grpc_frame(payload))
        result["request_bytes"] = len(payload)
        sess = ort_session(demo.model_path)
        want = sess.run(None, {INPUT: row})[0]

        targets: dict[str, dict] = {}
        response_file = None
        if not args.noop_only:
            cmd = [sys.executable, "-m", "steadyserve", "serve", str(demo.root),
                   "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0",
                   *args.server_arg]  # fmt: skip
            ss = Server(
                "steadyserve", cmd, READY_RE, tmpdir / "steadyserve.log", args.ready_timeout
            )
            servers.append(ss)
            url = f"{ss.match.group(1)}:{ss.match.group(2)}"
            http = f"{ss.match.group(3)}:{ss.match.group(4)}"
            raw = grpc_call(url, payload)
            got = check_response(raw)
            np.testing.assert_allclose(
                np.asarray(got["values"]).reshape(1, 2), want, rtol=1e-4, atol=1e-5
            )
            eprint(f"steadyserve at {url} (http {http}): answer {got['values']} matches ORT")
            response_file = tmpdir / "response.bin"
            response_file.write_bytes(raw)
            result["response_bytes"] = len(raw)
            targets["steadyserve"] = {"url": url, "http": http, "server": ss}
        for noop_mode in ["immediate", *args.noop_mode]:
            name = "noop" if noop_mode == "immediate" else f"noop-{noop_mode}"
            cmd = [sys.executable, str(HERE / "noop_server.py"), "--port", "0", "--mode", noop_mode]
            if response_file:
                cmd += ["--response-file", str(response_file)]
            noop = Server(name, cmd, NOOP_RE, tmpdir / f"{name}.log", 30)
            servers.append(noop)
            nurl = f"{noop.match.group(1)}:{noop.match.group(2)}"
            check_response(grpc_call(nurl, payload))
            result.setdefault("response_bytes", len(grpc_call(nurl, payload)))
            targets[name] = {"url": nurl, "server": noop}

        # Warm-up: a few seconds against each server, not measured.
        for name, t in targets.items():
            run_driver(driver, t["url"], frame, 16, "conns", 2.0, 0.5, t["server"].pid, tmpdir)
            eprint(f"warmed up {name}")

        runs: list[dict] = []
        for r in range(args.repeats):
            for mode in modes:
                for c in args.concurrency:
                    if mode == "streams" and c == 1 and "conns" in modes:
                        continue  # identical to conns at c = 1
                    order = list(targets) if r % 2 == 0 else list(reversed(targets))
                    for name in order:
                        t = targets[name]
                        before = after = None
                        mbefore = mafter = {}
                        if name == "steadyserve":
                            before = model_statistics(t["url"])
                            mbefore = metric_samples(metrics_text(t["http"]))
                        rec = run_driver(driver, t["url"], frame, c, mode, args.duration,
                                         args.warmup, t["server"].pid, tmpdir)  # fmt: skip
                        rec.update({"target": name, "repeat": r})
                        if name == "steadyserve":
                            after = model_statistics(t["url"])
                            mafter = metric_samples(metrics_text(t["http"]))
                            rec["server_stats"] = check_run(
                                rec, stats_delta(after, before), outcome_delta(mafter, mbefore)
                            )
                            rec["batch_hist_mean"] = batch_hist_mean(mafter, mbefore)
                        runs.append(rec)
                        if name == "steadyserve" and rec["server_stats"].get("ok") is False:
                            eprint(
                                f"WARNING: the server counted failures in this run: "
                                f"{rec['server_stats']}"
                            )
                        lat = rec.get("latency", {})
                        eprint(
                            f"r{r} {mode:7s} c={c:<3d} {name:11s}"
                            f" {rec.get('req_per_s', 0):8.1f} req/s"
                            f"  p50 {lat.get('p50_ms', float('nan')):7.3f} ms"
                            f"  p99 {lat.get('p99_ms', float('nan')):7.3f} ms"
                            f"  srv CPU {rec['server_cpu_us_per_req']:6.1f} us/req"
                            f" ({rec['server_cpu_util']:.2f} cores)"
                            + (
                                f"  mean batch {rec['server_stats'].get('mean_batch')}"
                                f" ok={rec['server_stats'].get('ok')}"
                                if name == "steadyserve" and rec.get("server_stats")
                                else ""
                            )
                            + f"  load {rec['loadavg_after'][0]}"
                        )
        result["runs"] = runs
        if "steadyserve" in targets:
            result["metrics_after"] = metric_samples(metrics_text(targets["steadyserve"]["http"]))
            result["server_log_tail"] = ss.log.read_text(errors="replace")[-4000:]
    finally:
        for s in reversed(servers):
            s.stop()
        if not args.keep:
            shutil.rmtree(tmpdir, ignore_errors=True)
        else:
            eprint(f"kept {tmpdir}")

    # Raw ONNX Runtime at the batch sizes the server formed (after the servers are gone, so
    # it has the cores to itself) -- the compute limit.
    seen = set(REFERENCE_BATCHES)
    for rec in result["runs"]:
        st = rec.get("server_stats") or {}
        seen.update(int(b) for b in (st.get("batch") or {}))
    # Two passes over the sizes, best of both: a neighbour's burst then hits one pass only.
    ort_table: dict[int, dict] = {}
    for _ in range(2):
        for b in sorted(seen):
            m = ort_rows_per_s(sess, b)
            if b not in ort_table or m["rows_per_s"] > ort_table[b]["rows_per_s"]:
                ort_table[b] = m
    result["ort"] = {str(b): v for b, v in ort_table.items()}
    for rec in result["runs"]:
        st = rec.get("server_stats") or {}
        batches = st.get("batch") or {}
        if batches:
            rows = sum(b * n for b, (n, _ns) in batches.items())
            secs = sum(n / ort_table[b]["runs_per_s"] for b, (n, _ns) in batches.items())
            rec["ort_compute_limit_rows_per_s"] = round(rows / secs, 1) if secs else None

    result["summary"] = summarize(result["runs"], modes, args.concurrency)
    result["loadavg_at_end"] = loadavg()
    if not args.no_save:
        path = write_json(result, f"grpc_{stamp()}.json")
        eprint(f"wrote {path}")
    print_markdown(result, modes, args.concurrency)


def outcome_delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """{outcome: requests} of the `tabular` model from steadyserve_requests_total deltas."""
    out: dict[str, float] = {}
    for k, v in after.items():
        if not k.startswith("steadyserve_requests_total{"):
            continue
        d = v - before.get(k, 0)
        outcome = re.search(r"outcome=([^,}]*)", k)
        if not d or not outcome:
            continue
        # Answers by another model (a backup after failover) are counted apart.
        key = outcome.group(1) if f"model={MODEL}," in k else f"other_models_{outcome.group(1)}"
        out[key] = out.get(key, 0) + d
    return out


def check_run(rec: dict, delta: dict | None, outcomes: dict[str, float] | None = None) -> dict:
    """Compare the driver's success count with the server's own counters for one run:
    h2load counts HTTP 200 as success even when the grpc-status trailer is an error."""
    succeeded = rec.get("requests", {}).get("succeeded", rec.get("succeeded", 0))
    outcomes = outcomes or {}
    metrics_ok = None
    # A duration-based run ends by resetting the streams still in flight: the server counts
    # up to `concurrency` of them as cancelled, which is not a failure.
    in_flight = rec["connections"] * rec["streams_per_conn"]
    if outcomes:
        failed = sum(
            v
            for k, v in outcomes.items()
            if k not in ("success", "cancelled") and not k.startswith("other_models_")
        )
        metrics_ok = (
            failed == 0
            and outcomes.get("cancelled", 0) <= in_flight
            and outcomes.get("success", 0) >= succeeded
        )
    if not delta or "error" in delta:
        return {"ok": metrics_ok, "note": "no ModelStatistics", "metrics_outcomes": outcomes,
                **(delta or {})}  # fmt: skip
    # The server's counters also include the driver's warm-up requests.
    ok = delta["fail"][0] == 0 and delta["success"][0] >= succeeded and metrics_ok is not False
    execs = sum(n for n, _ in delta["batch"].values())
    rows = sum(b * n for b, (n, _) in delta["batch"].items())
    out = {
        "ok": ok,
        "server_success": delta["success"][0],
        "server_fail": delta["fail"][0],
        "driver_succeeded": succeeded,
        "metrics_outcomes": outcomes,
        "batch": {b: v for b, v in delta["batch"].items()},
        "mean_batch": round(rows / execs, 2) if execs else None,
    }
    if delta["success"][0]:
        out["queue_us_per_req"] = (
            round(delta["queue"][1] / delta["queue"][0] / 1e3, 1) if delta["queue"][0] else None
        )
        out["compute_infer_us_per_exec"] = (
            round(sum(ns for _, ns in delta["batch"].values()) / execs / 1e3, 1) if execs else None
        )
        out["success_us_per_req"] = round(delta["success"][1] / delta["success"][0] / 1e3, 1)
    return out


def summarize(runs: list[dict], modes: list[str], concurrency: list[int]) -> dict:
    summary: dict = {}
    for mode in modes:
        for c in concurrency:
            key = f"{mode}/c{c}"
            if mode == "streams" and c == 1 and "conns" in modes:
                continue  # one stream on one connection either way: reported under conns
            sel = [r for r in runs if r["concurrency"] == c and (r["mode"] == mode or c == 1)]
            if not sel:
                continue
            entry: dict = {}
            for name in sorted({r["target"] for r in sel}):
                rs = [r for r in sel if r["target"] == name]
                if not rs:
                    continue
                entry[name] = {
                    "req_per_s": spread([r["req_per_s"] for r in rs]),
                    "p50_ms": spread([r["latency"]["p50_ms"] for r in rs]),
                    "p99_ms": spread([r["latency"]["p99_ms"] for r in rs]),
                    "server_cpu_us_per_req": spread([r["server_cpu_us_per_req"] for r in rs]),
                }
                if name == "steadyserve":
                    mb = [r["server_stats"]["mean_batch"] for r in rs
                          if (r.get("server_stats") or {}).get("mean_batch")]  # fmt: skip
                    if mb:
                        entry[name]["mean_batch"] = spread(mb)
                    lim = [r["ort_compute_limit_rows_per_s"] for r in rs
                           if r.get("ort_compute_limit_rows_per_s")]  # fmt: skip
                    if lim:
                        entry[name]["ort_compute_limit_rows_per_s"] = spread(lim)
                    entry[name]["all_runs_verified"] = all(
                        (r.get("server_stats") or {}).get("ok") for r in rs
                    )
            if "noop" in entry and "steadyserve" in entry:
                # paired by repeat: same minute, same neighbours
                pairs = []
                for r in {x["repeat"] for x in sel}:
                    a = [x for x in sel if x["repeat"] == r and x["target"] == "noop"]
                    b = [x for x in sel if x["repeat"] == r and x["target"] == "steadyserve"]
                    if a and b:
                        pairs.append((a[0], b[0]))
                entry["throughput_ratio"] = spread(
                    [b["req_per_s"] / a["req_per_s"] for a, b in pairs]
                )
                entry["p50_delta_ms"] = spread(
                    [b["latency"]["p50_ms"] - a["latency"]["p50_ms"] for a, b in pairs]
                )
            summary[key] = entry
    return summary


def print_markdown(result: dict, modes: list[str], concurrency: list[int]) -> None:
    m = result["machine"]
    s = result["summary"]
    print(
        f"\n### gRPC ModelInfer, 1 row, {result['driver']}, {result['repeats']} x "
        f"{result['duration_s']:g} s per point (median, [min-max])\n"
        f"{result['when']}, nproc {m['nproc']}, load at start {m['loadavg_at_start']}, "
        f"at end {result['loadavg_at_end']}; model {result.get('model_source')}; request "
        f"{result.get('request_bytes')} B, response {result.get('response_bytes')} B"
        + (
            f"; config overrides {result['config_overrides']}"
            if result.get("config_overrides")
            else ""
        )
        + "\n"
    )
    print(
        "| mode | c | noop req/s | steadyserve req/s | ratio | noop p50 / p99 ms "
        "| steadyserve p50 / p99 ms | Δp50 ms | mean batch | ORT limit rows/s | srv CPU µs/req "
        "(noop / ss) | verified |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")

    def rng(d: dict | None, fmt: str = ".0f") -> str:
        if not d:
            return "-"
        return f"{d['median']:{fmt}} [{d['min']:{fmt}}-{d['max']:{fmt}}]"

    for mode in modes:
        for c in concurrency:
            e = s.get(f"{mode}/c{c}")
            if not e or (mode == "streams" and c == 1 and "conns" in modes):
                continue
            n, ss = e.get("noop", {}), e.get("steadyserve", {})
            print(
                f"| {mode} | {c} | {rng(n.get('req_per_s'))} | {rng(ss.get('req_per_s'))} | "
                f"{rng(e.get('throughput_ratio'), '.2f')} | "
                f"{n['p50_ms']['median']:.3f} / {n['p99_ms']['median']:.3f} | "
                + (
                    f"{ss['p50_ms']['median']:.3f} / {ss['p99_ms']['median']:.3f} | "
                    if ss
                    else "- | "
                )
                + f"{rng(e.get('p50_delta_ms'), '.3f')} | "
                f"{rng(ss.get('mean_batch'), '.1f')} | "
                f"{rng(ss.get('ort_compute_limit_rows_per_s'))} | "
                f"{n['server_cpu_us_per_req']['median']:.0f} / "
                + (f"{ss['server_cpu_us_per_req']['median']:.0f} | " if ss else "- | ")
                + f"{ss.get('all_runs_verified', '-')} |"
            )
    extra = sorted({n for e in s.values() for n in e if n.startswith("noop-")})
    if extra:
        print("\nNo-op variants (same run):\n")
        print("| mode | c | server | req/s | p50 / p99 ms | srv CPU µs/req |")
        print("| --- | ---: | --- | ---: | ---: | ---: |")
        for key, e in s.items():
            mode, c = key.split("/c")
            for name in ["noop", *extra, "steadyserve"]:
                x = e.get(name)
                if x:
                    print(
                        f"| {mode} | {c} | {name} | {rng(x['req_per_s'])} | "
                        f"{x['p50_ms']['median']:.3f} / {x['p99_ms']['median']:.3f} | "
                        f"{x['server_cpu_us_per_req']['median']:.0f} |"
                    )
    ort = {b: v for b, v in result["ort"].items() if int(b) in REFERENCE_BATCHES}
    print("\nRaw ONNX Runtime (1 thread, no spinning), by batch size (all sizes in the JSON):\n")
    print("| batch | " + " | ".join(ort) + " |")
    print("| --- |" + " ---: |" * len(ort))
    print("| rows/s | " + " | ".join(f"{v['rows_per_s']:.0f}" for v in ort.values()) + " |")
    print("| µs/run | " + " | ".join(f"{v['run_us_median']:.1f}" for v in ort.values()) + " |")
    aims = []
    e64 = s.get(f"{modes[0]}/c64", {})
    if "throughput_ratio" in e64:
        r = e64["throughput_ratio"]["median"]
        aims.append(
            f"c=64 throughput >= 85% of noop: {r:.0%} -> {'met' if r >= 0.85 else 'NOT met'}"
        )
    e1 = s.get(f"{modes[0]}/c1", {})
    if "p50_delta_ms" in e1:
        d = e1["p50_delta_ms"]["median"]
        aims.append(
            f"c=1 p50 within 0.5 ms of noop: +{d:.3f} ms -> {'met' if d <= 0.5 else 'NOT met'}"
        )
    if aims:
        print("\nAims: " + "; ".join(aims))


if __name__ == "__main__":
    main()
