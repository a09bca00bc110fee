"""A closed-loop Python load generator for any KServe V2 gRPC server (no h2load needed).

C coroutines on one asyncio loop, each sending the next ModelInfer as soon as its last one
answered, for D seconds after a warm-up. The request is built once with tritonclient's
messages and sent pre-serialized (identity serializers), so the client spends its CPU on
gRPC, not on protobuf. Still, a Python client costs ~300 us of CPU per request: on a
2-core machine it cannot drive much more than ~2k req/s, and it shares the cores with the
server. Use h2load (``grpc_load.py``) for the server's real limits.

    python benchmarks/pyload.py --url 127.0.0.1:8001 --concurrency 16 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import time

import grpc
import numpy as np
from common import MODEL, OUTPUT, loadavg, percentiles
from frames import GRPC_METHOD, request_bytes


def check_response(raw: bytes, rows: int = 1) -> dict:
    """Parse one ModelInferResponse and check it carries `rows` x 2 probabilities."""
    from tritonclient.grpc import service_pb2 as pb

    resp = pb.ModelInferResponse.FromString(raw)
    names = [o.name for o in resp.outputs]
    if OUTPUT not in names:
        raise RuntimeError(f"response has outputs {names}, expected '{OUTPUT}'")
    i = names.index(OUTPUT)
    out = resp.outputs[i]
    if list(out.shape) != [rows, 2] or out.datatype != "FP32":
        raise RuntimeError(
            f"'{OUTPUT}' is {out.datatype}{list(out.shape)}, expected FP32[{rows}, 2]"
        )
    if resp.raw_output_contents:
        values = np.frombuffer(resp.raw_output_contents[i], dtype="<f4")
    else:
        values = np.asarray(out.contents.fp32_contents, dtype=np.float32)
    return {
        "model_name": resp.model_name,
        "model_version": resp.model_version,
        "values": values.tolist(),
        "bytes": len(raw),
    }


async def run_load(
    url: str,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    channels: int = 1,
    payload: bytes | None = None,
) -> dict:
    payload = payload if payload is not None else request_bytes()
    chans = [grpc.aio.insecure_channel(url) for _ in range(max(1, channels))]
    calls = [
        ch.unary_unary(GRPC_METHOD, request_serializer=None, response_deserializer=None)
        for ch in chans
    ]
    # One real answer, checked, before any load.
    first = check_response(await calls[0](payload, timeout=30))

    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    measuring = False
    stop_at = 0.0

    async def worker(k: int) -> None:
        call = calls[k % len(calls)]
        perf = time.perf_counter
        while True:
            t0 = perf()
            if t0 >= stop_at:
                return
            try:
                await call(payload, timeout=30)
                if measuring:
                    latencies.append(perf() - t0)
            except grpc.aio.AioRpcError as e:
                if measuring:
                    errors[e.code().name] += 1

    loop_start = time.perf_counter()
    stop_at = loop_start + warmup_s + duration_s
    tasks = [asyncio.create_task(worker(k)) for k in range(concurrency)]
    await asyncio.sleep(warmup_s)
    measuring = True
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    for ch in chans:
        await ch.close()
    done = len(latencies)
    return {
        "driver": "pyload",
        "url": url,
        "concurrency": concurrency,
        "channels": len(chans),
        "duration_s": round(elapsed, 3),
        "succeeded": done,
        "errors": dict(errors),
        "req_per_s": round(done / elapsed, 1) if elapsed else 0.0,
        "latency": percentiles(latencies),
        "client_cpu_us_per_req": round(1e6 * cpu / max(done, 1), 1),
        "first_response": first,
        "loadavg": loadavg(),
        "nproc": os.cpu_count(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url", required=True, help="host:port of the gRPC server")
    ap.add_argument("--concurrency", "-c", type=int, default=1)
    ap.add_argument("--duration", "-D", type=float, default=10.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    ap.add_argument("--channels", type=int, default=1, help="gRPC channels (connections)")
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args()
    if args.concurrency < 1 or args.channels < 1:
        ap.error("--concurrency and --channels must be integers >= 1")
    res = asyncio.run(
        run_load(
            args.url,
            args.concurrency,
            args.duration,
            args.warmup,
            args.channels,
            request_bytes(model=args.model),
        )
    )
    if args.json:
        print(json.dumps(res))
        return
    lat = res["latency"]
    print(
        f"c={res['concurrency']} channels={res['channels']}: {res['req_per_s']} req/s, "
        f"p50 {lat.get('p50_ms')} ms, p99 {lat.get('p99_ms')} ms, "
        f"errors {res['errors'] or 0}, client CPU {res['client_cpu_us_per_req']} us/req, "
        f"load {res['loadavg']}"
    )


if __name__ == "__main__":
    main()
