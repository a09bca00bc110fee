"""KServe V2 REST tensors: the JSON body and Triton's binary tensor data extension.

Pure functions from bytes to numpy and back, with no server, runtime or protobuf in
them (unit-testable, importable anywhere). The request body is a JSON object,
optionally followed by raw tensor bytes: a header ``Inference-Header-Content-Length:
N`` says that the first N bytes are the JSON and the rest is the inputs that carry
``parameters.binary_data_size``, concatenated in input order. Binary tensors are
little-endian, row-major, without padding; BOOL is one byte 0 or 1; BYTES is Triton's
serialization (a 4-byte little-endian length before each element). A response whose
outputs are binary has the same layout.

What the codec checks is what only it can see: the JSON itself, the binary layout
(sizes that add up), and that each tensor's data fits its declared datatype and
shape. Names, the model's datatypes and shapes, values and deadlines are checked by
the core, the same for every transport.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from ..datatypes import V2_TO_NUMPY, serialize_bytes, v2_datatype
from ..errors import InvalidArgumentError

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"

# The core's bound on the `timeout` parameter (microseconds), so that arrival + timeout
# never overflows int64 nanoseconds.
MAX_TIMEOUT_US = (2**63 - 1) // 2000


@dataclass(frozen=True)
class RequestedOutput:
    """An output the request names, and whether it is wanted as binary data."""

    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """A decoded V2 REST inference request.

    ``outputs`` None: every output of the model, each binary when ``binary_output``.
    ``timeout_us`` and ``priority`` are Triton's request parameters (0: not given).
    """

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] | None
    binary_output: bool
    timeout_us: int
    priority: int


# -- request ---------------------------------------------------------------------------


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON part and the binary part of a request body; ``header_length`` is the
    ``Inference-Header-Content-Length`` header's value (None: the body is all JSON)."""
    if header_length is None:
        return body, memoryview(b"")
    text = header_length.strip()
    if not text.isdigit():
        raise InvalidArgumentError(
            f"{HEADER_LENGTH} must be a byte count (a non-negative integer); got {header_length!r}"
        )
    n = int(text)
    if n > len(body):
        raise InvalidArgumentError(
            f"{HEADER_LENGTH} is {n} but the request body has only {len(body)} bytes"
        )
    view = memoryview(body)
    return bytes(view[:n]), view[n:]


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    """Decode a V2 REST inference request body (JSON, then any binary tensors)."""
    json_part, binary = split_body(body, header_length)
    request = _load_json(json_part, header_length, len(binary))
    if not isinstance(request, dict):
        raise InvalidArgumentError(
            f"the inference request must be a JSON object; got {_json_kind(request)}"
        )
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidArgumentError(f"'id' must be a string; got {_json_kind(request_id)}")
    parameters = _parameters(request.get("parameters"), "request")
    timeout_us = _count_parameter(parameters, "timeout", "microseconds")
    priority = _count_parameter(parameters, "priority", "0 is the default level")
    binary_output = _bool_parameter(parameters, "binary_data_output", "request")
    inputs = request.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidArgumentError(
            "the inference request needs 'inputs': a list of "
            '{"name", "shape", "datatype", "data"} objects'
            + ("" if inputs is None else f"; got {_json_kind(inputs)}")
        )
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for k, entry in enumerate(inputs):
        name, array, offset = _decode_input(k, entry, binary, offset, header_length is not None)
        if name in arrays:
            raise InvalidArgumentError(f"input '{name}' appears more than once in the request")
        arrays[name] = array
    if offset != len(binary):
        raise InvalidArgumentError(
            f"the request has {len(binary)} bytes of binary data after the {HEADER_LENGTH} "
            f"({header_length}) bytes of JSON, but the inputs' binary_data_size add up to "
            f"{offset}"
        )
    return InferRequest(
        id=request_id,
        inputs=arrays,
        outputs=_requested_outputs(request.get("outputs"), binary_output),
        binary_output=binary_output,
        timeout_us=timeout_us,
        priority=priority,
    )


def _load_json(data: bytes, header_length: str | None, n_binary: int):
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        if header_length is not None:
            where = f"the first {header_length} bytes of the body ({HEADER_LENGTH})"
        else:
            where = "the request body"
        hint = ""
        if header_length is None and "Extra data" in str(exc):
            hint = f"; binary tensor data after the JSON needs the {HEADER_LENGTH} header"
        raise InvalidArgumentError(f"{where} is not JSON: {exc}{hint}") from None


def _json_kind(value) -> str:
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null"


def _parameters(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgumentError(
            f"{where} 'parameters' must be a JSON object; got {_json_kind(value)}"
        )
    return value


def _count_parameter(parameters: dict, key: str, unit: str) -> int:
    """A request parameter the core reads (``timeout``, ``priority``): an integer >= 0, with
    the core's own words for a wrong one (the gRPC path says the same)."""
    value = parameters.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"request parameter '{key}' must be an integer ({unit})")
    if value < 0:
        raise InvalidArgumentError(f"request parameter '{key}' must be >= 0 ({unit}); got {value}")
    return value


def _bool_parameter(parameters: dict, key: str, where: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise InvalidArgumentError(
            f"{where} parameter '{key}' must be true or false; got {_json_kind(value)}"
        )
    return value


def _shape(name: str, value) -> tuple[int, ...]:
    if not isinstance(value, list) or any(
        isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in value
    ):
        raise InvalidArgumentError(
            f"input '{name}': 'shape' must be a list of integers >= 0; got {value!r:.80}"
        )
    return tuple(value)


def _decode_input(
    k: int, entry, binary: memoryview, offset: int, has_header: bool
) -> tuple[str, np.ndarray, int]:
    """(name, array, offset after its binary data) of the request's input #k."""
    if not isinstance(entry, dict):
        raise InvalidArgumentError(f"input #{k} must be a JSON object; got {_json_kind(entry)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"input #{k} needs a 'name' (a non-empty string)")
    datatype = entry.get("datatype")
    if not isinstance(datatype, str) or datatype not in V2_TO_NUMPY:
        shown = "(none)" if datatype is None else repr(datatype)
        raise InvalidArgumentError(
            f"input '{name}': unknown datatype {shown} (supported: {', '.join(V2_TO_NUMPY)})"
        )
    shape = _shape(name, entry.get("shape"))
    count = math.prod(shape)
    parameters = _parameters(entry.get("parameters"), f"input '{name}'")
    if "shared_memory_region" in parameters:
        raise InvalidArgumentError(
            f"input '{name}': shared memory is not supported; send the data in the request"
        )
    size = parameters.get("binary_data_size")
    data = entry.get("data")
    if size is not None:
        if data is not None:
            raise InvalidArgumentError(
                f"input '{name}' has both 'data' and parameters.binary_data_size; send one"
            )
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidArgumentError(
                f"input '{name}': binary_data_size must be a byte count >= 0; got {size!r}"
            )
        left = len(binary) - offset
        if size > left:
            if not has_header:
                raise InvalidArgumentError(
                    f"input '{name}' has binary_data_size {size} but the request has no "
                    f"{HEADER_LENGTH} header, so no binary data"
                )
            raise InvalidArgumentError(
                f"input '{name}': binary_data_size is {size} bytes but only {left} bytes of "
                f"binary data are left after the earlier inputs ({len(binary)} in all)"
            )
        array = decode_binary(name, datatype, shape, count, binary[offset : offset + size])
        return name, array, offset + size
    if data is None:
        raise InvalidArgumentError(
            f"input '{name}' has no data: give 'data' or parameters.binary_data_size"
        )
    return name, decode_json_data(name, datatype, shape, count, data), offset


def _shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def decode_binary(name: str, datatype: str, shape, count: int, data: memoryview) -> np.ndarray:
    """An input's binary tensor data as an array of ``shape``."""
    if datatype == "BYTES":
        return _decode_bytes(name, shape, count, data)
    dtype = V2_TO_NUMPY[datatype]
    expected = count * dtype.itemsize
    if len(data) != expected:
        raise InvalidArgumentError(
            f"input '{name}': binary_data_size is {len(data)} bytes but shape "
            f"{_shape_text(shape)} of {datatype} needs {expected} bytes ({count} elements x "
            f"{dtype.itemsize})"
        )
    if datatype == "BOOL":
        raw = np.frombuffer(data, dtype=np.uint8)
        bad = np.flatnonzero(raw > 1)
        if bad.size:
            raise InvalidArgumentError(
                f"input '{name}': BOOL byte {int(bad[0])} is {int(raw[bad[0]])}; BOOL bytes "
                f"must be 0 or 1"
            )
    # A view of the body (read-only, maybe unaligned): the core copies it once.
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _decode_bytes(name: str, shape, count: int, data: memoryview) -> np.ndarray:
    """Triton's BYTES serialization, checked: exactly ``count`` length-prefixed elements
    filling the data. Elements stay bytes: the core checks they are UTF-8 text."""
    items = []
    at, size = 0, len(data)
    while at < size:
        if size - at < 4:
            raise InvalidArgumentError(
                f"input '{name}': BYTES data ends inside the 4-byte length of element "
                f"{len(items)} (byte {at} of {size})"
            )
        n = int.from_bytes(data[at : at + 4], "little")
        if n > size - at - 4:
            raise InvalidArgumentError(
                f"input '{name}': BYTES element {len(items)} says {n} bytes but only "
                f"{size - at - 4} are left"
            )
        items.append(bytes(data[at + 4 : at + 4 + n]))
        at += 4 + n
    if len(items) != count:
        raise InvalidArgumentError(
            f"input '{name}': BYTES data has {len(items)} elements but shape "
            f"{_shape_text(shape)} needs {count}"
        )
    out = np.empty(count, dtype=object)
    out[:] = items
    return out.reshape(shape)


def _flatten(name: str, data) -> list:
    """Row-major elements of a flat or nested JSON list."""
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(x, list) for x in data):
        return data
    flat: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def decode_json_data(name: str, datatype: str, shape, count: int, data) -> np.ndarray:
    """An input's JSON ``data`` (flat or nested, row-major) as an array of ``shape`` and
    ``datatype``: BOOL true/false, integers for integer types, numbers for FP16/32/64
    (rounded to the type), strings for BYTES."""
    flat = _flatten(name, data)
    if len(flat) != count:
        raise InvalidArgumentError(
            f"input '{name}': shape {_shape_text(shape)} needs {count} elements but 'data' "
            f"has {len(flat)}"
        )
    if datatype == "BYTES":
        for i, item in enumerate(flat):
            if not isinstance(item, str):
                raise InvalidArgumentError(
                    f"input '{name}': BYTES data must be strings; element {i} is {_json_kind(item)}"
                )
        out = np.empty(count, dtype=object)
        out[:] = flat
        return out.reshape(shape)
    target = V2_TO_NUMPY[datatype]
    if not flat:
        return np.zeros(shape, dtype=target)
    try:
        array = np.array(flat)
    except (ValueError, OverflowError):
        array = np.array(flat, dtype=object)
    allowed = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}[target.kind]
    if array.dtype.kind not in allowed:
        # Mixed or wrong types, or integers beyond 64 bits: say which element.
        bad = next((x for x in flat if not _fits_kind(x, target.kind)), None)
        if bad is not None or target.kind not in "iu":
            kinds = {"b": "true or false", "i": "integers", "u": "integers", "f": "numbers"}
            shown = _json_kind(bad) if bad is not None else "a mix of types"
            raise InvalidArgumentError(
                f"input '{name}': {datatype} data must be {kinds[target.kind]}; got {shown}"
            )
    if target.kind in "iu":
        info = np.iinfo(target)
        low, high = min(flat), max(flat)  # Python ints: exact whatever numpy made of them
        if low < info.min or high > info.max:
            value = low if low < info.min else high
            raise InvalidArgumentError(
                f"input '{name}': value {value} is out of the range of {datatype} "
                f"[{info.min}, {info.max}]"
            )
        return np.array(flat, dtype=target).reshape(shape)
    if target.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            converted = array.astype(target)
        overflow = np.isinf(converted) & np.isfinite(array)
        if overflow.any():
            i = int(np.flatnonzero(overflow)[0])
            raise InvalidArgumentError(
                f"input '{name}': value {flat[i]!r} (element {i}) is out of the range of {datatype}"
            )
        return converted.reshape(shape)
    return array.reshape(shape)  # BOOL


def _fits_kind(value, kind: str) -> bool:
    if kind == "b":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if kind in "iu" else isinstance(value, (int, float))


def _requested_outputs(value, binary_output: bool) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidArgumentError(
            f"'outputs' must be a list of {{\"name\"}} objects; got {_json_kind(value)}"
        )
    wanted = []
    for k, entry in enumerate(value):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InvalidArgumentError(f"output #{k} must be an object with a 'name' string")
        name = entry["name"]
        parameters = _parameters(entry.get("parameters"), f"output '{name}'")
        if "classification" in parameters:
            raise InvalidArgumentError(
                f"output '{name}': the classification extension is not supported; ask for "
                f"the output tensor itself"
            )
        if "shared_memory_region" in parameters:
            raise InvalidArgumentError(
                f"output '{name}': shared memory is not supported; the output comes in the response"
            )
        binary = binary_output
        if "binary_data" in parameters:
            binary = _bool_parameter(parameters, "binary_data", f"output '{name}'")
        wanted.append(RequestedOutput(name, binary))
    return wanted


# -- response --------------------------------------------------------------------------


def encode_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str,
    parameters: dict,
    outputs: dict[str, np.ndarray],
    requested: list[RequestedOutput] | None,
    binary_output: bool,
) -> tuple[bytes, int | None]:
    """The response body and, when some output is binary, the JSON part's length (the
    ``Inference-Header-Content-Length`` to send; None: the body is all JSON)."""
    if requested is None:
        order = [(name, binary_output) for name in outputs]
    else:
        order = [(o.name, o.binary) for o in requested]
    entries = []
    blobs: list[bytes] = []
    for name, binary in order:
        array = outputs[name]
        datatype = v2_datatype(array.dtype)
        entry: dict = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = (
                serialize_bytes(array, name)
                if datatype == "BYTES"
                else np.ascontiguousarray(array).tobytes()
            )
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = json_data(name, datatype, array)
        entries.append(entry)
    head: dict = {"model_name": model_name, "model_version": model_version, "id": request_id}
    if parameters:
        head["parameters"] = parameters
    head["outputs"] = entries
    text = json.dumps(head, separators=(",", ":")).encode()
    if not blobs:
        return text, None
    return b"".join([text, *blobs]), len(text)


def json_data(name: str, datatype: str, array: np.ndarray) -> list:
    """An output's elements as a flat JSON list (row-major)."""
    if datatype != "BYTES":
        return array.ravel().tolist()
    out = []
    for i, item in enumerate(array.ravel()):
        if isinstance(item, (bytes, bytearray)):
            try:
                item = bytes(item).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidArgumentError(
                    f"output '{name}': element {i} is not UTF-8 text, which JSON cannot carry; "
                    f"ask for the output as binary data (parameters.binary_data: true)"
                ) from None
        out.append(str(item))
    return out


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def json_body(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


__all__ = [
    "BINARY_TYPE",
    "HEADER_LENGTH",
    "JSON_TYPE",
    "MAX_TIMEOUT_US",
    "InferRequest",
    "RequestedOutput",
    "decode_binary",
    "decode_json_data",
    "decode_request",
    "encode_response",
    "error_body",
    "json_body",
    "json_data",
    "split_body",
]
