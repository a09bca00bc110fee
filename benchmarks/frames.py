"""Pre-serialized gRPC request frames for h2load.

A gRPC message on the wire is a 5-byte prefix (1 byte compressed flag = 0, 4-byte
big-endian length) followed by the serialized protobuf. h2load posts the file given with
``-d`` as the request body, so one frame file = one unary gRPC call.

Built with tritonclient's ``service_pb2`` (wire-compatible with steadyserve's
``inference.*`` messages); never import ``steadyserve._proto`` in the same process.

    python benchmarks/frames.py --out /tmp/tabular.frame            # 1 row of 32 floats
    python benchmarks/frames.py --out /tmp/b8.frame --rows 8 --seed 3
"""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

import numpy as np
from common import INPUT, MODEL, N_FEATURES

GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"


def request_bytes(
    rows: np.ndarray | None = None,
    *,
    model: str = MODEL,
    input_name: str = INPUT,
    request_id: str = "",
    seed: int = 0,
) -> bytes:
    """A serialized ModelInferRequest carrying `rows` (FP32 [n, 32]) in raw_input_contents."""
    from tritonclient.grpc import service_pb2 as pb

    if rows is None:
        rows = np.random.default_rng(seed).standard_normal((1, N_FEATURES)).astype(np.float32)
    rows = np.ascontiguousarray(rows, dtype="<f4")
    req = pb.ModelInferRequest(model_name=model, id=request_id)
    tensor = req.inputs.add()
    tensor.name = input_name
    tensor.datatype = "FP32"
    tensor.shape.extend(rows.shape)
    req.raw_input_contents.append(rows.tobytes())
    return req.SerializeToString()


def grpc_frame(message: bytes) -> bytes:
    """The length-prefixed gRPC message (uncompressed)."""
    return struct.pack(">BI", 0, len(message)) + message


def unframe(body: bytes) -> bytes:
    """The message inside one gRPC frame (inverse of grpc_frame)."""
    flag, length = struct.unpack(">BI", body[:5])
    if flag != 0 or len(body) != 5 + length:
        raise ValueError(f"not one uncompressed gRPC frame (flag={flag}, length={length})")
    return body[5:]


def write_frame(path: Path, rows: np.ndarray | None = None, **kw) -> bytes:
    """Write the frame file and return the serialized request (without prefix)."""
    msg = request_bytes(rows, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(grpc_frame(msg))
    return msg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="frame file to write")
    ap.add_argument("--rows", type=int, default=1, help="rows in the request (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--input", default=INPUT)
    args = ap.parse_args()
    if args.rows < 1:
        ap.error("--rows must be an integer >= 1")
    rows = np.random.default_rng(args.seed).standard_normal((args.rows, N_FEATURES))
    msg = write_frame(args.out, rows.astype(np.float32), model=args.model, input_name=args.input)
    print(f"wrote {args.out}: {len(msg) + 5} bytes (message {len(msg)} bytes, {args.rows} row(s))")


if __name__ == "__main__":
    main()
