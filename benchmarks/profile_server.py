"""Where the server's CPU goes under load: py-spy samples of `steadyserve serve` under h2load.

Starts the server on the demo repository, checks one answer, drives it with h2load at
concurrency C, records py-spy samples (all threads) during the middle of the run, and
prints the hottest functions (inclusive and self), per thread. Needs ``py-spy``
(``pip install py-spy``; it may need ``--cap-add SYS_PTRACE`` in a container).

    python benchmarks/profile_server.py -c 64 -D 10
    python benchmarks/profile_server.py -c 1 --idle     # wall time, waiting included
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import (
    N_FEATURES,
    eprint,
    loadavg,
    proc_cpu_seconds,
    thread_cpu_seconds,
    thread_ctx_switches,
)
from frames import grpc_frame, request_bytes
from grpc_load import NOOP_RE, READY_RE, Server, build_repo, grpc_call, h2load_cmd, parse_h2load
from pyload import check_response

_FILE = re.compile(r" \((?:.*/)?([^/]+\.py|<[^>]+>):(\d+)\)")


def short(frame: str) -> str:
    return _FILE.sub(r" (\1:\2)", frame)


def report(raw: Path, top: int) -> None:
    incl: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, n_text = line.rsplit(" ", 1)
        n = int(n_text)
        frames = stack.split(";")
        thread = re.sub(r"thread \(\d+\): ?", "", frames[0]) or "?"
        thread = re.sub(r"\d+", "N", thread)
        fr = [short(f) for f in frames[1:]]
        total += n
        threads[thread] += n
        for f in set(fr):
            incl[f] += n
        if fr:
            leaf[fr[-1]] += n
    if not total:
        print("no samples")
        return
    print(f"\n{total} samples\n\nby thread:")
    for t, n in threads.most_common():
        print(f"  {100 * n / total:5.1f}%  {t}")
    print("\ninclusive (function and what it calls):")
    for f, n in incl.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {f}")
    print("\nself (the function itself):")
    for f, n in leaf.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {f}")


def thread_names(pid: int) -> dict[int, str]:
    """{native thread id: Python thread name} from `py-spy dump`."""
    out = subprocess.run(["py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True)
    names = {}
    for m in re.finditer(
        r"^Thread (0x[0-9a-fA-F]+|\d+) \((?:idle|active)[^)]*\): \"([^\"]*)\"", out.stdout, re.M
    ):
        tid = m.group(1)
        names[int(tid, 16) if tid.startswith("0x") else int(tid)] = m.group(2)
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-c", "--concurrency", type=int, default=64)
    ap.add_argument("-D", "--duration", type=float, default=10.0, help="h2load seconds")
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--idle", action="store_true", help="also sample waiting threads")
    ap.add_argument("--native", action="store_true", help="py-spy --native (C/C++ frames)")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument(
        "--noop",
        nargs="?",
        const="immediate",
        choices=["immediate", "future", "thread"],
        help="profile noop_server.py (in this --mode) instead",
    )
    ap.add_argument("--out", type=Path, help="keep py-spy's raw (collapsed) samples here")
    args = ap.parse_args()
    if not shutil.which("py-spy") or not shutil.which("h2load"):
        sys.exit("needs py-spy (pip install py-spy) and h2load (apt install nghttp2-client)")

    tmp = Path(tempfile.mkdtemp(prefix="ssprof-"))
    server = None
    try:
        demo = build_repo(tmp / "repo", allow_stand_in=False)
        row = np.random.default_rng(0).standard_normal((1, N_FEATURES)).astype(np.float32)
        payload = request_bytes(row)
        frame = tmp / "f.bin"
        frame.write_bytes(grpc_frame(payload))
        if args.noop:
            cmd = [sys.executable, str(Path(__file__).with_name("noop_server.py")), "--port", "0",
                   "--mode", args.noop]  # fmt: skip
            server = Server("noop", cmd, NOOP_RE, tmp / "server.log", 60)
        else:
            cmd = [sys.executable, "-m", "steadyserve", "serve", str(demo.root), "--host",
                   "127.0.0.1", "--grpc-port", "0", "--http-port", "0"]  # fmt: skip
            server = Server("steadyserve", cmd, READY_RE, tmp / "server.log", 120)
        url = f"{server.match.group(1)}:{server.match.group(2)}"
        check_response(grpc_call(url, payload))
        h2 = subprocess.Popen(
            h2load_cmd(url, frame, args.concurrency, 1, args.duration, 1.0, tmp / "h2.log"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(1.0 + 0.2 * args.duration)
        raw = args.out or tmp / "samples.txt"
        spy = ["py-spy", "record", "--pid", str(server.pid), "-d",
               str(max(1, int(0.6 * args.duration))), "-r", str(args.rate), "--threads",
               "--format", "raw", "-o", str(raw)]  # fmt: skip
        if args.idle:
            spy.append("--idle")
        if args.native:
            spy.append("--native")  # (pauses the process per sample: slower server)
        else:
            spy.append("--nonblocking")
        cpu0, t0 = proc_cpu_seconds(server.pid), time.monotonic()
        per0, cs0 = thread_cpu_seconds(server.pid), thread_ctx_switches(server.pid)
        sp = subprocess.run(spy, capture_output=True, text=True)
        per1, cs1 = thread_cpu_seconds(server.pid), thread_ctx_switches(server.pid)
        cpu1, t1 = proc_cpu_seconds(server.pid), time.monotonic()
        names = thread_names(server.pid)
        out, _ = h2.communicate()
        h = parse_h2load(out)
        print(
            f"c={args.concurrency}: {h.get('req_per_s')} req/s (h2load, while sampled), server "
            f"{(cpu1 - cpu0) / (t1 - t0):.2f} cores, load {loadavg()}"
        )
        if sp.returncode != 0 or not raw.exists():
            eprint(sp.stderr[-2000:])
            return
        rate = h.get("req_per_s") or 1.0
        print("\nCPU by thread over the sampled window (/proc; py-spy's own pauses included):")
        for tid in sorted(per1, key=lambda t: per0.get(t, 0) - per1[t]):
            used = per1[tid] - per0.get(tid, 0.0)
            if used > 0:
                cores = used / (t1 - t0)
                switches = (cs1.get(tid, 0) - cs0.get(tid, 0)) / (t1 - t0) / rate
                print(
                    f"  {cores:5.2f} cores  {1e6 * cores / rate:7.1f} us/req  "
                    f"{switches:5.2f} ctx switches/req  "
                    f"{names.get(tid, 'native (no Python frames)')} [{tid}]"
                )
        report(raw, args.top)
        log = (tmp / "server.log").read_text(errors="replace")
        errors = log.count('"level": "error"')
        if errors:
            print(f"\nWARNING: the server logged {errors} errors during the run; first one:")
            print([ln for ln in log.splitlines() if '"level": "error"' in ln][0][:2000])
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
