"""In-process: 64 threads sending single rows, steadyserve.Runtime vs plain ONNX Runtime.

Both sides get the same rows, the same number of threads and the same ONNX Runtime
session options (1 intra-op thread, 1 inter-op thread, no spin-waiting):

- ``ort``:  every thread calls ``InferenceSession.run`` on one shared session, one row a call;
- ``steadyserve``: every thread calls ``Runtime(repo).infer(model, {input: row})``,
  which lets the runtime batch rows from concurrent callers.

Two models, one after the other (``--models``): the demo ``tabular`` (32-64-32-2, its
contract, drift and failover on) and ``wide``, a 512-2048-2048-10 FP32 MLP with random
weights built offline in a temp dir (REPO/wide/1/model.onnx + config.yaml, max_batch_size
64). The two paths are interleaved (ort, steadyserve, then steadyserve, ort, ...) so a
noisy neighbour hits both. Each run is duration-based after a warm-up; it reports rows/s,
per-request latency percentiles, CPU per request of this process, the ratio steadyserve /
ort per repeat, and the batch sizes the runtime formed (``statistics().batch_stats`` diffed
over the run, warm-up included). After the runs, raw ``session.run`` is timed alone (one
thread, same session) at every batch size formed: ``ORT limit`` is the rows/s ONNX Runtime
alone would reach with that mix of batches, and ``share`` is steadyserve's rows/s over it.

    python benchmarks/inprocess.py                  # both models, 64 threads, 3 x 5 s
    python benchmarks/inprocess.py --wide           # only the wide MLP (= --models wide)
    python benchmarks/inprocess.py --set-wide instances=2 --set-wide execution=threads
    python benchmarks/inprocess.py --ort-only       # only the ONNX Runtime baseline
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from common import (
    MODEL,
    ORT_SETTINGS,
    WIDE_LAYERS,
    WIDE_MODEL,
    build_demo_repo,
    build_wide_repo,
    compute_limit_rows_per_s,
    eprint,
    loadavg,
    machine_info,
    ort_batch_timing,
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


@dataclass
class Case:
    """One model to benchmark: where it is and its single FP32 [batch, n] input."""

    key: str  # "demo" | "wide"
    repo: Path
    model: str
    model_path: Path
    source: str
    overrides: list[str] = field(default_factory=list)
    config_text: str | None = None
    input: str = ""
    output: str = ""
    n_features: int = 0


def describe_io(case: Case, sess) -> None:
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    case.input, case.output, case.n_features = inp.name, out.name, int(inp.shape[-1])


def run_case(case: Case, args) -> dict:
    """Interleaved repeats of ort and steadyserve on one model, then raw ORT at the batch
    sizes the runtime formed."""
    sess = ort_session(case.model_path)
    describe_io(case, sess)
    rows = np.random.default_rng(0).standard_normal((args.rows, 1, case.n_features))
    rows = rows.astype(np.float32)
    name, inp, out = case.model, case.input, case.output

    def ort_call(row: np.ndarray) -> None:
        sess.run(None, {inp: row})

    rt = model = ss_call = None
    execution = None
    if not args.ort_only:
        import steadyserve

        rt = steadyserve.Runtime(case.repo, models=[name] if case.key == "wide" else None)
        model = rt.get_model(name)
        execution = "inline" if model.inline else f"threads x {model.config.instances}"

        def ss_call(row: np.ndarray) -> None:
            rt.infer(name, {inp: row})

        # Same answers as plain ONNX Runtime (a benchmark of wrong answers is no benchmark).
        for row in rows[:8]:
            want = sess.run(None, {inp: row})[0]
            got = rt.infer(name, {inp: row}).outputs[out]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    runs: dict[str, list[dict]] = {"ort": [], "steadyserve": []}
    ratios: list[float] = []
    eprint(f"[{case.key}] {name} {case.n_features} features, execution {execution}")
    for r in range(args.repeats):
        order = ["ort", "steadyserve"] if r % 2 == 0 else ["steadyserve", "ort"]
        res: dict[str, dict] = {}
        for path in order:
            if path == "ort" and not args.steadyserve_only:
                res["ort"] = run_threads(ort_call, rows, args.threads, args.duration, args.warmup)
            elif path == "steadyserve" and ss_call is not None:
                before = batch_stats_of(model)
                x = run_threads(ss_call, rows, args.threads, args.duration, args.warmup)
                # batch counts cover warm-up + measured time of this run
                x["batch_counts"] = diff_counts(batch_stats_of(model), before)
                x["mean_batch"] = mean_batch(x["batch_counts"])
                # execution: auto leaves inline for threads after one slow batch (for good)
                x["inline_after"] = bool(model.inline)
                res["steadyserve"] = x
        line = f"[{case.key}] repeat {r + 1}:"
        if "ort" in res:
            o = res["ort"]
            runs["ort"].append(o)
            line += f" ort {o['rows_per_s']:.0f} rows/s p50 {o['latency']['p50_ms']} ms |"
        if "steadyserve" in res:
            x = res["steadyserve"]
            runs["steadyserve"].append(x)
            line += (
                f" steadyserve {x['rows_per_s']:.0f} rows/s p50 {x['latency']['p50_ms']} ms"
                f" CPU us/req {x['cpu_us_per_req_by_thread']} mean batch {x['mean_batch']}"
            )
            if "ort" in res:
                ratios.append(x["rows_per_s"] / res["ort"]["rows_per_s"])
                line += f" | ratio {ratios[-1]:.2f}"
        eprint(line + f" | load {loadavg()}")

    if rt is not None:
        if execution == "inline" and not model.inline:
            left = next(
                (i + 1 for i, x in enumerate(runs["steadyserve"]) if not x["inline_after"]), "?"
            )
            execution = f"inline -> threads (in repeat {left})"
            eprint(f"[{case.key}] the executor left inline execution for threads: {execution}")
        rt.close()

    # Raw ONNX Runtime at the batch sizes formed, alone (the runtime is closed): the rows/s
    # ORT itself reaches with that mix of batches, one thread, same session.
    formed: set[int] = set()
    for x in runs["steadyserve"]:
        if "error" not in x["batch_counts"]:
            formed.update(x["batch_counts"])
    ort_table = {}
    for b in sorted(formed):
        ort_table[b] = ort_batch_timing(
            sess, b, case.n_features, inp, min_time_s=args.ort_time, rounds=2
        )
    shares, limits = [], []
    for x in runs["steadyserve"]:
        counts = x["batch_counts"]
        if counts and "error" not in counts:
            lim = compute_limit_rows_per_s(counts, {b: ort_table[b]["runs_per_s"] for b in counts})
            x["ort_limit_rows_per_s"] = round(lim, 1)
            x["share_of_ort_limit"] = round(x["rows_per_s"] / lim, 4) if lim else None
            limits.append(lim)
            if lim:
                shares.append(x["rows_per_s"] / lim)

    total: dict[int, int] = {}
    for x in runs["steadyserve"]:
        for b, n in (x["batch_counts"] if "error" not in x["batch_counts"] else {}).items():
            total[b] = total.get(b, 0) + n

    def summary(path: str) -> dict:
        rs = runs[path]
        if not rs:
            return {}
        return {
            "rows_per_s": spread([x["rows_per_s"] for x in rs]),
            "p50_ms": spread([x["latency"]["p50_ms"] for x in rs]),
            "p99_ms": spread([x["latency"]["p99_ms"] for x in rs]),
            "cpu_us_per_req": spread([x["cpu_us_per_req"] for x in rs]),
        }

    return {
        "model": name,
        "key": case.key,
        "model_source": case.source,
        "n_features": case.n_features,
        "input": inp,
        "output": out,
        "config_overrides": case.overrides,
        "config_text": case.config_text,
        "execution": execution,
        "summary": {
            "ort": summary("ort"),
            "steadyserve": summary("steadyserve"),
            "ratio": spread(ratios) if ratios else None,
            "ort_limit_rows_per_s": spread(limits) if limits else None,
            "share_of_ort_limit": spread(shares) if shares else None,
            "mean_batch": spread([x["mean_batch"] for x in runs["steadyserve"] if x["mean_batch"]])
            or None,
            "batch_counts": dict(sorted(total.items())),
        },
        "ort_at_batch_sizes": {str(b): v for b, v in ort_table.items()},
        "runs": runs,
    }


def histogram_text(counts: dict[int, int], top: int = 6) -> str:
    """The batch sizes that carried the most rows: 'size: share of rows', largest first."""
    rows = sum(b * n for b, n in counts.items())
    if not rows:
        return "-"
    best = sorted(counts.items(), key=lambda kv: -kv[0] * kv[1])[:top]
    parts = [f"{b}: {100 * b * n / rows:.0f}%" for b, n in sorted(best, reverse=True)]
    rest = 100 * (rows - sum(b * n for b, n in best)) / rows
    return ", ".join(parts) + (f", other {rest:.0f}%" if rest >= 0.5 else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=64)
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=4096, help="distinct rows cycled through")
    ap.add_argument(
        "--models",
        nargs="+",
        choices=["demo", "wide"],
        default=["demo", "wide"],
        help="which models, in this order (default: demo wide)",
    )
    ap.add_argument("--wide", action="store_true", help="only the wide MLP (= --models wide)")
    ap.add_argument(
        "--repo", type=Path, help="existing repository with a `tabular` model instead of the demo"
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
    ap.add_argument(
        "--set-wide",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override wide/config.yaml, e.g. instances=2, execution=inline",
    )
    ap.add_argument(
        "--wide-max-batch", type=int, default=64, help="max_batch_size of the wide model"
    )
    ap.add_argument(
        "--ort-time",
        type=float,
        default=0.2,
        help="seconds per round (2 rounds, best kept) when timing raw ORT at each batch size",
    )
    ap.add_argument("--allow-stand-in", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    args = ap.parse_args()
    if args.threads < 1 or args.repeats < 1:
        ap.error("--threads and --repeats must be integers >= 1")
    if args.wide:
        args.models = ["wide"]

    info = machine_info()
    tmp = tempfile.TemporaryDirectory(prefix="ssbench-")
    cases: list[Case] = []
    for key in args.models:
        if key == "demo":
            if args.repo:
                repo = args.repo
                versions = sorted(
                    (p for p in (repo / MODEL).iterdir() if p.name.isdigit()),
                    key=lambda p: int(p.name),
                )
                cases.append(Case("demo", repo, MODEL, versions[-1] / "model.onnx", str(repo)))
                continue
            root = Path(tmp.name) / "demo"
            demo = build_demo_repo(root, allow_stand_in=args.allow_stand_in or args.ort_only)
            text = override_config(demo.root, args.set) or demo.config_text
            cases.append(
                Case("demo", demo.root, MODEL, demo.model_path, demo.source, args.set, text)
            )
        else:
            root = Path(tmp.name) / "wide"
            wide = build_wide_repo(root, max_batch_size=args.wide_max_batch)
            text = override_config(wide.root, args.set_wide, WIDE_MODEL) or wide.config_text
            source = f"mlp {'-'.join(map(str, WIDE_LAYERS))} random weights"
            cases.append(
                Case("wide", wide.root, WIDE_MODEL, wide.model_path, source, args.set_wide, text)
            )

    results = [run_case(case, args) for case in cases]
    tmp.cleanup()

    result = {
        "benchmark": "inprocess",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": info,
        "loadavg_at_end": loadavg(),
        "threads": args.threads,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "repeats": args.repeats,
        "ort_settings": ORT_SETTINGS,
        "models": results,
    }
    # The demo's figures also where the earlier single-model JSON had them.
    demo_res = next((m for m in results if m["key"] == "demo"), None)
    if demo_res is not None:
        result.update(
            model_source=demo_res["model_source"],
            config_overrides=demo_res["config_overrides"],
            summary=demo_res["summary"],
            runs=demo_res["runs"],
        )
    if not args.no_save:
        path = write_json(result, f"inprocess_{stamp()}.json")
        print(f"wrote {path}", file=sys.stderr)

    print(
        f"\nIn-process, {args.threads} threads, single rows, {args.repeats} x {args.duration:g} s "
        f"(nproc {info['nproc']}, load at start {info['loadavg_at_start']}, "
        f"at end {result['loadavg_at_end']})\n"
    )
    print("| model | path | rows/s (median) | spread | p50 ms | p99 ms | CPU us/req |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for m in results:
        s = m["summary"]
        for path in ("ort", "steadyserve"):
            if not s[path]:
                continue
            rps = s[path]["rows_per_s"]
            print(
                f"| {m['model']} | {path} | {rps['median']:.0f} | "
                f"{rps['min']:.0f}-{rps['max']:.0f} ({rps['spread_pct']}%) | "
                f"{s[path]['p50_ms']['median']:.3f} | {s[path]['p99_ms']['median']:.3f} | "
                f"{s[path]['cpu_us_per_req']['median']:.1f} |"
            )
    print(
        "\n| model | execution | ratio ss / ort | mean batch | rows by batch size "
        "| ORT limit rows/s at that mix | ss share of it |"
    )
    print("| --- | --- | ---: | ---: | --- | ---: | ---: |")

    def rng(sp: dict | None, fmt: str = "{:.2f}") -> str:
        if not sp:
            return "-"
        return f"{fmt.format(sp['median'])} [{fmt.format(sp['min'])}-{fmt.format(sp['max'])}]"

    for m in results:
        s = m["summary"]
        share = s["share_of_ort_limit"]
        share_txt = (
            f"{100 * share['median']:.0f}% [{100 * share['min']:.0f}-{100 * share['max']:.0f}%]"
            if share
            else "-"
        )
        print(
            f"| {m['model']} | {m['execution']} | {rng(s['ratio'])} | "
            f"{rng(s['mean_batch'], '{:.1f}')} | "
            f"{histogram_text(s['batch_counts'])} | {rng(s['ort_limit_rows_per_s'], '{:.0f}')} | "
            f"{share_txt} |"
        )
    for m in results:
        if m["ort_at_batch_sizes"]:
            sizes = sorted(int(b) for b in m["ort_at_batch_sizes"])
            picks = sorted({sizes[0], sizes[-1], *(b for b in sizes if b & (b - 1) == 0)})
            txt = ", ".join(
                f"{b}: {m['ort_at_batch_sizes'][str(b)]['run_us_median']:.0f} µs" for b in picks
            )
            print(f"\nraw ORT {m['model']} run time by batch size: {txt}")


if __name__ == "__main__":
    main()
