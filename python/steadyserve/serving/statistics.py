"""A model version's figures, read from the native core at the moment they are asked
for: Triton's ModelStatistics, the SLO report, refusals by reason. The core keeps
every count (atomics); nothing here counts anything."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# StatusCode numbers (gRPC's) -> names, for the refusal counts of ModelStatistics.
CODE_NAMES = {
    1: "CANCELLED",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    8: "RESOURCE_EXHAUSTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
}


@dataclass
class Duration:
    count: int = 0
    ns: int = 0


@dataclass
class BatchDuration:
    count: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0


@dataclass
class ModelStatistics:
    """Triton-style statistics (ModelStatistics in the V2 extension)."""

    inference_count: int = 0  # rows answered
    execution_count: int = 0  # batches executed
    last_inference_ms: int = 0  # wall clock, ms since the epoch
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batch_stats: dict[int, BatchDuration] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)  # by grpc code name
    slo_missed: int = 0  # answered, but later than slo.latency_ms


def statistics_of(raw: dict) -> ModelStatistics:
    """ModelStatistics from ``ModelCore.statistics()``."""
    refused = {
        CODE_NAMES.get(code, str(code)): n
        for code, n in raw["outcomes"].items()
        if code not in (0, 13)  # answers and model failures are not refusals
    }
    return ModelStatistics(
        inference_count=raw["inference_count"],
        execution_count=raw["execution_count"],
        last_inference_ms=raw["last_inference_ms"],
        success=Duration(*raw["success"]),
        fail=Duration(*raw["fail"]),
        queue=Duration(*raw["queue"]),
        compute_input=Duration(*raw["compute_input"]),
        compute_infer=Duration(*raw["compute_infer"]),
        compute_output=Duration(*raw["compute_output"]),
        batch_stats={size: BatchDuration(*v) for size, v in raw["batch_stats"].items()},
        refused=refused,
        slo_missed=raw["slo_missed"],
    )


def refusals_of(core_model, raw: dict | None = None) -> dict[str, int]:
    """Requests not executed, by reason: counted by the core where they happen
    (``raw``: a ``statistics()`` already read)."""
    return dict((raw if raw is not None else core_model.statistics())["refusals"])


def _percentiles(ns: list[int]) -> dict[str, float | None]:
    if not ns:
        return {"p50": None, "p90": None, "p99": None}
    p50, p90, p99 = np.percentile(np.asarray(ns, dtype=np.int64), [50, 90, 99]) / 1e6
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99)}


def slo_report_of(model, elapsed_s: float) -> dict[str, Any]:
    """Attainment is the share of answered requests answered within ``slo.latency_ms``;
    goodput counts those per second since the model started. Percentiles cover the most
    recent requests (up to 4096)."""
    core = model.core_model
    raw = core.statistics()
    answered = raw["success"][0]
    has_slo = bool(model.slo_latency_ms)
    met = raw["slo_met"]
    return {
        "latency_ms": model.slo_latency_ms,
        "answered": answered,
        "within_slo": met if has_slo else None,
        "attainment": (met / answered if answered else None) if has_slo else None,
        "goodput_per_s": met / max(1e-9, elapsed_s) if has_slo else None,
        "failed": raw["fail"][0],
        "refused": refusals_of(core, raw),
        "latency_ms_recent": _percentiles(core.recent_latencies_ns()),
        "queue_ms_recent": _percentiles(core.recent_queue_ns()),
        "execution_estimate_ms": {
            rows: model.estimate_ms(rows) for rows in model._warmup_batch_sizes()
        },
        "batch_cap": core.batch_cap,
    }
