"""One servable model version: its signature and native ModelCore, an ONNX Runtime
backend, its executor, its figures.

The way of a request (DESIGN.md): the native core decodes, checks, routes, admits
and queues it, and answers it; Python runs once per batch (``serving.executor``)
and on the control plane. What this class holds is what Python publishes at load
(the signature table, batching and SLO policy, feature transforms) and what it
reads back (figures kept by the core, drift windows).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import _core
from .datatypes import TensorSpec
from .errors import ConfigError
from .features.drift import drift_section
from .features.stats import read_stats
from .features.transform import build_monitor, build_transform
from .monitoring.metrics import LATENCY_BUCKETS
from .serving.executor import INLINE_MAX_BATCH_NS, Executor
from .serving.statistics import ModelStatistics, refusals_of, slo_report_of, statistics_of

log = logging.getLogger("steadyserve.model")

PLATFORM = "onnxruntime_onnx"
# Largest row of one input (bytes): a bound on what one request can make the core hold.
MAX_ROW_BYTES = 64 << 20
# Largest batch buffer (bytes): the fixed-size rows of every input times max_batch_size.
# The core preallocates one such buffer per instance, so this bounds memory at load.
MAX_BATCH_BYTES = 1 << 30


class InferResult:
    """Outputs of one request and the model version that produced them.

    ``request_id``: the id the request was sent with, or, when it sent none and the
    prediction log kept it, the id the log made up (what feedback names it by); else "".
    """

    __slots__ = ("outputs", "model_name", "model_version", "parameters", "request_id")

    def __init__(
        self,
        outputs: dict[str, np.ndarray],
        model_name: str,
        model_version: str,
        parameters: dict[str, Any] | None = None,
        request_id: str = "",
    ):
        self.outputs = outputs
        self.model_name = model_name
        self.model_version = model_version
        self.parameters = parameters if parameters is not None else {}
        self.request_id = request_id

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]

    def __repr__(self) -> str:
        shapes = {k: list(v.shape) for k, v in self.outputs.items()}
        return f"InferResult({self.model_name}:{self.model_version}, {shapes})"


def _batched_specs(name: str, specs: list[TensorSpec], max_batch_size: int, kind: str):
    """Check the signature can be served as configured; return per-tensor row shapes."""
    row_shapes = {}
    for spec in specs:
        shape = spec.shape
        if max_batch_size > 0:
            if not shape or shape[0] not in (-1,):
                raise ConfigError(
                    f"model '{name}': max_batch_size is {max_batch_size} but {kind} '{spec.name}' "
                    f"has shape {list(shape)} with no dynamic first (batch) dimension; "
                    f"set max_batch_size: 0 in config.yaml to serve it unbatched"
                )
            row = shape[1:]
        else:
            row = shape
        if kind == "input" and any(d < 0 for d in row):
            raise ConfigError(
                f"model '{name}': input '{spec.name}' has shape {list(shape)} with a dynamic "
                f"non-batch dimension; pin it with inputs[].dims in config.yaml"
            )
        row_shapes[spec.name] = tuple(row)
    return row_shapes


def _check_row_sizes(name: str, specs, rows, max_batch_size: int) -> None:
    """Each fixed-size input row within MAX_ROW_BYTES, a whole batch of them within
    MAX_BATCH_BYTES (BYTES rows vary in size: they are bounded per request instead)."""
    batch_bytes = 0
    for spec in specs:
        if spec.datatype == "BYTES":
            continue
        row = rows[spec.name]
        row_bytes = math.prod(row) * spec.dtype.itemsize  # Python ints: no overflow
        if row_bytes == 0:
            raise ConfigError(f"model '{name}': input '{spec.name}' has zero elements per row")
        if row_bytes > MAX_ROW_BYTES:
            raise ConfigError(
                f"model '{name}': input '{spec.name}' has {row_bytes} bytes per row "
                f"({spec.datatype} {list(row)}); at most {MAX_ROW_BYTES} bytes "
                f"({MAX_ROW_BYTES >> 20} MiB) per row are allowed (MAX_ROW_BYTES)"
            )
        batch_bytes += row_bytes
    batch_bytes *= max(1, max_batch_size)
    if batch_bytes > MAX_BATCH_BYTES:
        fits = MAX_BATCH_BYTES * max(1, max_batch_size) // batch_bytes
        raise ConfigError(
            f"model '{name}': a batch of max_batch_size {max_batch_size} rows holds "
            f"{batch_bytes} bytes of inputs; at most {MAX_BATCH_BYTES} bytes "
            f"({MAX_BATCH_BYTES >> 20} MiB) per batch are allowed (MAX_BATCH_BYTES): set "
            f"max_batch_size to {max(1, fits)} or less in config.yaml"
        )


class ServableModel:
    """A loaded model version: a native ModelCore behind its executor."""

    platform = PLATFORM

    def __init__(
        self, name: str, version: str, config, backend, dispatcher, faults=None, stats_cache=None
    ):
        """``stats_cache`` (file name -> parsed stats, or None where the file is absent)
        is filled with the stats files this version reads, and read first: a lifecycle
        generation passes the same dict again to rebuild this version (a rollback) from
        the stats it was loaded with, whatever the file says now."""
        self.name = name
        self.stats_cache = stats_cache if stats_cache is not None else {}
        self.version = str(version)
        self.config = config
        self.max_batch_size = _effective_max_batch_size(config, backend.inputs)
        self.backend = backend
        self._dispatcher = dispatcher
        self.faults = faults  # a FaultInjector when fault injection is allowed, else None
        self.inputs: list[TensorSpec] = _resolve_specs(name, backend.inputs, config.inputs, "input")
        self.outputs: list[TensorSpec] = _resolve_specs(
            name, backend.outputs, config.outputs, "output"
        )
        self._input_rows = _batched_specs(name, self.inputs, self.max_batch_size, "input")
        self._input_by_name = {s.name: s for s in self.inputs}
        output_names = [s.name for s in self.outputs]
        for check in config.failover.output_checks:
            if check.name not in output_names:
                raise ConfigError(
                    f"model '{name}': failover.output_checks names output '{check.name}', "
                    f"which the model does not have (outputs: {', '.join(output_names)})"
                )
        batching = config.batching
        slo = config.slo
        self.slo_latency_ms = slo.latency_ms
        level_caps = []
        for level in range(1, slo.priority_levels + 1):
            policy = slo.priority_queues.get(level)
            level_caps.append(policy.max_queue_size or 0 if policy is not None else 0)
        self._contracts, self._monitors = self._build_contracts(config)
        _check_row_sizes(name, self.inputs, self._input_rows, self.max_batch_size)
        default_ms = slo.deadline_ms
        try:
            self.core_model = _core.ModelCore(
                name,
                self.version,
                self.max_batch_size,
                [
                    (
                        s.name,
                        s.datatype,
                        list(self._input_rows[s.name]),
                        self._contracts[s.name][0] if s.name in self._contracts else None,
                    )
                    for s in self.inputs
                ],
                [
                    (
                        s.name,
                        s.datatype,
                        list(s.shape[1:] if self.max_batch_size else s.shape),
                        self._monitors[s.name][0] if s.name in self._monitors else None,
                    )
                    for s in self.outputs
                ],
                preferred_batch_sizes=list(batching.preferred_batch_sizes),
                max_queue_delay_us=int(batching.max_queue_delay_us),
                max_queue_size=int(batching.max_queue_size),
                priority_levels=int(slo.priority_levels),
                level_max_queue=level_caps if any(level_caps) else [],
                executors=int(config.instances),
                slack_margin_us=int(slo.margin_ms * 1000),
                slo_latency_us=int((slo.latency_ms or 0) * 1000),
                admission_control=bool(slo.admission_control),
                default_level=int(slo.default_level) - 1,
                default_deadline_us=int(default_ms * 1000) if default_ms else 0,
                latency_bounds_s=list(LATENCY_BUCKETS),
                max_row_bytes=MAX_ROW_BYTES,
                output_checks=[
                    (output_names.index(c.name), bool(c.finite), c.min, c.max)
                    for c in config.failover.output_checks
                ],
                core=dispatcher.core,
            )
        except ValueError as error:  # the core's signature check names what is wrong
            raise ConfigError(str(error)) from None
        self._started = time.monotonic()
        self._is_closed = False
        self.executor = Executor(self)

    @property
    def ready(self) -> bool:
        return self.core_model.ready

    @property
    def inline(self) -> bool:
        return self.executor.inline

    def input_shape(self, name: str, rows: int) -> tuple[int, ...]:
        row = self._input_rows[name]
        return (rows, *row) if self.max_batch_size > 0 else row

    # ----------------------------------------------------------------- contracts

    def _build_contracts(self, config):
        """Native transforms for inputs with a feature contract, monitors for outputs.

        Returns ({input: (transform, names, stats)}, {output: (monitor, stats)}).
        """
        model_dir = Path(getattr(self.backend, "path", ".")).parent
        stats_cache = self.stats_cache

        def stats_for(file_name: str, required: bool) -> dict | None:
            if file_name not in stats_cache:
                path = model_dir / file_name
                stats_cache[file_name] = read_stats(path) if (required or path.exists()) else None
            return stats_cache[file_name]

        contracts = {}
        for entry in config.inputs:
            contract = entry.contract
            if contract is None:
                continue
            spec = self._input_by_name[entry.name]
            row = self._input_rows[entry.name]
            where = f"model '{self.name}' input '{entry.name}'"
            if spec.datatype != "FP32" or self.max_batch_size == 0 or len(row) != 1:
                raise ConfigError(
                    f"{where}: a feature contract needs an FP32 [batch, features] input of a "
                    f"batching model; this one is {spec.datatype} {list(spec.shape)}"
                )
            needs_stats = (
                contract.scaling != "none"
                or contract.missing in ("mean", "median")
                or any(r.missing in ("mean", "median") for r in contract.features.values())
            )
            stats_file = stats_for(contract.stats, needs_stats)
            stats = (stats_file or {}).get("inputs", {}).get(entry.name, {})
            if needs_stats and not stats:
                raise ConfigError(
                    f"{where}: {model_dir / contract.stats} has no stats for input "
                    f"'{entry.name}' (run `steadyserve fit`)"
                )
            transform = build_transform(
                self.name, entry.name, row[0], contract, config.drift, stats, where
            )
            names = contract.feature_names or stats.get("feature_names")
            contracts[entry.name] = (transform, names, stats)
        monitors = {}
        stats_file = stats_for("stats.json", False)
        for spec in self.outputs:
            stats = (stats_file or {}).get("outputs", {}).get(spec.name)
            if not stats or spec.datatype != "FP32" or self.max_batch_size == 0:
                continue
            width = (
                int(np.prod([d for d in spec.shape[1:]], dtype=np.int64)) if spec.shape[1:] else 1
            )
            if width <= 0:
                continue
            where = f"model '{self.name}' output '{spec.name}'"
            monitor = build_monitor(self.name, spec.name, width, config.drift, stats, where)
            if monitor is not None:
                monitors[spec.name] = (monitor, stats)
        return contracts, monitors

    def drift_windows(self) -> dict[str, dict[str, tuple]]:
        """The raw live windows: {"inputs"|"outputs": {tensor: (snapshot, stats, feature
        names)}}; snapshots of several processes add up (the --workers merge)."""
        return {
            "inputs": {
                name: (transform.snapshot(), stats, names)
                for name, (transform, names, stats) in self._contracts.items()
            },
            "outputs": {
                name: (monitor.snapshot(), stats, None)
                for name, (monitor, stats) in self._monitors.items()
            },
        }

    def drift_report(self) -> dict[str, Any]:
        """Live drift and data quality against the reference, per input and output."""
        drift = self.config.drift
        windows = self.drift_windows()
        inputs = {
            name: drift_section(snapshot, stats, names, drift)
            for name, (snapshot, stats, names) in windows["inputs"].items()
        }
        outputs = {
            name: drift_section(snapshot, stats, names, drift)
            for name, (snapshot, stats, names) in windows["outputs"].items()
        }
        return {
            "model": self.name,
            "version": self.version,
            "psi_threshold": drift.psi_threshold,
            "window_rows": drift.window_rows if drift.window_seconds is None else None,
            "window_seconds": drift.window_seconds,
            "inputs": inputs,
            "outputs": outputs,
        }

    def reset_drift(self) -> None:
        for transform, _, _ in self._contracts.values():
            transform.reset()
        for monitor, _ in self._monitors.values():
            monitor.reset()

    # ----------------------------------------------------------------- lifecycle

    def start(
        self, warmup: bool = True, allow_inline: bool = True, threads_only: bool = False
    ) -> None:
        """Warm up (seeding the latency model), start the executor, become ready.

        ``allow_inline`` False keeps ``execution: auto`` on threads (the runtime does
        this when faults may be injected: a hang must not block the event loop).
        ``threads_only`` runs even ``execution: inline`` on an executor thread (its
        one instance): with the native frontend no Python runs per request, so
        nothing would run an inline model's batches.
        """
        if warmup:
            self._warmup()
        self.executor.start(not threads_only and self._choose_inline(allow_inline))
        self.core_model.ready = True

    def _choose_inline(self, allow_inline: bool) -> bool:
        mode = self.config.execution
        if mode != "auto":
            return mode == "inline"
        # A batch small enough to run on the event loop without stalling it noticeably.
        largest = max(1, self.max_batch_size)
        return (
            allow_inline
            and self.config.batching.max_queue_delay_us == 0
            and self.config.instances == 1
            and 0 < self.core_model.estimate_ns(largest) <= INLINE_MAX_BATCH_NS
        )

    def close(self, timeout: float | None = 30.0, *, keep_backend: bool = False) -> None:
        """Stop accepting, execute everything already accepted, join the executors.

        ``keep_backend`` leaves the ONNX Runtime session open for another
        ServableModel that shares it (an evaluation copy, or a version kept for
        rollback)."""
        if self._is_closed:
            return
        self._is_closed = True
        self.core_model.ready = False
        self.core_model.stop()
        self.executor.stop(timeout)
        self.core_model.close()  # the reaper thread, joined with the GIL released
        if not keep_backend:
            self.backend.close()

    def _warmup_batch_sizes(self) -> list[int]:
        if self.max_batch_size == 0:
            return [1]
        sizes = {1, self.max_batch_size, *self.config.batching.preferred_batch_sizes}
        size = 2
        while size < self.max_batch_size:
            sizes.add(size)
            size *= 2
        return sorted(sizes)

    def _zeros(self, rows: int) -> dict[str, np.ndarray]:
        feeds = {}
        for spec in self.inputs:
            full = self.input_shape(spec.name, rows)
            if spec.datatype == "BYTES":
                feeds[spec.name] = np.full(full, "", dtype=object)
            else:
                feeds[spec.name] = np.zeros(full, dtype=spec.dtype)
        return feeds

    def _warmup(self) -> None:
        # A backend shared by another ServableModel (an evaluation copy, a rollback)
        # was warmed up once already: its timings seed this latency model too.
        sizes = self._warmup_batch_sizes()
        timings = getattr(self.backend, "warmup_timings", None)
        if timings is None or set(timings) != set(sizes):
            timings = self.backend.warmup(self._zeros, sizes)
            self.backend.warmup_timings = timings
        for rows, seconds in timings.items():
            self.core_model.record_latency(rows, int(seconds * 1e9))

    # ----------------------------------------------------------------- requests

    def infer(self, inputs, *, deadline_ns=None, priority=0, outputs=None) -> InferResult:
        """Run one request on this version (thread-safe); concurrent callers share batches."""
        return self._dispatcher.infer(
            self.name,
            self.version,
            inputs,
            deadline_ns=deadline_ns,
            priority=priority,
            outputs=outputs,
        )

    async def infer_async(self, inputs, *, deadline_ns=None, priority=0, outputs=None):
        """Run one request on this version from asyncio; cancelling withdraws it if queued."""
        return await self._dispatcher.infer_async(
            self.name,
            self.version,
            inputs,
            deadline_ns=deadline_ns,
            priority=priority,
            outputs=outputs,
        )

    # ----------------------------------------------------------------- figures (from the core)

    def statistics(self) -> ModelStatistics:
        return statistics_of(self.core_model.statistics())

    def slo_report(self) -> dict[str, Any]:
        """SLO figures: attainment, goodput, refusals by reason, queue and execution times
        (see ``serving.statistics.slo_report_of``)."""
        return slo_report_of(self, time.monotonic() - self._started)

    def refusals(self) -> dict[str, int]:
        """Requests not executed, by reason (the core counts them where they happen)."""
        return refusals_of(self.core_model)

    def batcher_stats(self) -> dict[str, int]:
        return self.core_model.batcher_stats()

    @property
    def queue_depth(self) -> int:
        return self.core_model.queued_requests

    def estimate_completion_ns(self, rows: int, priority: int = 0) -> int:
        """When a request of ``rows`` rows sent now would finish (monotonic ns); 0 = unknown."""
        return self.core_model.estimate_completion_ns(max(1, rows), max(0, int(priority)))

    def estimate_ms(self, rows: int) -> float:
        """The latency model's execution estimate for a batch of ``rows`` rows."""
        return self.core_model.estimate_ns(rows) / 1e6


def _resolve_specs(name: str, model_specs, configured, kind: str) -> list[TensorSpec]:
    """The model file's signature, with dims pinned by config.yaml where given."""
    by_name = {s.name: s for s in model_specs}
    overrides = {}
    for entry in configured or ():
        if entry.name not in by_name:
            known = ", ".join(by_name)
            raise ConfigError(
                f"model '{name}': config.yaml names {kind} '{entry.name}', which the model "
                f"file does not have ({kind}s: {known})"
            )
        overrides[entry.name] = entry
    resolved = []
    for spec in model_specs:
        entry = overrides.get(spec.name)
        shape = spec.shape
        if entry is not None:
            if entry.datatype is not None and entry.datatype != spec.datatype:
                raise ConfigError(
                    f"model '{name}': config.yaml gives {kind} '{spec.name}' datatype "
                    f"{entry.datatype} but the model file says {spec.datatype}"
                )
            if entry.dims is not None:
                shape = _pin_dims(name, spec, entry.dims, kind)
        resolved.append(TensorSpec(spec.name, spec.datatype, shape))
    return resolved


def _pin_dims(name: str, spec: TensorSpec, dims, kind: str) -> tuple[int, ...]:
    """Apply configured non-batch dims to the model's shape (batch dim kept first)."""
    model_row = spec.shape[1:] if spec.shape and spec.shape[0] == -1 else spec.shape
    head = spec.shape[:1] if spec.shape and spec.shape[0] == -1 else ()
    if len(dims) != len(model_row):
        raise ConfigError(
            f"model '{name}': config.yaml dims {list(dims)} for {kind} '{spec.name}' have rank "
            f"{len(dims)}, the model's non-batch shape {list(model_row)} has rank {len(model_row)}"
        )
    for configured, actual in zip(dims, model_row, strict=True):
        if actual >= 0 and configured != actual:
            raise ConfigError(
                f"model '{name}': config.yaml dims {list(dims)} for {kind} '{spec.name}' "
                f"contradict the model's shape {list(spec.shape)}"
            )
    return (*head, *(int(d) for d in dims))


def _effective_max_batch_size(config, model_inputs: list[TensorSpec]) -> int:
    """config.max_batch_size, except that a model without a dynamic first dimension and
    no explicit max_batch_size in config.yaml is served unbatched (works with no config)."""
    explicit = "max_batch_size" in getattr(config, "model_fields_set", ())
    batchable = all(s.shape and s.shape[0] == -1 for s in model_inputs)
    if not explicit and not batchable:
        return 0
    return int(config.max_batch_size)
