"""Settings of the network server (ports, limits, shutdown), validated up front."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MIB = 1024 * 1024


class ServerSettings(BaseModel):
    """What ``steadyserve serve`` binds and how it behaves; the CLI fills it from flags."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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
    reuse_port: bool = Field(default=True, description="SO_REUSEPORT, for several processes")
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
    allow_fault_injection: bool = Field(
        default=False,
        description="accept POST /v2/models/{name}/fault (drills and tests); off in production",
    )
