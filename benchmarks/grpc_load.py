"""gRPC end to end: steadyserve's frontends vs a no-op grpc.aio server vs raw ONNX Runtime.

One run does, each figure beside the limit measured in the same run:

1. **throughput** -- builds a repository with the demo ``tabular`` model and ``wide`` (a
   512-2048-2048-10 FP32 MLP, ``common.build_wide_repo``, dynamic batching like the demo's,
   ``intra_op_threads: auto``), starts ``steadyserve serve REPO --frontend F`` for each of
   ``--frontends`` (native, grpcio) and a no-op grpc.aio server per model
   (``noop_server.py``, returning the very bytes steadyserve answered); checks one answer of
   every server and model against plain ONNX Runtime; then drives every (server, model,
   concurrency) with h2load, 1 row a request, servers interleaved (noop, grpcio, native,
   then reversed, ...) and repeated. Per run: req/s, latency percentiles (h2load's
   per-request ``--log-file``), server CPU per request split by thread (I/O threads,
   executor, main, other; ``common.cpu_split``), RSS. For steadyserve it diffs the
   server's ModelStatistics and ``steadyserve_requests_total`` (h2load counts HTTP 200 as
   success even when the grpc-status trailer is an error, so every run is checked against
   the server's own count) and the batch sizes formed;
2. **overload** -- per frontend, 128 connections with 25 ms gRPC deadlines offered
   ``--overload-levels`` x the frontend's own c=64 throughput of this run (and ``max``: as
   fast as h2load goes): goodput, refusals and their latency (``slo_bench.frontend_overload``);
3. **memory** -- native frontend: 1M requests at c=64 with the server's RSS every 100k,
   and the memory of 1000 idle HTTP/2 connections (``memory_soak.py``);
4. **perf** -- if ``perf`` is installed: the native server's hottest symbols, by thread,
   during a c=64 run of the demo model;
5. after the servers stop, raw ONNX Runtime (the servers' session options, the thread
   count ``auto`` chose) at every batch size the servers formed: the compute limit of each
   run; and one-row ``session.run`` with ONNX Runtime's default threads.

Prints markdown tables, writes ``benchmarks/results/grpc_<date>.json``.

    python benchmarks/grpc_load.py                       # everything, ~13 min on 2 cores
    python benchmarks/grpc_load.py --duration 2 --repeats 1 --parts throughput
    python benchmarks/grpc_load.py --frontends native --models demo --concurrency 64
    python benchmarks/grpc_load.py --noop-only --models demo  # transport + ORT parts only

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import (
    INPUT,
    MODEL,
    N_FEATURES,
    ORT_SETTINGS,
    OUTPUT,
    THREAD_GROUPS,
    WIDE_LAYERS,
    WIDE_MODEL,
    build_demo_repo,
    build_wide_repo,
    compute_limit_rows_per_s,
    cpu_split,
    eprint,
    fmt_spread,
    h2load_cmd,
    loadavg,
    machine_info,
    md_table,
    ort_batch_timing,
    ort_session,
    override_config,
    parse_h2load,
    percentiles,
    perf_top,
    proc_cpu_seconds,
    read_h2load_log,
    rss_bytes,
    spread,
    stamp,
    thread_cpu_seconds,
    thread_names,
    write_json,
)
from frames import GRPC_METHOD, grpc_frame, request_bytes

HERE = Path(__file__).resolve().parent
READY_RE = re.compile(r"steadyserve ready grpc=(\S+):(\d+) http=(\S+):(\d+)")
NOOP_RE = re.compile(r"noop ready grpc=(\S+):(\d+)")
REFERENCE_BATCHES = [1, 2, 4, 8, 16, 32, 64]
FRONTENDS = ("native", "grpcio")
MODEL_NAMES = {"demo": MODEL, "wide": WIDE_MODEL}
PARTS = ("throughput", "overload", "memory", "perf")
AUTO_THREADS_RE = re.compile(r"intra_op_threads auto: (\d+)")

__all__ = [  # what the other scripts here import
    "NOOP_RE", "READY_RE", "Server", "build_repo", "grpc_call", "h2load_cmd", "metric_samples",
    "metrics_text", "model_statistics", "parse_h2load", "run_driver",
]  # fmt: skip


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

    def alive(self) -> bool:
        return self.proc.poll() is None

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


def check_answer(raw: bytes, want: np.ndarray) -> dict:
    """Parse one ModelInferResponse and compare its `probabilities` with ONNX Runtime's."""
    from tritonclient.grpc import service_pb2 as pb

    resp = pb.ModelInferResponse.FromString(raw)
    names = [o.name for o in resp.outputs]
    if OUTPUT not in names:
        raise RuntimeError(f"response has outputs {names}, expected '{OUTPUT}'")
    i = names.index(OUTPUT)
    out = resp.outputs[i]
    if list(out.shape) != list(want.shape) or out.datatype != "FP32":
        raise RuntimeError(f"'{OUTPUT}' is {out.datatype}{list(out.shape)}, expected FP32"
                           f"{list(want.shape)}")  # fmt: skip
    if resp.raw_output_contents:
        got = np.frombuffer(resp.raw_output_contents[i], dtype="<f4").reshape(want.shape)
    else:
        got = np.asarray(out.contents.fp32_contents, dtype=np.float32).reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    return {"model_name": resp.model_name, "max_abs_diff": float(np.abs(got - want).max()),
            "bytes": len(raw)}  # fmt: skip


# --------------------------------------------------------------------------- server statistics


def model_statistics(url: str, model: str = MODEL) -> dict | None:
    """ModelStatistics of `model` via tritonclient (counts as ints), or {"error": ...}."""
    try:
        import tritonclient.grpc as tc

        with tc.InferenceServerClient(url) as client:
            js = client.get_inference_statistics(model_name=model, as_json=True)
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
        int(b["batch_size"]): dur(b.get("compute_infer")) for b in stats.get("batch_stats", [])
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


def batch_hist_mean(
    after: dict[str, float], before: dict[str, float], model: str | None = None
) -> float | None:
    """Mean batch size from the `steadyserve_batch_size` histogram's _sum / _count deltas
    (of `model` only, if given)."""

    def total(name: str) -> float:
        return sum(
            v - before.get(k, 0)
            for k, v in after.items()
            if k.startswith(name) and (model is None or f"model={model}," in k)
        )

    n = total("steadyserve_batch_size_count")
    return round(total("steadyserve_batch_size_sum") / n, 2) if n else None


def outcome_delta(
    after: dict[str, float], before: dict[str, float], model: str = MODEL
) -> dict[str, float]:
    """{outcome: requests} of `model` from steadyserve_requests_total deltas."""
    out: dict[str, float] = {}
    for k, v in after.items():
        if not k.startswith("steadyserve_requests_total{"):
            continue
        d = v - before.get(k, 0)
        outcome = re.search(r"outcome=([^,}]*)", k)
        if not d or not outcome:
            continue
        # Answers by another model (a backup after failover) are counted apart.
        key = outcome.group(1) if f"model={model}," in k else f"other_models_{outcome.group(1)}"
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
        "batch": dict(delta["batch"]),
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


# --------------------------------------------------------------------------- driver


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
    names: dict[int, str] | None = None,
) -> dict:
    """One measured run against one server; samples the server's CPU (per thread) over the
    measured part. `names` ({tid: thread name}, ``common.thread_names``) adds the CPU split
    by thread group."""
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
        data = read_h2load_log(log)
        ok = data[:, 1] == 200
        rec["non_200"] = int((~ok).sum())
        rec["latency"] = percentiles(data[ok, 2] / 1e6)
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
    # Busiest first, µs of CPU per request; "main" is the thread that runs the asyncio loop.
    per_thread = sorted(
        ((t, threads1[t] - threads0.get(t, 0.0)) for t in threads1), key=lambda x: -x[1]
    )
    rec["server_cpu_us_per_req_by_thread"] = {
        ("main" if t == server_pid else str(t)): round(1e6 * v / (w1 - w0) / rate, 1)
        for t, v in per_thread
        if v > 0
    }
    if names is not None:
        if set(threads1) - set(names):  # a thread born since (an executor after inline)
            names.update(thread_names(server_pid))
        rec["server_cpu_split"] = cpu_split(server_pid, threads0, threads1, names, rate * (w1 - w0))
    rec["server_rss_bytes"] = rss_bytes(server_pid)
    rec["loadavg_before"] = load_before
    rec["loadavg_after"] = loadavg()
    return rec


# --------------------------------------------------------------------------- repository


@dataclass
class Workload:
    """One model as the benchmark sends it: 1 row a request."""

    key: str  # "demo" or "wide"
    model: str  # its name in the repository
    model_path: Path
    n_features: int
    payload: bytes  # the serialized ModelInferRequest
    frame: Path  # the same, as an h2load body (-d)
    want: np.ndarray  # ONNX Runtime's answer for the row
    config_text: str | None
    response_file: Path | None = None  # what steadyserve answered (the no-op returns it)


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


def prepare(tmpdir: Path, args) -> tuple[Path, str, dict[str, Workload]]:
    """The repository (demo + wide) and one Workload per --models entry."""
    demo = build_repo(tmpdir / "repo", allow_stand_in=args.noop_only)
    root = demo.root
    workloads: dict[str, Workload] = {}
    specs = {}
    if "demo" in args.models:
        text = override_config(root, args.set) or demo.config_text
        specs["demo"] = (MODEL, demo.model_path, N_FEATURES, text)
    if "wide" in args.models:
        wide = build_wide_repo(root, intra_op_threads="auto")
        text = override_config(root, args.set_wide, WIDE_MODEL) or wide.config_text
        specs["wide"] = (WIDE_MODEL, wide.model_path, WIDE_LAYERS[0], text)
    for key, (model, path, n_features, text) in specs.items():
        row = np.random.default_rng(0).standard_normal((1, n_features)).astype(np.float32)
        payload = request_bytes(row, model=model)
        frame = tmpdir / f"{key}.frame"
        frame.write_bytes(grpc_frame(payload))
        want = ort_session(path).run(None, {INPUT: row})[0]
        workloads[key] = Workload(key, model, path, n_features, payload, frame, want, text)
    return root, demo.source, workloads


# --------------------------------------------------------------------------- parts


def start_servers(args, tmpdir, servers, targets, threads_by_server, result):
    """The repository, one steadyserve server per frontend (one after the other: each
    times its warm-up alone) serving every model, and a no-op server per model returning
    what steadyserve answered; every answer is checked against ONNX Runtime."""
    root, source, workloads = prepare(tmpdir, args)
    result["model_source"] = source
    result["config_overrides"] = {"demo": args.set, "wide": args.set_wide}
    result["model_config"] = {k: w.config_text for k, w in workloads.items()}
    result["request_bytes"] = {k: len(w.payload) for k, w in workloads.items()}
    result["response_bytes"] = {}
    for fe in args.frontends:
        cmd = [sys.executable, "-m", "steadyserve", "serve", str(root), "--host",
               "127.0.0.1", "--grpc-port", "0", "--http-port", "0", "--frontend", fe,
               *args.server_arg]  # fmt: skip
        srv = Server(fe, cmd, READY_RE, tmpdir / f"{fe}.log", args.ready_timeout)
        servers.append(srv)
        url = f"{srv.match.group(1)}:{srv.match.group(2)}"
        http = f"{srv.match.group(3)}:{srv.match.group(4)}"
        for key, wl in workloads.items():
            raw = grpc_call(url, wl.payload)
            got = check_answer(raw, wl.want)
            eprint(f"{fe} at {url}: {key} answer matches ONNX Runtime "
                   f"(max |diff| {got['max_abs_diff']:.2g}, {len(raw)} B)")  # fmt: skip
            if wl.response_file is None:
                wl.response_file = tmpdir / f"{key}.response"
                wl.response_file.write_bytes(raw)
            result["response_bytes"][f"{fe}/{key}"] = len(raw)
            targets[(fe, key)] = {"url": url, "http": http, "server": srv}
        threads_by_server[fe] = {
            key: auto_threads(srv.log, wl.model) for key, wl in workloads.items()
        }
    result["intra_op_threads_chosen"] = threads_by_server
    for key, wl in workloads.items():
        variants = ["immediate", *args.noop_mode] if key == "demo" else ["immediate"]
        for noop_mode in variants:
            name = "noop" if noop_mode == "immediate" else f"noop-{noop_mode}"
            cmd = [sys.executable, str(HERE / "noop_server.py"), "--port", "0",
                   "--mode", noop_mode]  # fmt: skip
            if wl.response_file:
                cmd += ["--response-file", str(wl.response_file)]
            noop = Server(name, cmd, NOOP_RE, tmpdir / f"{name}-{key}.log", 30)
            servers.append(noop)
            nurl = f"{noop.match.group(1)}:{noop.match.group(2)}"
            raw = grpc_call(nurl, wl.payload)
            if wl.response_file:
                check_answer(raw, wl.want)
            result["response_bytes"][f"{name}/{key}"] = len(raw)
            targets[(name, key)] = {"url": nurl, "server": noop}
    server_order = ["noop", *(f"noop-{m}" for m in args.noop_mode), *reversed(args.frontends)]
    return root, workloads, server_order


def warm_up(driver: str, targets: dict, workloads: dict, tmpdir: Path) -> None:
    for (name, key), t in targets.items():
        run_driver(driver, t["url"], workloads[key].frame, 16, "conns", 2.0, 0.5,
                   t["server"].pid, tmpdir)  # fmt: skip
        eprint(f"warmed up {name} / {key}")


def throughput(args, driver, targets, workloads, modes, server_order, names, tmpdir) -> list:
    runs: list[dict] = []
    for r in range(args.repeats):
        for mode in modes:
            for key, wl in workloads.items():
                for c in args.concurrency:
                    if mode == "streams" and c == 1 and "conns" in modes:
                        continue  # identical to conns at c = 1
                    order = server_order if r % 2 == 0 else list(reversed(server_order))
                    for name in order:
                        t = targets.get((name, key))
                        if t is None:
                            continue
                        runs.append(measure(args, driver, name, t, wl, c, mode, r, names, tmpdir))
    return runs


def measure(args, driver, name, t, wl, c, mode, r, names, tmpdir) -> dict:
    ss = "http" in t  # a steadyserve server (not a no-op)
    before = mbefore = None
    if ss:
        before = model_statistics(t["url"], wl.model)
        mbefore = metric_samples(metrics_text(t["http"]))
    rec = run_driver(driver, t["url"], wl.frame, c, mode, args.duration, args.warmup,
                     t["server"].pid, tmpdir, names.get(t["server"].pid))  # fmt: skip
    rec.update({"target": name, "model": wl.key, "repeat": r})
    if ss:
        after = model_statistics(t["url"], wl.model)
        mafter = metric_samples(metrics_text(t["http"]))
        rec["server_stats"] = check_run(
            rec, stats_delta(after, before), outcome_delta(mafter, mbefore, wl.model)
        )
        rec["batch_hist_mean"] = batch_hist_mean(mafter, mbefore, wl.model)
        if rec["server_stats"].get("ok") is False:
            eprint(f"WARNING: {name} counted failures in this run: {rec['server_stats']}")
    if not t["server"].alive():
        raise RuntimeError(f"{name} exited during the run; log: {t['server'].log}")
    lat = rec.get("latency", {})
    split = (rec.get("server_cpu_split") or {}).get("us_per_req", {})
    eprint(
        f"r{r} {mode:7s} {wl.key:4s} c={c:<3d} {name:11s}"
        f" {rec.get('req_per_s', 0):8.1f} req/s"
        f"  p50 {lat.get('p50_ms', float('nan')):7.3f} ms"
        f"  p99 {lat.get('p99_ms', float('nan')):7.3f} ms"
        f"  srv CPU {rec['server_cpu_us_per_req']:6.1f} us/req"
        f" ({rec['server_cpu_util']:.2f} cores; "
        + "/".join(f"{split.get(g, 0):.0f}" for g in THREAD_GROUPS)
        + ")"
        + (
            f"  mean batch {rec['server_stats'].get('mean_batch')}"
            f" ok={rec['server_stats'].get('ok')}"
            if ss
            else ""
        )
        + f"  load {rec['loadavg_after'][0]}"
    )
    return rec


def overload_part(args, targets, workloads, runs, tmpdir) -> dict:
    from slo_bench import frontend_overload

    wl = workloads["demo"]
    capacity: dict[str, float] = {}
    for fe in args.frontends:
        if (fe, "demo") not in targets:
            continue
        sel = [r["req_per_s"] for r in runs if r["target"] == fe and r["model"] == "demo"
               and r["concurrency"] == 64 and r["mode"] == "conns"]  # fmt: skip
        if not sel:  # c=64 not in this run's sweep: measure it now
            t = targets[(fe, "demo")]
            sel = [run_driver("h2load", t["url"], wl.frame, 64, "conns", args.duration,
                              args.warmup, t["server"].pid, tmpdir)["req_per_s"]]  # fmt: skip
        capacity[fe] = float(np.median(sel))
    points = []
    for rep in range(args.overload_repeats):
        order = list(capacity) if rep % 2 == 0 else list(reversed(capacity))
        for level in args.overload_levels:
            for fe in order:
                t = targets[(fe, "demo")]
                p = frontend_overload(
                    t["url"], t["http"], wl.frame, capacity[fe], level,
                    duration=args.overload_duration, workdir=tmpdir, model=wl.model, seed=rep,
                )  # fmt: skip
                p.update(server=fe, repeat=rep)
                points.append(p)
                if not t["server"].alive():
                    raise RuntimeError(f"{fe} exited under overload; log: {t['server'].log}")
                pr = p["probe"]
                eprint(
                    f"overload {fe:6s} {level} rep {rep}: offered {p['offered_per_s']:.0f}/s "
                    f"answered OK {p['answered_ok_per_s']:.0f}/s goodput >= "
                    f"{p['goodput_per_s']:.0f}/s ({p['goodput_vs_capacity']:.0%} of "
                    f"{capacity[fe]:.0f}) refused {p['refused_share']:.1%} probe refusal "
                    f"p50 {pr['refusal_p50_ms']} ms (load {p['loadavg_after'][0]})"
                )
    return {"capacity": capacity, "capacity_how": "median h2load c=64 conns req/s of the "
            "same frontend, demo model, this run", "points": points}  # fmt: skip


def memory_part(args, targets, workloads) -> dict:
    import memory_soak

    t = targets[("native", "demo")]
    wl = workloads["demo"]
    host, port = t["url"].rsplit(":", 1)
    out = {
        "soak": memory_soak.soak(
            t["url"], t["server"].pid, wl.frame, requests=args.soak_requests,
            chunk=args.soak_chunk, concurrency=64,
            server_success=lambda: model_statistics(t["url"], wl.model)["success"][0],
        ),
    }  # fmt: skip
    if args.idle_connections:
        out["idle_connections"] = memory_soak.idle_connection_memory(
            host, int(port), t["server"].pid, args.idle_connections
        )
    return out


def perf_part(targets, workloads, tmpdir) -> dict | None:
    t = targets[("native", "demo")]
    cmd = h2load_cmd(t["url"], workloads["demo"].frame, 64, 1, 5.0, 0.5, None)
    h2 = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)
    top = perf_top(t["server"].pid, 3.0, tmpdir / "perf.data")
    out, _ = h2.communicate(timeout=60)
    if top is not None:
        top["req_per_s_while_sampled"] = parse_h2load(out).get("req_per_s")
    return top


def ort_part(result: dict, workloads: dict, threads_by_server: dict) -> None:
    """Raw ONNX Runtime at the batch sizes each server formed (after the servers are gone,
    so that it has the cores to itself): each steadyserve run's compute limit and share."""
    import onnxruntime as ort

    result["ort"] = {}
    for key, wl in workloads.items():
        runs = [r for r in result["runs"] if r["model"] == key and r.get("server_stats")]

        def threads_of(server: str, key: str = key) -> int:  # demo: 1 (config); auto logs
            return threads_by_server.get(server, {}).get(key) or 1

        threads = sorted({threads_of(r["target"]) for r in runs} or {1})
        seen = set(REFERENCE_BATCHES)
        for r in runs:
            seen.update(int(b) for b in r["server_stats"].get("batch") or {})
        entry: dict = {"by_threads": {}}
        for n in threads:
            sess = ort_session(wl.model_path, intra_op_threads=n)
            table: dict[int, dict] = {}
            # Passes over the sizes, best of all: a neighbour's burst hits one pass only.
            for _ in range(3 if key == "demo" else 1):
                for b in sorted(seen):
                    m = ort_batch_timing(sess, b, wl.n_features, INPUT, min_time_s=0.12)
                    if b not in table or m["rows_per_s"] > table[b]["rows_per_s"]:
                        table[b] = m
            entry["by_threads"][str(n)] = {str(b): v for b, v in table.items()}
            for r in runs:
                if threads_of(r["target"]) != n:
                    continue
                counts = {int(b): v[0] for b, v in (r["server_stats"].get("batch") or {}).items()}
                if counts:
                    lim = compute_limit_rows_per_s(
                        counts, {b: v["runs_per_s"] for b, v in table.items()}
                    )
                    r["ort_compute_limit_rows_per_s"] = round(lim, 1)
                    r["ort_limit_share"] = round(r["req_per_s"] / lim, 4) if lim else None
        # One row at a time with ONNX Runtime's own defaults (threads = cores, spinning on).
        so = ort.SessionOptions()
        default = ort.InferenceSession(str(wl.model_path), so, providers=["CPUExecutionProvider"])
        entry["default_threads_batch1"] = ort_batch_timing(default, 1, wl.n_features, INPUT,
                                                           min_time_s=0.5)  # fmt: skip
        result["ort"][key] = entry


def auto_threads(log: Path, model: str) -> int | None:
    """The intra-op threads ``intra_op_threads: auto`` chose for `model`, from the server log."""
    for line in log.read_text(errors="replace").splitlines():
        m = AUTO_THREADS_RE.search(line)
        if m and f"/{model}/" in line:
            return int(m.group(1))
    return None


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--frontends", nargs="+", choices=FRONTENDS, default=list(FRONTENDS),
                    help="steadyserve servers (--frontend of `serve`; default both)")  # fmt: skip
    ap.add_argument("--models", nargs="+", choices=list(MODEL_NAMES), default=list(MODEL_NAMES))
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument("--duration", type=float, default=4.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="driver warm-up seconds per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mode", choices=["conns", "streams", "both"], default="conns")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                    help="what to run (default all; perf where it is installed)")  # fmt: skip
    ap.add_argument("--overload-levels", nargs="+", default=["3", "6"],
                    help="offered load, x capacity (the frontend's c=64 req/s of this run), "
                    "or 'max' (h2load's closed loop, 16 streams a connection)")  # fmt: skip
    ap.add_argument("--overload-duration", type=float, default=4.0)
    ap.add_argument("--overload-repeats", type=int, default=3)
    ap.add_argument("--soak-requests", type=int, default=1_000_000)
    ap.add_argument("--soak-chunk", type=int, default=100_000, help="requests per RSS sample")
    ap.add_argument("--idle-connections", type=int, default=1000)
    ap.add_argument(
        "--noop-mode", action="append", default=[], choices=["future", "thread"],
        help="also run noop_server.py in this --mode (demo model; e.g. thread: the cost of "
        "handing each request to a worker thread and back, with no work)",
    )  # fmt: skip
    ap.add_argument("--driver", choices=["auto", "h2load", "pyload"], default="auto")
    ap.add_argument("--noop-only", action="store_true", help="no steadyserve server")
    ap.add_argument("--server-arg", action="append", default=[], help="extra `serve` argument")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override the demo's tabular/config.yaml, e.g. "
                    "batching.max_queue_delay_us=500")  # fmt: skip
    ap.add_argument("--set-wide", action="append", default=[], metavar="KEY=VALUE",
                    help="override wide/config.yaml, e.g. instances=2")  # fmt: skip
    ap.add_argument("--ready-timeout", type=float, default=120.0)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, frames)")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    args = ap.parse_args()
    if args.repeats < 1 or any(c < 1 for c in args.concurrency):
        ap.error("--repeats and --concurrency must be integers >= 1")
    for level in args.overload_levels:
        if level != "max":
            try:
                if float(level) <= 0:
                    raise ValueError
            except ValueError:
                ap.error(f"--overload-levels: {level!r} is neither a factor > 0 nor 'max'")
    args.overload_levels = [lv if lv == "max" else float(lv) for lv in args.overload_levels]
    if args.noop_only:
        args.frontends = []
    return args


def main() -> None:  # noqa: C901 - one linear script
    args = parse_args()
    driver = args.driver
    if driver == "auto":
        driver = "h2load" if shutil.which("h2load") else "pyload"
    if driver == "pyload" and args.models != ["demo"]:
        sys.exit("--driver pyload sends the demo model's request only: add --models demo")
    parts = [p for p in args.parts if p != "perf" or shutil.which("perf")]
    if driver != "h2load" or not args.frontends:
        parts = [p for p in parts if p == "throughput"]
    if "native" not in args.frontends or "demo" not in args.models:
        parts = [p for p in parts if p not in ("memory", "perf")]
    if "demo" not in args.models:
        parts = [p for p in parts if p != "overload"]
    modes = ["conns", "streams"] if args.mode == "both" else [args.mode]

    info = machine_info()
    eprint(f"nproc {info['nproc']}, load {info['loadavg_at_start']}, driver {driver}, "
           f"parts {parts}")  # fmt: skip
    tmpdir = Path(tempfile.mkdtemp(prefix="ssgrpc-"))
    servers: list[Server] = []
    result: dict = {
        "benchmark": "grpc",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": info,
        "driver": driver,
        "parts": parts,
        "frontends": args.frontends,
        "models": args.models,
        "concurrency": args.concurrency,
        "modes": modes,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "repeats": args.repeats,
        "ort_settings": ORT_SETTINGS,
        "server_args": args.server_arg,
    }
    targets: dict[tuple[str, str], dict] = {}
    threads_by_server: dict[str, dict[str, int | None]] = {}
    try:
        try:
            root, workloads, server_order = start_servers(
                args, tmpdir, servers, targets, threads_by_server, result
            )
            warm_up(driver, targets, workloads, tmpdir)
            # Thread names once the threads exist (py-spy pauses the process: not in a run).
            names = {t["server"].pid: thread_names(t["server"].pid) for t in targets.values()}
            result["thread_names"] = {
                s.name: sorted(set(names.get(s.pid, {}).values())) for s in servers
            }
            result["runs"] = []
            if "throughput" in parts:
                result["runs"] = throughput(
                    args, driver, targets, workloads, modes, server_order, names, tmpdir
                )
            if "overload" in parts:
                result["overload"] = overload_part(args, targets, workloads, result["runs"], tmpdir)
            if "memory" in parts:
                result["memory"] = memory_part(args, targets, workloads)
            if "perf" in parts:
                result["perf"] = perf_part(targets, workloads, tmpdir)
        finally:
            for s in reversed(servers):
                s.stop()
        # After the stop: the native frontend logs its stats() when it stops.
        result["server_log_tail"] = {}
        result["server_log_problems"] = {}
        for s in servers:
            if s.name in args.frontends:
                text = s.log.read_text(errors="replace")
                result["server_log_tail"][s.name] = text[-4000:]
                bad = [ln for ln in text.splitlines()
                       if '"level": "error"' in ln or '"level": "warning"' in ln
                       or "Traceback" in ln]  # fmt: skip
                if bad:
                    result["server_log_problems"][s.name] = {"lines": len(bad), "first": bad[:5]}
                    eprint(f"WARNING: {s.name} logged {len(bad)} warnings/errors; first: "
                           f"{bad[0][:500]}")  # fmt: skip
        if "memory" in parts and args.idle_connections:
            import memory_soak

            # The server does not publish GrpcFrontend.stats(): read it in a harness.
            result["memory"]["harness"] = memory_soak.harness_connection_memory(
                root, args.idle_connections
            )
        ort_part(result, workloads, threads_by_server)
    finally:
        if args.keep:
            eprint(f"kept {tmpdir}")
        else:
            shutil.rmtree(tmpdir, ignore_errors=True)

    result["summary"] = summarize(result, server_order)
    result["loadavg_at_end"] = loadavg()
    if not args.no_save:
        path = write_json(result, f"grpc_{stamp()}.json")
        eprint(f"wrote {path}")
    print_markdown(result, server_order)


# --------------------------------------------------------------------------- report


def _paired(sel: list[dict], a: str, b: str, f) -> dict:
    """spread of f(run of a, run of b) over the repeats that have both (same minute)."""
    vals = []
    for r in sorted({x["repeat"] for x in sel}):
        ra = [x for x in sel if x["repeat"] == r and x["target"] == a]
        rb = [x for x in sel if x["repeat"] == r and x["target"] == b]
        if ra and rb:
            vals.append(f(ra[0], rb[0]))
    return spread(vals)


def summarize(result: dict, server_order: list[str]) -> dict:
    runs = result["runs"]
    summary: dict = {}
    for mode in result["modes"]:
        for key in result["models"]:
            for c in result["concurrency"]:
                if mode == "streams" and c == 1 and "conns" in result["modes"]:
                    continue  # one stream on one connection either way: under conns
                sel = [r for r in runs if r["model"] == key and r["concurrency"] == c
                       and (r["mode"] == mode or c == 1)]  # fmt: skip
                if not sel:
                    continue
                entry: dict = {}
                for name in server_order:
                    rs = [r for r in sel if r["target"] == name]
                    if not rs:
                        continue
                    e = entry[name] = {
                        "req_per_s": spread([r["req_per_s"] for r in rs]),
                        "p50_ms": spread([r["latency"]["p50_ms"] for r in rs]),
                        "p99_ms": spread([r["latency"]["p99_ms"] for r in rs]),
                        "server_cpu_us_per_req": spread([r["server_cpu_us_per_req"] for r in rs]),
                        "server_rss_mib": spread([r["server_rss_bytes"] / 2**20 for r in rs]),
                    }
                    splits = [r["server_cpu_split"]["us_per_req"] for r in rs
                              if r.get("server_cpu_split")]  # fmt: skip
                    if splits:
                        e["cpu_split_us_per_req"] = {
                            g: spread([s[g] for s in splits]) for g in THREAD_GROUPS
                        }
                    if any(r.get("server_stats") for r in rs):
                        mb = [r["server_stats"]["mean_batch"] for r in rs
                              if (r.get("server_stats") or {}).get("mean_batch")]  # fmt: skip
                        e["mean_batch"] = spread(mb)
                        for k in ("ort_compute_limit_rows_per_s", "ort_limit_share"):
                            v = [r[k] for r in rs if r.get(k)]
                            if v:
                                e[k] = spread(v)
                        e["all_runs_verified"] = all(
                            (r.get("server_stats") or {}).get("ok") for r in rs
                        )
                    if name != "noop" and any(r["target"] == "noop" for r in sel):
                        e["ratio_vs_noop"] = _paired(
                            sel, "noop", name, lambda a, b: b["req_per_s"] / a["req_per_s"]
                        )
                        e["p50_delta_vs_noop_ms"] = _paired(
                            sel, "noop", name,
                            lambda a, b: b["latency"]["p50_ms"] - a["latency"]["p50_ms"],
                        )  # fmt: skip
                if "native" in entry and "grpcio" in entry:
                    entry["native"]["ratio_vs_grpcio"] = _paired(
                        sel, "grpcio", "native", lambda a, b: b["req_per_s"] / a["req_per_s"]
                    )
                summary[f"{mode}/{key}/c{c}"] = entry
    return summary


def aims(result: dict) -> list[tuple[str, str, bool | None]]:
    """(aim, figure, met) for the issue's aims that this run measured."""
    s, out = result["summary"], []
    mode = result["modes"][0]
    n64 = s.get(f"{mode}/demo/c64", {}).get("native", {})
    if "ratio_vs_noop" in n64:
        r = n64["ratio_vs_noop"]["median"]
        out.append(("demo c=64 native >= 5x the no-op", f"{r:.2f}x", r >= 5))
    n1 = s.get(f"{mode}/demo/c1", {}).get("native", {})
    if "p50_delta_vs_noop_ms" in n1:
        d = n1["p50_delta_vs_noop_ms"]["median"]
        out.append(("demo c=1 native p50 below the no-op's", f"{d:+.3f} ms", d < 0))
    for c in result["concurrency"]:
        w = s.get(f"{mode}/wide/c{c}", {}).get("native", {})
        if c >= 16 and "ort_limit_share" in w:
            v = w["ort_limit_share"]["median"]
            out.append((f"wide c={c} native >= 75% of raw ORT at the batch sizes formed",
                        f"{v:.0%}", v >= 0.75))  # fmt: skip
    w1 = s.get(f"{mode}/wide/c1", {}).get("native", {})
    ort1 = (result.get("ort", {}).get("wide") or {}).get("default_threads_batch1")
    if w1 and ort1:
        p50, ref = w1["p50_ms"]["median"], ort1["run_us_median"] / 1000
        out.append(("wide c=1 native p50 <= one-row ORT, default threads",
                    f"{p50:.3f} vs {ref:.3f} ms", p50 <= ref))  # fmt: skip
    ov = result.get("overload")
    if ov:
        for level in dict.fromkeys(p["level"] for p in ov["points"]):
            sel = [p for p in ov["points"] if p["server"] == "native" and p["level"] == level]
            if not sel:
                continue
            g = float(np.median([p["goodput_vs_capacity"] for p in sel]))

            def med(probe: str, sel=sel) -> float | None:
                v = [(p.get(probe) or {}).get("refusal_p50_ms") for p in sel]
                v = [x for x in v if x is not None]
                return float(np.median(v)) if v else None

            same, tight, door = med("probe"), med("tight_probe"), med("door_probe")
            # The door probe (h2load) times refusals without a Python client's own delays.
            rp = door if door is not None else (same if same is not None else tight)
            text = f"{g:.0%}; refusal p50: 25 ms probe " + (
                f"{same:.2f} ms" if same is not None else "saw none"
            )
            if tight is not None:
                text += f", 1 ms probe {tight:.2f} ms"
            if door is not None:
                text += f", h2load door probe {door:.3f} ms"
            lv = f"{level:g}x" if level != "max" else "max"
            aim = f"overload {lv}: native goodput >= 90% of capacity, refusals < 1 ms p50"
            out.append((aim, text, g >= 0.9 and rp is not None and rp < 1.0))
    soak = (result.get("memory") or {}).get("soak")
    if soak:
        out.append((f"RSS within 10% over {soak['requests']:,} requests",
                    f"{soak['growth_pct']:+.2f}%", abs(soak["growth_pct"]) <= 10))  # fmt: skip
    return out


def print_markdown(result: dict, server_order: list[str]) -> None:
    m, s = result["machine"], result["summary"]
    print(
        f"\n### gRPC ModelInfer, 1 row a request, {result['driver']}, {result['repeats']} x "
        f"{result['duration_s']:g} s per point (median [min-max])\n\n"
        f"{result['when']}, {m.get('cpu')}, nproc {m['nproc']}, load {m['loadavg_at_start']} "
        f"at start, {result['loadavg_at_end']} at end; `{result['command']}`; requests "
        f"{result.get('request_bytes')} B, responses {result.get('response_bytes')} B; "
        "intra_op_threads auto chose "
        + (
            ", ".join(
                f"{fe}/{k}: {n}"
                for fe, d in result.get("intra_op_threads_chosen", {}).items()
                for k, n in d.items()
                if n
            )
            or "-"
        )  # fmt: skip
        + "\n"
    )
    rows = []
    for key, entry in s.items():
        mode, model, c = key.split("/")
        for name in server_order:
            e = entry.get(name)
            if not e:
                continue
            split = e.get("cpu_split_us_per_req")
            rows.append([
                model, c[1:], mode, name, fmt_spread(e["req_per_s"]),
                fmt_spread(e.get("ratio_vs_noop"), ".2f"),
                fmt_spread((e.get("ratio_vs_grpcio")), ".2f"),
                f"{e['p50_ms']['median']:.3f} / {e['p99_ms']['median']:.3f}",
                fmt_spread(e.get("p50_delta_vs_noop_ms"), "+.3f"),
                fmt_spread(e.get("mean_batch"), ".1f"),
                fmt_spread(e.get("ort_limit_share"), ".0%"),
                f"{e['server_cpu_us_per_req']['median']:.0f}",
                " / ".join(f"{split[g]['median']:.0f}" for g in THREAD_GROUPS) if split else "-",
                e.get("all_runs_verified", "-"),
            ])  # fmt: skip
    print(md_table(
        ["model", "c", "mode", "server", "req/s", "x noop", "x grpcio", "p50 / p99 ms",
         "Δp50 vs noop ms", "mean batch", "of ORT limit", "srv CPU µs/req",
         "io / exec / main / other µs", "verified"],  # fmt: skip
        rows, "lrll" + "r" * 9 + "l",
    ))  # fmt: skip
    for key, entry in result.get("ort", {}).items():
        print(
            f"\nRaw ONNX Runtime, {key} model, µs per run by batch size (all sizes in the JSON):\n"
        )
        hdr, rws = ["threads"], []
        for n, table in entry["by_threads"].items():
            sizes = [b for b in table if int(b) in REFERENCE_BATCHES]
            hdr = ["threads", *sizes]
            rws.append([n, *(f"{table[b]['run_us_median']:.1f}" for b in sizes)])
        d = entry["default_threads_batch1"]
        print(md_table(hdr, rws))
        print(f"\nOne row with ONNX Runtime's default session options: {d['run_us_median']:.1f} "
              f"µs a run ({d['rows_per_s']:.0f} rows/s)")  # fmt: skip
    if result.get("overload"):
        from slo_bench import overload_table

        ov = result["overload"]
        print("\n### Overload: 128 connections, 25 ms gRPC deadline, demo model "
              f"(capacity = {ov['capacity_how']})\n")  # fmt: skip
        print(overload_table(ov["points"], ov["capacity"]))
    if result.get("memory"):
        import memory_soak

        mem = result["memory"]
        print("\n### Memory, native frontend, demo model\n")
        print(memory_soak.report(mem.get("soak"), mem.get("idle_connections"), mem.get("harness")))
    if result.get("perf"):
        p = result["perf"]
        if "error" in p:
            print(f"\nperf failed: {p['error']}")
        else:
            print(f"\n### perf: native server, demo c=64 ({p.get('req_per_s_while_sampled')} "
                  "req/s while sampled), self time\n")  # fmt: skip
            print("by thread: " + ", ".join(f"{k} {v:.1f}%" for k, v in p["by_thread_pct"].items()))
            print("\n```\n" + "\n".join(p["top"]) + "\n```")
    a = aims(result)
    if a:
        print("\n### Aims\n")
        rows = [[x, f, "met" if ok else "**NOT met**"] for x, f, ok in a]
        print(md_table(["aim", "this run", "met"], rows, "lrl"))


if __name__ == "__main__":
    main()
