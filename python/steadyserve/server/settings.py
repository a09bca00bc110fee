"""Settings of the network server (ports, limits, shutdown), validated up front."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MIB = 1024 * 1024

# Fields that only one frontend uses: set for the other one, they are refused (a limit
# that silently does nothing is worse than an error).
GRPCIO_ONLY = ("max_concurrent_rpcs", "max_pending_rpcs", "reuse_port")
NATIVE_ONLY = (
    "max_connections",
    "max_concurrent_streams",
    "io_threads",
    "idle_timeout_s",
    "grpc_fd",
    "http_fd",
)


class ServerSettings(BaseModel):
    """What ``steadyserve serve`` binds and how it behaves; the CLI fills it from flags."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    frontend: Literal["native", "grpcio"] = Field(
        default="native",
        description="native: the C++ HTTP/2 frontend (ModelInfer and ModelStreamInfer never "
        "run Python); grpcio: grpc.aio, the fallback",
    )

    host: str = Field(default="0.0.0.0", min_length=1)
    grpc_port: int = Field(default=8001, ge=0, le=65535, description="0 picks a free port")
    http_port: int = Field(default=8000, ge=0, le=65535, description="0 picks a free port")
    max_message_bytes: int = Field(
        default=64 * MIB,
        ge=1024,
        le=2**31 - 1,
        description="largest gRPC message received or sent",
    )
    grace_s: float = Field(
        default=10.0, ge=0.0, le=3600.0, description="how long in-flight RPCs may finish"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = Field(
        default="json", description="json: one JSON object per line; text: for people"
    )
    log_sample_rate: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="share of inference requests logged one line each (request id, model, "
        "version, status, latency); 0 = none",
    )
    # -- the prediction log (predictions/; what each model logs is in its config) --------
    prediction_log: str | None = Field(
        default=None, min_length=1, description="directory of the prediction log; None: off"
    )
    prediction_log_format: Literal["auto", "parquet", "jsonl"] = Field(
        default="auto", description="parquet, jsonl, or auto (parquet when pyarrow imports)"
    )
    prediction_log_rotate_bytes: int = Field(
        default=64 * MIB, ge=4096, le=2**40, description="a file closes past this size"
    )
    prediction_log_rotate_s: float = Field(
        default=300.0, gt=0.0, le=86400.0, description="a file closes at this age"
    )
    prediction_log_queue_bytes: int = Field(
        default=64 * MIB,
        ge=4096,
        le=2**40,
        description="records waiting for the writer; beyond it they are dropped and counted",
    )
    reuse_port: bool = Field(
        default=False,
        description="SO_REUSEPORT (grpcio workers only): a port in use by another process is "
        "otherwise an error, never a silent share",
    )
    health_poll_s: float = Field(
        default=1.0, gt=0.0, le=60.0, description="how often model readiness is re-read"
    )
    max_concurrent_rpcs: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="RPCs served at once (None: no limit); gRPC refuses more with "
        "RESOURCE_EXHAUSTED at once. A memory bound, not a latency one: each refusal still "
        "costs the event loop (see max_pending_rpcs)",
    )
    max_pending_rpcs: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="calls allowed to wait in gRPC's core while the server's event loop is "
        "busy (None: gRPC's own defaults); beyond it gRPC refuses RESOURCE_EXHAUSTED at "
        "once and from half of it on at random (early drop), before the server spends "
        "anything on them. Small values keep latency SLOs under overload but refuse "
        "bursts larger than the server takes in at once",
    )
    # -- model lifecycle ------------------------------------------------------------------
    model_control_mode: Literal["none", "explicit", "poll"] = Field(
        default="none",
        description="none: the repository is read once at start; explicit: models load and "
        "unload by request (RepositoryModelLoad/Unload, POST /v2/repository/models/{m}/load); "
        "poll: the repository is re-read every repository_poll_s",
    )
    load_models: tuple[str, ...] = Field(
        default=(),
        description="explicit mode: the models loaded at start ('*' = all; none: nothing)",
    )
    repository_poll_s: float = Field(
        default=15.0, gt=0.0, le=86400.0, description="poll mode: seconds between scans"
    )
    management_token: str | None = Field(
        default=None,
        min_length=8,
        description="when set, load, unload and rollback need 'authorization: Bearer <token>'",
    )
    workers: int = Field(default=1, ge=1, le=64, description="server processes (--workers)")
    allow_fault_injection: bool = Field(
        default=False,
        description="accept POST /v2/models/{name}/fault (drills and tests); off in production",
    )
    # -- alerts (monitoring/alerts.py; the rules are in each model's config) -------------
    alertmanager_url: str | None = Field(
        default=None,
        description="Alertmanager to send alerts to (API v2: POST {url}/api/v2/alerts), "
        "e.g. http://alertmanager:9093; None: alerts are only listed at GET /v2/alerts",
    )
    alert_webhook: str | None = Field(
        default=None,
        description='URL that gets a JSON POST {"status": "firing"|"resolved", "alerts": '
        "[...]} when an alert fires or resolves",
    )
    alert_interval_s: float = Field(
        default=10.0, ge=0.1, le=3600.0, description="seconds between evaluations of the rules"
    )
    # -- the native frontend's limits (None: the frontend's own default) ------------------
    max_connections: int | None = Field(
        default=None, ge=1, le=1_000_000, description="open connections; more are refused"
    )
    max_concurrent_streams: int | None = Field(
        default=None,
        ge=1,
        le=2**31 - 1,
        description="calls open at once per connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS)",
    )
    io_threads: int | None = Field(
        default=None, ge=0, le=1024, description="I/O threads; 0 = one per CPU core"
    )
    idle_timeout_s: float | None = Field(
        default=None, gt=0.0, le=86400.0, description="a connection with no call this long closes"
    )
    # Listening sockets inherited from the --workers supervisor (native frontend): served
    # as they are instead of binding host:port.
    grpc_fd: int | None = Field(default=None, ge=0)
    http_fd: int | None = Field(default=None, ge=0)
    # A --workers worker: its index and the supervisor's private directory, where each
    # worker serves its own figures on a unix socket (server/siblings.py) and asks the
    # others' when it answers /metrics, ModelStatistics, drift or failover.
    worker_index: int | None = Field(default=None, ge=0, lt=64)
    worker_dir: str | None = Field(default=None, min_length=1)

    @field_validator("alertmanager_url", "alert_webhook")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http:// or https:// URL with a host")
        try:
            parts.port  # noqa: B018 (a port that is not a number raises here)
        except ValueError as exc:
            raise ValueError(f"{value!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _lifecycle(self) -> ServerSettings:
        if self.load_models and self.model_control_mode != "explicit":
            raise ValueError("load_models needs model_control_mode explicit")
        if self.model_control_mode == "explicit" and self.workers > 1:
            # A load request reaches one worker: the others would serve the old version.
            raise ValueError(
                "model_control_mode explicit needs workers 1: a load request would reach one "
                "worker of several; use model_control_mode poll with workers"
            )
        return self

    @model_validator(mode="after")
    def _prediction_log_alone(self) -> ServerSettings:
        if self.prediction_log is not None and self.workers > 1:
            # Feedback reaches one worker; the prediction it labels may be in another's.
            raise ValueError(
                "prediction_log needs workers 1: labels are joined to the predictions of the "
                "process that receives them; scale out with replicas (one process each)"
            )
        return self

    @model_validator(mode="after")
    def _worker(self) -> ServerSettings:
        if (self.worker_index is None) != (self.worker_dir is None):
            raise ValueError("worker_index and worker_dir go together (set by --workers)")
        if self.worker_index is not None and self.worker_index >= self.workers:
            raise ValueError(f"worker_index must be below workers ({self.workers})")
        return self

    @model_validator(mode="after")
    def _one_frontend(self) -> ServerSettings:
        other = NATIVE_ONLY if self.frontend == "grpcio" else GRPCIO_ONLY
        given = [name for name in other if getattr(self, name) not in (None, False)]
        if given:
            raise ValueError(f"{', '.join(given)} do(es) not apply to the {self.frontend} frontend")
        return self

    def native_options(self) -> dict:
        """Keyword arguments of ``_core.GrpcFrontend`` that these settings fix."""
        options = {
            "host": self.host,
            "port": self.grpc_port,
            "listen_fd": -1 if self.grpc_fd is None else self.grpc_fd,
            "max_message_bytes": self.max_message_bytes,
            "log_sample_rate": self.log_sample_rate,
        }
        for name in ("max_connections", "max_concurrent_streams", "io_threads", "idle_timeout_s"):
            if getattr(self, name) is not None:
                options[name] = getattr(self, name)
        return options
