"""The per-model config schema (``REPO/<model>/config.yaml``) and its loader.

One pydantic schema for the whole file. Every field has bounds and a
description; the description is what the error message quotes as "allowed", so
the rule is written once and shows up in both ``ModelConfig.model_json_schema()``
and in the message an operator reads. A bad file fails at start-up with the
file, the line, the dotted key, the bad value and the rule.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .datatypes import V2_TO_NUMPY
from .errors import ConfigError

MAX_QUEUE_DELAY_US = 10_000_000
MAX_INSTANCES = 16
# Upper bounds on what one model may make the core hold: rows per batch (each batch
# buffer is preallocated for max_batch_size rows) and requests per queue.
MAX_BATCH_SIZE = 4096
MAX_QUEUE_SIZE = 65536

# Error type of our own cross-field rules; its context carries the key the rule is about.
_RULE = "steadyserve_rule"


def _rule_error(key: str, value: object, detail: str) -> PydanticCustomError:
    return PydanticCustomError(_RULE, "{detail}", {"key": key, "value": value, "detail": detail})


class _Section(BaseModel):
    # strict: YAML already gives ints, floats and bools their types, so a quoted "8" or
    # a `true` where a number belongs is a mistake to report, not to coerce.
    model_config = ConfigDict(extra="forbid", strict=True)


class TensorConfig(_Section):
    name: str = Field(min_length=1, description="tensor name as in the ONNX file")
    datatype: str | None = Field(None, description="KServe V2 datatype: " + ", ".join(V2_TO_NUMPY))
    contract: ContractConfig | None = Field(
        None,
        description="feature contract of an FP32 [batch, features] input: validation, "
        "imputation, scaling, drift",
    )
    dims: list[int] | None = Field(
        None,
        description="shape without the batch dimension; each dim >= 1, or -1 where the "
        "model's own shape is dynamic",
    )

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str | None) -> str | None:
        if value is not None and value not in V2_TO_NUMPY:
            raise _rule_error("", value, f"unknown datatype {value!r}")
        return value

    @field_validator("dims")
    @classmethod
    def _dims(cls, value: list[int] | None) -> list[int] | None:
        for i, d in enumerate(value or []):
            if d == 0 or d < -1:
                raise _rule_error(f"[{i}]", d, f"dimension {d} is not allowed")
        return value


class BatchingConfig(_Section):
    preferred_batch_sizes: list[int] = Field(
        default_factory=list,
        description="batch sizes: the batcher closes a batch as soon as it reaches the "
        "largest of them; "
        "each 1..max_batch_size, no duplicates",
    )
    max_queue_delay_us: int = Field(
        0,
        ge=0,
        le=MAX_QUEUE_DELAY_US,
        description=f"microseconds the batcher may hold a request waiting for more, "
        f"0..{MAX_QUEUE_DELAY_US} (0 = never wait, batch only what is already queued)",
    )
    max_queue_size: int = Field(
        1024,
        ge=1,
        le=MAX_QUEUE_SIZE,
        description=f"requests the model queues before refusing more, 1..{MAX_QUEUE_SIZE}",
    )

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _sizes(cls, value: list[int]) -> list[int]:
        for i, size in enumerate(value):
            if size < 1:
                raise _rule_error(f"[{i}]", size, "a batch size must be >= 1")
        if len(set(value)) != len(value):
            raise _rule_error("", value, "a size is listed twice")
        return sorted(value)


class OnnxRuntimeConfig(_Section):
    device: Literal["cpu", "cuda"] = Field("cpu", description="'cpu' or 'cuda'")
    device_id: int = Field(0, ge=0, description="CUDA device number, >= 0 (only with device: cuda)")
    intra_op_threads: int | Literal["auto"] = Field(
        "auto",
        description="threads inside one operator: 'auto' (chosen from the warm-up: one "
        "thread, unless more make a one-row batch faster), or >= 0 (0 = ONNX Runtime's "
        "default)",
    )
    inter_op_threads: int = Field(
        1, ge=0, description="threads across operators, >= 0 (0 = ONNX Runtime's default)"
    )
    # Off by default on purpose: a spinning pool burns a whole core while idle, which
    # on a small machine starves the server's own threads.
    allow_spinning: bool = Field(
        False, description="true/false: let ONNX Runtime's thread pools spin-wait for work"
    )
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="'disable', 'basic', 'extended' or 'all'"
    )
    warmup: bool = Field(True, description="true/false: run each batch size once before serving")

    @field_validator("intra_op_threads")
    @classmethod
    def _threads(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise _rule_error("", value, "intra_op_threads must be 'auto' or an integer >= 0")
        return value

    @model_validator(mode="after")
    def _device_id_needs_cuda(self) -> OnnxRuntimeConfig:
        if self.device == "cpu" and self.device_id != 0:
            raise _rule_error(
                "device_id",
                self.device_id,
                "device_id applies only to device: cuda; remove it or set device: cuda",
            )
        return self


MAX_PRIORITY_LEVELS = 8


class PriorityQueueConfig(_Section):
    max_queue_size: int | None = Field(
        None,
        ge=1,
        le=MAX_QUEUE_SIZE,
        description=f"requests this priority level may queue, 1..{MAX_QUEUE_SIZE} "
        "(omit: no own cap)",
    )


class SloConfig(_Section):
    latency_ms: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="the latency objective in ms, > 0: batches are capped so their estimated "
        "execution fits it, and attainment is measured against it (omit: no SLO)",
    )
    default_deadline_ms: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="deadline for requests that bring none, in ms, > 0 (omit: latency_ms, "
        "or none without an SLO)",
    )
    margin_ms: float = Field(
        0.5,
        ge=0,
        allow_inf_nan=False,
        description="safety margin added to execution estimates, in ms, >= 0",
    )
    admission_control: bool = Field(
        True,
        description="true/false: refuse at once (DEADLINE_EXCEEDED) a request estimated to "
        "finish after its deadline, instead of queueing it to fail later",
    )
    priority_levels: int = Field(
        1,
        ge=1,
        le=MAX_PRIORITY_LEVELS,
        description=f"request priority levels, 1..{MAX_PRIORITY_LEVELS}; level 1 is served "
        "first and shed last",
    )
    default_priority: int | None = Field(
        None,
        ge=1,
        description="level of requests that send priority 0 or none, 1..priority_levels "
        "(omit: the lowest level)",
    )
    priority_queues: dict[int, PriorityQueueConfig] = Field(
        default_factory=dict,
        description="queue policy per priority level, e.g. {2: {max_queue_size: 100}}",
    )

    @model_validator(mode="after")
    def _levels(self) -> SloConfig:
        levels = self.priority_levels
        if self.default_priority is not None and self.default_priority > levels:
            raise _rule_error(
                "default_priority",
                self.default_priority,
                f"must be 1..priority_levels ({levels})",
            )
        for level in self.priority_queues:
            if not 1 <= level <= levels:
                raise _rule_error(f"priority_queues.{level}", level, f"is not a level 1..{levels}")
        return self

    @property
    def deadline_ms(self) -> float | None:
        """The deadline given to requests that bring none."""
        return self.default_deadline_ms if self.default_deadline_ms is not None else self.latency_ms

    @property
    def default_level(self) -> int:
        return self.default_priority if self.default_priority is not None else self.priority_levels


class FeatureRule(_Section):
    min: float | None = Field(None, allow_inf_nan=False, description="smallest valid value")
    max: float | None = Field(None, allow_inf_nan=False, description="largest valid value")
    out_of_range: Literal["reject", "clip", "allow"] | None = Field(
        None, description="'reject', 'clip' or 'allow' (count only) a value outside [min, max]"
    )
    missing: Literal["reject", "mean", "median", "constant"] | None = Field(
        None, description="'reject' NaN/inf, or impute with the 'mean', 'median' or a 'constant'"
    )
    missing_value: float | None = Field(
        None, allow_inf_nan=False, description="the constant for missing: constant"
    )

    @model_validator(mode="after")
    def _range(self):
        if self.min is not None and self.max is not None and self.min > self.max:
            raise _rule_error("min", self.min, f"min is larger than max ({self.max:g})")
        return self


class ContractConfig(FeatureRule):
    """The feature contract of one FP32 [batch, features] input: what every feature
    (unless ``features`` says otherwise) must satisfy, and how it is scaled."""

    out_of_range: Literal["reject", "clip", "allow"] = Field(
        "reject", description="'reject', 'clip' or 'allow' (count only) a value outside [min, max]"
    )
    missing: Literal["reject", "mean", "median", "constant"] = Field(
        "reject",
        description="'reject' NaN/inf, or impute with the 'mean', 'median' or a 'constant'",
    )
    feature_names: list[str] | None = Field(
        None, description="one name per feature, used in errors, drift reports and metrics"
    )
    scaling: Literal["none", "standard", "minmax", "robust"] = Field(
        "none",
        description="'standard' (x-mean)/std, 'minmax' (x-min)/(max-min), 'robust' "
        "(x-median)/IQR, or 'none'; parameters come from the stats file",
    )
    stats: str = Field(
        "stats.json",
        min_length=1,
        description="stats file next to model.onnx (written by `steadyserve fit`)",
    )
    features: dict[str | int, FeatureRule] = Field(
        default_factory=dict,
        description="per-feature rules by feature name or index, overriding the ones above",
    )

    @field_validator("stats")
    @classmethod
    def _plain_file(cls, value: str) -> str:
        if "/" in value or "\\" in value or value.startswith("."):
            raise _rule_error("", value, "must be a plain file name next to model.onnx")
        return value


class DriftConfig(_Section):
    window_rows: int = Field(
        10_000, ge=10, description="rows in the live window compared with the reference, >= 10"
    )
    window_seconds: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="a live window spanning this many seconds instead of window_rows, > 0",
    )
    sub_windows: int = Field(
        10, ge=1, le=1000, description="the window slides by 1/sub_windows of itself, 1..1000"
    )
    psi_threshold: float = Field(
        0.2, gt=0, allow_inf_nan=False, description="PSI above which a feature is flagged, > 0"
    )
    min_rows: int = Field(
        200, ge=1, description="live rows needed before PSI is reported as meaningful, >= 1"
    )


class OutputCheck(_Section):
    name: str = Field(min_length=1, description="output tensor name")
    finite: bool = Field(True, description="true/false: NaN or inf in the output is a failure")
    min: float | None = Field(None, allow_inf_nan=False, description="smallest valid value")
    max: float | None = Field(None, allow_inf_nan=False, description="largest valid value")


class CircuitConfig(_Section):
    window_s: float = Field(
        10.0, gt=0, allow_inf_nan=False, description="sliding window for the failure rate, s, > 0"
    )
    min_requests: int = Field(
        20, ge=1, description="requests in the window before the failure rate can open it, >= 1"
    )
    failure_rate: float = Field(
        0.5, gt=0, le=1, allow_inf_nan=False, description="failure share that opens it, (0, 1]"
    )
    consecutive_failures: int = Field(5, ge=1, description="failures in a row that open it, >= 1")
    open_s: float = Field(
        5.0,
        gt=0,
        allow_inf_nan=False,
        description="cool-down before half-open probes are let through, s, > 0",
    )
    half_open_probes: int = Field(
        3, ge=1, description="successful probes in a row that close it again, >= 1"
    )


class FailoverConfig(_Section):
    execution_timeout_ms: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="a batch running longer is terminated and its requests go to the backup, "
        "ms, > 0 (omit: no timeout)",
    )
    output_checks: list[OutputCheck] = Field(
        default_factory=list,
        description="checks on outputs; a failing batch counts as a failure of the model",
    )
    on_deadline_miss: bool = Field(
        True,
        description="true/false: send a request to the backup when this model is estimated "
        "to miss its deadline and the backup is not",
    )
    circuit: CircuitConfig = Field(
        default_factory=CircuitConfig, description="a mapping of circuit-breaker settings"
    )
    default_output: dict[str, list[float]] | None = Field(
        None,
        description="last resort when the backup fails too: a static row per output "
        "(e.g. {probabilities: [0.5, 0.5]}), answered marked as a default",
    )


# Metrics the evaluation computes, and whether a larger value is better.
METRICS = {
    "accuracy": True,
    "precision": True,
    "recall": True,
    "f1": True,
    "roc_auc": True,
    "mae": False,
    "rmse": False,
    "r2": True,
}


def _plain_relative(value: str) -> str:
    """A path inside the model directory: relative, no '..', no NUL."""
    parts = value.replace("\\", "/").split("/")
    if "\0" in value or value.startswith("/") or any(p in ("", "..") for p in parts):
        raise _rule_error("", value, "must be a relative path inside the model directory")
    return value


class EvaluationConfig(_Section):
    data: str | None = Field(
        None,
        min_length=1,
        description="holdout set (.npz or .csv) relative to the model directory, e.g. "
        "holdout.npz; used by `steadyserve evaluate` and the gate",
    )
    label: str = Field(
        "label", min_length=1, description="the npz array or csv column holding the labels"
    )
    output: str | None = Field(
        None,
        min_length=1,
        description="the output that predicts (class scores/probabilities or a value); "
        "omit: the model's first output",
    )
    task: Literal["auto", "classification", "regression"] = Field(
        "auto",
        description="'classification', 'regression' or 'auto' (integer labels with class "
        "scores or class outputs: classification)",
    )

    @field_validator("data")
    @classmethod
    def _inside(cls, value: str | None) -> str | None:
        return None if value is None else _plain_relative(value)


class GateRule(_Section):
    metric: Literal["accuracy", "precision", "recall", "f1", "roc_auc", "mae", "rmse", "r2"] = (
        Field(description="accuracy, precision, recall, f1, roc_auc, mae, rmse or r2")
    )
    min: float | None = Field(
        None, allow_inf_nan=False, description="the lowest value a candidate may score"
    )
    max: float | None = Field(
        None, allow_inf_nan=False, description="the highest value a candidate may score"
    )
    max_regression: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="how much worse than the live version the candidate may score, >= 0 "
        "(in the metric's own units; worse is lower, or higher for mae and rmse)",
    )

    @model_validator(mode="after")
    def _something(self) -> GateRule:
        if self.min is None and self.max is None and self.max_regression is None:
            raise _rule_error(
                "metric", self.metric, "a rule needs min, max or max_regression (or several)"
            )
        return self


class GateConfig(_Section):
    rules: list[GateRule] = Field(
        default_factory=list,
        description="rules a candidate version must pass on evaluation.data before it "
        "serves, e.g. [{metric: accuracy, min: 0.9, max_regression: 0.02}]",
    )


class ProbationConfig(_Section):
    window_s: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="seconds after a promotion during which failures roll the model back "
        "to the version it replaced, >= 0 (0 = no probation)",
    )
    max_failures: int = Field(
        1,
        ge=1,
        description="failed batches (execution error or timeout, failed output check) of the "
        "new version within the window that roll it back, >= 1; an opened circuit does too",
    )


class ShadowConfig(_Section):
    version: int = Field(ge=1, description="the version (a directory of this model) mirrored to")
    fraction: float = Field(
        0.1,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="share of live batches mirrored to the shadow version, (0, 1]",
    )
    tolerance: float = Field(
        1e-4,
        ge=0,
        allow_inf_nan=False,
        description="largest absolute difference of a single-value output row that still "
        "agrees, >= 0 (rows of class scores agree when their argmax does)",
    )
    max_pending_batches: int = Field(
        16, ge=1, le=1024, description="mirrored batches waiting before more are dropped, 1..1024"
    )


# --- the feedback loop (predictions/) --------------------------------------------------


class PredictionLogConfig(_Section):
    """What of this model the prediction log keeps (the log itself is on only when the
    server runs with --prediction-log DIR)."""

    enabled: bool = Field(True, description="true/false: log this model's requests")
    sample_rate: float = Field(
        1.0,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="share of requests logged, [0, 1] (each request is drawn on its own)",
    )


QUALITY_KPIS = ("accuracy", "precision", "recall", "f1", "mae", "rmse")


class QualityThresholds(_Section):
    """Live KPI limits: a KPI past its limit over the window is a breach."""

    min_accuracy: float | None = Field(None, ge=0, le=1, description="breach below, [0, 1]")
    min_precision: float | None = Field(None, ge=0, le=1, description="breach below, [0, 1]")
    min_recall: float | None = Field(None, ge=0, le=1, description="breach below, [0, 1]")
    min_f1: float | None = Field(None, ge=0, le=1, description="breach below, [0, 1]")
    max_mae: float | None = Field(None, ge=0, allow_inf_nan=False, description="breach above, >= 0")
    max_rmse: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="breach above, >= 0"
    )

    def limits(self) -> list[tuple[str, str, float]]:
        """(kpi, 'min' | 'max', limit) of every threshold set."""
        out = []
        for key, value in self:
            if value is not None:
                bound, kpi = key.split("_", 1)
                out.append((kpi, bound, float(value)))
        return out


class QualityConfig(_Section):
    """Live model quality from ground-truth labels joined to logged predictions."""

    task: Literal["auto", "classification", "regression"] = Field(
        "auto",
        description="'classification' (accuracy, precision, recall, f1; the predicted class "
        "of class scores is their argmax), 'regression' (mae, rmse), or 'auto' (from the "
        "first labels and predictions)",
    )
    output: str | None = Field(
        None, min_length=1, description="the output the labels are for (default: the first)"
    )
    window: int = Field(
        1000, ge=1, le=1_000_000, description="labelled requests the KPIs are computed over"
    )
    window_s: float = Field(
        3600.0,
        gt=0,
        allow_inf_nan=False,
        description="seconds a labelled request stays in the KPI window, > 0",
    )
    min_labelled: int = Field(
        50, ge=1, description="labelled requests in the window before thresholds apply, >= 1"
    )
    join_window_s: float = Field(
        86400.0,
        gt=0,
        le=30 * 86400,
        allow_inf_nan=False,
        description="seconds a logged prediction waits for its label (and a label for its "
        "prediction), (0, 30 days]",
    )
    thresholds: QualityThresholds = Field(
        default_factory=QualityThresholds, description="a mapping of KPI limits"
    )
    on_breach: Literal["alert", "rollback", "failover"] = Field(
        "alert",
        description="what a breach does besides the model_quality alert: 'alert' (nothing "
        "more), 'rollback' (to the previous generation), 'failover' (send traffic to the "
        "backup until the KPIs recover)",
    )

    @field_validator("thresholds", mode="before")
    @classmethod
    def _empty_thresholds(cls, value: Any) -> Any:
        return {} if value is None else value


# --- alerts (monitoring/alerts.py evaluates them; every rule has defaults) ------------

MAX_ALERT_WINDOW_S = 86_400.0


class _AlertRule(_Section):
    enabled: bool = Field(True, description="true/false: evaluate this rule for the model")
    for_s: float = Field(
        0.0,
        ge=0,
        le=MAX_ALERT_WINDOW_S,
        allow_inf_nan=False,
        description=f"seconds the condition must hold before the alert fires (pending until "
        f"then), 0..{MAX_ALERT_WINDOW_S:g}",
    )
    severity: Literal["warning", "critical"] = Field(
        "warning", description="the alert's severity label: 'warning' or 'critical'"
    )


def _window(default: float) -> Any:
    return Field(
        default,
        gt=0,
        le=MAX_ALERT_WINDOW_S,
        allow_inf_nan=False,
        description=f"seconds of traffic the rate is computed over, (0, {MAX_ALERT_WINDOW_S:g}]",
    )


def _min_requests() -> Any:
    return Field(
        20, ge=1, description="requests in the window before the rate means anything, >= 1"
    )


class SloAttainmentAlert(_AlertRule):
    """Share of answered requests within slo.latency_ms below ``threshold`` (only models
    with an SLO)."""

    threshold: float = Field(
        0.99,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="fires when attainment over the window is below this share, (0, 1]",
    )
    window_s: float = _window(300.0)
    min_requests: int = _min_requests()


class ErrorRateAlert(_AlertRule):
    """Failed requests (the model failed: execution error or timeout, a bad output; a
    backup may have answered them) / requests over the window above ``threshold``."""

    threshold: float = Field(
        0.05,
        ge=0,
        lt=1,
        allow_inf_nan=False,
        description="fires when the failed share over the window is above this, [0, 1)",
    )
    window_s: float = _window(300.0)
    min_requests: int = _min_requests()
    severity: Literal["warning", "critical"] = Field(
        "critical", description="the alert's severity label: 'warning' or 'critical'"
    )


class InputRejectionAlert(_AlertRule):
    """Requests refused for invalid input / requests over the window above ``threshold``."""

    threshold: float = Field(
        0.05,
        ge=0,
        lt=1,
        allow_inf_nan=False,
        description="fires when the share refused as invalid input is above this, [0, 1)",
    )
    window_s: float = _window(300.0)
    min_requests: int = _min_requests()


class FailoverAlert(_AlertRule):
    """Requests of the model answered by another one (a backup, the default output)."""

    threshold: int = Field(
        0, ge=0, description="fires when more requests than this failed over in the window, >= 0"
    )
    window_s: float = _window(60.0)


class StateAlert(_AlertRule):
    """A state rule (circuit open, drift flagged): no window, no threshold of its own."""


class CriticalStateAlert(StateAlert):
    severity: Literal["warning", "critical"] = Field(
        "critical", description="the alert's severity label: 'warning' or 'critical'"
    )


class AlertsConfig(_Section):
    """Alert rules of a model. Every rule is on by default; the server-wide defaults are
    these schema defaults, a model's config.yaml overrides them rule by rule."""

    slo_attainment: SloAttainmentAlert = Field(
        default_factory=SloAttainmentAlert,
        description="a mapping: SLO attainment over a window below a share (models with "
        "slo.latency_ms)",
    )
    error_rate: ErrorRateAlert = Field(
        default_factory=ErrorRateAlert,
        description="a mapping: failed requests over a window above a share",
    )
    failover_active: FailoverAlert = Field(
        default_factory=FailoverAlert,
        description="a mapping: requests answered by another model within a window",
    )
    circuit_open: CriticalStateAlert = Field(
        default_factory=CriticalStateAlert,
        description="a mapping: the model's circuit breaker is open (until it closes again)",
    )
    drift: StateAlert = Field(
        default_factory=StateAlert,
        description="a mapping: an input or output feature's PSI is above "
        "drift.psi_threshold with drift.min_rows live rows",
    )
    input_rejection_rate: InputRejectionAlert = Field(
        default_factory=InputRejectionAlert,
        description="a mapping: requests refused as invalid input over a window above a share",
    )
    model_not_ready: CriticalStateAlert = Field(
        default_factory=CriticalStateAlert,
        description="a mapping: a required model does not serve (Runtime.not_ready())",
    )
    model_quality: StateAlert = Field(
        default_factory=StateAlert,
        description="a mapping: a live KPI of the model (quality.thresholds) is past its "
        "limit over quality.window labelled requests",
    )

    @field_validator("*", mode="before")  # every field is a rule
    @classmethod
    def _empty_rule(cls, value: Any) -> Any:
        return {} if value is None else value  # `error_rate:` with nothing under it


def _check_versions(value: Any) -> Any:
    # One clear message instead of pydantic's two (one per branch of the union).
    allowed = "'latest', 'all' or a non-empty list of version numbers >= 1, e.g. [1, 2]"
    if isinstance(value, str):
        if value not in ("latest", "all"):
            raise _rule_error("", value, f"expected {allowed}")
        return value
    if not isinstance(value, list) or not value:
        raise _rule_error("", value, f"expected {allowed}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise _rule_error("", value, f"{v!r} is not a version number; expected {allowed}")
    if len(set(value)) != len(value):
        raise _rule_error("", value, "a version is listed twice")
    return value


class ModelConfig(_Section):
    """The whole of ``config.yaml``. Every key is optional; an empty file means defaults."""

    backend: Literal["onnxruntime"] = Field("onnxruntime", description="'onnxruntime'")
    required: bool = Field(
        True,
        description="true/false: the server is ready only while this model serves (false: "
        "an optional model, whose failure to load leaves readiness alone)",
    )
    max_batch_size: int = Field(
        64,
        ge=0,
        le=MAX_BATCH_SIZE,
        description=f"largest batch the model runs, 0..{MAX_BATCH_SIZE} (0 = the model does "
        "not batch: requests are run one by one with the model's own shapes)",
    )
    versions: Literal["latest", "all"] | list[Annotated[int, Field(ge=1)]] = Field(
        "latest", description="which versions to serve: 'latest', 'all' or a list like [1, 2]"
    )
    latest_versions: int = Field(
        1,
        ge=1,
        description="with versions: latest, how many of the newest versions to serve, >= 1",
    )
    model_filename: str = Field(
        "model.onnx",
        min_length=1,
        description="name of the model file in each version directory",
    )
    inputs: list[TensorConfig] = Field(
        default_factory=list, description="optional checks on the model's inputs"
    )
    outputs: list[TensorConfig] = Field(
        default_factory=list, description="optional checks on the model's outputs"
    )
    batching: BatchingConfig = Field(
        default_factory=BatchingConfig, description="a mapping of batching settings"
    )
    instances: int = Field(
        1, ge=1, le=MAX_INSTANCES, description=f"executor threads, 1..{MAX_INSTANCES}"
    )
    execution: Literal["auto", "threads", "inline"] = Field(
        "auto",
        description="'threads': executor threads run the batches; 'inline': the thread that "
        "submitted (the server's event loop, or an in-process caller) runs each ready batch "
        "itself, with no thread hand-off (for fast models; needs max_queue_delay_us 0 and "
        "instances 1); 'auto': inline for a fast model that fits those rules, else threads",
    )
    onnxruntime: OnnxRuntimeConfig = Field(
        default_factory=OnnxRuntimeConfig, description="a mapping of ONNX Runtime session settings"
    )
    slo: SloConfig = Field(default_factory=SloConfig, description="a mapping of SLO settings")
    drift: DriftConfig = Field(
        default_factory=DriftConfig, description="a mapping of drift-monitoring settings"
    )
    backup: str | None = Field(
        None,
        min_length=1,
        description="name of the model that answers when this one fails (same inputs and "
        "outputs); a chain is allowed, a cycle is not",
    )
    failover: FailoverConfig = Field(
        default_factory=FailoverConfig, description="a mapping of failover settings"
    )
    evaluation: EvaluationConfig = Field(
        default_factory=EvaluationConfig,
        description="a mapping naming the holdout set and how to score it",
    )
    gate: GateConfig = Field(
        default_factory=GateConfig,
        description="a mapping of rules a new version must pass before it serves",
    )
    probation: ProbationConfig = Field(
        default_factory=ProbationConfig,
        description="a mapping of settings for rolling back a newly promoted version",
    )
    shadow: ShadowConfig | None = Field(
        None, description="a mapping: mirror live batches to another version and compare"
    )
    alerts: AlertsConfig = Field(
        default_factory=AlertsConfig,
        description="a mapping of alert rules, one sub-mapping per rule (see monitoring/alerts.py)",
    )
    prediction_log: PredictionLogConfig = Field(
        default_factory=PredictionLogConfig,
        description="a mapping: what of this model the prediction log keeps",
    )
    quality: QualityConfig | None = Field(
        None, description="a mapping: live KPIs from labels sent to the feedback endpoint"
    )

    @field_validator(
        "inputs",
        "outputs",
        "batching",
        "onnxruntime",
        "slo",
        "drift",
        "failover",
        "evaluation",
        "gate",
        "probation",
        "alerts",
        "prediction_log",
        mode="before",
    )
    @classmethod
    def _empty_section(cls, value: Any, info: ValidationInfo) -> Any:
        # `batching:` with every line under it commented out reads as null: mean the defaults.
        if value is None:
            return [] if info.field_name in ("inputs", "outputs") else {}
        return value

    @field_validator("model_filename")
    @classmethod
    def _model_file(cls, value: str) -> str:
        if "/" in value or "\\" in value or "\0" in value or value.startswith("."):
            raise _rule_error("", value, "must be a plain file name, e.g. model.onnx")
        return value

    @field_validator("versions", mode="before")
    @classmethod
    def _versions(cls, value: Any) -> Any:
        return _check_versions(value)

    @field_validator("inputs", "outputs")
    @classmethod
    def _unique_names(cls, value: list[TensorConfig]) -> list[TensorConfig]:
        seen: set[str] = set()
        for i, tensor in enumerate(value):
            if tensor.name in seen:
                raise _rule_error(f"[{i}].name", tensor.name, "this tensor is listed twice")
            seen.add(tensor.name)
        return value

    @model_validator(mode="after")
    def _gate_has_data(self) -> ModelConfig:
        if self.gate.rules and self.evaluation.data is None:
            raise _rule_error(
                "gate.rules",
                [r.metric for r in self.gate.rules],
                "the gate scores candidates on a holdout set: set evaluation.data",
            )
        return self

    @model_validator(mode="after")
    def _batching_fits(self) -> ModelConfig:
        b = self.batching
        if self.execution == "inline" and (b.max_queue_delay_us or self.instances != 1):
            raise _rule_error(
                "execution",
                self.execution,
                "inline execution runs a batch as soon as it is ready, so it needs "
                "batching.max_queue_delay_us: 0 and instances: 1 (or use execution: threads)",
            )
        if self.max_batch_size == 0:
            why = "max_batch_size is 0 (the model does not batch)"
            fix = (
                "remove it, or set max_batch_size >= 1 if the model's first dimension is the batch"
            )
            if b.preferred_batch_sizes:
                raise _rule_error(
                    "batching.preferred_batch_sizes",
                    b.preferred_batch_sizes,
                    f"{why}, so batch sizes mean nothing; {fix}",
                )
            if b.max_queue_delay_us:
                raise _rule_error(
                    "batching.max_queue_delay_us",
                    b.max_queue_delay_us,
                    f"{why}, so there is nothing to wait for; {fix}",
                )
        for i, size in enumerate(b.preferred_batch_sizes):
            if size > self.max_batch_size > 0:
                raise _rule_error(
                    f"batching.preferred_batch_sizes[{i}]",
                    size,
                    f"larger than max_batch_size {self.max_batch_size}; each preferred size must "
                    f"be 1..{self.max_batch_size}",
                )
        for key, limit in (
            ("slo.latency_ms", self.slo.latency_ms),
            ("slo.default_deadline_ms", self.slo.default_deadline_ms),
        ):
            if limit is not None and b.max_queue_delay_us >= limit * 1000:
                raise _rule_error(
                    "batching.max_queue_delay_us",
                    b.max_queue_delay_us,
                    f"must be shorter than {key} ({limit:g} ms = {limit * 1000:g} us), or "
                    f"requests would spend their whole deadline queued",
                )
        return self


# --- loading ---------------------------------------------------------------------------


# libyaml's parser where PyYAML has it: a reload parses configs while the server
# serves, and the pure-Python parser holds the GIL for milliseconds per file.
_YAML_BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_YAML_BASE):
    """SafeLoader that refuses duplicate keys: PyYAML silently keeps the last one,
    which hides exactly the kind of edit mistake a config error should catch."""

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        seen: dict[object, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
            except TypeError:  # unhashable key: SafeLoader reports it below
                continue
            if repeated:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"key {key!r} appears twice (first on line {seen[key].start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def load_model_config(path: Path | str | None) -> ModelConfig:
    """Read and validate a model's ``config.yaml``.

    ``None``, a missing file or an empty file give the defaults. Anything wrong raises
    ``errors.ConfigError`` naming the file, the line, the dotted key, the value and the rule.
    """
    if path is None:
        return ModelConfig()
    path = Path(path)
    if not path.exists():
        return ModelConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read model config {path}: {exc}") from None
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML{_yaml_where(exc)}: {_yaml_problem(exc)}") from None
    if data is None:
        return ModelConfig()
    return model_config_from_mapping(data, source=str(path), node=node)


def model_config_from_mapping(
    data: object, source: str = "<config>", node: yaml.Node | None = None
) -> ModelConfig:
    """Validate a parsed config; errors name ``source`` (and lines, given its YAML node)."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source}: the top level must be a mapping of keys to values "
            f"(e.g. 'max_batch_size: 8'), got {type(data).__name__}"
        )
    try:
        return ModelConfig.model_validate(dict(data))
    except ValidationError as exc:
        problems = [_describe(err, node) for err in exc.errors()]
        raise ConfigError(f"invalid model config {source}:\n" + "\n".join(problems)) from None


def _yaml_where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None)
    if not problem:
        return str(exc)
    context = getattr(exc, "context", None)
    mark = getattr(exc, "context_mark", None)
    if context and mark is not None:
        context += f" that starts at line {mark.line + 1}"
    return f"{problem} ({context})" if context else str(problem)


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _split_key(key: str) -> tuple[Any, ...]:
    """'batching.preferred_batch_sizes[1]' -> ('batching', 'preferred_batch_sizes', 1)."""
    parts: list[Any] = []
    for piece in key.replace("[", ".[").split("."):
        if not piece:
            continue
        parts.append(int(piece[1:-1]) if piece.startswith("[") else piece)
    return tuple(parts)


def _field(loc: tuple[Any, ...]):
    """The pydantic FieldInfo a location points at, or None; gives the rule to quote."""
    model: Any = ModelConfig
    info = None
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        info = fields[part]
        model = _model_in(info.annotation)
    return info


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _line(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at ``loc`` (or of its deepest existing parent)."""
    if node is None:
        return None
    for depth, part in enumerate(loc):
        child = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if getattr(key_node, "value", None) == part:
                    # the last part is named by its key's line (a nested mapping's
                    # value starts on the line after it)
                    child = key_node if depth == len(loc) - 1 else value_node
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            child = node.value[part]
        if child is None:
            break
        node = child
    return node.start_mark.line + 1


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe(err: Mapping[str, Any], node: yaml.Node | None) -> str:
    loc = tuple(err["loc"])
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == _RULE:
        loc = loc + _split_key(ctx["key"])
        problem = f"{_short(ctx['value'])}: {ctx['detail']}"
    elif kind == "extra_forbidden":
        parent = _field(loc[:-1])
        model = _model_in(parent.annotation) if parent is not None else ModelConfig
        allowed = list(model.model_fields) if model is not None else []
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        problem = "unknown key" + (f"; did you mean {hint[0]!r}?" if hint else "")
        problem += f" (allowed here: {', '.join(allowed)})"
    elif kind == "missing":
        problem = "required key is missing"
    else:
        msg = err["msg"][0].lower() + err["msg"][1:]
        problem = f"{_short(err.get('input'))}: {msg}"
    key = _dotted(loc) or "(top level)"
    line = _line(node, loc)
    where = f" (line {line})" if line is not None else ""
    text = f"  - {key}{where}: {problem}"
    info = _field(loc)
    if info is not None and info.description and kind != "extra_forbidden":
        text += f". Allowed: {info.description}"
    return text


__all__ = [
    "METRICS",
    "AlertsConfig",
    "BatchingConfig",
    "EvaluationConfig",
    "GateConfig",
    "GateRule",
    "ProbationConfig",
    "ShadowConfig",
    "ModelConfig",
    "OnnxRuntimeConfig",
    "SloConfig",
    "TensorConfig",
    "load_model_config",
    "model_config_from_mapping",
]
