"""The servicer context of a bridged call: what the ``grpc.aio`` handlers see of a call
that the native frontend carries (see ``bridge.py``).

It implements the part of ``grpc.aio.ServicerContext`` that the health, reflection and
steadyserve handlers use: abort, codes and details, metadata, the deadline, peer,
cancellation, and ``read``/``write`` for streaming handlers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from .bridge import GrpcBridge

OK = grpc.StatusCode.OK
Metadatum = collections.namedtuple("Metadatum", ["key", "value"])  # as grpc.aio gives them


def status_number(code: grpc.StatusCode) -> int:
    return code.value[0]


def metadata_of(pairs) -> tuple:
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
        if code is OK:
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
