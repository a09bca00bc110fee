"""The prediction log in Parquet: one row per request, one row group per write.

Columns: ``request_id``, ``time`` (float64 unix seconds), ``model``, ``answered_by``,
``version``, ``failover``, ``rows``, and per tensor ``<kind>.<name>`` (kind: input,
scaled, output), a struct of ``values`` (the request's elements, flat, in the tensor's
own Arrow type: float32 stays float32, strings are binary) and ``dims`` (the per-row
shape). The Arrow type is the dtype; nothing else needs to be written down.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .capture import row_offsets
from .files import LogFile
from .records import RECORD_KEYS, TENSOR_KINDS, ModelRecords, flat_bytes, flat_numbers

# pyarrow imports pandas on its first pa.array (measured: 0.4 s, holding the GIL): pay it
# here, when the log is built at start-up, not on the writer thread mid-traffic.
pa.array([0])

BASE_COLUMNS = ("request_id", "time", "model", "answered_by", "version", "failover", "rows")
INT32_MAX = 2**31 - 1


class ParquetFile(LogFile):
    format = "parquet"
    buffered = True  # the Parquet writer writes pages in many small pieces

    def __init__(self, folder: Path, layout: tuple):
        super().__init__(folder, layout)
        self._writer: pq.ParquetWriter | None = None

    def _write(self, parts: list[ModelRecords]) -> None:
        table = _table(parts)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._file, table.schema, compression="zstd")
        self._writer.write_table(table, row_group_size=table.num_rows)

    def _finish(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def _salvage(self) -> bool:
        # A failed row group leaves the writer in no state to trust: close it, then keep
        # the file only if its footer reads back with exactly the rows written before.
        if self._writer is not None:
            self._writer.close()
        self._file.close()
        return pq.read_metadata(self.partial).num_rows == self.requests


def _table(parts: list[ModelRecords]) -> pa.Table:
    """One table of every part (one model and layout): built column by column over all
    of them at once, since building a table costs about as much for one request as for
    thousands. Parts whose per-row dims differ are built one by one and concatenated."""
    shapes = {tuple(a.shape[1:] for _, _, a in part.tensors) for part in parts}
    if len(shapes) > 1:
        return pa.concat_tables([_table([part]) for part in parts])
    counts = [part.requests for part in parts]

    def each(values: list[str]) -> list[str]:
        return [v for v, n in zip(values, counts, strict=True) for _ in range(n)]

    answered_by = each([part.answered_by for part in parts])
    models = each([part.model for part in parts])
    rows = np.concatenate([part.rows for part in parts]).astype(np.int64)
    offsets = row_offsets(rows)
    columns = {
        "request_id": pa.array([i for part in parts for i in part.request_ids], pa.string()),
        "time": pa.array(np.repeat([part.time for part in parts], counts).astype(np.float64)),
        "model": pa.array(models, pa.string()),
        "answered_by": pa.array(answered_by, pa.string()),
        "version": pa.array(each([part.version for part in parts]), pa.string()),
        "failover": pa.array([a != m for a, m in zip(answered_by, models, strict=True)]),
        "rows": pa.array(rows),
    }
    for k, (kind, name, _) in enumerate(parts[0].tensors):
        arrays = [part.tensors[k][2] for part in parts]
        array = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        columns[f"{kind}.{name}"] = _tensor_column(array, offsets)
    return pa.table(columns)


def _tensor_column(array: np.ndarray, row_offsets: np.ndarray) -> pa.StructArray:
    dims = np.asarray(array.shape[1:], dtype=np.int64)
    value_offsets = row_offsets * int(np.prod(dims))
    if value_offsets[-1] > INT32_MAX:
        raise ValueError(f"{value_offsets[-1]} elements in one tensor of one write")
    if array.dtype.kind in "OSU":
        values = pa.array(flat_bytes(array), pa.binary())
    else:
        values = pa.array(flat_numbers(array))
    lists = pa.ListArray.from_arrays(pa.array(value_offsets.astype(np.int32)), values)
    n = len(row_offsets) - 1
    dims_offsets = (np.arange(n + 1, dtype=np.int32) * len(dims)).astype(np.int32)
    dims_lists = pa.ListArray.from_arrays(
        pa.array(dims_offsets), pa.array(np.tile(dims, n), pa.int64())
    )
    return pa.StructArray.from_arrays([lists, dims_lists], names=["values", "dims"])


def read_parquet(path: Path, kinds: tuple[str, ...] = TENSOR_KINDS) -> list[dict]:
    """Every record of one file (as ``reader.read_predictions`` yields them), with the
    tensors of ``kinds`` only (the others' columns are not read). Raises what pyarrow
    raises for a corrupt or truncated file."""
    if kinds == TENSOR_KINDS:
        table = pq.read_table(path)
    else:
        names = pq.read_schema(path).names
        wanted = [n for n in names if n in BASE_COLUMNS or n.partition(".")[0] in kinds]
        table = pq.read_table(path, columns=wanted)
    base = {name: table.column(name).to_pylist() for name in BASE_COLUMNS}
    records = [
        {
            **{name: base[name][i] for name in BASE_COLUMNS},
            **{key: {} for key in RECORD_KEYS.values()},
        }
        for i in range(table.num_rows)
    ]
    for column in table.column_names:
        kind, dot, name = column.partition(".")
        if not dot or kind not in TENSOR_KINDS:
            continue
        values, dims = table.column(column).combine_chunks().flatten()
        flat = values.flatten().to_numpy(zero_copy_only=False)
        ends = np.cumsum(values.value_lengths().to_numpy(zero_copy_only=False))
        key = RECORD_KEYS[kind]
        start = 0
        for record, end, shape in zip(records, ends, dims.to_pylist(), strict=True):
            record[key][name] = flat[start:end].reshape(record["rows"], *shape)
            start = end
    return records
