"""The handlers a server would serve, recorded instead of served.

The usual registration functions (``add_inference_service``,
``add_HealthServicer_to_server``, ``enable_server_reflection``) are given a
``HandlerRecorder`` for a server; the native frontend's bridge then looks a call's
method up in what they registered, through grpc's public
``GenericRpcHandler.service``, and runs the handler as grpc.aio would.
"""

from __future__ import annotations

import grpc


class HandlerRecorder(grpc.aio.Server):
    """Takes the place of a ``grpc.aio.Server`` at registration time and keeps the
    handlers registered on it; it serves nothing.

    A ``grpc.aio.Server`` subclass on purpose: ``enable_server_reflection`` picks its
    asyncio servicer only for one.
    """

    def __init__(self) -> None:
        self._generic: list[grpc.GenericRpcHandler] = []
        self._registered: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, generic_rpc_handlers) -> None:
        self._generic.extend(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers) -> None:
        for method, handler in method_handlers.items():
            self._registered[f"/{service_name}/{method}"] = handler

    def lookup(self, path: str, metadata: tuple) -> grpc.RpcMethodHandler | None:
        """The handler of method ``path`` ("/package.Service/Method"), or None."""
        handler = self._registered.get(path)
        if handler is not None:
            return handler
        details = _CallDetails(path, metadata)
        for generic in self._generic:
            handler = generic.service(details)
            if handler is not None:
                return handler
        return None

    # The rest of grpc.aio.Server: a recorder has no ports and no lifecycle.
    def _not_a_server(self, *args, **kwargs):
        raise TypeError("HandlerRecorder only records handlers; it serves nothing")

    add_insecure_port = add_secure_port = _not_a_server
    start = stop = wait_for_termination = _not_a_server


class _CallDetails(grpc.HandlerCallDetails):
    def __init__(self, method: str, invocation_metadata: tuple) -> None:
        self.method = method
        self.invocation_metadata = invocation_metadata
