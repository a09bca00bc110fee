"""V2 ``ModelInferRequest`` -> numpy arrays, and results -> ``ModelInferResponse``.

Decoding checks everything that can be checked without the model: names,
datatypes, shapes, and that the data sent is exactly as large as the shape
says. Sizes are computed with Python integers (no overflow) and compared
before any array is made, so a request cannot make the server allocate more
than it sent. Raw inputs become read-only numpy views of the request's bytes
(no copy beyond the one protobuf makes when it hands out a bytes field);
typed ``contents`` are converted, with a range check for the narrow integer
types that share a wider protobuf field.

Whether the inputs fit the model (names, datatypes, dims, batch size) is the
model layer's job; so is refusing zero-element tensors if a model can't take
them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .._proto import grpc_predict_v2_pb2 as pb
from ..datatypes import V2_TO_NUMPY, v2_datatype
from ..errors import InternalError, InvalidArgumentError

# Most elements one input tensor may have (1 << 28 FP32 elements are 1 GiB).
MAX_ELEMENTS = 1 << 28
# Most dimensions one input tensor may have.
MAX_RANK = 8

# V2 datatype -> the InferTensorContents field that carries it when typed.
# FP16 has no typed field; it can only be sent raw.
TYPED_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}

# The numpy type a typed field's values are read into before narrowing.
_FIELD_DTYPE: dict[str, np.dtype] = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}

_INT64 = (-(1 << 63), (1 << 63) - 1)
_UINT64_MAX = (1 << 64) - 1


@dataclass(frozen=True)
class DecodedRequest:
    """A decoded request. ``inputs`` keep the request's order; raw ones are read-only."""

    inputs: dict[str, np.ndarray]
    requested_outputs: list[str] | None  # None: every output of the model
    parameters: dict[str, object]
    id: str


class InferResultLike(Protocol):
    """What ``encode_response`` reads (``steadyserve.model.InferResult`` has it)."""

    outputs: Mapping[str, np.ndarray]
    model_name: str
    model_version: str
    parameters: Mapping[str, object]


# ---------------------------------------------------------------------------
# parameters


def parameters_to_dict(params: Mapping[str, pb.InferParameter]) -> dict[str, object]:
    """A V2 ``parameters`` map as a dict of bool / int / float / str (unset -> None)."""
    out: dict[str, object] = {}
    for key, param in params.items():
        choice = param.WhichOneof("parameter_choice")
        out[key] = None if choice is None else getattr(param, choice)
    return out


def dict_to_parameters(values: Mapping[str, object], target: MutableMapping) -> None:
    """Fill a V2 ``parameters`` map (e.g. ``response.parameters``) from a dict.

    bool -> bool_param, int -> int64_param (uint64_param above the int64 range),
    float -> double_param, str -> string_param; numpy scalars count as their
    Python kind. Anything else is a programming error: TypeError / ValueError.
    """
    for key, value in values.items():
        param = target[key]
        if isinstance(value, (bool, np.bool_)):
            param.bool_param = bool(value)
        elif isinstance(value, (int, np.integer)):
            v = int(value)
            if _INT64[0] <= v <= _INT64[1]:
                param.int64_param = v
            elif 0 <= v <= _UINT64_MAX:
                param.uint64_param = v
            else:
                raise ValueError(f"parameter '{key}': {v} does not fit in 64 bits")
        elif isinstance(value, (float, np.floating)):
            param.double_param = float(value)
        elif isinstance(value, str):
            param.string_param = value
        else:
            raise TypeError(
                f"parameter '{key}': {type(value).__name__} is not one of bool, int, float, str"
            )


# ---------------------------------------------------------------------------
# decode


def decode_request(
    req: pb.ModelInferRequest, *, max_elements: int = MAX_ELEMENTS
) -> DecodedRequest:
    """Decode and check a request; raises InvalidArgumentError naming the input at fault."""
    raw = req.raw_input_contents
    n_inputs = len(req.inputs)
    if raw and len(raw) != n_inputs:
        for tensor in req.inputs:
            if tensor.HasField("contents") and tensor.contents.ListFields():
                raise _mixed(_show(tensor.name))
        raise InvalidArgumentError(
            f"request has {n_inputs} input(s) but {len(raw)} raw_input_contents entries; "
            "send one raw buffer per input, in the order of the inputs"
        )

    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(req.inputs):
        if not tensor.name:
            raise InvalidArgumentError(f"input #{index} has an empty name")
        name = _show(tensor.name)  # for messages only
        if tensor.name in inputs:
            raise InvalidArgumentError(f"input '{name}' appears more than once in the request")
        if "shared_memory_region" in tensor.parameters:
            raise InvalidArgumentError(
                f"input '{name}': shared memory is not supported; send the data in the request"
            )
        dtype = _input_dtype(name, tensor.datatype)
        shape = _checked_shape(name, tensor.shape, max_elements)
        count = math.prod(shape)
        typed = tensor.contents.ListFields() if tensor.HasField("contents") else []
        if raw:
            if typed:
                raise _mixed(name)
            inputs[tensor.name] = _from_raw(name, tensor.datatype, dtype, shape, count, raw[index])
        else:
            inputs[tensor.name] = _from_typed(name, tensor.datatype, dtype, shape, count, typed)

    requested: list[str] | None = None
    if req.outputs:
        requested = [out.name for out in req.outputs]
        if len(set(requested)) != len(requested) or "" in requested:
            seen: set[str] = set()
            for index, out_name in enumerate(requested):
                if not out_name:
                    raise InvalidArgumentError(f"requested output #{index} has an empty name")
                if out_name in seen:
                    raise InvalidArgumentError(
                        f"output '{_show(out_name)}' is requested more than once"
                    )
                seen.add(out_name)

    return DecodedRequest(
        inputs=inputs,
        requested_outputs=requested,
        parameters=parameters_to_dict(req.parameters),
        id=req.id,
    )


def _show(text: str, limit: int = 64) -> str:
    """``text`` cut to ``limit`` characters for an error message (names come from the client)."""
    return text if len(text) <= limit else text[:limit] + "..."


def _mixed(name: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"input '{name}' has typed contents but the request also carries raw_input_contents; "
        "send every input raw or every input typed, not a mix"
    )


def _input_dtype(name: str, datatype: str) -> np.dtype:
    try:
        return V2_TO_NUMPY[datatype]
    except KeyError:
        pass
    if datatype == "BYTES":
        raise InvalidArgumentError(
            f"input '{name}': datatype BYTES (strings) is not supported by steadyserve; "
            "send numeric tensors"
        )
    allowed = ", ".join(V2_TO_NUMPY)
    shown = _show(datatype) if datatype else "(empty)"
    raise InvalidArgumentError(f"input '{name}': unknown datatype '{shown}' (supported: {allowed})")


def _checked_shape(name: str, dims, max_elements: int) -> tuple[int, ...]:
    shape = tuple(dims)  # int64 on the wire: Python ints, no overflow below
    if len(shape) > MAX_RANK:
        raise InvalidArgumentError(
            f"input '{name}': shape has {len(shape)} dimensions; at most {MAX_RANK} allowed"
        )
    for axis, d in enumerate(shape):
        if d < 0:
            raise InvalidArgumentError(
                f"input '{name}': dimension {axis} of shape {list(shape)} is {d}; "
                "dimensions must be >= 0"
            )
    count = math.prod(shape)
    if count > max_elements:
        raise InvalidArgumentError(
            f"input '{name}': shape {list(shape)} has {count} elements; "
            f"at most {max_elements} allowed per input"
        )
    return shape


def _from_raw(
    name: str, datatype: str, dtype: np.dtype, shape: tuple[int, ...], count: int, buf: bytes
) -> np.ndarray:
    expected = count * dtype.itemsize
    if len(buf) != expected:
        raise InvalidArgumentError(
            f"input '{name}': raw data is {len(buf)} bytes but shape {list(shape)} of "
            f"{datatype} needs {expected} bytes ({count} elements x {dtype.itemsize})"
        )
    if datatype == "BOOL" and buf:
        # numpy reads any non-zero byte as a bool whose value is not True; refuse them.
        as_bytes = np.frombuffer(buf, dtype=np.uint8)
        if as_bytes.max() > 1:
            at = int(np.argmax(as_bytes > 1))
            raise InvalidArgumentError(
                f"input '{name}': BOOL byte {at} is {int(as_bytes[at])}; BOOL bytes must be 0 or 1"
            )
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def _from_typed(
    name: str,
    datatype: str,
    dtype: np.dtype,
    shape: tuple[int, ...],
    count: int,
    present: list,
) -> np.ndarray:
    field = TYPED_FIELD.get(datatype)
    if field is None:
        if count == 0 and not present:
            return np.empty(shape, dtype=dtype)
        raise InvalidArgumentError(
            f"input '{name}': {datatype} has no typed contents field; send it in raw_input_contents"
        )
    wrong = [fd.name for fd, _ in present if fd.name != field]
    if wrong:
        raise InvalidArgumentError(
            f"input '{name}': datatype {datatype} goes in contents.{field}, "
            f"but the request sets contents.{wrong[0]}"
        )
    values = next((v for fd, v in present if fd.name == field), ())
    if len(values) != count:
        if not present and count:
            raise InvalidArgumentError(
                f"input '{name}' has no data: shape {list(shape)} needs {count} elements in "
                f"contents.{field} (or send every input in raw_input_contents)"
            )
        raise InvalidArgumentError(
            f"input '{name}': contents.{field} has {len(values)} elements but shape "
            f"{list(shape)} needs {count}"
        )
    wide = np.fromiter(values, dtype=_FIELD_DTYPE[field], count=count)
    if wide.dtype != dtype:
        info = np.iinfo(dtype)
        outside = (wide < info.min) | (wide > info.max)
        if outside.any():
            at = int(np.argmax(outside))
            raise InvalidArgumentError(
                f"input '{name}': element {at} is {int(wide[at])}, outside the {datatype} range "
                f"[{info.min}, {info.max}]"
            )
        wide = wide.astype(dtype)
    return wide.reshape(shape)


# ---------------------------------------------------------------------------
# encode


def encode_response(result: InferResultLike, request_id: str) -> pb.ModelInferResponse:
    """A response with every output of ``result`` in ``raw_output_contents`` (little-endian)."""
    resp = pb.ModelInferResponse(
        model_name=result.model_name, model_version=str(result.model_version), id=request_id
    )
    for name, value in result.outputs.items():
        array = np.asarray(value)
        try:
            datatype = v2_datatype(array.dtype)
        except InvalidArgumentError:
            raise InternalError(
                f"model '{result.model_name}' produced output '{name}' of numpy dtype "
                f"{array.dtype}, which has no V2 datatype"
            ) from None
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        out = resp.outputs.add()
        out.name = name
        out.datatype = datatype
        out.shape.extend(array.shape)
        resp.raw_output_contents.append(array.tobytes())
    if result.parameters:
        dict_to_parameters(result.parameters, resp.parameters)
    return resp


__all__ = [
    "MAX_ELEMENTS",
    "MAX_RANK",
    "TYPED_FIELD",
    "DecodedRequest",
    "InferResultLike",
    "decode_request",
    "dict_to_parameters",
    "encode_response",
    "parameters_to_dict",
]
