"""A logged batch cut into what each log file gets: the requests that asked for one model.

A batch answered by one executor can hold requests that asked for different models (a
backup answers for its primaries too); each request is logged under the model it asked
for, so the batch is split by ``asked`` before it is written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .capture import LoggedBatch, row_index, row_offsets

# Tensor kinds in the order their columns are written; the record dict keys of each.
TENSOR_KINDS = ("input", "scaled", "output")
RECORD_KEYS = {"input": "inputs", "scaled": "scaled", "output": "outputs"}


class InvalidBatchError(ValueError):
    """A LoggedBatch whose lengths disagree (ids, asked, rows, tensor rows)."""


# By dtype number, asked per batch and tensor: numpy's dtype.name (and hashing a dtype)
# costs microseconds, and the writer pays it for every batch.
_VALUE_KINDS: dict[int, str] = {}


def value_kind(dtype: np.dtype) -> str:
    """How a tensor's values are stored: the numpy dtype name, or "bytes" for strings
    (object, ``S`` and ``U`` arrays all come back as object arrays of bytes)."""
    dtype = np.dtype(dtype)
    known = _VALUE_KINDS.get(dtype.num)
    if known is not None:
        return known
    if dtype.kind in "OSU":
        kind = "bytes"
    elif dtype.kind in "biuf":
        kind = dtype.name
    else:
        raise InvalidBatchError(f"dtype {dtype} cannot be logged (bool, int, uint, float, bytes)")
    _VALUE_KINDS[dtype.num] = kind
    return kind


def flat_bytes(values: np.ndarray) -> list[bytes]:
    """A string tensor's elements as bytes (str as UTF-8)."""
    return [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values.reshape(-1)]


def flat_numbers(values: np.ndarray) -> np.ndarray:
    """A numeric tensor's elements, contiguous and in native byte order."""
    if not values.dtype.isnative:
        values = values.astype(values.dtype.newbyteorder("="))
    return np.ascontiguousarray(values).reshape(-1)


@dataclass(frozen=True, slots=True)
class ModelRecords:
    """The requests of one batch that asked for ``model``: one record each. Tensors hold
    their rows one request after the other, as in the batch."""

    model: str  # asked for
    answered_by: str
    version: str
    time: float
    request_ids: list[str]
    rows: np.ndarray  # int64 [requests]
    tensors: list[tuple[str, str, np.ndarray]]  # (kind, name, [sum(rows), *dims])
    # What fixes a Parquet file's schema: (kind, name, value kind) of each tensor (per-row
    # dims are a column). Records of another layout go to a new file.
    layout: tuple[tuple[str, str, str], ...]

    @property
    def requests(self) -> int:
        return len(self.request_ids)

    def offsets(self) -> np.ndarray:
        """Row offsets of the requests: request i is rows ``[offsets[i], offsets[i+1])``."""
        return row_offsets(self.rows)


def split_by_model(batch: LoggedBatch) -> list[ModelRecords]:
    """The batch's requests grouped by the model each asked for, in order of first ask.
    InvalidBatchError when its lengths disagree."""
    rows = batch.rows
    if type(rows) is not np.ndarray or rows.dtype != np.int64 or rows.ndim != 1:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    n = len(batch.request_ids)
    if len(batch.asked) != n or len(rows) != n:
        raise InvalidBatchError(
            f"batch of {batch.model!r}: {n} request ids, {len(batch.asked)} asked, "
            f"{len(rows)} row counts"
        )
    # One request (the common batch over gRPC): no numpy reduction, which costs more here.
    if (int(rows[0]) < 0) if n == 1 else bool((rows < 0).any()):
        raise InvalidBatchError(f"batch of {batch.model!r}: negative row counts")
    total = int(rows[0]) if n == 1 else int(rows.sum())
    tensors = []
    for kind in TENSOR_KINDS:
        for name, array in getattr(batch, RECORD_KEYS[kind]).items():
            if type(array) is not np.ndarray:
                array = np.asarray(array)
            if array.ndim == 0 or array.shape[0] != total:
                raise InvalidBatchError(
                    f"batch of {batch.model!r}: {kind} {name!r} has shape {array.shape}, "
                    f"the requests have {total} rows"
                )
            tensors.append((kind, name, array))  # its dtype is checked by the layout

    groups: dict[str, list[int]] = {}
    for i, model in enumerate(batch.asked):
        groups.setdefault(model, []).append(i)
    if len(groups) == 1:  # the common case: no copy
        (model,) = groups
        return [_records(batch, model, batch.request_ids, rows, tensors)]

    starts = row_offsets(rows)[:-1]
    out = []
    for model, members in groups.items():
        index = np.asarray(members, dtype=np.int64)
        take = row_index(starts[index], rows[index])
        part = [(kind, name, array[take]) for kind, name, array in tensors]
        ids = [batch.request_ids[i] for i in members]
        out.append(_records(batch, model, ids, rows[index], part))
    return out


def _records(batch: LoggedBatch, model, ids, rows, tensors) -> ModelRecords:
    return ModelRecords(
        model=model,
        answered_by=batch.model,
        version=str(batch.version),
        time=float(batch.time),
        request_ids=[str(i) for i in ids],
        rows=rows,
        tensors=tensors,
        layout=tuple((kind, name, value_kind(a.dtype)) for kind, name, a in tensors),
    )
