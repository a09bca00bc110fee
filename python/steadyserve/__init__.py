"""steadyserve: serve ONNX models in production.

The in-process API is ``Runtime``; the server is ``steadyserve serve`` (see
``steadyserve.cli``). Errors are the classes of ``steadyserve.errors``.
"""

from .errors import (
    BackendUnavailableError,
    CancelledError,
    ConfigError,
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    SteadyServeError,
    UnavailableError,
)
from .model import InferResult, ModelStatistics, ServableModel
from .runtime import ModelIndexEntry, Runtime

__version__ = "0.1.0"

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
    "ResourceExhaustedError",
    "Runtime",
    "ServableModel",
    "SteadyServeError",
    "UnavailableError",
    "__version__",
]
