"""The Python side of the native gRPC frontend: the calls it bridges.

``_core.GrpcFrontend`` answers ModelInfer and ModelStreamInfer itself, socket to
socket. Every other method (readiness, metadata, config, statistics, the
repository index, ``grpc.health.v1``, server reflection, unknown methods) is rare
and small, so it is handed to Python as call events (start, message, half-close,
cancel) that this module turns into runs of the same ``grpc.aio`` servicer handlers
the grpcio frontend serves. One set of handlers, two transports.

The handlers are found in what the usual registration functions recorded on a
``handlers.HandlerRecorder``, so each runs exactly as grpc.aio would run it.

What is not carried (the native side's finish takes a code and a message only):
initial metadata a handler sends and trailing metadata it sets are dropped.
Compression settings are ignored. ``invocation_metadata()`` has text values as
``str`` and ``-bin`` values base64-decoded to ``bytes``, as grpc gives them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging

import grpc

from .bridge_context import OK, BridgeContext, metadata_of, status_number
from .handlers import HandlerRecorder
from .status import status_of

log = logging.getLogger("steadyserve.server")

# Open bridged calls at once: beyond it a new call is refused RESOURCE_EXHAUSTED at
# once (the native side has the same bound; this one keeps Python's own memory
# bounded whatever the native side admits).
MAX_BRIDGED_CALLS = 1024
# Request messages buffered per call that its handler has not read yet (a client may
# stream faster than, say, reflection answers); beyond it the call is refused.
MAX_BUFFERED_MESSAGES = 64


class GrpcBridge:
    """Runs the handlers of the calls a ``_core.GrpcFrontend`` bridges to Python."""

    def __init__(
        self,
        frontend,
        handlers: HandlerRecorder,
        *,
        max_calls: int = MAX_BRIDGED_CALLS,
        max_buffered_messages: int = MAX_BUFFERED_MESSAGES,
    ) -> None:
        self.frontend = frontend
        self._handlers = handlers
        self._max_calls = max_calls
        self._max_buffered = max_buffered_messages
        self._calls: dict[int, BridgeContext] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._on_event = {
            "start": self._on_start,
            "message": self._on_message,
            "half_close": self._on_half_close,
            "cancel": self._on_cancel,
        }

    def start(self) -> None:
        """Serve bridged calls on the running loop (woken by the frontend's eventfd)."""
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.frontend.bridge_fd, self._poll)

    def open_calls(self) -> int:
        return len(self._calls)

    async def close(self, message: str = "the server is shutting down") -> None:
        """Stop taking events; answer calls still open UNAVAILABLE and end their handlers."""
        if self.loop is None:
            return
        self.loop.remove_reader(self.frontend.bridge_fd)
        tasks = [c._task for c in self._calls.values() if c._task is not None]
        for context in list(self._calls.values()):
            self._finish(context, grpc.StatusCode.UNAVAILABLE, message)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- events --------------------------------------------------------------------------

    def _poll(self) -> None:
        for event in self.frontend.poll_bridge():
            try:
                self._on_event[event.kind](event)
            except Exception:  # one bad event must not stop the bridge
                log.exception("bridge event failed", extra={"kind": event.kind})

    def _on_start(self, event) -> None:
        call, path = event.call, event.path
        if len(self._calls) >= self._max_calls:
            self.frontend.finish(
                call,
                status_number(grpc.StatusCode.RESOURCE_EXHAUSTED),
                f"too many calls in progress ({self._max_calls} at once); retry later",
            )
            return
        metadata = metadata_of(event.metadata)
        handler = self._handlers.lookup(path, metadata)
        if handler is None:
            self.frontend.finish(
                call,
                status_number(grpc.StatusCode.UNIMPLEMENTED),
                f"steadyserve does not implement {path}",
            )
            return
        context = BridgeContext(self, event, handler, metadata)
        self._calls[call] = context
        if context._deadline is not None:
            context._timer = self.loop.call_at(context._deadline, self._expire, context)
        task = self.loop.create_task(self._run(context, handler), name=f"bridged {path}")
        context._task = task
        task.add_done_callback(lambda t, c=context: self._ended(c, t))

    def _on_message(self, event) -> None:
        context = self._calls.get(event.call)
        if context is None:
            return  # refused at start, or finished already
        if not context._handler.request_streaming and context._requests.received:
            self._finish(
                context,
                grpc.StatusCode.INTERNAL,
                f"{context._path} takes one request message; the client sent more",
            )
            context._task.cancel()
            return
        if len(context._requests) >= self._max_buffered:
            self._finish(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"more than {self._max_buffered} request messages of {context._path} "
                f"are waiting to be read; send slower",
            )
            context._task.cancel()
            return
        context._requests.put(event.data)

    def _on_half_close(self, event) -> None:
        context = self._calls.get(event.call)
        if context is not None:
            context._requests.close()

    def _on_cancel(self, event) -> None:
        context = self._calls.get(event.call)
        if context is not None:
            self._drop(context)

    def _expire(self, context: BridgeContext) -> None:
        if not context._finished:
            context._expired = True
            context._task.cancel()  # _ended answers DEADLINE_EXCEEDED

    # -- running a handler ---------------------------------------------------------------

    async def _run(self, context: BridgeContext, handler: grpc.RpcMethodHandler) -> None:
        if handler.request_streaming:
            request = context._request_iterator()
        else:
            request = await context._request()
        if handler.unary_unary is not None or handler.stream_unary is not None:
            behavior = handler.unary_unary or handler.stream_unary
            response = behavior(request, context)
            if inspect.isawaitable(response):
                response = await response
            if context._code not in (None, OK):
                return  # the handler set an error code: the status says it all
            if response is None:
                raise RuntimeError(f"the handler of {context._path} returned no response")
            context._send(response)
            return
        behavior = handler.unary_stream or handler.stream_stream
        responses = behavior(request, context)
        if hasattr(responses, "__aiter__"):
            async for response in responses:
                context._send(response)
        elif inspect.isawaitable(responses):
            await responses  # it writes its responses (context.write)
        elif responses is not None:
            for response in responses:
                context._send(response)

    def _ended(self, context: BridgeContext, task: asyncio.Task) -> None:
        """The handler's task is done: send its status (once), unless the call is gone."""
        if context._finished:
            return
        if task.cancelled():
            if context._expired or context.time_remaining() == 0:
                code, message = grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"
            else:  # the handler cancelled itself
                code, message = grpc.StatusCode.CANCELLED, "the call was cancelled"
        elif isinstance(task.exception(), grpc.aio.AbortError):
            code, message = context._code or grpc.StatusCode.UNKNOWN, context._details
        elif task.exception() is not None:
            code, message = status_of(task.exception(), method=context._path)
        else:
            code, message = context._code or OK, context._details
        self._finish(context, code, message)

    def _finish(self, context: BridgeContext, code: grpc.StatusCode, message: str) -> None:
        if context._finished:
            return
        self._close(context)
        self.frontend.finish(context._call, status_number(code), message or "")

    def _drop(self, context: BridgeContext) -> None:
        """The call is gone (client reset, connection closed): stop its handler, send nothing."""
        if context._finished:
            return
        context._gone = True
        self._close(context)
        if context._task is not None:
            context._task.cancel()

    def _close(self, context: BridgeContext) -> None:
        context._finished = True
        self._calls.pop(context._call, None)
        if context._timer is not None:
            context._timer.cancel()
        for callback in context._done_callbacks:
            self.loop.call_soon(callback, context)
        context._done_callbacks.clear()
