"""Shared helpers for the benchmark scripts in this folder.

The scripts are run as files (``python benchmarks/grpc_load.py``), so the folder is on
``sys.path`` and they import this module by its plain name.

Nothing here imports ``steadyserve.server`` or ``steadyserve._proto``: the benchmark
processes use tritonclient's protobuf messages, and protobuf's default descriptor pool
cannot hold both sets of ``inference.*`` messages.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL = "tabular"
INPUT = "features"
OUTPUT = "probabilities"
N_FEATURES = 32
N_CLASSES = 2

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------- machine


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (as `uptime` shows them)."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict[str, object]:
    info: dict[str, object] = {
        "nproc": os.cpu_count(),
        "sched_affinity": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": loadavg(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    for mod in ("onnxruntime", "grpc", "google.protobuf", "numpy", "tritonclient"):
        try:
            m = __import__(mod, fromlist=["__version__"])
            info[f"{mod}_version"] = getattr(m, "__version__", "?")
        except ImportError:
            info[f"{mod}_version"] = None
    try:
        out = subprocess.run(["h2load", "--version"], capture_output=True, text=True, timeout=5)
        info["h2load_version"] = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["h2load_version"] = None
    return info


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process `pid` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    # fields[0] is field 3 (state); utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / ticks


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """{native thread id: user + system CPU seconds} of every thread of process `pid`."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def thread_ctx_switches(pid: int) -> dict[int, int]:
    """{native thread id: voluntary + involuntary context switches} of process `pid`."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue
        out[int(task.name)] = sum(
            int(line.split()[1]) for line in text.splitlines() if "ctxt_switches" in line
        )
    return out


def rss_bytes(pid: int) -> int:
    """Resident set size of process `pid` now (VmRSS of /proc/PID/status), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def thread_names(pid: int) -> dict[int, str]:
    """{native thread id: name} of every thread of `pid`: the kernel's name (``comm``:
    ``ss-io-0``, ``ss-reaper``, gRPC's threads) and, where ``py-spy`` is installed and may
    attach, the Python thread name instead (``MainThread``, ``steadyserve-exec-...``:
    Python < 3.14 does not pass its thread names to the kernel)."""
    names = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names[int(task.name)] = (task / "comm").read_text().strip()
        except OSError:
            continue
    if shutil.which("py-spy"):
        out = subprocess.run(
            ["py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30
        )
        for m in re.finditer(
            r'^Thread (0x[0-9a-fA-F]+|\d+) \((?:idle|active)[^)]*\): "([^"]*)"', out.stdout, re.M
        ):
            tid = m.group(1)
            names[int(tid, 16) if tid.startswith("0x") else int(tid)] = m.group(2)
    return names


# Where a server's CPU goes, by thread: the I/O threads (the native frontend's ss-io-N, or
# with --frontend grpcio gRPC core's own: poller, event engine, timers), the Python thread
# that runs each batch (ONNX Runtime's call included), the main thread (the asyncio loop:
# grpc.aio's handlers with grpcio, bridged RPCs and /metrics with native), and the rest
# (ONNX Runtime's intra-op pool, the reaper, router and watchdog threads).
THREAD_GROUPS = ("io", "executor", "main", "other")


# gRPC core's own threads (grpcio): its poller (a Python thread), event engine, timers.
_GRPC_IO_THREADS = re.compile(r"event_engine|grpc_global_tim|lifeguard|.*_poll_wrapper")


def thread_group(tid: int, pid: int, name: str) -> str:
    if name.startswith("ss-io") or _GRPC_IO_THREADS.match(name):
        return "io"
    if name.startswith("steadyserve-exec"):
        return "executor"
    if tid == pid or name == "MainThread":
        return "main"
    return "other"


def cpu_split(
    pid: int,
    before: dict[int, float],
    after: dict[int, float],
    names: dict[int, str],
    requests: float,
) -> dict:
    """CPU µs per request by THREAD_GROUPS (and by thread name) between two
    ``thread_cpu_seconds`` samples; threads born in between count from zero."""
    groups = dict.fromkeys(THREAD_GROUPS, 0.0)
    by_name: dict[str, float] = {}
    for tid, t1 in after.items():
        used = t1 - before.get(tid, 0.0)
        if used <= 0:
            continue
        name = names.get(tid, "?")
        groups[thread_group(tid, pid, name)] += used
        key = re.sub(r"\d+$", "N", name)
        by_name[key] = by_name.get(key, 0.0) + used
    n = max(requests, 1.0)
    return {
        "us_per_req": {k: round(1e6 * v / n, 2) for k, v in groups.items()},
        "by_thread_name_us_per_req": {
            k: round(1e6 * v / n, 2) for k, v in sorted(by_name.items(), key=lambda x: -x[1])
        },
    }


def perf_top(pid: int, seconds: float, data: Path, lines: int = 25) -> dict | None:
    """``perf record`` of process `pid` for `seconds` (999 Hz, no call graphs), then self
    time by thread name and the hottest (thread, shared object, symbol); None if perf is
    not installed."""
    if not shutil.which("perf"):
        return None
    rec = subprocess.run(
        ["perf", "record", "-F", "999", "-p", str(pid), "-o", str(data), "--", "sleep",
         str(seconds)],  # fmt: skip
        capture_output=True, text=True, timeout=seconds + 60,
    )  # fmt: skip
    if rec.returncode != 0:
        return {"error": rec.stderr[-2000:]}

    def report(sort: str, limit: str) -> list[list[str]]:
        out = subprocess.run(
            ["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", sort,
             "--percent-limit", limit],  # fmt: skip
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        rows = []
        for ln in out.stdout.splitlines():
            if ln.strip() and not ln.lstrip().startswith("#"):
                rows.append(ln.split())
        return rows

    by_comm: dict[str, float] = {}
    for row in report("comm", "0"):
        key = re.sub(r"\d+$", "N", row[1])
        by_comm[key] = round(by_comm.get(key, 0.0) + float(row[0].rstrip("%")), 2)
    top = []
    for row in report("comm,dso,symbol", "0.3")[:lines]:
        # overhead, comm, dso, [.] or [k], symbol (may contain spaces), then perf's empty
        # sort columns ("-")
        while row and row[-1] == "-":
            row.pop()
        top.append(f"{row[0]:>7} {row[1]:<10} {row[2]:<28.28} {' '.join(row[4:])}")
    return {"seconds": seconds, "by_thread_pct": by_comm, "top": top}


# --------------------------------------------------------------------------- h2load


GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


def h2load_cmd(
    url: str,
    frame: Path,
    c: int,
    m: int,
    duration: float | None,
    warmup: float,
    log: Path | None,
    *,
    headers: tuple[str, ...] = (),
    requests: int | None = None,
    rps: float | None = None,
    threads: int = 1,
    path: str = "/inference.GRPCInferenceService/ModelInfer",
) -> list[str]:
    """h2load posting the gRPC frame file `frame`: `c` connections x `m` streams, for
    `duration` s after `warmup` s (or `requests` requests in all), each client at `rps`
    requests/s when given (open loop up to `m` in flight), per-request ``--log-file``."""
    cmd = ["h2load", "-c", str(c), "-m", str(m), "-t", str(threads)]
    if requests is not None:
        cmd += ["-n", str(requests)]
    else:
        cmd += ["-D", f"{int(duration * 1000)}ms"]
        if warmup > 0:
            cmd += ["--warm-up-time", f"{int(warmup * 1000)}ms"]
    if rps:
        cmd += ["--rps", str(max(1, round(rps)))]
    for h in (*GRPC_HEADERS, *headers):
        cmd += ["-H", h]
    cmd += ["-d", str(frame)]
    if log is not None:
        cmd += ["--log-file", str(log)]
    return [*cmd, f"http://{url}{path}"]


def parse_h2load(text: str) -> dict:
    """req/s, request counts, status classes, traffic and h2load's own timing summary."""
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
    m = re.search(
        r"traffic: .*? \((\d+)\) total, .*? \((\d+)\) headers .*?, .*? \((\d+)\) data", text
    )
    if m:
        out["traffic_bytes"] = dict(
            zip(("total", "headers", "data"), map(int, m.groups()), strict=True)
        )
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", text)
    if m:
        out["time_for_request"] = dict(zip(("min", "max", "mean", "sd"), m.groups(), strict=True))
    return out


def read_h2load_log(log: Path) -> np.ndarray:
    """h2load's ``--log-file``: rows of (start µs since the epoch, HTTP status, duration µs).
    A gRPC error is HTTP 200 too: the status is in the trailers, which the log does not have."""
    if not log.exists() or not log.stat().st_size:
        return np.zeros((0, 3), np.int64)
    return np.loadtxt(log, dtype=np.int64, ndmin=2)


# --------------------------------------------------------------------------- statistics


def percentiles(samples_s: list[float] | np.ndarray, ps=(50, 90, 99, 99.9)) -> dict[str, float]:
    """Latency percentiles in milliseconds (plus min / mean / max) of samples in seconds."""
    a = np.asarray(samples_s, dtype=np.float64)
    if a.size == 0:
        return {}
    out = {"n": int(a.size), "min_ms": a.min() * 1e3, "mean_ms": a.mean() * 1e3}
    for p in ps:
        out[f"p{p:g}_ms"] = float(np.percentile(a, p)) * 1e3
    out["max_ms"] = a.max() * 1e3
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def spread(values: list[float]) -> dict[str, float]:
    """Median, min, max and relative spread ((max-min)/median) of repeated measurements."""
    if not values:
        return {}
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    return {
        "median": round(med, 4),
        "min": round(lo, 4),
        "max": round(hi, 4),
        "spread_pct": round(100.0 * (hi - lo) / med, 1) if med else 0.0,
        "values": [round(v, 4) for v in values],
    }


# --------------------------------------------------------------------------- model + data


def make_rows(n: int, seed: int = 0) -> np.ndarray:
    """`n` single-row inputs, shape [n, 1, 32] FP32, deterministic."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, N_FEATURES)).astype(np.float32)


def write_stand_in_tabular(path: Path) -> Path:
    """An MLP with the demo model's signature (32 -> 64 relu -> 32 relu -> 2 softmax).

    Only for proving the benchmark tools while ``steadyserve.demo`` is not there; results
    say ``"model_source": "stand-in"`` when it was used.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1234)
    w1 = rng.standard_normal((32, 64)).astype(np.float32) * 0.2
    b1 = np.zeros(64, np.float32)
    w2 = rng.standard_normal((64, 32)).astype(np.float32) * 0.2
    b2 = np.zeros(32, np.float32)
    w3 = rng.standard_normal((32, 2)).astype(np.float32) * 0.2
    b3 = np.zeros(2, np.float32)
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (w3, "w3"), (b3, "b3"))
    ]
    nodes = [
        helper.make_node("Gemm", [INPUT, "w1", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("Gemm", ["r1", "w2", "b2"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["r2"]),
        helper.make_node("Gemm", ["r2", "w3", "b3"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [OUTPUT], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tabular_stand_in",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", N_FEATURES])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", N_CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@dataclass
class DemoRepo:
    root: Path
    model_path: Path  # REPO/tabular/<version>/model.onnx
    source: str  # "steadyserve.demo" or "stand-in"
    config_text: str | None


def build_demo_repo(root: Path, allow_stand_in: bool = False) -> DemoRepo:
    """The demo repository via ``steadyserve.demo.build_demo_repository`` (in-process; that
    module does not touch the protobuf pool), or a stand-in model if allowed."""
    try:
        from steadyserve.demo import build_demo_repository
    except ImportError:
        if not allow_stand_in:
            raise
        model_path = write_stand_in_tabular(root / MODEL / "1" / "model.onnx")
        return DemoRepo(root, model_path, "stand-in", None)
    return demo_repo_at(Path(build_demo_repository(root)))


def demo_repo_at(repo: Path) -> DemoRepo:
    """Describe a built demo repository: its latest ``tabular`` model and config."""
    versions = sorted(
        (p for p in (repo / MODEL).iterdir() if p.name.isdigit() and (p / "model.onnx").exists()),
        key=lambda p: int(p.name),
    )
    cfg = repo / MODEL / "config.yaml"
    return DemoRepo(
        repo,
        versions[-1] / "model.onnx",
        "steadyserve.demo",
        cfg.read_text() if cfg.exists() else None,
    )


def serve_cmd(repo: Path, *flags: str) -> list[str]:
    """`steadyserve serve REPO` on 127.0.0.1 with ports the kernel picks (the server's
    ready line says which: grpc_load.READY_RE), and ``flags``."""
    return [
        sys.executable, "-m", "steadyserve", "serve", str(repo), "--host", "127.0.0.1",
        "--grpc-port", "0", "--http-port", "0", *flags,
    ]  # fmt: skip


def override_config(repo: Path, overrides: list[str], model: str = MODEL) -> str | None:
    """Apply `key.path=value` overrides (YAML values) to REPO/<model>/config.yaml; returns
    the new text. E.g. ``batching.max_queue_delay_us=500``, ``instances=2``."""
    if not overrides:
        return None
    import yaml

    path = repo / model / "config.yaml"
    cfg = yaml.safe_load(path.read_text()) if path.exists() else {}
    cfg = cfg or {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"config override must look like key.path=value, got {item!r}")
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    text = yaml.safe_dump(cfg, sort_keys=False)
    path.write_text(text)
    return text


# --------------------------------------------------------------------------- ONNX Runtime

ORT_SETTINGS = {
    "intra_op_num_threads": 1,
    "inter_op_num_threads": 1,
    "session.intra_op.allow_spinning": "0",
    "session.inter_op.allow_spinning": "0",
    "execution_mode": "ORT_SEQUENTIAL",
    "graph_optimization_level": "ORT_ENABLE_ALL",
}


def ort_session(model_path: Path, intra_op_threads: int = 1):
    """An InferenceSession with the settings steadyserve uses (see README): one intra-op
    thread (or `intra_op_threads`: what ``intra_op_threads: auto`` chose), one inter-op
    thread, no spin-waiting, sequential execution."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])


def ort_rows_per_s(
    session, batch_size: int, min_time_s: float = 0.3, rounds: int = 3, seed: int = 0
) -> dict:
    """Raw ONNX Runtime throughput at one batch size: timed single-thread loops of
    ``session.run`` on a fixed [batch_size, 32] input (the compute limit).

    Runs `rounds` rounds of at least `min_time_s` and keeps the best: on a shared machine
    noise only ever slows a loop down, so the best round is the closest to the limit.
    """
    return ort_batch_timing(
        session, batch_size, N_FEATURES, INPUT, min_time_s=min_time_s, rounds=rounds, seed=seed
    )


# --------------------------------------------------------------------------- other models

WIDE_MODEL = "wide"
WIDE_LAYERS = (512, 2048, 2048, 10)


def write_mlp(
    path: Path,
    layers: tuple[int, ...],
    input_name: str = INPUT,
    output_name: str = OUTPUT,
    seed: int = 1234,
) -> Path:
    """An FP32 MLP ``layers[0] -> ... -> layers[-1]`` (Gemm + Relu, softmax output) with
    random weights (scaled 1/sqrt(fan-in)) and a dynamic batch dimension, written offline."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    prev = input_name
    for i, (n_in, n_out) in enumerate(zip(layers[:-1], layers[1:], strict=True)):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = (rng.standard_normal(n_out) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(layers) - 2
        out = "logits" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out]))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            prev = f"r{i}"
    nodes.append(helper.make_node("Softmax", ["logits"], [output_name], axis=1))
    graph = helper.make_graph(
        nodes,
        "mlp_" + "_".join(map(str, layers)),
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", layers[0]])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", layers[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_wide_repo(
    root: Path,
    max_batch_size: int = 64,
    model: str = WIDE_MODEL,
    layers=WIDE_LAYERS,
    intra_op_threads: int | str = 1,
) -> DemoRepo:
    """REPO/<model>/1/model.onnx (a 512-2048-2048-10 MLP by default) and a config.yaml with
    `max_batch_size`, the demo's batching (no queue delay, 1024 queued at most) and
    `intra_op_threads` (1, or "auto": steadyserve's default, which times one thread against
    one per core in the warm-up); override keys with ``override_config(root, [...], model)``."""
    model_path = write_mlp(root / model / "1" / "model.onnx", tuple(layers))
    text = (
        f"# {'-'.join(map(str, layers))} MLP, random weights (benchmarks/common.py)\n"
        f"max_batch_size: {max_batch_size}\n"
        "batching:\n  max_queue_delay_us: 0\n  max_queue_size: 1024\n"
        "instances: 1\n"
        "execution: auto\n"
        f"onnxruntime:\n  intra_op_threads: {intra_op_threads}\n  inter_op_threads: 1\n"
        "  allow_spinning: false\n"
    )
    (root / model / "config.yaml").write_text(text)
    return DemoRepo(root, model_path, "stand-in", text)


def ort_batch_timing(
    session,
    batch_size: int,
    n_features: int,
    input_name: str = INPUT,
    min_time_s: float = 0.2,
    rounds: int = 2,
    warmup_s: float = 0.05,
    seed: int = 0,
) -> dict:
    """Raw ONNX Runtime at one batch size for any [batch, n_features] FP32 input, with a
    time-based warm-up (a 20 ms run makes 50 warm-up runs expensive); best of `rounds`
    rounds of at least `min_time_s` (and 3 runs)."""
    x = np.random.default_rng(seed).standard_normal((batch_size, n_features)).astype(np.float32)
    feeds = {input_name: x}
    t_end = time.perf_counter() + warmup_s
    session.run(None, feeds)
    while time.perf_counter() < t_end:
        session.run(None, feeds)
    per_round, medians = [], []
    for _ in range(rounds):
        samples = []
        t0 = time.perf_counter()
        t_end = t0 + min_time_s
        while True:
            a = time.perf_counter()
            session.run(None, feeds)
            b = time.perf_counter()
            samples.append(b - a)
            if b >= t_end and len(samples) >= 3:
                break
        per_round.append(len(samples) / (time.perf_counter() - t0))
        medians.append(float(np.median(samples)))
    best = max(per_round)
    return {
        "batch_size": batch_size,
        "run_us_median": round(min(medians) * 1e6, 2),
        "runs_per_s": round(best, 2),
        "rows_per_s": round(best * batch_size, 1),
        "rows_per_s_rounds": [round(r * batch_size, 1) for r in per_round],
    }


def compute_limit_rows_per_s(batch_counts: dict[int, int], runs_per_s: dict[int, float]) -> float:
    """Rows/s that ONNX Runtime alone (one thread) reaches with this mix of batches: the
    rows executed divided by the time its runs at those batch sizes take."""
    rows = sum(b * n for b, n in batch_counts.items())
    secs = sum(n / runs_per_s[b] for b, n in batch_counts.items())
    return rows / secs if secs else 0.0


# --------------------------------------------------------------------------- output


def fmt_spread(d: dict | None, fmt: str = ".0f", scale: float = 1.0) -> str:
    """``median [min-max]`` of a ``spread`` dict (``-`` when empty)."""
    if not d:
        return "-"
    med, lo, hi = (format(d[k] * scale, fmt) for k in ("median", "min", "max"))
    return med if lo == hi else f"{med} [{lo}-{hi}]"


def md_table(header: list[str], rows: list[list[object]], align: str | None = None) -> str:
    """A markdown table; `align` is one character per column, ``l`` or ``r`` (default: the
    first column left, the others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" if a == "l" else "---:" for a in align) + " |",
    ]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(obj: object, name: str) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / name
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return path


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def eprint(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)
