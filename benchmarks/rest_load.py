"""KServe V2 REST next to gRPC on one steadyserve server: same model, same row, same
concurrency, h2load for both.

One `steadyserve serve` (native gRPC frontend, REST on its HTTP port) serves the demo
``tabular`` model. Three request forms carry the same single row:

- ``rest-json``: POST /v2/models/tabular/infer, a JSON body (h2load ``--h1``);
- ``rest-binary``: the same with the binary tensor data extension (JSON header of
  ``Inference-Header-Content-Length`` bytes, then the raw row; binary output);
- ``grpc``: ModelInfer, a pre-serialized gRPC frame (``frames.py``), HTTP/2.

C connections, one request in flight each (closed loop), for each form in turn, repeated
and interleaved (json, binary, grpc, then grpc, binary, json, ...). Before any load each
form's answer is compared with the gRPC one; after each run the server's own counters
(ModelStatistics success/fail, steadyserve_requests_total by outcome) must show no
failure or refusal and at least as many successes as h2load counted: h2load counts a
gRPC error as HTTP 200, so a gRPC run with refusals (a full queue, admission control)
shows an inflated req/s and is marked not verified. Latency
percentiles come from h2load's per-request log.

    python benchmarks/rest_load.py                      # c=16, 3 x 4 s per form
    python benchmarks/rest_load.py --concurrency 1 16 64 --repeats 3 --duration 4
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import (
    INPUT,
    MODEL,
    N_FEATURES,
    OUTPUT,
    build_demo_repo,
    eprint,
    fmt_spread,
    h2load_cmd,
    machine_info,
    md_table,
    parse_h2load,
    percentiles,
    proc_cpu_seconds,
    read_h2load_log,
    spread,
    stamp,
    write_json,
)
from frames import grpc_frame, request_bytes
from grpc_load import (
    READY_RE,
    Server,
    grpc_call,
    metric_samples,
    metrics_text,
    model_statistics,
    outcome_delta,
    stats_delta,
)

HEADER = "Inference-Header-Content-Length"
FORMS = ("rest-json", "rest-binary", "grpc")
INFER_PATH = f"/v2/models/{MODEL}/infer"


def bodies(row: np.ndarray, tmpdir: Path) -> dict[str, dict]:
    """Per form: the body file h2load posts, its extra headers, and the body itself."""
    row = np.ascontiguousarray(row, dtype="<f4").reshape(1, N_FEATURES)
    tensor = {"name": INPUT, "shape": [1, N_FEATURES], "datatype": "FP32"}
    json_body = json.dumps({"inputs": [{**tensor, "data": row.ravel().tolist()}]}).encode()
    head = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": row.nbytes}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    forms = {
        "rest-json": (json_body, ("content-type: application/json",)),
        "rest-binary": (
            head + row.tobytes(),
            ("content-type: application/octet-stream", f"{HEADER.lower()}: {len(head)}"),
        ),
        "grpc": (grpc_frame(request_bytes(row)), ()),
    }
    out = {}
    for name, (body, headers) in forms.items():
        path = tmpdir / f"{name}.body"
        path.write_bytes(body)
        out[name] = {"file": path, "headers": headers, "body": body}
    return out


def rest_answer(http_url: str, form: dict) -> np.ndarray:
    """The `probabilities` of one REST request (JSON or binary answer)."""
    host, port = http_url.rsplit(":", 1)
    headers = dict(h.split(": ", 1) for h in form["headers"])
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", INFER_PATH, body=form["body"], headers=headers)
        answer = conn.getresponse()
        raw = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"REST answered {answer.status}: {raw[:500]!r}")
        n = answer.getheader(HEADER)
    finally:
        conn.close()
    n = int(n) if n is not None else len(raw)
    head = json.loads(raw[:n])
    at = n
    for out in head["outputs"]:
        size = out.get("parameters", {}).get("binary_data_size")
        if out["name"] == OUTPUT:
            if size is None:
                return np.asarray(out["data"], np.float32).reshape(out["shape"])
            return np.frombuffer(raw[at : at + size], "<f4").reshape(out["shape"])
        at += size or 0
    raise RuntimeError(f"no '{OUTPUT}' in the REST answer: {head}")


def grpc_answer(grpc_url: str, form: dict) -> np.ndarray:
    from tritonclient.grpc import service_pb2 as pb

    raw = grpc_call(grpc_url, form["body"][5:])
    resp = pb.ModelInferResponse.FromString(raw)
    i = [o.name for o in resp.outputs].index(OUTPUT)
    return np.frombuffer(resp.raw_output_contents[i], "<f4").reshape(resp.outputs[i].shape)


def run(form_name: str, form: dict, urls: dict, c: int, args, log: Path, pid: int) -> dict:
    if form_name == "grpc":
        cmd = h2load_cmd(urls["grpc"], form["file"], c, 1, args.duration, args.warmup, log)
    else:
        cmd = [
            "h2load",
            "--h1",
            "-c",
            str(c),
            "-m",
            "1",
            "-t",
            str(args.threads),
            "-D",
            f"{int(args.duration * 1000)}ms",
            "--warm-up-time",
            f"{int(args.warmup * 1000)}ms",
        ]
        for h in form["headers"]:
            cmd += ["-H", h]
        cmd += [
            "-d",
            str(form["file"]),
            "--log-file",
            str(log),
            f"http://{urls['http']}{INFER_PATH}",
        ]
    if log.exists():
        log.unlink()
    before = model_statistics(urls["grpc"])
    metrics_before = metric_samples(metrics_text(urls["http"]))
    cpu0 = proc_cpu_seconds(pid)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration * 4 + 60)
    cpu1 = proc_cpu_seconds(pid)
    after = model_statistics(urls["grpc"])
    outcomes = outcome_delta(metric_samples(metrics_text(urls["http"])), metrics_before)
    rec = parse_h2load(done.stdout)
    rows = read_h2load_log(log)
    ok = rows[rows[:, 1] == 200] if rows.size else rows
    rec["latency"] = percentiles(ok[:, 2] / 1e6) if ok.size else {}
    delta = stats_delta(after, before)
    succeeded = rec.get("requests", {}).get("succeeded", 0)
    rec["server"] = {
        "success": delta["success"][0] if delta else None,
        "fail": delta["fail"][0] if delta else None,
        # warm-up included: CPU over every request the server answered in the run
        "cpu_us_per_req": round(1e6 * (cpu1 - cpu0) / max(1, delta["success"][0]), 1)
        if delta
        else None,
    }
    # Refused or failed requests (steadyserve_requests_total): a gRPC error is HTTP 200 to
    # h2load, so its req/s counts them as answers. A duration-based run ends by resetting
    # what is in flight (up to c requests counted as cancelled), which is no failure.
    rec["outcomes"] = outcomes
    # (A backup's answers after a failover, other_models_*, are answers; the failure that
    # caused them is counted as the primary's own outcome.)
    refused = sum(
        v
        for k, v in outcomes.items()
        if k not in ("success", "cancelled") and not k.startswith("other_models_")
    )
    rec["server"]["refused"] = int(refused)
    rec["verified"] = bool(
        delta
        and delta["fail"][0] == 0
        and delta["success"][0] >= succeeded > 0
        and refused == 0
        and outcomes.get("cancelled", 0) <= c
    )
    if done.returncode != 0 or not rec.get("req_per_s"):
        rec["h2load_error"] = (done.stderr or done.stdout)[-1000:]
    return rec


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[16], help="connections")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per run")
    ap.add_argument("--threads", type=int, default=1, help="h2load threads")
    ap.add_argument("--frontend", default="native", choices=("native", "grpcio"))
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (server log)")
    args = ap.parse_args()
    if args.repeats < 1 or args.duration <= 0 or min(args.concurrency) < 1:
        ap.error("--repeats and --concurrency must be >= 1, --duration > 0")
    return args


def main() -> None:
    args = parse_args()
    if not shutil.which("h2load"):
        sys.exit("h2load is needed (Debian/Ubuntu: apt install nghttp2-client)")
    tmpdir = Path(tempfile.mkdtemp(prefix="rest_load-"))
    repo = build_demo_repo(tmpdir / "repo")
    row = np.random.default_rng(0).standard_normal((1, N_FEATURES)).astype(np.float32)
    forms = bodies(row, tmpdir)
    cmd = [
        sys.executable,
        "-m",
        "steadyserve",
        "serve",
        str(repo.root),
        "--host",
        "127.0.0.1",
        "--grpc-port",
        "0",
        "--http-port",
        "0",
        "--frontend",
        args.frontend,
    ]
    server = Server("steadyserve", cmd, READY_RE, tmpdir / "server.log", timeout=120)
    m = server.match
    urls = {"grpc": f"{m.group(1)}:{m.group(2)}", "http": f"{m.group(3)}:{m.group(4)}"}
    result: dict = {"machine": machine_info(), "args": vars(args), "urls": urls, "runs": []}
    try:
        want = grpc_answer(urls["grpc"], forms["grpc"])
        for name in ("rest-json", "rest-binary"):
            got = rest_answer(urls["http"], forms[name])
            np.testing.assert_array_equal(got, want, err_msg=f"{name} answer differs from gRPC")
        result["validated"] = {"probabilities": want.tolist()}
        for c in args.concurrency:
            for r in range(args.repeats):
                order = FORMS if r % 2 == 0 else tuple(reversed(FORMS))
                for name in order:
                    eprint(f"c={c} repeat {r + 1}/{args.repeats}: {name}")
                    rec = run(name, forms[name], urls, c, args, tmpdir / f"{name}.log", server.pid)
                    result["runs"].append({"form": name, "c": c, "repeat": r, **rec})
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(tmpdir, ignore_errors=True)
    result["summary"] = summarize(result["runs"], args)
    path = write_json(result, f"rest_load-{stamp()}.json")
    print_markdown(result, args)
    print(f"\nJSON: {path}")


def summarize(runs: list[dict], args) -> list[dict]:
    rows = []
    for c in args.concurrency:
        by = {f: [x for x in runs if x["c"] == c and x["form"] == f] for f in FORMS}
        grpc_rps = {x["repeat"]: x.get("req_per_s", 0.0) for x in by["grpc"]}
        for f in FORMS:
            sel = by[f]
            ratio = [
                x.get("req_per_s", 0.0) / grpc_rps[x["repeat"]]
                for x in sel
                if grpc_rps.get(x["repeat"])
            ]
            rows.append(
                {
                    "form": f,
                    "c": c,
                    "req_per_s": spread([x.get("req_per_s", 0.0) for x in sel]),
                    "p50_ms": spread([x["latency"].get("p50_ms", 0.0) for x in sel]),
                    "p99_ms": spread([x["latency"].get("p99_ms", 0.0) for x in sel]),
                    "ratio_vs_grpc": spread(ratio),
                    "cpu_us_per_req": spread([x["server"]["cpu_us_per_req"] or 0.0 for x in sel]),
                    "refused": sum(x["server"]["refused"] for x in sel),
                    "verified": all(x["verified"] for x in sel),
                }
            )
    return rows


def print_markdown(result: dict, args) -> None:
    mi = result["machine"]
    print(
        f"\nREST vs gRPC on one steadyserve server ({args.frontend} frontend), model "
        f"`{MODEL}`, 1 row a request, h2load closed loop, {args.repeats} x {args.duration:g} s "
        f"per point (median [min-max]); nproc {mi['nproc']}, load {mi['loadavg_at_start']}\n"
    )
    header = [
        "form",
        "c",
        "req/s",
        "p50 ms",
        "p99 ms",
        "req/s vs gRPC",
        "server CPU µs/req",
        "failed or refused",
        "verified",
    ]
    table = [
        [
            s["form"],
            s["c"],
            fmt_spread(s["req_per_s"]),
            fmt_spread(s["p50_ms"], ".2f"),
            fmt_spread(s["p99_ms"], ".2f"),
            fmt_spread(s["ratio_vs_grpc"], ".2f"),
            fmt_spread(s["cpu_us_per_req"]),
            s["refused"],
            "yes" if s["verified"] else "NO",
        ]
        for s in result["summary"]
    ]
    print(md_table(header, table))


if __name__ == "__main__":
    main()
