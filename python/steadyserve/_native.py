"""Hands the native core the Python types it answers with, once at import: the
exception class of each status code (errors mapped in one place), InferResult, and
the serializer of string arrays into Triton's BYTES form."""

from __future__ import annotations

from . import _core, errors
from .datatypes import serialize_bytes
from .model import InferResult

ERROR_CLASSES = {
    1: errors.CancelledError,
    3: errors.InvalidArgumentError,
    4: errors.DeadlineExceededError,
    5: errors.NotFoundError,
    8: errors.ResourceExhaustedError,
    13: errors.InternalError,
    14: errors.UnavailableError,
}

_core.set_python_types(ERROR_CLASSES, InferResult, serialize_bytes)
