"""The one place where exceptions become gRPC status codes.

Every ``errors.SteadyServeError`` carries the name of the ``grpc.StatusCode`` it
maps to (``grpc_code``); anything else is a bug in steadyserve and becomes
INTERNAL with a generic message, while the traceback goes to the log (a caller
never sees internals such as file paths or stack frames).
"""

from __future__ import annotations

import logging

import grpc

from ..errors import SteadyServeError

log = logging.getLogger("steadyserve.server")

INTERNAL_MESSAGE = "internal error in steadyserve; the server log has the details"


def status_of(exc: BaseException, *, method: str = "") -> tuple[grpc.StatusCode, str]:
    """The (code, message) to send for ``exc``; logs the traceback of unexpected errors."""
    if isinstance(exc, SteadyServeError):
        code = getattr(grpc.StatusCode, exc.grpc_code, None)
        if code is None or code is grpc.StatusCode.OK:
            # A mistake in errors.py must not turn a failure into success.
            log.error(
                "error class has no usable grpc_code",
                extra={"error_class": type(exc).__name__, "grpc_code": exc.grpc_code},
            )
            code = grpc.StatusCode.INTERNAL
        return code, str(exc) or type(exc).__name__
    log.error(
        "unexpected error while handling an RPC",
        exc_info=(type(exc), exc, exc.__traceback__),
        extra={"method": method},
    )
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException, *, method: str = ""):
    """Terminate the RPC with the status of ``exc`` (raises ``grpc.aio.AbortError``)."""
    code, message = status_of(exc, method=method)
    await context.abort(code, message)
