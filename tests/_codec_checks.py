"""The cases of tests/test_codec.py, run in a process of their own.

Run as a script: ``python tests/_codec_checks.py [check_name ...]`` runs the
``check_*`` functions below (all, or the ones named) and prints one JSON object
on the last line of stdout: ``{"check_name": null | "traceback", ...}``.

Why a separate process: importing steadyserve._proto registers ``inference.*``
in protobuf's default descriptor pool, and so does tritonclient, which other
test files import into the pytest process; whichever comes second fails. This
file is never imported by pytest (its name does not start with ``test_``).
"""

from __future__ import annotations

import json
import sys
import traceback

import numpy as np

from steadyserve._proto import grpc_predict_v2_pb2 as pb
from steadyserve._proto import model_config_pb2 as mc
from steadyserve.datatypes import V2_TO_NUMPY
from steadyserve.errors import InternalError, InvalidArgumentError
from steadyserve.server import codec


class Result:
    """The four attributes encode_response reads, as steadyserve.model.InferResult has them."""

    def __init__(self, outputs, model_name="m", model_version="1", parameters=None):
        self.outputs = outputs
        self.model_name = model_name
        self.model_version = model_version
        self.parameters = parameters or {}


def sample(datatype: str, shape=(2, 3)) -> np.ndarray:
    """Values that exercise the type: its extremes where it has them, else a spread."""
    dtype = V2_TO_NUMPY[datatype]
    n = int(np.prod(shape))
    if datatype == "BOOL":
        values = np.arange(n) % 2 == 0
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        lo, hi = int(info.min), int(info.max)
        values = np.resize(np.array([lo, hi, 0, 1, hi // 3, lo // 3 if lo else 7], dtype=object), n)
    else:
        values = np.array([-1.5, 0.0, np.finfo(dtype).max, np.finfo(dtype).tiny, 3.25, -0.0][:n])
        values = np.resize(values, n)
    return np.array(values).astype(dtype).reshape(shape)


def raw_request(*tensors, outputs=(), **fields) -> pb.ModelInferRequest:
    """A request with (name, datatype, shape, bytes) tensors sent raw."""
    req = pb.ModelInferRequest(model_name="m", **fields)
    for name, datatype, shape, data in tensors:
        req.inputs.add(name=name, datatype=datatype, shape=shape)
        req.raw_input_contents.append(data)
    for name in outputs:
        req.outputs.add(name=name)
    return req


def typed_request(*tensors) -> pb.ModelInferRequest:
    """A request with (name, datatype, shape, {field: values}) tensors sent typed."""
    req = pb.ModelInferRequest(model_name="m")
    for name, datatype, shape, contents in tensors:
        t = req.inputs.add(name=name, datatype=datatype, shape=shape)
        for field, values in contents.items():
            getattr(t.contents, field).extend(values)
    return req


def refused(req, *fragments, **kwargs) -> str:
    """Decode ``req``; it must raise InvalidArgumentError whose message contains every fragment."""
    try:
        codec.decode_request(req, **kwargs)
    except InvalidArgumentError as exc:
        message = str(exc)
    else:
        raise AssertionError(f"accepted, expected InvalidArgumentError with {fragments}")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# ---------------------------------------------------------------------------
# round trips


def check_raw_round_trip_every_datatype():
    for datatype in V2_TO_NUMPY:
        array = sample(datatype)
        req = raw_request(("x", datatype, [2, 3], array.tobytes()), id="r1")
        req = pb.ModelInferRequest.FromString(req.SerializeToString())  # as off the wire
        decoded = codec.decode_request(req)
        got = decoded.inputs["x"]
        assert got.dtype == V2_TO_NUMPY[datatype], (datatype, got.dtype)
        assert got.shape == (2, 3), (datatype, got.shape)
        np.testing.assert_array_equal(got, array, err_msg=datatype)
        # a view of the request's bytes, not a copy, and not writable
        assert not got.flags.owndata and got.base is not None, datatype
        assert not got.flags.writeable, datatype
        assert decoded.id == "r1" and decoded.requested_outputs is None

        resp = codec.encode_response(Result({"y": got}), "r1")
        resp = pb.ModelInferResponse.FromString(resp.SerializeToString())
        (out,) = resp.outputs
        assert (out.name, out.datatype, list(out.shape)) == ("y", datatype, [2, 3]), out
        assert resp.raw_output_contents[0] == array.tobytes(), datatype


def check_typed_round_trip_every_datatype_with_a_typed_field():
    assert set(codec.TYPED_FIELD) == set(V2_TO_NUMPY) - {"FP16"}
    for datatype, field in codec.TYPED_FIELD.items():
        array = sample(datatype)
        req = typed_request(("x", datatype, [2, 3], {field: array.ravel().tolist()}))
        req = pb.ModelInferRequest.FromString(req.SerializeToString())
        got = codec.decode_request(req).inputs["x"]
        assert got.dtype == V2_TO_NUMPY[datatype], (datatype, got.dtype)
        assert got.shape == (2, 3)
        np.testing.assert_array_equal(got, array, err_msg=datatype)


def check_several_inputs_keep_their_order_and_buffers():
    a = np.arange(6, dtype="<f4").reshape(2, 3)
    b = np.array([[7, -8]], dtype="<i8")
    req = raw_request(("a", "FP32", [2, 3], a.tobytes()), ("b", "INT64", [1, 2], b.tobytes()))
    inputs = codec.decode_request(req).inputs
    assert list(inputs) == ["a", "b"]
    np.testing.assert_array_equal(inputs["a"], a)
    np.testing.assert_array_equal(inputs["b"], b)


def check_zero_element_tensors_are_decoded():
    got = codec.decode_request(raw_request(("x", "FP32", [0, 4], b""))).inputs["x"]
    assert got.shape == (0, 4) and got.dtype == np.float32
    got = codec.decode_request(typed_request(("x", "INT32", [3, 0], {}))).inputs["x"]
    assert got.shape == (3, 0) and got.dtype == np.int32
    got = codec.decode_request(typed_request(("x", "FP16", [0], {}))).inputs["x"]
    assert got.shape == (0,) and got.dtype == np.float16


def check_scalar_tensor_has_one_element():
    got = codec.decode_request(raw_request(("x", "FP64", [], np.float64(2.5).tobytes())))
    assert got.inputs["x"].shape == () and got.inputs["x"].item() == 2.5


def check_requested_outputs():
    req = raw_request(("x", "INT8", [1], b"\x01"), outputs=["b", "a"])
    assert codec.decode_request(req).requested_outputs == ["b", "a"]
    refused(raw_request(("x", "INT8", [1], b"\x01"), outputs=["a", "a"]), "'a'", "more than once")
    refused(raw_request(("x", "INT8", [1], b"\x01"), outputs=["a", ""]), "output #1", "empty name")


def check_request_parameters_become_a_dict():
    req = raw_request(("x", "INT8", [1], b"\x01"))
    req.parameters["flag"].bool_param = True
    req.parameters["timeout"].int64_param = -5
    req.parameters["tag"].string_param = "blue"
    req.parameters["scale"].double_param = 0.25
    req.parameters["big"].uint64_param = 2**64 - 1
    req.parameters["unset"].SetInParent()
    assert codec.decode_request(req).parameters == {
        "flag": True,
        "timeout": -5,
        "tag": "blue",
        "scale": 0.25,
        "big": 2**64 - 1,
        "unset": None,
    }


def check_dict_to_parameters_kinds_and_errors():
    resp = pb.ModelInferResponse()
    codec.dict_to_parameters(
        {
            "b": True,
            "nb": np.bool_(False),
            "i": -3,
            "ni": np.int32(7),
            "u": 2**63,
            "f": 1.5,
            "nf": np.float32(0.5),
            "s": "x",
        },
        resp.parameters,
    )
    kinds = {k: v.WhichOneof("parameter_choice") for k, v in resp.parameters.items()}
    assert kinds == {
        "b": "bool_param",
        "nb": "bool_param",
        "i": "int64_param",
        "ni": "int64_param",
        "u": "uint64_param",
        "f": "double_param",
        "nf": "double_param",
        "s": "string_param",
    }, kinds
    assert codec.parameters_to_dict(resp.parameters) == {
        "b": True,
        "nb": False,
        "i": -3,
        "ni": 7,
        "u": 2**63,
        "f": 1.5,
        "nf": 0.5,
        "s": "x",
    }
    for bad, error in (
        (None, TypeError),
        ([1], TypeError),
        (2**64, ValueError),
        (-(2**63) - 1, ValueError),
    ):
        try:
            codec.dict_to_parameters({"k": bad}, pb.ModelInferResponse().parameters)
        except error as exc:
            assert "'k'" in str(exc), exc
        else:
            raise AssertionError(f"{bad!r} accepted")


# ---------------------------------------------------------------------------
# encode


def check_encode_response_fields_and_layout():
    fortran = np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3))
    big_endian = np.arange(4, dtype=">f8").reshape(4, 1)
    strided = np.arange(10, dtype=np.uint16)[::2]
    scalar = np.float32(1.5)
    result = Result(
        {
            "f": fortran,
            "be": big_endian,
            "s": strided,
            "scalar": scalar,
            "flags": np.array([True, False]),
        },
        model_name="primary",
        model_version="3",
        parameters={"served_by": "backup", "batch": 4},
    )
    resp = codec.encode_response(result, "req-9")
    assert (resp.model_name, resp.model_version, resp.id) == ("primary", "3", "req-9")
    assert codec.parameters_to_dict(resp.parameters) == {"served_by": "backup", "batch": 4}
    outs = {
        o.name: (o.datatype, list(o.shape), resp.raw_output_contents[i])
        for i, o in enumerate(resp.outputs)
    }
    assert list(outs) == ["f", "be", "s", "scalar", "flags"]
    assert outs["f"] == ("INT32", [2, 3], np.arange(6, dtype="<i4").tobytes())
    assert outs["be"] == ("FP64", [4, 1], np.arange(4, dtype="<f8").tobytes())
    assert outs["s"] == ("UINT16", [5], np.arange(0, 10, 2, dtype="<u2").tobytes())
    assert outs["scalar"] == ("FP32", [], np.float32(1.5).tobytes())
    assert outs["flags"] == ("BOOL", [2], b"\x01\x00")
    assert len(resp.outputs) == len(resp.raw_output_contents)


def check_encode_refuses_outputs_without_a_v2_datatype():
    for array in (np.array(["a"], dtype=object), np.array([1 + 2j])):
        try:
            codec.encode_response(Result({"out": array}, model_name="mm"), "")
        except InternalError as exc:
            assert "'out'" in str(exc) and "'mm'" in str(exc) and str(array.dtype) in str(exc), exc
        else:
            raise AssertionError(f"{array.dtype} accepted")


# ---------------------------------------------------------------------------
# rejections


def check_byte_size_must_match_shape():
    refused(
        raw_request(("pixels", "FP32", [2, 3], b"\0" * 20)),
        "input 'pixels'",
        "20 bytes",
        "[2, 3]",
        "24 bytes",
    )
    refused(raw_request(("pixels", "INT16", [2], b"\0" * 5)), "'pixels'", "5 bytes", "4 bytes")


def check_raw_buffer_count_must_match_inputs():
    req = raw_request(("a", "INT8", [1], b"\1"), ("b", "INT8", [1], b"\1"))
    del req.raw_input_contents[1]
    refused(req, "2 input(s)", "1 raw_input_contents")


def check_raw_and_typed_cannot_mix():
    # counts agree, but one input also has typed contents
    req = raw_request(("a", "INT32", [1], b"\1\0\0\0"))
    req.inputs[0].contents.int_contents.append(1)
    refused(req, "input 'a'", "not a mix")
    # one raw buffer for the first input, typed contents for the second
    req = raw_request(("a", "INT32", [1], b"\1\0\0\0"))
    req.inputs.add(name="b", datatype="INT32", shape=[1]).contents.int_contents.append(2)
    refused(req, "input 'b'", "not a mix")


def check_typed_contents_must_use_the_datatype_field():
    refused(
        typed_request(("x", "FP32", [2], {"fp64_contents": [1.0, 2.0]})),
        "input 'x'",
        "fp32_contents",
        "fp64_contents",
    )
    refused(
        typed_request(("x", "INT64", [1], {"int64_contents": [1], "int_contents": [1]})),
        "input 'x'",
        "int_contents",
    )
    refused(
        typed_request(("half", "FP16", [1], {"fp32_contents": [1.0]})),
        "input 'half'",
        "FP16",
        "raw_input_contents",
    )


def check_typed_element_count_must_match_shape():
    refused(
        typed_request(("x", "FP32", [2, 2], {"fp32_contents": [1.0, 2.0, 3.0]})),
        "input 'x'",
        "3 elements",
        "[2, 2]",
        "needs 4",
    )
    refused(typed_request(("x", "FP32", [2], {})), "input 'x'", "no data", "fp32_contents")


def check_typed_narrow_integers_are_range_checked():
    refused(
        typed_request(("x", "INT8", [2], {"int_contents": [1, 200]})),
        "'x'",
        "200",
        "INT8",
        "[-128, 127]",
    )
    refused(
        typed_request(("x", "UINT16", [1], {"uint_contents": [70000]})),
        "'x'",
        "70000",
        "[0, 65535]",
    )


def check_bool_raw_bytes_must_be_zero_or_one():
    refused(raw_request(("mask", "BOOL", [3], b"\x01\x00\x02")), "input 'mask'", "byte 2", "is 2")


def check_negative_dimension():
    refused(raw_request(("x", "FP32", [2, -1], b"")), "input 'x'", "dimension 1", "-1", ">= 0")


def check_rank_limit():
    refused(raw_request(("x", "INT8", [1] * 9, b"\1")), "input 'x'", "9 dimensions", "at most 8")
    assert codec.decode_request(raw_request(("x", "INT8", [1] * 8, b"\1"))).inputs["x"].ndim == 8


def check_element_limit_is_checked_before_anything_is_allocated():
    limit = codec.MAX_ELEMENTS
    assert limit == 1 << 28
    refused(
        raw_request(("x", "FP32", [1 << 20, 1 << 20], b"")),
        "input 'x'",
        str(1 << 40),
        f"at most {limit}",
    )
    # dims whose product overflows int64 many times over: exact count, no wrap-around
    huge = [2**63 - 1] * 8
    refused(raw_request(("x", "UINT8", huge, b"")), "input 'x'", str((2**63 - 1) ** 8))
    # a wrapped int64 product of these would be 0 and pass a naive size check
    refused(raw_request(("x", "UINT8", [2**32, 2**32], b"")), "input 'x'", str(2**64))
    # the limit can be lowered per call
    refused(raw_request(("x", "FP32", [5], b"\0" * 20)), "5 elements", "at most 4", max_elements=4)
    assert codec.decode_request(raw_request(("x", "FP32", [4], b"\0" * 16)), max_elements=4)


def check_duplicate_and_empty_input_names():
    refused(
        raw_request(("x", "INT8", [1], b"\1"), ("x", "INT8", [1], b"\2")),
        "input 'x'",
        "more than once",
    )
    refused(raw_request(("", "INT8", [1], b"\1")), "input #0", "empty name")


def check_client_strings_are_cut_short_in_messages():
    long = "n" * 10_000
    message = refused(raw_request((long, "FLOAT32", [1], b"")), "input '" + "n" * 64 + "...'")
    assert len(message) < 300, len(message)
    message = refused(raw_request(("x", long, [1], b"")), "'" + "n" * 64 + "...'")
    assert len(message) < 400, len(message)
    message = refused(raw_request(("x", "INT8", [1] * 100_000, b"\1")), "100000 dimensions")
    assert len(message) < 200, len(message)


def check_unknown_datatypes():
    refused(raw_request(("x", "FLOAT32", [1], b"\0" * 4)), "input 'x'", "'FLOAT32'", "FP32")
    refused(raw_request(("x", "", [1], b"\0")), "input 'x'", "(empty)")
    refused(raw_request(("x", "BF16", [1], b"\0\0")), "input 'x'", "'BF16'")
    refused(
        raw_request(("text", "BYTES", [1], b"\3\0\0\0abc")),
        "input 'text'",
        "BYTES",
        "not supported",
    )


def check_shared_memory_is_refused():
    req = raw_request(("x", "INT8", [1], b"\1"))
    req.inputs[0].parameters["shared_memory_region"].string_param = "region0"
    refused(req, "input 'x'", "shared memory")


# ---------------------------------------------------------------------------
# the generated modules themselves


def check_generated_service_and_config_modules():
    methods = [
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
        "ModelInfer", "ModelConfig", "ModelStatistics", "RepositoryIndex",
    ]  # fmt: skip
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert [m.name for m in service.methods] == methods
    config = mc.ModelConfig(name="m", max_batch_size=8, backend="onnxruntime")
    config.dynamic_batching.preferred_batch_size.extend([4, 8])
    resp = pb.ModelConfigResponse(config=config)
    assert pb.ModelConfigResponse.FromString(resp.SerializeToString()) == resp
    assert mc.DataType.Value("TYPE_FP32") == 11


# ---------------------------------------------------------------------------


def main(names: list[str]) -> int:
    checks = {n: f for n, f in globals().items() if n.startswith("check_") and callable(f)}
    unknown = [n for n in names if n not in checks]
    if unknown:
        print(f"no such check: {unknown}", file=sys.stderr)
        return 2
    results: dict[str, str | None] = {}
    for name in names or list(checks):
        try:
            checks[name]()
        except Exception:
            results[name] = traceback.format_exc()
        else:
            results[name] = None
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
