"""The native V2 wire reader and writer against protobuf's own parser (upb).

The native reader must take the same accept/refuse decision as
``ModelInferRequest.FromString`` on any bytes and, when it accepts, see the same
fields. Inputs: arbitrary bytes, mutations of valid requests, a random "wire
soup" of tags and payloads (groups, wrong wire types, overlong varints, nested
messages), valid requests made by protobuf, and the explicit malformed cases.
The writer's output must parse with protobuf into what was written.
"""

from __future__ import annotations

import struct

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# The oracle: tritonclient's own messages (wire-compatible with ours, test_proto_compat.py),
# which share the test process's default descriptor pool with the other tests (conftest.py).
from tritonclient.grpc import service_pb2 as pb

from steadyserve import _core

CONTENTS_FIELDS = [f.name for f in pb.InferTensorContents.DESCRIPTOR.fields]

SETTINGS = dict(
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---- the oracle -----------------------------------------------------------------------------


def _norm(x):
    """Tags every scalar with its type (True must not equal 1) and floats by bit pattern (NaN)."""
    if isinstance(x, dict):
        return {k: _norm(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_norm(v) for v in x]
    if isinstance(x, float):
        return ("float", struct.pack("<d", x))
    if x is None:
        return None
    return (type(x).__name__, x)


def _param(p: pb.InferParameter):
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def _params(m) -> dict:
    return {k: _param(v) for k, v in m.items()}


def _from_proto(m: pb.ModelInferRequest) -> dict:
    return {
        "model_name": m.model_name,
        "model_version": m.model_version,
        "id": m.id,
        "parameters": _params(m.parameters),
        "inputs": [
            {
                "name": i.name,
                "datatype": i.datatype,
                "shape": list(i.shape),
                "parameters": _params(i.parameters),
                "contents": {
                    f: list(getattr(i.contents, f))
                    for f in CONTENTS_FIELDS
                    if len(getattr(i.contents, f)) > 0
                },
            }
            for i in m.inputs
        ],
        "outputs": [{"name": o.name, "parameters": _params(o.parameters)} for o in m.outputs],
        "raw_input_contents": list(m.raw_input_contents),
    }


def check_same(data: bytes) -> bool:
    """Asserts the native reader agrees with protobuf on `data`; returns whether it was accepted."""
    try:
        expected = _from_proto(pb.ModelInferRequest.FromString(data))
    except DecodeError:
        expected = None
    try:
        got = _core.parse_infer_request(data)
        error = None
    except ValueError as e:
        got, error = None, str(e)
    if expected is None:
        assert got is None, f"protobuf refuses, the native reader accepts {data!r}"
        return False
    assert got is not None, f"protobuf accepts, the native reader refuses {data!r}: {error}"
    assert _norm(got) == _norm(expected), data
    return True


# ---- a hand encoder -------------------------------------------------------------------------


def varint(n: int, pad: int = 0) -> bytes:
    """`n` as a varint; `pad` extra (overlong) bytes."""
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            break
    if pad:
        out[-1] |= 0x80
        out += b"\x80" * (pad - 1) + b"\x00"
    return bytes(out)


def tag(field: int, wt: int) -> bytes:
    return varint(field << 3 | wt)


def ld(field: int, body: bytes) -> bytes:
    return tag(field, 2) + varint(len(body)) + body


def vf(field: int, v: int) -> bytes:
    return tag(field, 0) + varint(v)


def entry(field: int, key: bytes, value: bytes) -> bytes:
    return ld(field, ld(1, key) + ld(2, value))


# ---- strategies -----------------------------------------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)
UINT64 = st.integers(0, 2**64 - 1)
NAMES = st.text(max_size=6)
PARAM = st.one_of(
    st.none(),
    st.tuples(st.just("bool_param"), st.booleans()),
    st.tuples(st.just("int64_param"), INT64),
    st.tuples(st.just("string_param"), st.text(max_size=6)),
    st.tuples(st.just("double_param"), st.floats()),
    st.tuples(st.just("uint64_param"), UINT64),
)
PARAMS = st.dictionaries(NAMES, PARAM, max_size=3)
CONTENTS = st.fixed_dictionaries(
    {},
    optional={
        "bool_contents": st.lists(st.booleans(), max_size=4),
        "int_contents": st.lists(st.integers(-(2**31), 2**31 - 1), max_size=4),
        "int64_contents": st.lists(INT64, max_size=4),
        "uint_contents": st.lists(st.integers(0, 2**32 - 1), max_size=4),
        "uint64_contents": st.lists(UINT64, max_size=4),
        "fp32_contents": st.lists(st.floats(width=32), max_size=4),
        "fp64_contents": st.lists(st.floats(), max_size=4),
        "bytes_contents": st.lists(st.binary(max_size=4), max_size=4),
    },
)


def _fill_params(target, params: dict) -> None:
    for key, value in params.items():
        p = target.get_or_create(key)
        if value is not None:
            setattr(p, value[0], value[1])


@st.composite
def requests(draw) -> pb.ModelInferRequest:
    m = pb.ModelInferRequest(model_name=draw(NAMES), model_version=draw(NAMES), id=draw(NAMES))
    _fill_params(m.parameters, draw(PARAMS))
    for _ in range(draw(st.integers(0, 3))):
        i = m.inputs.add(
            name=draw(NAMES), datatype=draw(NAMES), shape=draw(st.lists(INT64, max_size=4))
        )
        _fill_params(i.parameters, draw(PARAMS))
        contents = draw(CONTENTS)
        if contents or draw(st.booleans()):
            i.contents.SetInParent()
        for field, values in contents.items():
            getattr(i.contents, field).extend(values)
    for _ in range(draw(st.integers(0, 2))):
        o = m.outputs.add(name=draw(NAMES))
        _fill_params(o.parameters, draw(PARAMS))
    m.raw_input_contents.extend(draw(st.lists(st.binary(max_size=8), max_size=3)))
    return m


# Field numbers that are known somewhere (1-8) are likely; 0 and large ones less so.
FIELD = st.one_of(
    st.integers(1, 8),
    st.integers(1, 8),
    st.sampled_from([0, 9, 15, 16, 2**29 - 1]),
    st.integers(0, 2**29 - 1),
)
STRINGS = st.one_of(
    st.text(max_size=4).map(lambda s: s.encode()),
    st.sampled_from(
        [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"a\x80"]
    ),
)


@st.composite
def wire_soup(draw, depth: int = 0) -> bytes:
    """Fields with any wire type and a payload that fits it, or not: nested messages,
    groups (closed by a matching END_GROUP mostly), packed runs, strings, overlong varints."""
    out = b""
    for _ in range(draw(st.integers(0, 4 if depth < 2 else 2))):
        f = draw(FIELD)
        wt = draw(st.sampled_from([0, 0, 1, 2, 2, 2, 2, 3, 3, 4, 5, 6, 7]))
        if wt == 0:
            out += tag(f, 0) + varint(draw(UINT64), draw(st.sampled_from([0, 0, 0, 1, 2])))
        elif wt == 1:
            out += tag(f, 1) + draw(st.binary(min_size=8, max_size=8))
        elif wt == 5:
            out += tag(f, 5) + draw(st.binary(min_size=4, max_size=4))
        elif wt == 2:
            kind = draw(st.sampled_from(["string", "binary", "packed", "message", "message"]))
            if kind == "string":
                body = draw(STRINGS)
            elif kind == "binary":
                body = draw(st.binary(max_size=9))
            elif kind == "packed":
                body = b"".join(varint(v) for v in draw(st.lists(UINT64, max_size=4)))
            else:
                body = draw(wire_soup(depth + 1)) if depth < 4 else b""
            out += ld(f, body)
        elif wt == 3:
            body = draw(wire_soup(depth + 1)) if depth < 4 else b""
            end = draw(st.sampled_from(["match", "match", "match", "other", "none"]))
            out += tag(f, 3) + body
            out += tag(f, 4) if end == "match" else tag(draw(FIELD), 4) if end == "other" else b""
        else:  # END_GROUP that closes nothing, or an invalid wire type
            out += tag(f, wt)
    return out


# The shape of each message: field -> kind, for `shaped` below.
PARAM_SHAPE = {1: "varint", 2: "varint", 3: "string", 4: "fixed64", 5: "varint"}
ENTRY_SHAPE = {1: "string", 2: PARAM_SHAPE}
CONTENTS_SHAPE = {
    1: "varints",
    2: "varints",
    3: "varints",
    4: "varints",
    5: "varints",
    6: "fixed32s",
    7: "fixed64s",
    8: "bytes",
}
INPUT_SHAPE = {1: "string", 2: "string", 3: "varints", 4: ENTRY_SHAPE, 5: CONTENTS_SHAPE}
OUTPUT_SHAPE = {1: "string", 2: ENTRY_SHAPE}
REQUEST_SHAPE = {
    1: "string",
    2: "string",
    3: "string",
    4: ENTRY_SHAPE,
    5: INPUT_SHAPE,
    6: OUTPUT_SHAPE,
    7: "bytes",
}
_WT = {
    "varint": 0,
    "fixed64": 1,
    "string": 2,
    "bytes": 2,
    "varints": 0,
    "fixed32s": 5,
    "fixed64s": 1,
}
_SIZE = {"fixed32s": 4, "fixed64s": 8, "fixed64": 8}


@st.composite
def shaped(draw, shape: dict = REQUEST_SHAPE, depth: int = 0) -> bytes:
    """A message that mostly follows its schema, each field encoded one of the ways protobuf
    allows (packed or not, split, repeated, overlong varints and tags), with now and then a
    deviation (unknown field, wrong wire type, group, bad UTF-8, stray END_GROUP, field 0)."""
    out = b""
    for _ in range(draw(st.integers(0, 5 if depth < 2 else 3))):
        if draw(st.integers(0, 9)) == 0:  # a deviation
            out += draw(wire_soup(3))
            continue
        f = draw(st.sampled_from(sorted(shape)))
        kind = shape[f]
        wt = 2 if isinstance(kind, dict) else _WT[kind]
        t = (
            varint(f << 3 | wt, 1) if draw(st.integers(0, 15)) == 0 else tag(f, wt)
        )  # overlong tags too
        if isinstance(kind, dict):
            body = draw(shaped(kind, depth + 1)) if depth < 4 else b""
            out += t + varint(len(body)) + body
        elif kind == "string":
            body = draw(st.one_of(st.sampled_from([b"", b"a", b"b"]), STRINGS))
            out += t + varint(len(body)) + body
        elif kind == "bytes":
            body = draw(st.binary(max_size=6))
            out += t + varint(len(body)) + body
        elif kind == "varint":
            out += t + varint(draw(UINT64), draw(st.sampled_from([0, 0, 0, 1])))
        elif kind == "fixed64":
            out += t + draw(st.binary(min_size=8, max_size=8))
        else:  # a repeated scalar: one element unpacked, or a packed run
            if draw(st.booleans()):
                if kind == "varints":
                    out += t + varint(draw(UINT64), draw(st.sampled_from([0, 0, 1])))
                else:
                    out += t + draw(st.binary(min_size=_SIZE[kind], max_size=_SIZE[kind]))
            else:
                n = draw(st.integers(0, 4))
                if kind == "varints":
                    run = b"".join(varint(draw(UINT64)) for _ in range(n))
                else:
                    run = draw(st.binary(min_size=n * _SIZE[kind], max_size=n * _SIZE[kind]))
                out += tag(f, 2) + varint(len(run)) + run
    return out


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(requests()).SerializeToString())
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "splice", "set"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            i = min(at, len(data) - 1)
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 4))]
        elif op == "splice":
            other = draw(requests()).SerializeToString()
            j = draw(st.integers(0, len(other)))
            data = data[:at] + other[j:]
    return bytes(data)


# ---- (1)-(3): differential ------------------------------------------------------------------


@settings(max_examples=400, **SETTINGS)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_decided_as_protobuf(data):
    check_same(data)


@settings(max_examples=250, **SETTINGS)
@given(mutated())
def test_mutated_requests_decided_as_protobuf(data):
    check_same(data)


@settings(max_examples=500, **SETTINGS)
@given(wire_soup())
def test_wire_soup_decided_as_protobuf(data):
    check_same(data)


@settings(max_examples=500, **SETTINGS)
@given(shaped())
def test_shaped_requests_decided_as_protobuf(data):
    check_same(data)


@settings(max_examples=200, **SETTINGS)
@given(requests())
def test_valid_requests_round_trip(m):
    data = m.SerializeToString()
    assert check_same(data)
    assert _norm(_core.parse_infer_request(data)) == _norm(_from_proto(m))


def test_oracle_sees_both_decisions():
    # The differential tests are only worth something if both outcomes happen.
    assert check_same(ld(1, b"m"))
    assert not check_same(tag(1, 2))


# ---- (4): explicit cases --------------------------------------------------------------------

_groups = tag(20, 3) * 100 + tag(20, 4) * 100
CASES = {
    # name: (bytes, protobuf accepts)
    "empty": (b"", True),
    "truncated varint": (tag(9, 0) + b"\x80", False),
    "truncated tag": (b"\x8a", False),
    "truncated shape": (ld(5, ld(3, b"\x80")), False),
    "varint of 10 bytes": (tag(9, 0) + b"\xff" * 9 + b"\x7f", True),
    "varint of 11 bytes": (tag(9, 0) + b"\xff" * 10 + b"\x01", False),
    "tag of 5 bytes": (b"\x8a\x80\x80\x80\x00" + varint(1) + b"m", True),
    "tag of 6 bytes": (b"\x8a\x80\x80\x80\x80\x00" + varint(1) + b"m", False),
    "tag above 32 bits": (b"\x88\x80\x80\x80\x10" + varint(1), False),
    "largest field number": (vf(2**29 - 1, 1), True),
    "length past the end": (tag(1, 2) + varint(5) + b"abc", False),
    "length past the enclosing message": (ld(5, tag(1, 2) + varint(3) + b"ab") + b"cd", False),
    "length 2^64-1": (tag(7, 2) + varint(2**64 - 1) + b"a", False),
    "length 2^31": (tag(7, 2) + varint(2**31) + b"a", False),
    "field 0": (vf(0, 1), False),
    "wire type 6": (tag(9, 6), False),
    "wire type 7": (tag(9, 7), False),
    "model_name as varint": (ld(1, b"a") + vf(1, 5), True),
    "inputs as fixed32": (tag(5, 5) + b"abcd", True),
    "shape as fixed64": (ld(5, tag(3, 1) + b"12345678"), True),
    "fp32_contents as fixed64": (ld(5, ld(5, tag(6, 1) + b"12345678")), True),
    "int64_param packed": (entry(4, b"k", ld(2, varint(3))), True),
    "duplicated model_name": (ld(1, b"a") + ld(1, b"b"), True),
    "duplicated contents": (ld(5, ld(5, ld(2, varint(1))) + ld(5, vf(2, 2))), True),
    "duplicated map key": (entry(4, b"k", vf(2, 1)) + entry(4, b"k", ld(3, b"s")), True),
    "map entry with an unknown field": (ld(4, ld(1, b"k") + vf(3, 1)), True),
    "map entry key as varint": (ld(4, vf(1, 1) + ld(2, vf(2, 3))), True),
    "map entry values merge": (ld(4, ld(1, b"k") + ld(2, ld(3, b"a")) + ld(2, b"")), True),
    "oneof member repeated": (entry(4, b"k", ld(3, b"a") + vf(1, 1) + ld(3, b"b")), True),
    "huge shape values": (ld(5, ld(3, varint(2**64 - 1) + varint(2**63)) + vf(3, 2**63 - 1)), True),
    "int_contents above 32 bits": (ld(5, ld(5, vf(2, 1 << 40 | 7))), True),
    "packed fixed32 of 3 bytes": (ld(5, ld(5, ld(6, b"abc"))), False),
    "packed varint truncated": (ld(5, ld(5, ld(2, b"\x80"))), False),
    "END_GROUP at the top": (tag(5, 4), False),
    "END_GROUP in a sub-message": (ld(5, tag(9, 4)), False),
    "unknown group": (tag(20, 3) + vf(1, 1) + ld(2, b"\xff") + tag(20, 4), True),
    "known field as a group": (tag(1, 3) + ld(1, b"x") + tag(1, 4), True),
    "group END_GROUP mismatch": (tag(20, 3) + tag(21, 4), False),
    "group not closed": (tag(20, 3), False),
    "group closed outside its message": (ld(5, tag(20, 3)) + tag(20, 4), False),
    "100 nested groups": (_groups, True),
    "101 nested groups": (tag(20, 3) + _groups + tag(20, 4), False),
    "bad UTF-8 in model_name": (ld(1, b"\xff"), False),
    "surrogate in inputs[0].name": (ld(5, ld(1, b"\xed\xa0\x80")), False),
    "overlong UTF-8 in a map key": (entry(4, b"\xc0\x80", b""), False),
    "above U+10FFFF in string_param": (entry(4, b"k", ld(3, b"\xf4\x90\x80\x80")), False),
    "bad UTF-8 in a dropped map entry": (ld(4, ld(1, b"\xff") + vf(3, 1)), False),
    "bad UTF-8 in bytes fields": (ld(7, b"\xff") + ld(5, ld(5, ld(8, b"\xff"))), True),
    "NUL in a string": (ld(1, b"\x00"), True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_explicit_case(name):
    data, accepted = CASES[name]
    assert check_same(data) is accepted


def test_refusal_names_field_and_offset():
    with pytest.raises(
        ValueError,
        match=r"^malformed ModelInferRequest: field inputs\[1\]\.shape: "
        r"varint runs past the end at byte 5$",
    ):
        _core.parse_infer_request(ld(5, b"") + ld(5, tag(3, 0) + b"\x80"))


def test_parse_takes_bytes_only():
    with pytest.raises(TypeError):
        _core.parse_infer_request("not bytes")


# ---- (5): the writer ------------------------------------------------------------------------

RESPONSE_PARAM = st.one_of(st.booleans(), INT64, st.text(max_size=6))
OUTPUT = st.tuples(NAMES, NAMES, st.lists(INT64, max_size=4), st.binary(max_size=16))


@settings(max_examples=200, **SETTINGS)
@given(
    NAMES,
    NAMES,
    NAMES,
    st.dictionaries(NAMES, RESPONSE_PARAM, max_size=4),
    st.lists(OUTPUT, max_size=3),
)
def test_encoded_response_parses_with_protobuf(model_name, model_version, id_, params, outputs):
    data = _core.encode_infer_response(model_name, model_version, id_, params, outputs)
    m = pb.ModelInferResponse.FromString(data)
    assert (m.model_name, m.model_version, m.id) == (model_name, model_version, id_)
    assert _norm(_params(m.parameters)) == _norm(params)
    assert [(o.name, o.datatype, list(o.shape)) for o in m.outputs] == [o[:3] for o in outputs]
    assert all(not o.HasField("contents") and len(o.parameters) == 0 for o in m.outputs)
    assert list(m.raw_output_contents) == [o[3] for o in outputs]
    # Byte for byte what protobuf writes, but for map order (protobuf's is its own).
    if len(params) <= 1:
        assert data == m.SerializeToString()


def test_encode_refuses_other_parameter_types():
    with pytest.raises(TypeError, match="must be bool, int or str"):
        _core.encode_infer_response("m", "", "", {"x": 1.5}, [])
