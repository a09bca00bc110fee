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
    allow_fault_injection: bool = Field(
        default=False,
        description="accept POST /v2/models/{name}/fault (drills and tests); off in production",
    )
