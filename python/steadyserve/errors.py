"""The exception hierarchy of steadyserve.

Every error a caller can see is one of these. Each carries the gRPC status code
it maps to (``grpc_code``, a ``grpc.StatusCode`` name), so the transport maps
errors in exactly one place (``server/status.py``) and the in-process API raises
the same types. The native core raises these too: its ``Status`` codes are
turned into these classes once, in the bindings.
"""

from __future__ import annotations


class SteadyServeError(Exception):
    """Base class. ``grpc_code`` names the ``grpc.StatusCode`` member it maps to."""

    grpc_code = "INTERNAL"


class InvalidArgumentError(SteadyServeError, ValueError):
    """The request is malformed: wrong name, datatype, shape, size or value."""

    grpc_code = "INVALID_ARGUMENT"


class NotFoundError(SteadyServeError, LookupError):
    """The model or version does not exist in the repository."""

    grpc_code = "NOT_FOUND"


class ResourceExhaustedError(SteadyServeError):
    """A bounded resource is full (the model's queue); retry later or elsewhere."""

    grpc_code = "RESOURCE_EXHAUSTED"


class DeadlineExceededError(SteadyServeError, TimeoutError):
    """The request's deadline passed, or could not be met, before it was executed."""

    grpc_code = "DEADLINE_EXCEEDED"


class UnavailableError(SteadyServeError):
    """The model is not ready (loading, failed, stopping) or the runtime is shutting down."""

    grpc_code = "UNAVAILABLE"


class CancelledError(SteadyServeError):
    """The caller cancelled the request before it completed."""

    grpc_code = "CANCELLED"


class PermissionDeniedError(SteadyServeError, PermissionError):
    """The operation is switched off for this runtime (e.g. fault injection)."""

    grpc_code = "PERMISSION_DENIED"


class UnauthenticatedError(SteadyServeError):
    """A management call without the management token, or with a wrong one."""

    grpc_code = "UNAUTHENTICATED"


class FailedPreconditionError(SteadyServeError):
    """The call is valid but the server's state refuses it: management in a model
    control mode that does not allow it, a candidate version the gate rejected, a
    rollback with no previous version kept."""

    grpc_code = "FAILED_PRECONDITION"


class InternalError(SteadyServeError):
    """The model failed while executing a valid request."""

    grpc_code = "INTERNAL"


class ModelFailureError(InternalError):
    """The model failed a valid request: its execution raised, ran past the execution
    timeout, or produced outputs that failed a check. This is what failover reacts to.

    ``reason`` is one of ``execution_error``, ``execution_timeout``, ``bad_output``.
    """

    def __init__(self, message: str, reason: str = "execution_error"):
        super().__init__(message)
        self.reason = reason


class ConfigError(SteadyServeError, ValueError):
    """A configuration file or value is invalid; the message names the file and the key."""

    grpc_code = "INVALID_ARGUMENT"


class BackendUnavailableError(SteadyServeError, ImportError):
    """No ONNX Runtime package is installed (or the requested provider is missing)."""

    grpc_code = "UNAVAILABLE"


__all__ = [
    "BackendUnavailableError",
    "CancelledError",
    "ConfigError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "ModelFailureError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "SteadyServeError",
    "UnauthenticatedError",
    "UnavailableError",
]
