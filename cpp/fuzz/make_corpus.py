"""Writes the seed corpus of cpp/fuzz/v2_wire_fuzz.cc: valid ModelInferRequests made with
protobuf, plus a few wire forms protobuf accepts but never writes (unpacked repeated scalars,
split contents, unknown fields and groups, duplicated fields).

    python cpp/fuzz/make_corpus.py        # rewrites cpp/fuzz/corpus/v2_wire_fuzz/seed_*
"""

from __future__ import annotations

import pathlib
import struct

from steadyserve._proto import grpc_predict_v2_pb2 as pb

OUT = pathlib.Path(__file__).parent / "corpus" / "v2_wire_fuzz"


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def tag(field: int, wt: int) -> bytes:
    return varint(field << 3 | wt)


def ld(field: int, body: bytes) -> bytes:
    return tag(field, 2) + varint(len(body)) + body


def seeds() -> dict[str, bytes]:
    s: dict[str, bytes] = {}

    m = pb.ModelInferRequest(model_name="resnet", model_version="1", id="req-1")
    m.parameters["priority"].int64_param = 2
    m.parameters["timeout"].int64_param = 5000
    m.parameters["sequence_start"].bool_param = True
    m.parameters["note"].string_param = "é€😀"
    m.parameters["ratio"].double_param = 0.5
    m.parameters["big"].uint64_param = 2**64 - 1
    x = m.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    x.parameters["layout"].string_param = "nchw"
    m.raw_input_contents.append(struct.pack("<6f", *range(6)))
    o = m.outputs.add(name="probs")
    o.parameters["classification"].int64_param = 3
    m.outputs.add(name="logits")
    s["raw_fp32"] = m.SerializeToString()

    m = pb.ModelInferRequest(model_name="typed")
    for name, datatype, field, values in [
        ("b", "BOOL", "bool_contents", [True, False, True]),
        ("i8", "INT8", "int_contents", [-128, 127, 300]),
        ("i64", "INT64", "int64_contents", [-(2**63), 2**63 - 1]),
        ("u16", "UINT16", "uint_contents", [0, 65535, 65536]),
        ("u64", "UINT64", "uint64_contents", [2**64 - 1]),
        ("f32", "FP32", "fp32_contents", [1.5, float("nan"), float("-inf")]),
        ("f64", "FP64", "fp64_contents", [2.5, -0.0]),
        ("s", "BYTES", "bytes_contents", [b"", b"abc", b"\xff\x00"]),
    ]:
        t = m.inputs.add(name=name, datatype=datatype, shape=[len(values)])
        getattr(t.contents, field).extend(values)
    s["typed_all_fields"] = m.SerializeToString()

    m = pb.ModelInferRequest(model_name="m")
    m.inputs.add(name="empty", datatype="FP32", shape=[0]).contents.SetInParent()
    m.inputs.add(name="dyn", datatype="INT64", shape=[-1, 2**62])
    s["empty_contents"] = m.SerializeToString()

    s["empty"] = b""

    # Unpacked shape and int_contents, contents split over three occurrences.
    s["unpacked_split"] = ld(1, b"m") + ld(
        5,
        ld(1, b"x")
        + ld(2, b"INT32")
        + tag(3, 0)
        + varint(2)
        + tag(3, 0)
        + varint(2)
        + ld(5, tag(2, 0) + varint(1) + tag(2, 0) + varint(2**64 - 1))
        + ld(5, ld(2, varint(3) + varint(4)))
        + ld(5, tag(6, 5) + struct.pack("<f", 1.0)),
    )
    # Unknown fields of every wire type, a nested unknown group, a known field as a group
    # and with a wrong wire type, a map entry dropped for an unknown field, duplicates.
    s["unknown_and_duplicates"] = (
        ld(1, b"first")
        + tag(99, 0)
        + varint(7)
        + tag(98, 1)
        + b"\0" * 8
        + tag(97, 5)
        + b"\0" * 4
        + ld(96, b"\xff")
        + tag(20, 3)
        + tag(21, 3)
        + tag(1, 0)
        + varint(1)
        + tag(21, 4)
        + tag(20, 4)
        + tag(1, 3)
        + tag(1, 4)
        + tag(1, 0)
        + varint(5)
        + ld(4, ld(1, b"k") + ld(2, tag(2, 0) + varint(1)))
        + ld(4, ld(1, b"k") + ld(2, tag(3, 2) + varint(1) + b"s") + tag(3, 0) + varint(0))
        + ld(4, ld(1, b"k") + ld(2, ld(3, b"a")) + ld(2, tag(1, 0) + varint(1)))
        + ld(1, b"last")
    )
    for data in s.values():
        pb.ModelInferRequest.FromString(data)  # every seed is valid
    return s


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("seed_*"):
        old.unlink()
    for name, data in seeds().items():
        (OUT / f"seed_{name}").write_bytes(data)


if __name__ == "__main__":
    main()
