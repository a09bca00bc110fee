"""A no-op KServe V2 ModelInfer server: the transport limit of grpc.aio on this machine.

Registers ``inference.GRPCInferenceService/ModelInfer`` through a generic handler with
identity (bytes) serializers: the request is never parsed, the answer is a response built
once. Its size matches steadyserve's answer for one `tabular` row; ``grpc_load.py`` passes
the exact bytes the real server returned with ``--response-file``.

    python benchmarks/noop_server.py --port 0
    # -> noop ready grpc=127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import struct
import threading
from pathlib import Path

import grpc

SERVICE = "inference.GRPCInferenceService"


def default_response(model: str = "tabular", version: str = "1", rows: int = 1) -> bytes:
    """A ModelInferResponse with `rows` x 2 FP32 `probabilities` in raw_output_contents."""
    from tritonclient.grpc import service_pb2 as pb

    resp = pb.ModelInferResponse(model_name=model, model_version=version)
    out = resp.outputs.add()
    out.name = "probabilities"
    out.datatype = "FP32"
    out.shape.extend([rows, 2])
    resp.raw_output_contents.append(struct.pack(f"<{2 * rows}f", *([0.25, 0.75] * rows)))
    return resp.SerializeToString()


class _HandOff:
    """A worker thread that answers futures in batches (one call_soon_threadsafe per batch),
    like a batcher's executor that does no work: the cost of the hand-off alone."""

    def __init__(self, loop: asyncio.AbstractEventLoop, response: bytes):
        self._loop = loop
        self._response = response
        self._queue: list[asyncio.Future] = []
        self._cv = threading.Condition()
        threading.Thread(target=self._run, name="noop-handoff", daemon=True).start()

    def submit(self, fut: asyncio.Future) -> None:
        with self._cv:
            self._queue.append(fut)
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue:
                    self._cv.wait()
                batch, self._queue = self._queue, []
            self._loop.call_soon_threadsafe(_resolve, batch, self._response)


def _resolve(batch: list[asyncio.Future], response: bytes) -> None:
    for fut in batch:
        if not fut.done():
            fut.set_result(response)


async def serve(host: str, port: int, response: bytes, mode: str = "immediate") -> None:
    loop = asyncio.get_running_loop()
    handoff = _HandOff(loop, response) if mode == "thread" else None

    if mode == "immediate":

        async def model_infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return response

    elif mode == "future":

        async def model_infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            fut = loop.create_future()
            loop.call_soon(fut.set_result, response)
            return await fut

    else:

        async def model_infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            fut = loop.create_future()
            handoff.submit(fut)
            return await fut

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(
                model_infer, request_deserializer=None, response_serializer=None
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"noop ready grpc={host}:{bound} response_bytes={len(response)} mode={mode}", flush=True)

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    ap.add_argument(
        "--response-file",
        type=Path,
        help="serialized ModelInferResponse to return (default: built here, 1 row)",
    )
    ap.add_argument(
        "--mode",
        choices=["immediate", "future", "thread"],
        default="immediate",
        help="immediate: return the bytes (the transport limit, default); future: await a "
        "future the loop resolves; thread: await a future a worker thread resolves in "
        "batches (the cost of handing requests to an executor thread and back)",
    )
    args = ap.parse_args()
    response = args.response_file.read_bytes() if args.response_file else default_response()
    asyncio.run(serve(args.host, args.port, response, args.mode))


if __name__ == "__main__":
    main()
