"""What the prediction log is handed once per batch: the sampled requests of one
executed batch, copied off the batch buffer before the core answers (the buffer is
reused at once)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class LoggedBatch:
    """The sampled requests of one batch. Tensors hold the requests' rows one request
    after the other (request i has ``rows[i]`` rows, starting at ``sum(rows[:i])``)."""

    model: str  # the model that answered (its executor ran the batch)
    version: str
    time: float  # unix seconds, when the batch ran
    request_ids: list[str]  # per request: its x-request-id (as the server answered it)
    asked: list[str]  # per request: the model it asked for (not ``model``: a failover)
    rows: np.ndarray  # int64 [requests]
    inputs: dict[str, np.ndarray]  # raw, as the client sent them
    scaled: dict[str, np.ndarray]  # inputs with a feature contract: the model-ready rows
    outputs: dict[str, np.ndarray]

    @property
    def requests(self) -> int:
        return len(self.request_ids)

    @property
    def nbytes(self) -> int:
        """What the batch holds in memory, roughly: the log's queue bound counts this."""
        tensors = (*self.inputs.values(), *self.scaled.values(), *self.outputs.values())
        return sum(_tensor_bytes(a) for a in tensors) + 64 * self.requests

    def starts(self) -> np.ndarray:
        """First row of each request."""
        return row_offsets(self.rows)[:-1]


def row_offsets(rows: np.ndarray) -> np.ndarray:
    """[requests + 1]: request i has the rows ``[offsets[i], offsets[i + 1])`` of tensors
    that hold the requests' rows one request after the other."""
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(rows, out=offsets[1:])
    return offsets


def row_index(starts: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The rows of requests that start at ``starts`` with ``rows`` rows each, in order."""
    total = int(rows.sum())
    return np.repeat(starts - row_offsets(rows)[:-1], rows) + np.arange(total, dtype=np.int64)


def _tensor_bytes(array: np.ndarray) -> int:
    if array.dtype.kind == "O":  # string tensors: the strings, not their pointers
        return array.nbytes + sum(len(v) for v in array.flat)
    return array.nbytes


class BatchCapture:
    """One model version's hand-over to the prediction log, called by its executor for
    a batch with logged requests (``batch.logged``), after the outputs passed their
    checks and before the core answers. Copies only the logged requests' rows; when
    every request of the batch is logged the outputs are taken as they are (ONNX
    Runtime's own arrays, not a view of anything the core reuses)."""

    __slots__ = ("_log", "_model", "_version", "_inputs", "_outputs", "_batched")

    def __init__(self, log, model: str, version: str, inputs, outputs, batched: bool):
        self._log = log  # a writer.PredictionLog
        self._model = model
        self._version = str(version)
        self._inputs = list(inputs)  # input names, the signature's order
        self._outputs = list(outputs)  # output names, the order the executor runs them
        self._batched = batched

    def __call__(self, core, batch, values) -> bool:
        """Hands the logged requests of ``batch`` (a BatchView of ``core``) with the
        batch's output arrays ``values`` to the log; False when the log dropped them."""
        logged = core.logged_rows(batch.buffer)
        rows = logged.rows
        if not self._batched:
            values = [np.asarray(v)[np.newaxis] for v in values]
        elif len(rows) != batch.requests:
            index = row_index(logged.offsets, rows)
            values = [np.asarray(v)[index] for v in values]
        scaled = {
            name: array
            for name, array in zip(self._inputs, logged.scaled, strict=True)
            if array is not None
        }
        return self._log.offer(
            LoggedBatch(
                model=self._model,
                version=self._version,
                time=time.time(),
                request_ids=logged.request_ids,
                asked=logged.asked,
                rows=rows,
                inputs=dict(zip(self._inputs, logged.inputs, strict=True)),
                scaled=scaled,
                outputs=dict(zip(self._outputs, values, strict=True)),
            )
        )
