"""KServe V2 tensor datatypes and their numpy and ONNX equivalents.

One table, used by the backend (ONNX types to V2), the codec (wire bytes to
numpy) and the runtime (safe coercion of caller arrays to the model's type).
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidArgumentError

# V2 datatype name -> numpy dtype (little-endian, as the protocol sends raw bytes).
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    # Strings: numpy object arrays of str or bytes; carried in Triton's BYTES serialization.
    "BYTES": np.dtype(object),
}

NUMPY_TO_V2: dict[np.dtype, str] = {dt: name for name, dt in V2_TO_NUMPY.items()}

# ONNX Runtime's type strings (NodeArg.type) -> V2 datatype.
ONNX_TO_V2: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype of a V2 datatype name; InvalidArgumentError for unknown names."""
    try:
        return V2_TO_NUMPY[datatype]
    except KeyError:
        allowed = ", ".join(V2_TO_NUMPY)
        raise InvalidArgumentError(
            f"unsupported datatype '{datatype}' (supported: {allowed})"
        ) from None


def v2_datatype(dtype: np.dtype | type) -> str:
    """The V2 datatype name of a numpy dtype; InvalidArgumentError if it has none."""
    dt = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).byteorder == ">" else np.dtype(dtype)
    if dt.kind in "OSU":  # str, bytes and object arrays are strings
        return "BYTES"
    try:
        return NUMPY_TO_V2[dt]
    except KeyError:
        raise InvalidArgumentError(f"numpy dtype {dt} has no V2 datatype") from None


def coerce(name: str, array: np.ndarray, target: np.dtype) -> np.ndarray:
    """Convert ``array`` to ``target`` when no value changes; refuse otherwise.

    The check is a round trip: a conversion is lossless exactly when converting
    back gives the same values (NaN counts as equal to NaN). Integer to float
    within the mantissa, float64 holding float32 values, and widening integers
    pass; 0.5 to an integer, 1e40 to float32 or -1 to uint8 are refused with the
    input's name and the first value that would change.
    """
    if array.dtype == target:
        return array
    if target.kind == "O":  # BYTES: text and bytes, never numbers
        if array.dtype.kind not in "SU":
            raise InvalidArgumentError(
                f"input '{name}': cannot convert {array.dtype} to BYTES (send str or bytes)"
            )
        return array.astype(object)
    if array.dtype.kind not in "biuf" or target.kind not in "biuf":
        raise InvalidArgumentError(f"input '{name}': cannot convert {array.dtype} to {target}")
    with np.errstate(all="ignore"):
        converted = array.astype(target)
        back = converted.astype(array.dtype)
    same = back == array
    if array.dtype.kind == "f":
        same |= np.isnan(array) & np.isnan(back)
    if not same.all():
        bad = tuple(int(i) for i in np.argwhere(~same)[0])
        raise InvalidArgumentError(
            f"input '{name}': value {array[bad].item()!r} at index {list(bad)} cannot be "
            f"represented "
            f"as {NUMPY_TO_V2.get(target, target)} without loss "
            f"(send {NUMPY_TO_V2.get(target, target)} or values that convert exactly)"
        )
    return converted


class TensorSpec:
    """Name, V2 datatype and shape of a model input or output.

    ``shape`` includes the batch dimension when the model batches; -1 marks a
    dynamic dimension. Immutable and hashable.
    """

    __slots__ = ("name", "datatype", "shape")

    def __init__(self, name: str, datatype: str, shape: tuple[int, ...] | list[int]):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "datatype", datatype)
        object.__setattr__(self, "shape", tuple(int(d) for d in shape))

    def __setattr__(self, key, value):
        raise AttributeError("TensorSpec is immutable")

    def __eq__(self, other):
        return isinstance(other, TensorSpec) and (self.name, self.datatype, self.shape) == (
            other.name,
            other.datatype,
            other.shape,
        )

    def __hash__(self):
        return hash((self.name, self.datatype, self.shape))

    def __repr__(self):
        return f"TensorSpec({self.name!r}, {self.datatype!r}, {list(self.shape)})"

    @property
    def dtype(self) -> np.dtype:
        return numpy_dtype(self.datatype)


# Largest BYTES element: its length is a 4-byte little-endian unsigned integer.
MAX_BYTES_ELEMENT = 0xFFFFFFFF


def serialize_bytes(array, name: str = "") -> bytes:
    """Triton's BYTES serialization of ``array`` (row-major): per element a 4-byte
    little-endian length, then its bytes (str elements are UTF-8 encoded).

    Elements must be str or bytes-like; anything else (an int in an object array,
    which ``bytes()`` would turn into that many zero bytes) is refused, naming
    ``name``, the element and its type.
    """
    where = f"input '{name}': " if name else ""
    parts = []
    for index, item in enumerate(np.asarray(array, dtype=object).reshape(-1)):
        if isinstance(item, str):
            data = item.encode("utf-8", "surrogatepass")  # the core names invalid UTF-8
        elif isinstance(item, (bytes, bytearray, memoryview)):
            data = bytes(item)
        else:
            raise InvalidArgumentError(
                f"{where}element {index} is {type(item).__name__} {item!r:.40}; string "
                f"(BYTES) elements must be str or bytes, numbers go in a numeric array"
            )
        if len(data) > MAX_BYTES_ELEMENT:
            raise InvalidArgumentError(
                f"{where}BYTES element {index} has {len(data)} bytes; at most "
                f"{MAX_BYTES_ELEMENT} allowed (the 4-byte length)"
            )
        parts.append(len(data).to_bytes(4, "little"))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(data: bytes, shape) -> np.ndarray:
    """The elements of Triton's BYTES serialization as an object array of str of
    ``shape``, the form ONNX Runtime takes for strings (it would pass bytes elements on
    as their repr, so the core refuses BYTES inputs that are not UTF-8 text)."""
    items = []
    at, size = 0, len(data)
    while at + 4 <= size:
        n = int.from_bytes(data[at : at + 4], "little")
        items.append(data[at + 4 : at + 4 + n].decode("utf-8"))
        at += 4 + n
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(shape)
