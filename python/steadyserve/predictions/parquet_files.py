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

from .files import LogFile
from .records import RECORD_KEYS, TENSOR_KINDS, ModelRecords, flat_bytes, flat_numbers

BASE_COLUMNS = ("request_id", "time", "model", "answered_by", "version", "failover", "rows")
INT32_MAX = 2**31 - 1


class ParquetFile(LogFile):
    format = "parquet"
    buffered = True  # the Parquet writer writes pages in many small pieces

    def __init__(self, folder: Path, layout: tuple):
        super().__init__(folder, layout)
        self._writer: pq.ParquetWriter | None = None

    def _write(self, parts: list[ModelRecords]) -> None:
        table = pa.concat_tables([_table(part) for part in parts])
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


def _table(part: ModelRecords) -> pa.Table:
    n = part.requests
    offsets = part.offsets()
    columns = {
        "request_id": pa.array(part.request_ids, pa.string()),
        "time": pa.array(np.full(n, part.time, dtype=np.float64)),
        "model": pa.array([part.model] * n, pa.string()),
        "answered_by": pa.array([part.answered_by] * n, pa.string()),
        "version": pa.array([part.version] * n, pa.string()),
        "failover": pa.array(np.full(n, part.answered_by != part.model)),
        "rows": pa.array(part.rows.astype(np.int64)),
    }
    for kind, name, array in part.tensors:
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


def read_parquet(path: Path) -> list[dict]:
    """Every record of one file (as ``reader.read_predictions`` yields them). Raises
    what pyarrow raises for a corrupt or truncated file."""
    table = pq.read_table(path)
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
