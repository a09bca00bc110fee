"""In-process: 64 threads sending single rows, steadyserve.Runtime vs plain ONNX Runtime.

Both sides get the same rows, the same number of threads and the same ONNX Runtime
session options (1 intra-op thread, 1 inter-op thread, no spin-waiting):

- ``ort``:  every thread calls ``InferenceSession.run`` on one shared session, one row a call;
- ``steadyserve``: every thread calls ``Runtime(repo).infer("tabular", {"features": row})``,
  which lets the runtime batch rows from concurrent callers.

The two are interleaved (ort, steadyserve, ort, ...) so a noisy neighbour hits both. Each
run is duration-based after a warm-up; it reports rows/s, per-request latency percentiles,
CPU per request of this process, and the ratio steadyserve / ort per repeat.

    python benchmarks/inprocess.py                  # 64 threads, 3 repeats of 5 s
    python benchmarks/inprocess.py --ort-only       # only the ONNX Runtime baseline
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import (
    INPUT,
    MODEL,
    ORT_SETTINGS,
    OUTPUT,
    build_demo_repo,
    loadavg,
    machine_info,
    ort_session,
    override_config,
    percentiles,
    spread,
    stamp,
    thread_cpu_seconds,
    write_json,
)


def run_threads(call, rows: np.ndarray, threads: int, duration_s: float, warmup_s: float) -> dict:
    """`threads` threads call `call(row)` in a closed loop; measure after `warmup_s`."""
    per_thread: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []
    state = {"measure": False, "stop": False}
    barrier = threading.Barrier(threads + 1)

    worker_tids: set[int] = set()

    def worker(k: int) -> None:
        worker_tids.add(threading.get_native_id())
        lat = per_thread[k]
        n = len(rows)
        i = k * 7919 % n
        perf = time.perf_counter
        barrier.wait()
        try:
            while not state["stop"]:
                row = rows[i]
                i = (i + 1) % n
                t0 = perf()
                call(row)
                if state["measure"]:
                    lat.append(perf() - t0)
        except Exception as e:  # a failure ends the run and is reported
            errors.append(f"{type(e).__name__}: {e}")

    ts = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    time.sleep(warmup_s)
    for lat in per_thread:
        lat.clear()
    state["measure"] = True
    cpu0, t0 = time.process_time(), time.perf_counter()
    per0 = thread_cpu_seconds(os.getpid())
    time.sleep(duration_s)
    state["measure"] = False
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    per1 = thread_cpu_seconds(os.getpid())
    state["stop"] = True
    for t in ts:
        t.join()
    lats = [x for lat in per_thread for x in lat]
    # CPU by thread group: the calling threads, the runtime's own threads, the rest.
    names = {t.native_id: t.name for t in threading.enumerate()}
    groups: dict[str, float] = {}
    for tid, secs in per1.items():
        if tid in worker_tids:
            group = "callers"
        elif names.get(tid, "").startswith("steadyserve"):
            group = names[tid]
        else:
            group = "other"
        groups[group] = groups.get(group, 0.0) + secs - per0.get(tid, 0.0)
    n_req = max(len(lats), 1)
    return {
        "rows_per_s": round(len(lats) / elapsed, 1),
        "requests": len(lats),
        "seconds": round(elapsed, 3),
        "cpu_us_per_req": round(1e6 * cpu / max(len(lats), 1), 1),
        "cpu_util": round(cpu / elapsed, 2),
        "cpu_us_per_req_by_thread": {g: round(1e6 * v / n_req, 1) for g, v in groups.items()},
        "latency": percentiles(lats),
        "errors": errors[:5],
        "loadavg": loadavg(),
    }


def batch_stats_of(model) -> dict[int, int]:
    """{batch size: executions} from ServableModel.statistics(), if available."""
    try:
        stats = model.statistics()
        return {int(b): int(s.count) for b, s in sorted(stats.batch_stats.items())}
    except Exception as e:  # statistics are a nice-to-have here
        return {"error": repr(e)}  # type: ignore[dict-item]


def diff_counts(after: dict, before: dict) -> dict:
    if "error" in after or "error" in before:
        return after
    return {b: n - before.get(b, 0) for b, n in after.items() if n - before.get(b, 0)}


def mean_batch(counts: dict) -> float | None:
    if not counts or "error" in counts:
        return None
    execs = sum(counts.values())
    return round(sum(b * n for b, n in counts.items()) / execs, 2) if execs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=64)
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=4096, help="distinct rows cycled through")
    ap.add_argument(
        "--repo", type=Path, help="existing model repository (default: demo in a temp dir)"
    )
    ap.add_argument("--ort-only", action="store_true", help="only the ONNX Runtime baseline")
    ap.add_argument("--steadyserve-only", action="store_true", help="skip ONNX Runtime (profiling)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the demo's tabular/config.yaml, e.g. batching.max_queue_delay_us=500",
    )
    ap.add_argument("--allow-stand-in", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    args = ap.parse_args()
    if args.threads < 1 or args.repeats < 1:
        ap.error("--threads and --repeats must be integers >= 1")

    info = machine_info()
    tmp = tempfile.TemporaryDirectory(prefix="ssbench-")
    if args.repo:
        repo = args.repo
        versions = sorted(
            (p for p in (repo / MODEL).iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
        )
        model_path, source = versions[-1] / "model.onnx", str(repo)
    else:
        demo = build_demo_repo(Path(tmp.name), allow_stand_in=args.allow_stand_in or args.ort_only)
        repo, model_path, source = demo.root, demo.model_path, demo.source
        override_config(repo, args.set)

    rng = np.random.default_rng(0)
    rows = rng.standard_normal((args.rows, 1, 32)).astype(np.float32)

    sess = ort_session(model_path)

    def ort_call(row: np.ndarray) -> None:
        sess.run(None, {INPUT: row})

    rt = None
    ss_call = None
    if not args.ort_only:
        import steadyserve

        rt = steadyserve.Runtime(repo)
        model = rt.get_model(MODEL)

        def ss_call(row: np.ndarray) -> None:
            rt.infer(MODEL, {INPUT: row})

        # Same answers as plain ONNX Runtime (a benchmark of wrong answers is no benchmark).
        for row in rows[:8]:
            want = sess.run(None, {INPUT: row})[0]
            got = rt.infer(MODEL, {INPUT: row}).outputs[OUTPUT]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    runs: dict[str, list[dict]] = {"ort": [], "steadyserve": []}
    ratios = []
    for r in range(args.repeats):
        line = f"repeat {r + 1}:"
        res = None
        if not args.steadyserve_only:
            res = run_threads(ort_call, rows, args.threads, args.duration, args.warmup)
            runs["ort"].append(res)
            line += f" ort {res['rows_per_s']:.0f} rows/s p50 {res['latency']['p50_ms']} ms |"
        if ss_call is not None:
            before = batch_stats_of(model)
            res2 = run_threads(ss_call, rows, args.threads, args.duration, args.warmup)
            # batch counts cover warm-up + measured time of this run
            res2["batch_counts"] = diff_counts(batch_stats_of(model), before)
            res2["mean_batch"] = mean_batch(res2["batch_counts"])
            runs["steadyserve"].append(res2)
            if res is not None:
                ratios.append(res2["rows_per_s"] / res["rows_per_s"])
            line += (
                f" steadyserve {res2['rows_per_s']:.0f} rows/s p50 {res2['latency']['p50_ms']} ms"
                f" CPU us/req {res2['cpu_us_per_req_by_thread']}"
                f" mean batch {res2['mean_batch']}"
                + (f" | ratio {ratios[-1]:.2f}" if res is not None else "")
            )
        print(line + f" | load {loadavg()}", file=sys.stderr, flush=True)

    if rt is not None:
        rt.close()

    def summary(name: str) -> dict:
        rs = runs[name]
        if not rs:
            return {}
        return {
            "rows_per_s": spread([x["rows_per_s"] for x in rs]),
            "p50_ms": spread([x["latency"]["p50_ms"] for x in rs]),
            "p99_ms": spread([x["latency"]["p99_ms"] for x in rs]),
            "cpu_us_per_req": spread([x["cpu_us_per_req"] for x in rs]),
        }

    result = {
        "benchmark": "inprocess",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": info,
        "loadavg_at_end": loadavg(),
        "model_source": source,
        "config_overrides": args.set,
        "threads": args.threads,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "repeats": args.repeats,
        "ort_settings": ORT_SETTINGS,
        "summary": {
            "ort": summary("ort"),
            "steadyserve": summary("steadyserve"),
            "ratio": spread(ratios) if ratios else None,
        },
        "runs": runs,
    }
    if not args.no_save:
        path = write_json(result, f"inprocess_{stamp()}.json")
        print(f"wrote {path}", file=sys.stderr)

    s = result["summary"]
    print(
        f"\nIn-process, {args.threads} threads, single rows, {args.repeats} x {args.duration:g} s "
        f"(nproc {info['nproc']}, load at start {info['loadavg_at_start']}, "
        f"at end {result['loadavg_at_end']})\n"
    )
    print("| path | rows/s (median) | spread | p50 ms | p99 ms | CPU us/req |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in ("ort", "steadyserve"):
        if not s[name]:
            continue
        print(
            f"| {name} | {s[name]['rows_per_s']['median']:.0f} | "
            f"{s[name]['rows_per_s']['min']:.0f}-{s[name]['rows_per_s']['max']:.0f} "
            f"({s[name]['rows_per_s']['spread_pct']}%) | {s[name]['p50_ms']['median']:.3f} | "
            f"{s[name]['p99_ms']['median']:.3f} | {s[name]['cpu_us_per_req']['median']:.1f} |"
        )
    if ratios:
        print(
            f"\nratio steadyserve / ort: median {statistics.median(ratios):.2f} "
            f"(repeats: {', '.join(f'{x:.2f}' for x in ratios)})"
        )


if __name__ == "__main__":
    main()
