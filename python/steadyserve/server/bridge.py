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
import base64
import binascii
import collections
import inspect
import logging

import grpc

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

_OK = grpc.StatusCode.OK
Metadatum = collections.namedtuple("Metadatum", ["key", "value"])  # as grpc.aio gives them


def _number(code: grpc.StatusCode) -> int:
    return code.value[0]


def _metadata(pairs) -> tuple:
    """The native side's (key, raw value) pairs as grpc.aio presents them."""
    out = []
    for key, value in pairs:
        if key.endswith("-bin"):
            try:  # senders may leave the padding out
                value = base64.b64decode(value + b"=" * (-len(value) % 4))
            except (binascii.Error, ValueError):
                continue  # not base64: grpc drops such a header too
        else:
            value = value.decode("latin-1")
        out.append(Metadatum(key, value))
    return tuple(out)


class _RequestStream:
    """Request messages of one call, in order, until the client half-closes."""

    __slots__ = ("_items", "_closed", "_waiter", "received")

    def __init__(self) -> None:
        self._items: collections.deque[bytes] = collections.deque()
        self._closed = False
        self._waiter: asyncio.Future | None = None
        self.received = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, data: bytes) -> None:
        self._items.append(data)
        self.received += 1
        self._wake()

    def close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> bytes | None:
        """The next message, or None once the client half-closed and all were read."""
        while not self._items:
            if self._closed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


def _message_type(deserializer) -> str:
    """What a deserializer parses, for an error message (a protobuf class's name)."""
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", None) or "request message"


class BridgeContext(grpc.aio.ServicerContext):
    """One bridged call, as its handler sees it (what the handlers use of
    ``grpc.aio.ServicerContext``)."""

    def __init__(self, bridge: GrpcBridge, event, handler, metadata: tuple) -> None:
        self._bridge = bridge
        self._call = event.call
        self._path = event.path
        self._handler = handler
        self._metadata = metadata
        self._peer = event.peer
        loop = bridge.loop
        self._deadline = None if event.timeout_s is None else loop.time() + event.timeout_s
        self._requests = _RequestStream()
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: tuple = ()
        self._done_callbacks: list = []
        self._task: asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._finished = False  # trailers sent, or the call is gone
        self._gone = False  # the client (or the frontend) ended the call: send nothing
        self._expired = False  # the deadline cancelled the handler

    # -- what handlers call --------------------------------------------------------------

    async def read(self):
        """The next request message, or ``grpc.aio.EOF`` after the last one."""
        data = await self._requests.get()
        return grpc.aio.EOF if data is None else await self._parse(data)

    async def write(self, message) -> None:
        """Send one response message (for handlers that write instead of yield)."""
        self._send(message)

    # Not carried: initial metadata (headers go out with the first message), compression,
    # and who the peer is beyond its address.
    async def send_initial_metadata(self, initial_metadata) -> None: ...
    def set_compression(self, compression) -> None: ...
    def disable_next_message_compression(self) -> None: ...
    def peer_identities(self) -> None: ...
    def peer_identity_key(self) -> None: ...

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()):
        if code is _OK:
            raise ValueError("abort() needs an error code, not OK")
        self._code, self._details = code, details
        raise grpc.aio.AbortError(f"{code.name}: {details}")

    async def abort_with_status(self, status) -> None:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, trailing_metadata) -> None:
        """Kept for ``trailing_metadata()`` only: the native finish carries none."""
        self._trailing = tuple(trailing_metadata)

    def trailing_metadata(self) -> tuple:
        return self._trailing

    def invocation_metadata(self) -> tuple:
        return self._metadata

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - self._bridge.loop.time())

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict:
        return {}

    def cancelled(self) -> bool:
        return self._gone or self._expired

    def done(self) -> bool:
        return self._finished

    def is_active(self) -> bool:
        return not self._finished

    def add_done_callback(self, callback) -> None:
        if self._finished:
            self._bridge.loop.call_soon(callback, self)
        else:
            self._done_callbacks.append(callback)

    # -- the bridge's side ---------------------------------------------------------------

    async def _parse(self, data: bytes):
        deserialize = self._handler.request_deserializer
        if deserialize is None:
            return data
        try:
            return deserialize(data)
        except Exception as exc:  # untrusted bytes: any parse failure is the client's
            await self.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"malformed {_message_type(deserialize)}: cannot parse it ({exc})",
            )

    async def _request(self):
        """The one request message of a unary-request call."""
        data = await self._requests.get()
        if data is None:
            await self.abort(grpc.StatusCode.INTERNAL, f"{self._path}: no request message")
        return await self._parse(data)

    async def _request_iterator(self):
        while (data := await self._requests.get()) is not None:
            yield await self._parse(data)

    def _send(self, message) -> None:
        if self._finished:
            return
        serialize = self._handler.response_serializer
        data = message if serialize is None else serialize(message)
        if not self._bridge.frontend.send(self._call, data):
            self._bridge._drop(self)  # gone: the handler is cancelled, nothing more is sent


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
                _number(grpc.StatusCode.RESOURCE_EXHAUSTED),
                f"too many calls in progress ({self._max_calls} at once); retry later",
            )
            return
        metadata = _metadata(event.metadata)
        handler = self._handlers.lookup(path, metadata)
        if handler is None:
            self.frontend.finish(
                call,
                _number(grpc.StatusCode.UNIMPLEMENTED),
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
            if context._code not in (None, _OK):
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
            code, message = context._code or _OK, context._details
        self._finish(context, code, message)

    def _finish(self, context: BridgeContext, code: grpc.StatusCode, message: str) -> None:
        if context._finished:
            return
        self._close(context)
        self.frontend.finish(context._call, _number(code), message or "")

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
