"""A hand-driven HTTP/2 peer for tests of the native frontend (RFC 9113, RFC 7541).

``RawPeer`` writes frames exactly as the test builds them (``frame()`` and the helpers
below: no validation, so a test can break every rule) and reads what the server answers
frame by frame, decoding header blocks with the ``hpack`` package. Its own header blocks
use literals without indexing (``hpack_literal``), so the server's dynamic table stays
empty unless a test fills it on purpose.

``H2Call`` drives one gRPC call through the ``h2`` package's client (an independent,
validating HTTP/2 implementation).

The gRPC messages are ``tritonclient.grpc.service_pb2`` ones: the test process must not
import ``steadyserve._proto`` (see conftest.py).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import socket
import struct
import time
import urllib.parse
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import numpy as np
from h2.errors import ErrorCodes
from tritonclient.grpc import service_pb2

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MAX_WINDOW = 2**31 - 1
TIMEOUT_S = 5.0  # every socket operation of a test peer

# Frame types and flags (RFC 9113 section 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE = 0x0, 0x1, 0x2, 0x3, 0x4, 0x5
PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x6, 0x7, 0x8, 0x9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
# Settings identifiers (RFC 9113 section 6.5.2).
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

FRAME_NAMES = {
    DATA: "DATA",
    HEADERS: "HEADERS",
    PRIORITY: "PRIORITY",
    RST_STREAM: "RST_STREAM",
    SETTINGS: "SETTINGS",
    PUSH_PROMISE: "PUSH_PROMISE",
    PING: "PING",
    GOAWAY: "GOAWAY",
    WINDOW_UPDATE: "WINDOW_UPDATE",
    CONTINUATION: "CONTINUATION",
}


# -- frames -----------------------------------------------------------------------------


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame: the 9-byte header (24-bit length, type, flags, 31-bit stream id) + payload."""
    length = len(payload)
    return (
        struct.pack(">BHBBI", length >> 16, length & 0xFFFF, ftype, flags, stream_id & MAX_WINDOW)
        + payload
    )


def settings(pairs: dict[int, int] | None = None, ack: bool = False) -> bytes:
    payload = b"".join(struct.pack(">HI", k, v) for k, v in (pairs or {}).items())
    return frame(SETTINGS, ACK if ack else 0, 0, payload)


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def rst_stream(stream_id: int, code: int = ErrorCodes.CANCEL) -> bytes:
    return frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))


def ping(opaque: bytes = b"\0" * 8, ack: bool = False) -> bytes:
    return frame(PING, ACK if ack else 0, 0, opaque)


def data(stream_id: int, payload: bytes, end_stream: bool = False) -> bytes:
    return frame(DATA, END_STREAM if end_stream else 0, stream_id, payload)


def data_frames(stream_id: int, payload: bytes, end_stream: bool = True, size: int = 16384):
    """``payload`` as DATA frames of at most ``size`` bytes, END_STREAM on the last one."""
    chunks = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
    return b"".join(
        data(stream_id, c, end_stream and i == len(chunks) - 1) for i, c in enumerate(chunks)
    )


def headers(stream_id: int, block: bytes, end_stream: bool = False, end_headers: bool = True):
    flags = (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0)
    return frame(HEADERS, flags, stream_id, block)


def continuation(stream_id: int, block: bytes, end_headers: bool = False) -> bytes:
    return frame(CONTINUATION, END_HEADERS if end_headers else 0, stream_id, block)


def header_frames(stream_id: int, block: bytes, end_stream: bool = False, size: int = 16384):
    """A field block as HEADERS + CONTINUATION frames of at most ``size`` bytes."""
    parts = [block[i : i + size] for i in range(0, len(block), size)] or [b""]
    out = headers(stream_id, parts[0], end_stream, end_headers=len(parts) == 1)
    for i, part in enumerate(parts[1:], 2):
        out += continuation(stream_id, part, end_headers=i == len(parts))
    return out


# -- HPACK, by hand (RFC 7541) -------------------------------------------------------------


def hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer with an N-bit prefix; ``first`` holds the bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_string(s: bytes) -> bytes:
    return hpack_int(len(s), 7) + s  # no Huffman


def hpack_literal(name: str | bytes, value: str | bytes, index: bool = False) -> bytes:
    """A literal field with a literal name: without indexing, or with incremental indexing."""
    name = name.encode() if isinstance(name, str) else name
    value = value.encode() if isinstance(value, str) else value
    return (b"\x40" if index else b"\x00") + hpack_string(name) + hpack_string(value)


def hpack_indexed(index: int) -> bytes:
    """An indexed field (static table 1-61, dynamic table 62+)."""
    return hpack_int(index, 7, 0x80)


def request_block(
    path: str = MODEL_INFER,
    method: str = "POST",
    content_type: str | None = "application/grpc",
    te: str | None = "trailers",
    extra: list[tuple[str, str]] | tuple = (),
    pseudo: list[tuple[str, str]] | None = None,
) -> bytes:
    """The header block of a gRPC request; ``pseudo`` replaces the pseudo-header fields."""
    fields = pseudo
    if fields is None:
        fields = [
            (":method", method),
            (":scheme", "http"),
            (":path", path),
            (":authority", "127.0.0.1"),
        ]
    regular = []
    if content_type is not None:
        regular.append(("content-type", content_type))
    if te is not None:
        regular.append(("te", te))
    return b"".join(hpack_literal(n, v) for n, v in [*fields, *regular, *extra])


# -- gRPC messages -----------------------------------------------------------------------


def grpc_frame(message: bytes, compressed: bool = False) -> bytes:
    """The length-prefixed message of gRPC over HTTP/2: flag byte, 4-byte length, bytes."""
    return struct.pack(">BI", 1 if compressed else 0, len(message)) + message


def grpc_messages(body: bytes) -> list[bytes]:
    """The messages of a response body; fails on a torn or compressed one."""
    out, pos = [], 0
    while pos < len(body):
        assert len(body) - pos >= 5, f"torn gRPC prefix at byte {pos} of {len(body)}"
        flag, n = struct.unpack_from(">BI", body, pos)
        assert flag == 0, f"compressed response message (flag {flag})"
        assert len(body) - pos - 5 >= n, f"message of {n} bytes, {len(body) - pos - 5} present"
        out.append(body[pos + 5 : pos + 5 + n])
        pos += 5 + n
    return out


def infer_request(
    x: np.ndarray, model: str = "linear", input_name: str = "x", request_id: str = ""
) -> bytes:
    """A serialized ModelInferRequest of one FP32 input, raw contents."""
    req = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    inp = req.inputs.add()
    inp.name = input_name
    inp.datatype = "FP32"
    inp.shape.extend(x.shape)
    req.raw_input_contents.append(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    return req.SerializeToString()


def infer_output(
    message: bytes, index: int = 0
) -> tuple[service_pb2.ModelInferResponse, np.ndarray]:
    """The parsed ModelInferResponse and its output ``index`` as an FP32 array."""
    resp = service_pb2.ModelInferResponse()
    resp.ParseFromString(message)
    out = resp.outputs[index]
    assert out.datatype == "FP32", out
    arr = np.frombuffer(resp.raw_output_contents[index], dtype=np.float32)
    return resp, arr.reshape(list(out.shape))


def error_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"


# -- reading what the server sends ----------------------------------------------------------


@dataclass
class Frame:
    type: int
    flags: int
    stream_id: int
    payload: bytes
    fields: list[tuple[str, str]] | None = None  # a whole header block, decoded

    @property
    def name(self) -> str:
        return FRAME_NAMES.get(self.type, f"0x{self.type:x}")

    @property
    def error_code(self) -> int:  # RST_STREAM, GOAWAY
        offset = 4 if self.type == GOAWAY else 0
        return struct.unpack_from(">I", self.payload, offset)[0]

    @property
    def last_stream_id(self) -> int:  # GOAWAY
        return struct.unpack_from(">I", self.payload, 0)[0] & MAX_WINDOW

    @property
    def debug(self) -> str:  # GOAWAY
        return self.payload[8:].decode(errors="replace")

    @property
    def increment(self) -> int:  # WINDOW_UPDATE
        return struct.unpack_from(">I", self.payload, 0)[0] & MAX_WINDOW

    @property
    def settings(self) -> dict[int, int]:  # SETTINGS
        p = self.payload
        return dict(struct.unpack_from(">HI", p, i) for i in range(0, len(p) - len(p) % 6, 6))

    @property
    def end_stream(self) -> bool:
        return bool(self.flags & END_STREAM) and self.type in (DATA, HEADERS)

    def __repr__(self) -> str:
        extra = ""
        if self.type in (RST_STREAM, GOAWAY) and len(self.payload) >= 4:
            extra = f" {error_name(self.error_code)}"
            if self.type == GOAWAY:
                extra += f" last={self.last_stream_id} debug={self.debug!r}"
        elif self.fields is not None:
            extra = f" {self.fields}"
        elif self.type == WINDOW_UPDATE:
            extra = f" +{self.increment}"
        return f"<{self.name} s={self.stream_id} f=0x{self.flags:x} len={len(self.payload)}{extra}>"


@dataclass
class Response:
    """What one stream got: first header block, DATA, trailers, RST_STREAM code."""

    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    trailers: dict[str, str] = field(default_factory=dict)
    reset: int | None = None
    data_frames: list[int] = field(default_factory=list)  # each DATA frame's length
    done: bool = False

    @property
    def status(self) -> int | None:
        s = self.headers.get(":status")
        return int(s) if s is not None else None

    @property
    def grpc_status(self) -> int | None:
        """From the trailers, or from a Trailers-Only answer's one header block."""
        s = self.trailers.get("grpc-status", self.headers.get("grpc-status"))
        return int(s) if s is not None else None

    @property
    def grpc_message(self) -> str:
        m = self.trailers.get("grpc-message", self.headers.get("grpc-message", ""))
        return urllib.parse.unquote(m)

    @property
    def messages(self) -> list[bytes]:
        return grpc_messages(self.body)


class RawPeer:
    """One client connection driven frame by frame."""

    def __init__(self, addr: str, timeout: float = TIMEOUT_S, rcvbuf: int | None = None):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = b""
        self.closed = False  # the server closed (EOF or reset)
        self.reset = False  # ... by a TCP reset
        self.send_failed = False
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 24
        self.server_settings: dict[int, int] = {}
        self.received: list[Frame] = []  # every frame read, in order
        self._block: list[Frame] = []  # a header block being assembled
        self._pending: collections.deque[Frame] = collections.deque()  # read, not yet handed out
        self.granted: collections.Counter[int] = collections.Counter()  # WINDOW_UPDATEs by stream
        self.conn_sent = 0  # DATA bytes sent with flow control (``call_flow``)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in send()
        self.sock.close()

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, payload: bytes) -> bool:
        """Writes all of ``payload``; False if the server has closed or reset the connection."""
        try:
            self.sock.sendall(payload)
            return True
        except OSError:  # EPIPE, ECONNRESET, a timeout, or closed by the test meanwhile
            self.send_failed = True
            return False

    def handshake(self, our_settings: dict[int, int] | None = None, window: int = 0) -> Frame:
        """Preface + our SETTINGS (+ a connection WINDOW_UPDATE); reads and ACKs the server's
        SETTINGS and returns that frame."""
        out = PREFACE + settings(our_settings or {})
        if window:
            out += window_update(0, window)
        assert self.send(out), "server closed the connection during the handshake"
        f = self.next_frame(lambda f: f.type == SETTINGS and not f.flags & ACK)
        assert f is not None, f"no SETTINGS from the server; got {self.received}"
        self.server_settings = f.settings
        assert self.send(settings(ack=True))
        return f

    def _read_one(self, deadline: float) -> Frame | None:
        """The next frame (a whole header block as one HEADERS Frame with ``fields``), or None
        once the connection is closed; TimeoutError at ``deadline``."""
        if self._pending:
            return self._pending.popleft()
        return self._read_wire(deadline)

    def _read_wire(self, deadline: float) -> Frame | None:
        while True:
            if len(self.buf) >= 9:
                length = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) >= 9 + length:
                    ftype, flags = self.buf[3], self.buf[4]
                    sid = int.from_bytes(self.buf[5:9], "big") & MAX_WINDOW
                    f = Frame(ftype, flags, sid, self.buf[9 : 9 + length])
                    self.buf = self.buf[9 + length :]
                    self.received.append(f)
                    if ftype == WINDOW_UPDATE and length == 4:
                        self.granted[sid] += f.increment
                    if ftype in (HEADERS, CONTINUATION):
                        self._block.append(f)
                        if not flags & END_HEADERS:
                            continue
                        first = self._block[0]
                        block = _strip_headers_payload(first) + b"".join(
                            c.payload for c in self._block[1:]
                        )
                        self._block = []
                        fields = [
                            (str(n), str(v)) for n, v in self.decoder.decode(block, raw=False)
                        ]
                        return Frame(HEADERS, first.flags, first.stream_id, block, fields)
                    return f
            if self.closed:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no frame from the server in time; so far {self.received[-8:]}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except ConnectionResetError:
                chunk, self.reset = b"", True
            except OSError as exc:
                if exc.errno not in (errno.ECONNRESET, errno.EPIPE):
                    raise
                chunk, self.reset = b"", True
            if not chunk:
                self.closed = True
            self.buf += chunk

    def next_frame(self, pred=lambda f: True, timeout: float | None = None) -> Frame | None:
        """The first frame for which ``pred`` holds; None if the server closed first."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            f = self._read_one(deadline)
            if f is None or pred(f):
                return f

    def frames(self, timeout: float) -> list[Frame]:
        """Every frame for ``timeout`` seconds (or until the server closes)."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                f = self._read_one(deadline)
            except TimeoutError:
                return out
            if f is None:
                return out
            out.append(f)

    def expect_goaway(self, timeout: float | None = None) -> Frame:
        """Reads until GOAWAY; fails the test if the connection closes or stays silent."""
        try:
            f = self.next_frame(lambda f: f.type == GOAWAY, timeout)
        except TimeoutError:
            raise AssertionError(
                f"no GOAWAY within {timeout or self.timeout} s; last frames: {self.received[-10:]}"
            ) from None
        assert f is not None, (
            f"connection {'reset' if self.reset else 'closed'} without a GOAWAY; "
            f"last frames: {self.received[-10:]}"
        )
        return f

    def wait_closed(self, timeout: float | None = None) -> bool:
        """True once the server closed the connection, False if it is still open at timeout."""
        try:
            self.next_frame(lambda f: False, timeout)
        except TimeoutError:
            return False
        return True

    def read_response(self, stream_id: int, timeout: float | None = None) -> Response:
        """Reads until ``stream_id`` ends (END_STREAM or RST_STREAM) or the connection closes;
        frames of other streams are skipped (and kept in ``received``)."""
        resp = Response()
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not resp.done:
            f = self._read_one(deadline)
            if f is None:
                break
            if f.type == GOAWAY:
                resp.done = resp.done or f.last_stream_id < stream_id
                continue
            if f.stream_id != stream_id:
                continue
            if f.type == HEADERS:
                target = resp.trailers if resp.headers else resp.headers
                target.update(f.fields)
            elif f.type == DATA:
                resp.data_frames.append(len(f.payload))
                resp.body += _strip_padding(f)
            elif f.type == RST_STREAM:
                resp.reset = f.error_code
                resp.done = True
            resp.done = resp.done or f.end_stream
        return resp

    def call(
        self, stream_id: int, message: bytes | None, block: bytes | None = None, **kw
    ) -> Response:
        """A whole unary call on ``stream_id``: HEADERS, one framed message, END_STREAM."""
        out = header_frames(stream_id, block if block is not None else request_block(**kw))
        out += data_frames(stream_id, grpc_frame(message) if message is not None else b"")
        assert self.send(out), f"server closed the connection; frames {self.received[-10:]}"
        return self.read_response(stream_id)

    def call_flow(self, stream_id: int, message: bytes, block: bytes | None = None) -> Response:
        """A unary call that respects the server's flow-control windows (RFC 9113 section 6.9):
        DATA only as far as the stream and connection windows allow, reading WINDOW_UPDATEs
        meanwhile; stops sending if the stream ends first (an early refusal)."""
        assert self.send(header_frames(stream_id, block if block is not None else request_block()))
        body = grpc_frame(message)
        initial = self.server_settings.get(INITIAL_WINDOW_SIZE, 65535)
        max_frame = self.server_settings.get(MAX_FRAME_SIZE, 16384)
        sent = 0
        deadline = time.monotonic() + self.timeout
        while sent < len(body):
            allow = min(
                initial + self.granted[stream_id] - sent,
                65535 + self.granted[0] - self.conn_sent,
                max_frame,
                len(body) - sent,
            )
            if allow > 0:
                end = sent + allow == len(body)
                assert self.send(data(stream_id, body[sent : sent + allow], end_stream=end))
                sent += allow
                self.conn_sent += allow
                continue
            f = self._read_wire(deadline)
            if f is None:
                break
            self._pending.append(f)
            if f.stream_id == stream_id and (f.type == RST_STREAM or f.end_stream):
                break  # answered (refused) before the whole message went out
        return self.read_response(stream_id)


def _strip_padding(f: Frame) -> bytes:
    if f.flags & PADDED:
        pad = f.payload[0]
        return f.payload[1 : len(f.payload) - pad]
    return f.payload


def _strip_headers_payload(f: Frame) -> bytes:
    p = _strip_padding(f)
    if f.flags & PRIORITY_FLAG:
        p = p[5:]
    return p


# -- a validating client: the h2 package -------------------------------------------------------


class H2Call:
    """One connection of the ``h2`` package's client, for well-behaved calls.

    ``local_settings`` are the client's SETTINGS (e.g. a tiny INITIAL_WINDOW_SIZE);
    received DATA is acknowledged (WINDOW_UPDATE) only when ``ack_data`` allows it.
    """

    def __init__(self, addr: str, local_settings: dict | None = None, timeout: float = TIMEOUT_S):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.timeout = timeout
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        if local_settings:
            self.conn.local_settings = h2.settings.Settings(
                client=True, initial_values=local_settings
            )
        self.conn.initiate_connection()
        self.flush()
        self.events: list = []

    def close(self) -> None:
        self.sock.close()

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def pump(self, timeout: float) -> list:
        """Events of what arrives within ``timeout`` s (stops at the first read that yields)."""
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(1 << 20)
        except TimeoutError:
            return []
        if not chunk:
            raise ConnectionError("server closed the connection")
        events = self.conn.receive_data(chunk)
        self.flush()
        self.events += events
        return events

    def start(self, path: str, body: bytes, extra: list[tuple[str, str]] = ()) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "127.0.0.1"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *extra,
            ],
        )
        self.conn.send_data(sid, body, end_stream=True)
        self.flush()
        return sid

    def finish(self, sid: int, ack_data: bool = True) -> Response:
        """Reads events until stream ``sid`` ends."""
        resp = Response()
        deadline = time.monotonic() + self.timeout
        while not resp.done:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"stream {sid} did not end in time; events {self.events[-10:]}"
            for ev in self.pump(remaining):
                if getattr(ev, "stream_id", None) != sid:
                    continue
                if isinstance(ev, h2.events.ResponseReceived):
                    resp.headers.update(dict(ev.headers))
                elif isinstance(ev, h2.events.TrailersReceived):
                    resp.trailers.update(dict(ev.headers))
                elif isinstance(ev, h2.events.DataReceived):
                    resp.data_frames.append(len(ev.data))
                    resp.body += ev.data
                    if ack_data:
                        self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                        self.flush()
                elif isinstance(ev, h2.events.StreamReset):
                    resp.reset = ev.error_code
                    resp.done = True
                elif isinstance(ev, h2.events.StreamEnded):
                    resp.done = True
        return resp


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def start_peak_rss(pid: int) -> int:
    """Resets process ``pid``'s peak resident set (VmHWM, via /proc/PID/clear_refs) and
    returns the baseline for ``peak_rss_growth``: a transient allocation that is freed
    again still shows in the peak. Where the reset is not allowed, the baseline is the old
    peak, so only growth above it counts."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return _status_kib(pid, "VmRSS")
    except OSError:
        return _status_kib(pid, "VmHWM")


def peak_rss_growth(pid: int, baseline: int) -> int:
    """Bytes by which ``pid``'s peak resident set rose above ``baseline``."""
    return _status_kib(pid, "VmHWM") - baseline
