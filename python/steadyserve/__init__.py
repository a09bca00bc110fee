"""steadyserve: serve ONNX models in production.

The in-process API is ``Runtime``; the server is ``steadyserve serve`` (see
``steadyserve.cli``). Errors are the classes of ``steadyserve.errors``.

The runtime, its native core and ONNX Runtime load on first use of ``Runtime``
(and friends), so ``import steadyserve`` and the CLI's quick answers stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    BackendUnavailableError,
    CancelledError,
    ConfigError,
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    SteadyServeError,
    UnavailableError,
)

if TYPE_CHECKING:
    from .model import InferResult, ModelStatistics, ServableModel
    from .runtime import ModelIndexEntry, Runtime

__version__ = "0.1.0"

_LAZY = {
    "InferResult": "model",
    "ModelStatistics": "model",
    "ServableModel": "model",
    "ModelIndexEntry": "runtime",
    "Runtime": "runtime",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'steadyserve' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "BackendUnavailableError",
    "CancelledError",
    "ConfigError",
    "DeadlineExceededError",
    "InferResult",
    "InternalError",
    "InvalidArgumentError",
    "ModelIndexEntry",
    "ModelStatistics",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "Runtime",
    "ServableModel",
    "SteadyServeError",
    "UnavailableError",
    "__version__",
]
