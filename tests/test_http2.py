"""The native HTTP/2 frontend against independent clients and hostile peers.

Well-behaved clients: the ``h2`` package by hand, curl, h2load, tritonclient and grpcio.
Hostile peers: frames built byte by byte (tests/h2_peer.py), each breaking one rule of
RFC 9113 / RFC 7541 / the gRPC HTTP/2 mapping or one limit of
cpp/include/steadyserve/h2_connection.h ``ConnectionLimits``. Each hostile case asserts
the error code the RFC (or the header) names, then proves the server still answers a
real ModelInfer from tritonclient.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import threading
import time

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from h2.errors import ErrorCodes
from h2.events import DataReceived

import h2_peer as hp
import onnx_models
from conftest import N_FEATURES, N_OUTPUTS, linear_config, start_server
from h2_peer import RawPeer

T = 10.0  # seconds: the client timeout of every tritonclient / grpcio call
MAX_MESSAGE_MB = 1  # of the module's server
MIB = 1 << 20

pytestmark = pytest.mark.timeout(60)


# -- servers and the "still serving" check ---------------------------------------------------


@pytest.fixture(scope="module")
def native(model_repo, tmp_path_factory):
    """The module's server: the native frontend, messages up to 1 MiB."""
    proc = start_server(
        model_repo,
        "--frontend",
        "native",
        "--max-message-mb",
        str(MAX_MESSAGE_MB),
        log_dir=tmp_path_factory.mktemp("http2"),
        name="native",
    )
    yield proc
    rc = proc.stop()
    assert rc == 0, f"server exited with {rc} on SIGTERM; stderr:\n{proc.stderr()[-4000:]}"


@pytest.fixture(scope="module")
def streams16(model_repo, tmp_path_factory):
    """A native server advertising SETTINGS_MAX_CONCURRENT_STREAMS 16."""
    proc = start_server(
        model_repo,
        "--frontend",
        "native",
        "--max-concurrent-streams",
        "16",
        log_dir=tmp_path_factory.mktemp("http2-streams"),
        name="streams16",
    )
    yield proc
    proc.stop()


@functools.cache
def _session(path: str) -> ort.InferenceSession:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def expected(repo, x: np.ndarray, model: str = "linear") -> np.ndarray:
    s = _session(str(repo / model / "1" / "model.onnx"))
    return s.run(None, {s.get_inputs()[0].name: x})[0]


X1 = (np.arange(N_FEATURES, dtype=np.float32) / N_FEATURES).reshape(1, N_FEATURES)


def assert_serves(server) -> None:
    """The server is alive and answers a real ModelInfer (tritonclient, a new connection)."""
    assert server.proc.poll() is None, f"server died; stderr:\n{server.stderr()[-4000:]}"
    client = grpcclient.InferenceServerClient(server.grpc)
    try:
        inp = grpcclient.InferInput("x", [1, N_FEATURES], "FP32")
        inp.set_data_from_numpy(X1)
        y = client.infer("linear", [inp], client_timeout=T).as_numpy("y")
    finally:
        client.close()
    np.testing.assert_allclose(y, expected(server.repo, X1), rtol=1e-5, atol=1e-6)


def assert_call_ok(peer: RawPeer, stream_id: int, repo) -> None:
    """A whole ModelInfer on ``peer``'s connection answers OK with the right values."""
    resp = peer.call(stream_id, hp.infer_request(X1))
    assert resp.status == 200 and resp.grpc_status == 0, (resp, peer.received[-6:])
    (message,) = resp.messages
    _, y = hp.infer_output(message)
    np.testing.assert_allclose(y, expected(repo, X1), rtol=1e-5, atol=1e-6)


def assert_goaway(peer: RawPeer, code: int, timeout: float = hp.TIMEOUT_S) -> hp.Frame:
    """A GOAWAY with ``code`` arrives, then the server closes the connection."""
    goaway = peer.expect_goaway(timeout)
    assert goaway.error_code == code, (
        f"GOAWAY {hp.error_name(goaway.error_code)} ({goaway.debug!r}), "
        f"expected {hp.error_name(code)}"
    )
    assert peer.wait_closed(timeout), "the server kept the connection open after GOAWAY"
    return goaway


def flood(peer: RawPeer, payload: bytes) -> threading.Thread:
    """Sends ``payload`` from a thread (the server may stop reading mid-way)."""
    t = threading.Thread(target=peer.send, args=(payload,), daemon=True)
    t.start()
    return t


# -- well-behaved clients ---------------------------------------------------------------------


def test_h2_client_model_infer(native):
    """A ModelInfer by hand through the h2 package: headers, one message, trailers."""
    x = np.random.default_rng(3).standard_normal((3, N_FEATURES)).astype(np.float32)
    call = hp.H2Call(native.grpc)
    try:
        sid = call.start(hp.MODEL_INFER, hp.grpc_frame(hp.infer_request(x, request_id="r-1")))
        resp = call.finish(sid)
    finally:
        call.close()
    assert resp.reset is None
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("application/grpc")
    assert resp.trailers.get("grpc-status") == "0", resp
    (message,) = resp.messages
    parsed, y = hp.infer_output(message)
    assert parsed.model_name == "linear" and parsed.id == "r-1"
    assert y.shape == (3, N_OUTPUTS)
    np.testing.assert_allclose(y, expected(native.repo, x), rtol=1e-5, atol=1e-6)


def test_h2_client_tiny_window_gets_the_answer_in_pieces(native):
    """SETTINGS_INITIAL_WINDOW_SIZE 16: the server sends at most 16 bytes of DATA, then
    waits for our WINDOW_UPDATE before each next piece (RFC 9113 section 6.9)."""
    window = 16
    x = np.random.default_rng(4).standard_normal((16, N_FEATURES)).astype(np.float32)
    call = hp.H2Call(native.grpc, local_settings={hp.INITIAL_WINDOW_SIZE: window})

    def pieces() -> list[DataReceived]:
        return [e for e in call.events if isinstance(e, DataReceived) and e.stream_id == sid]

    try:
        sid = call.start(hp.MODEL_INFER, hp.grpc_frame(hp.infer_request(x)))
        # Read without granting anything: one window's worth arrives, then nothing more.
        deadline = time.monotonic() + hp.TIMEOUT_S
        while sum(len(e.data) for e in pieces()) < window and time.monotonic() < deadline:
            call.pump(0.5)
        assert sum(len(e.data) for e in pieces()) == window, [len(e.data) for e in pieces()]
        call.pump(1.0)
        assert sum(len(e.data) for e in pieces()) == window, "DATA beyond our window"
        for e in pieces():  # now grant as the pieces come
            call.conn.acknowledge_received_data(e.flow_controlled_length, sid)
        call.flush()
        rest = call.finish(sid, ack_data=True)
    finally:
        call.close()
    sizes = [len(e.data) for e in pieces()]
    assert max(sizes) <= window, sizes
    body = b"".join(e.data for e in pieces())
    assert len(sizes) >= len(body) // window > 16, f"a {len(body)}-byte answer in {sizes}"
    assert rest.trailers.get("grpc-status") == "0", rest
    (message,) = hp.grpc_messages(body)
    _, y = hp.infer_output(message)
    np.testing.assert_allclose(y, expected(native.repo, x), rtol=1e-5, atol=1e-6)


def test_raw_peer_call_ping_and_unknown_frames(native):
    """PING is answered with the same payload (6.7), an unknown frame type is ignored
    (4.1), and a call by hand-built frames answers."""
    with RawPeer(native.grpc) as peer:
        first = peer.handshake()
        assert first.settings.get(hp.MAX_HEADER_LIST_SIZE) == 16384, first.settings
        assert first.settings.get(hp.ENABLE_PUSH, 0) == 0
        # 6.5.3: our SETTINGS are acknowledged
        assert peer.next_frame(lambda f: f.type == hp.SETTINGS and f.flags & hp.ACK) is not None
        assert peer.send(hp.ping(b"steady!!") + hp.frame(0xFA, 0xFF, 0, b"extension"))
        ack = peer.next_frame(lambda f: f.type == hp.PING)
        assert ack is not None and ack.flags & hp.ACK and ack.payload == b"steady!!", ack
        assert_call_ok(peer, 1, native.repo)
        assert_call_ok(peer, 3, native.repo)


def test_padded_prioritized_fragmented_request(native):
    """Valid framing a client may choose: HEADERS with PADDED and PRIORITY, the field block
    in many CONTINUATIONs, the message in many padded DATA frames (RFC 9113 sections 6.1,
    6.2, 6.10) - padding is stripped and the pieces joined."""
    x = np.random.default_rng(8).standard_normal((2, N_FEATURES)).astype(np.float32)
    block = hp.request_block()
    pieces = [block[i : i + 7] for i in range(0, len(block), 7)]
    head = b"\x04" + b"\0\0\0\0\x0f" + pieces[0] + b"\0" * 4  # pad 4, depends on 0
    frames = hp.frame(hp.HEADERS, hp.PADDED | hp.PRIORITY_FLAG, 1, head)
    for i, piece in enumerate(pieces[1:], 2):
        frames += hp.continuation(1, piece, end_headers=i == len(pieces))
    body = hp.grpc_frame(hp.infer_request(x))
    chunks = [body[i : i + 50] for i in range(0, len(body), 50)]
    for i, chunk in enumerate(chunks):
        flags = hp.PADDED | (hp.END_STREAM if i == len(chunks) - 1 else 0)
        frames += hp.frame(hp.DATA, flags, 1, b"\x03" + chunk + b"\0\0\0")
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        assert peer.send(frames)
        resp = peer.read_response(1)
        assert resp.grpc_status == 0, resp
        (message,) = resp.messages
        np.testing.assert_allclose(
            hp.infer_output(message)[1], expected(native.repo, x), rtol=1e-5, atol=1e-6
        )


def test_interleaved_streams_get_their_own_answers(native):
    """Eight calls on one connection, their DATA frames interleaved: each stream is
    answered with its own rows."""
    rng = np.random.default_rng(9)
    xs = {1 + 2 * i: rng.standard_normal((1, N_FEATURES)).astype(np.float32) for i in range(8)}
    bodies = {sid: hp.grpc_frame(hp.infer_request(x, request_id=str(sid))) for sid, x in xs.items()}
    frames = b"".join(hp.headers(sid, hp.request_block()) for sid in xs)
    for offset in range(0, max(map(len, bodies.values())), 40):
        for sid, body in bodies.items():
            if offset < len(body):
                frames += hp.data(sid, body[offset : offset + 40], offset + 40 >= len(body))
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        assert peer.send(frames)
        for sid, x in xs.items():
            resp = peer.read_response(sid)
            assert resp.grpc_status == 0, (sid, resp)
            (message,) = resp.messages
            parsed, y = hp.infer_output(message)
            assert parsed.id == str(sid)
            np.testing.assert_allclose(y, expected(native.repo, x), rtol=1e-5, atol=1e-6)


def test_request_trailers_are_accepted(native):
    """RFC 9113 section 8.1: a request may end with a trailer block (HEADERS with
    END_STREAM after the DATA)."""
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        frames = hp.headers(1, hp.request_block())
        frames += hp.data(1, hp.grpc_frame(hp.infer_request(X1)))
        frames += hp.headers(1, hp.hpack_literal("x-trailer", "1"), end_stream=True)
        assert peer.send(frames)
        resp = peer.read_response(1)
        assert resp.grpc_status == 0, resp
        assert len(resp.messages) == 1


def test_peer_goaway_lets_open_calls_finish(native):
    """RFC 9113 section 6.8: after the client's GOAWAY, the call it already opened is
    still answered, then the server closes the connection."""
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        frames = hp.headers(1, hp.request_block())
        frames += hp.data(1, hp.grpc_frame(hp.infer_request(X1)), end_stream=True)
        frames += hp.frame(hp.GOAWAY, 0, 0, b"\0\0\0\0" + b"\0\0\0\0")
        assert peer.send(frames)
        resp = peer.read_response(1)
        assert resp.grpc_status == 0, (resp, peer.received)
        assert peer.wait_closed(), "connection kept open after our GOAWAY and the last answer"
    assert_serves(native)


def test_cancelled_call_gets_nothing_more(native):
    """A call reset by the client (RST_STREAM CANCEL) right after its request gets no
    answer frames afterwards; the connection goes on."""
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        frames = hp.headers(1, hp.request_block())
        frames += hp.data(1, hp.grpc_frame(hp.infer_request(X1)), end_stream=True)
        assert peer.send(frames + hp.rst_stream(1, ErrorCodes.CANCEL))
        late = [f for f in peer.frames(1.0) if f.stream_id == 1]
        assert late == [], f"frames on a stream we reset: {late}"
        assert_call_ok(peer, 3, native.repo)


def test_window_update_and_rst_after_the_answer_are_ignored(native):
    """RFC 9113 section 5.1 (closed): WINDOW_UPDATE or RST_STREAM arriving right after the
    stream ended MUST be ignored."""
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        assert_call_ok(peer, 1, native.repo)
        assert peer.send(hp.window_update(1, 1000) + hp.rst_stream(1, ErrorCodes.CANCEL))
        errors = [f for f in peer.frames(0.5) if f.type in (hp.RST_STREAM, hp.GOAWAY)]
        assert errors == [], errors
        assert_call_ok(peer, 3, native.repo)


def test_initial_window_change_applies_to_open_streams(native):
    """RFC 9113 section 6.9.2: with SETTINGS_INITIAL_WINDOW_SIZE 0 the answer's DATA waits;
    raising the setting later credits the open stream and the answer completes."""
    with RawPeer(native.grpc) as peer:
        peer.handshake({hp.INITIAL_WINDOW_SIZE: 0})
        frames = hp.headers(1, hp.request_block())
        frames += hp.data(1, hp.grpc_frame(hp.infer_request(X1)), end_stream=True)
        assert peer.send(frames)
        held = [f for f in peer.frames(1.5) if f.stream_id == 1]
        assert all(f.type == hp.HEADERS and not f.end_stream for f in held), held
        assert not any(f.type == hp.DATA and f.payload for f in held), held
        assert peer.send(hp.settings({hp.INITIAL_WINDOW_SIZE: 65535}))
        resp = peer.read_response(1)
        assert resp.grpc_status == 0 and len(resp.messages) == 1, (resp, peer.received[-6:])
        _, y = hp.infer_output(resp.messages[0])
        np.testing.assert_allclose(y, expected(native.repo, X1), rtol=1e-5, atol=1e-6)


def test_curl_http2_prior_knowledge(native, tmp_path):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    features = subprocess.run([curl, "-V"], capture_output=True, text=True, timeout=10).stdout
    if "HTTP2" not in features:
        pytest.skip(f"this curl lacks HTTP/2: {features.splitlines()[-1]}")
    x = np.random.default_rng(5).standard_normal((2, N_FEATURES)).astype(np.float32)
    (tmp_path / "req").write_bytes(hp.grpc_frame(hp.infer_request(x)))
    out = subprocess.run(
        [
            curl,
            "-sS",
            "--http2-prior-knowledge",
            "--max-time",
            "10",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--data-binary",
            f"@{tmp_path / 'req'}",
            "-o",
            str(tmp_path / "out"),
            "-D",
            str(tmp_path / "head"),
            "-w",
            "%{http_code} %{http_version}",
            f"http://{native.grpc}{hp.MODEL_INFER}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "200 2", out.stdout
    head = (tmp_path / "head").read_text().lower()
    assert "content-type: application/grpc" in head, head
    assert "grpc-status: 0" in head, head  # curl hands the trailers to its header dump
    (message,) = hp.grpc_messages((tmp_path / "out").read_bytes())
    _, y = hp.infer_output(message)
    np.testing.assert_allclose(y, expected(native.repo, x), rtol=1e-5, atol=1e-6)


def test_h2load_2000_calls(native, tmp_path):
    h2load = shutil.which("h2load")
    if h2load is None:
        pytest.skip("h2load (nghttp2-client) is not installed")
    (tmp_path / "req").write_bytes(hp.grpc_frame(hp.infer_request(X1)))
    client = grpcclient.InferenceServerClient(native.grpc)

    def successes() -> int:
        stats = client.get_inference_statistics("linear", as_json=True, client_timeout=T)
        return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))

    try:
        before = successes()
        out = subprocess.run(
            [
                h2load,
                "-n",
                "2000",
                "-c",
                "4",
                "-m",
                "8",
                "-d",
                str(tmp_path / "req"),
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                f"http://{native.grpc}{hp.MODEL_INFER}",
            ],
            capture_output=True,
            text=True,
            timeout=50,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        m = re.search(
            r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", out.stdout
        )
        assert m, out.stdout
        assert (m.group(1), m.group(2), m.group(3)) == ("2000", "2000", "2000"), out.stdout
        assert "2000 2xx" in out.stdout, out.stdout
        # h2load counts HTTP 200 even when grpc-status is an error: the model's own count
        assert successes() - before == 2000
    finally:
        client.close()


def test_tritonclient_unary_async_and_stream(native):
    x = np.random.default_rng(6).standard_normal((4, N_FEATURES)).astype(np.float32)
    want = expected(native.repo, x)
    client = grpcclient.InferenceServerClient(native.grpc)
    try:
        inp = grpcclient.InferInput("x", [4, N_FEATURES], "FP32")
        inp.set_data_from_numpy(x)
        y = client.infer("linear", [inp], client_timeout=T).as_numpy("y")
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)

        done, got = threading.Event(), []

        def on_answer(result, error):
            got.append(error if error is not None else result.as_numpy("y"))
            if len(got) == 8:
                done.set()

        for _ in range(8):
            client.async_infer("linear", [inp], callback=on_answer, client_timeout=T)
        assert done.wait(T), f"{len(got)} of 8 async answers"
        for y in got:
            assert not isinstance(y, Exception), y
            np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)

        answers, streamed = threading.Event(), []

        def on_stream(result, error):
            streamed.append(error if error is not None else result)
            if len(streamed) == 5:
                answers.set()

        client.start_stream(callback=on_stream)
        try:
            for i in range(5):
                client.async_stream_infer("linear", [inp], request_id=f"s{i}")
            assert answers.wait(T), f"{len(streamed)} of 5 streamed answers"
        finally:
            client.stop_stream()
        assert sorted(r.get_response().id for r in streamed) == [f"s{i}" for i in range(5)]
        for r in streamed:
            np.testing.assert_allclose(r.as_numpy("y"), want, rtol=1e-5, atol=1e-6)
    finally:
        client.close()


def test_grpcio_health_check(native):
    with grpc.insecure_channel(native.grpc) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=T)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


# -- connection errors: one broken rule each ----------------------------------------------------

_REQ = hp.request_block()
CONNECTION_ERRORS = {
    # RFC 9113 section 5.1: a frame other than HEADERS/PRIORITY on an idle stream
    "data_on_idle_stream": (hp.data(1, b"x"), ErrorCodes.PROTOCOL_ERROR),
    "rst_on_idle_stream": (hp.rst_stream(7), ErrorCodes.PROTOCOL_ERROR),
    # 5.1.1: client streams are odd
    "even_stream_id": (hp.headers(2, _REQ, end_stream=True), ErrorCodes.PROTOCOL_ERROR),
    # 6.2: HEADERS on stream 0
    "headers_on_stream_0": (hp.headers(0, _REQ), ErrorCodes.PROTOCOL_ERROR),
    # 6.5: SETTINGS on a stream; a length not a multiple of 6
    "settings_on_a_stream": (hp.frame(hp.SETTINGS, 0, 1, b""), ErrorCodes.PROTOCOL_ERROR),
    "settings_bad_length": (hp.frame(hp.SETTINGS, 0, 0, b"\0" * 7), ErrorCodes.FRAME_SIZE_ERROR),
    # 6.5.2: ENABLE_PUSH other than 0/1; INITIAL_WINDOW_SIZE past 2^31-1; MAX_FRAME_SIZE < 16384
    "settings_enable_push_2": (hp.settings({hp.ENABLE_PUSH: 2}), ErrorCodes.PROTOCOL_ERROR),
    "settings_window_too_big": (
        hp.settings({hp.INITIAL_WINDOW_SIZE: 2**31}),
        ErrorCodes.FLOW_CONTROL_ERROR,
    ),
    "settings_frame_size_too_small": (
        hp.settings({hp.MAX_FRAME_SIZE: 100}),
        ErrorCodes.PROTOCOL_ERROR,
    ),
    # 6.7: PING of 7 bytes; PING on a stream
    "ping_bad_length": (hp.frame(hp.PING, 0, 0, b"\0" * 7), ErrorCodes.FRAME_SIZE_ERROR),
    "ping_on_a_stream": (hp.frame(hp.PING, 0, 1, b"\0" * 8), ErrorCodes.PROTOCOL_ERROR),
    # 4.2: a frame over our SETTINGS_MAX_FRAME_SIZE (16384, the default)
    # (a field block frame: a connection error, whatever the stream)
    "frame_too_large": (
        hp.headers(1, _REQ + hp.hpack_literal("x-pad", "p" * 16384)),
        ErrorCodes.FRAME_SIZE_ERROR,
    ),
    # 6.9: a zero increment on the connection; 6.9.1: the connection window past 2^31-1
    "window_update_zero": (hp.window_update(0, 0), ErrorCodes.PROTOCOL_ERROR),
    "window_update_bad_length": (
        hp.frame(hp.WINDOW_UPDATE, 0, 0, b"\0\0\1"),
        ErrorCodes.FRAME_SIZE_ERROR,
    ),
    "connection_window_overflow": (
        hp.window_update(0, hp.MAX_WINDOW),
        ErrorCodes.FLOW_CONTROL_ERROR,
    ),
    # 6.10: CONTINUATION without a preceding HEADERS; another frame inside a field block
    "stray_continuation": (hp.continuation(1, _REQ, end_headers=True), ErrorCodes.PROTOCOL_ERROR),
    "frame_inside_field_block": (
        hp.headers(1, _REQ[:10], end_headers=False) + hp.ping(),
        ErrorCodes.PROTOCOL_ERROR,
    ),
    # 8.4: a client must not push
    "push_promise_from_client": (
        hp.frame(hp.PUSH_PROMISE, hp.END_HEADERS, 1, b"\0\0\0\2" + _REQ),
        ErrorCodes.PROTOCOL_ERROR,
    ),
    # RFC 7541 section 6.1: index 0 is not a field; index 70 is past both tables
    "hpack_index_0": (
        hp.headers(1, hp.hpack_indexed(0), end_stream=True),
        ErrorCodes.COMPRESSION_ERROR,
    ),
    "hpack_index_past_table": (
        hp.headers(1, hp.hpack_indexed(70), end_stream=True),
        ErrorCodes.COMPRESSION_ERROR,
    ),
    # RFC 7541 section 4.2: a table size update above our SETTINGS_HEADER_TABLE_SIZE
    "hpack_table_size_over_setting": (
        hp.headers(1, hp.hpack_int(1 << 20, 5, 0x20) + _REQ, end_stream=True),
        ErrorCodes.COMPRESSION_ERROR,
    ),
}


@pytest.mark.parametrize("case", sorted(CONNECTION_ERRORS))
def test_connection_error(native, case):
    payload, code = CONNECTION_ERRORS[case]
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        assert peer.send(payload)
        assert_goaway(peer, code)
    assert_serves(native)


@pytest.mark.parametrize(
    "opening",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", id="http1_request"),
        pytest.param(hp.PREFACE[:-3] + b"XYZ" + hp.settings(), id="corrupt_preface"),
        pytest.param(hp.PREFACE + hp.ping(), id="first_frame_not_settings"),
        pytest.param(hp.PREFACE + hp.settings(ack=True), id="first_frame_settings_ack"),
    ],
)
def test_bad_preface(native, opening):
    """RFC 9113 section 3.4: a connection error PROTOCOL_ERROR; the GOAWAY MAY be omitted,
    but the connection must close and carry nothing but SETTINGS/WINDOW_UPDATE/GOAWAY."""
    with RawPeer(native.grpc) as peer:
        peer.send(opening)
        assert peer.wait_closed(), f"still open after a bad preface; got {peer.received}"
        allowed = {hp.SETTINGS, hp.WINDOW_UPDATE, hp.GOAWAY}
        assert {f.type for f in peer.received} <= allowed, peer.received
        for f in peer.received:
            if f.type == hp.GOAWAY:
                assert f.error_code == ErrorCodes.PROTOCOL_ERROR, f
    assert_serves(native)


def test_data_on_closed_stream(native):
    """RFC 9113 sections 5.1 and 6.1: DATA after both sides ended stream 1 is STREAM_CLOSED
    (as RST_STREAM on that stream or as GOAWAY)."""
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        assert_call_ok(peer, 1, native.repo)
        assert peer.send(hp.data(1, hp.grpc_frame(b""), end_stream=True))
        f = peer.next_frame(lambda f: f.type in (hp.RST_STREAM, hp.GOAWAY))
        assert f is not None, f"connection closed without an error frame: {peer.received}"
        assert f.error_code == ErrorCodes.STREAM_CLOSED, f
        if f.type == hp.RST_STREAM:
            assert f.stream_id == 1, f
            assert_call_ok(peer, 3, native.repo)  # a stream error: the connection lives
    assert_serves(native)


def test_data_after_end_stream_before_the_answer(native):
    """RFC 9113 section 5.1 (half-closed remote): DATA after the request's END_STREAM is
    STREAM_CLOSED, even before the server has answered."""
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        frames = hp.headers(1, hp.request_block())
        frames += hp.data(1, hp.grpc_frame(hp.infer_request(X1)), end_stream=True)
        assert peer.send(frames + hp.data(1, b"\0\0\0\0\0"))
        f = peer.next_frame(lambda f: f.type in (hp.RST_STREAM, hp.GOAWAY))
        assert f is not None, f"no error frame: {peer.received}"
        assert f.error_code == ErrorCodes.STREAM_CLOSED, f
        if f.type == hp.RST_STREAM:
            assert f.stream_id == 1, f
            assert_call_ok(peer, 3, native.repo)
    assert_serves(native)


def test_second_headers_without_end_stream_is_malformed(native):
    """RFC 9113 section 8.1: a HEADERS frame after the request's headers without
    END_STREAM makes the request malformed: PROTOCOL_ERROR on the stream (or connection)."""
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        frames = hp.headers(1, hp.request_block())
        frames += hp.data(1, hp.grpc_frame(hp.infer_request(X1)))
        frames += hp.headers(1, hp.hpack_literal("x-trailer", "1"))  # no END_STREAM
        assert peer.send(frames)
        f = peer.next_frame(lambda f: f.type in (hp.RST_STREAM, hp.GOAWAY))
        assert f is not None, f"no error frame: {peer.received}"
        assert f.error_code == ErrorCodes.PROTOCOL_ERROR, f
        if f.type == hp.RST_STREAM:
            assert f.stream_id == 1, f
            assert_call_ok(peer, 3, native.repo)
    assert_serves(native)


def test_content_length_mismatch_is_malformed(native):
    """RFC 9113 section 8.1.1: content-length that differs from the DATA received is a
    malformed request: stream error PROTOCOL_ERROR."""
    body = hp.grpc_frame(hp.infer_request(X1))
    block = hp.request_block(extra=[("content-length", str(len(body) + 10))])
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        assert peer.send(hp.headers(1, block) + hp.data(1, body, end_stream=True))
        f = peer.next_frame(lambda f: f.type in (hp.RST_STREAM, hp.GOAWAY) or f.stream_id == 1)
        assert f is not None and f.type == hp.RST_STREAM, (f, peer.received[-4:])
        assert f.stream_id == 1 and f.error_code == ErrorCodes.PROTOCOL_ERROR, f
        assert_call_ok(peer, 3, native.repo)
    assert_serves(native)


def test_stream_id_going_down(native):
    """RFC 9113 section 5.1.1: a new stream id below one already used is PROTOCOL_ERROR;
    the GOAWAY names the last stream processed."""
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        assert_call_ok(peer, 5, native.repo)
        assert peer.send(hp.headers(3, hp.request_block(), end_stream=True))
        goaway = assert_goaway(peer, ErrorCodes.PROTOCOL_ERROR)
        assert goaway.last_stream_id == 5, goaway
    assert_serves(native)


def test_stream_window_overflow_resets_only_that_stream(native):
    """RFC 9113 section 6.9.1: a stream's send window past 2^31-1 is a stream error
    FLOW_CONTROL_ERROR; the connection goes on."""
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        assert peer.send(hp.headers(1, hp.request_block()) + hp.window_update(1, hp.MAX_WINDOW))
        f = peer.next_frame(lambda f: f.type in (hp.RST_STREAM, hp.GOAWAY))
        assert f is not None and f.type == hp.RST_STREAM and f.stream_id == 1, f
        assert f.error_code == ErrorCodes.FLOW_CONTROL_ERROR, f
        assert_call_ok(peer, 3, native.repo)
    assert_serves(native)


def test_data_beyond_the_window_is_never_taken(streams16):
    """RFC 9113 section 6.9.1: a receiver MUST treat DATA beyond the window it advertised as
    FLOW_CONTROL_ERROR.

    A peer that ignores windows sends 4 MiB (four stream windows) of one message in one
    burst. A receiver that gives the window back as it reads (this server does, at half a
    window per read) is never overrun, so the black-box check is the rule itself: at every
    point, what the server took on the stream stays within its initial window plus what it
    granted; otherwise it must have said FLOW_CONTROL_ERROR."""
    server = streams16  # the default 64 MiB message limit: the message is not refused early
    with RawPeer(server.grpc) as peer:
        first = peer.handshake()
        window = first.settings.get(hp.INITIAL_WINDOW_SIZE, 65535)
        total = 4 * window
        # The message declares 48 MiB: more than any window, less than the message limit.
        burst = hp.headers(1, hp.request_block()) + hp.data(1, b"\0\x03\0\0\0")
        burst += hp.data(1, b"\0" * 16384) * (total // 16384)
        sender = flood(peer, burst)
        sender.join(hp.TIMEOUT_S)
        frames = peer.frames(1.0)
        error = next((f for f in frames if f.type in (hp.RST_STREAM, hp.GOAWAY)), None)
        granted = peer.granted[1]
        if error is not None:
            assert error.error_code == ErrorCodes.FLOW_CONTROL_ERROR, error
            assert 5 + total > window + granted, f"refused within the window: {error}"
        else:
            assert not sender.is_alive() and not peer.send_failed, "server stopped reading"
            assert 5 + total <= window + granted, (
                f"server took {5 + total} bytes on a stream with a window of {window} and "
                f"{granted} granted, without FLOW_CONTROL_ERROR"
            )
    assert_serves(server)


def test_header_list_over_limit_is_resource_exhausted(native):
    """h2_connection.h: a header list over SETTINGS_MAX_HEADER_LIST_SIZE (16384) is refused
    RESOURCE_EXHAUSTED (Trailers-Only) naming the limit; the connection lives."""
    block = hp.request_block(extra=[("x-big", "a" * 24000)])
    assert 16384 < len(block) < 48 * 1024
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        frames = hp.header_frames(1, block)  # HEADERS + one CONTINUATION
        assert peer.send(frames + hp.data(1, hp.grpc_frame(hp.infer_request(X1)), True))
        resp = peer.read_response(1)
        assert resp.grpc_status == 8, (resp, peer.received[-6:])
        assert "16384" in resp.grpc_message, resp.grpc_message
        assert_call_ok(peer, 3, native.repo)
    assert_serves(native)


def test_field_block_over_limit_is_enhance_your_calm(native):
    """h2_connection.h max_field_block_bytes (64 KiB on the wire, CONTINUATIONs included):
    over it, GOAWAY ENHANCE_YOUR_CALM."""
    block = hp.request_block(extra=[("x-huge", "b" * (80 * 1024))])
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        flood(peer, hp.header_frames(1, block))
        assert_goaway(peer, ErrorCodes.ENHANCE_YOUR_CALM)
    assert_serves(native)


def test_continuation_flood_of_empty_frames(native):
    """HEADERS without END_HEADERS, then 20000 empty CONTINUATIONs: ENHANCE_YOUR_CALM."""
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        frames = hp.headers(1, hp.request_block(), end_headers=False)
        frames += hp.continuation(1, b"") * 20000
        flood(peer, frames)
        assert_goaway(peer, ErrorCodes.ENHANCE_YOUR_CALM)
    assert_serves(native)


def test_continuation_flood_of_full_frames_is_cut_short(native):
    """16 MiB of CONTINUATION payload in one field block: ENHANCE_YOUR_CALM, and the
    server's memory does not grow by the block (it stops at its 64 KiB limit)."""
    before = hp.start_peak_rss(native.proc.pid)
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        junk = hp.hpack_literal("x-junk", "c" * 16000)  # valid HPACK, if it were decoded
        frames = hp.headers(1, hp.request_block(), end_headers=False)
        frames += hp.continuation(1, junk) * 1000
        flood(peer, frames)
        assert_goaway(peer, ErrorCodes.ENHANCE_YOUR_CALM)
    grew = hp.peak_rss_growth(native.proc.pid, before)
    assert grew < 8 * MIB, f"server peak RSS grew by {grew / MIB:.1f} MiB"
    assert_serves(native)


def test_hpack_bomb(native):
    """One 4 KiB dynamic-table entry referenced 4000 times per block (16 MiB decoded per
    block, 20 blocks): each refused RESOURCE_EXHAUSTED while decoding, the connection
    lives, and the server's RSS does not grow by the decoded size."""
    value = b"z" * 4000  # 4000 + 6 + 32 <= 4096, the default SETTINGS_HEADER_TABLE_SIZE
    bomb = hp.hpack_indexed(62) * 4000
    before = hp.start_peak_rss(native.proc.pid)
    with RawPeer(native.grpc) as peer:
        first = peer.handshake()
        assert first.settings.get(hp.HEADER_TABLE_SIZE, 4096) >= 4096
        base = hp.request_block()
        for i in range(20):
            sid = 1 + 2 * i
            block = base + (hp.hpack_literal("x-bomb", value, index=True) if i == 0 else b"")
            assert peer.send(hp.headers(sid, block + bomb, end_stream=True))
            resp = peer.read_response(sid)
            assert resp.reset is None and resp.grpc_status == 8, (resp, peer.received[-4:])
        assert_call_ok(peer, 41, native.repo)
    grew = hp.peak_rss_growth(native.proc.pid, before)
    assert grew < 8 * MIB, f"server peak RSS grew by {grew / MIB:.1f} MiB"
    assert_serves(native)


@pytest.mark.parametrize(
    "frame_",
    [
        pytest.param(hp.ping(), id="ping"),
        pytest.param(hp.settings(), id="settings"),
        pytest.param(hp.frame(hp.PRIORITY, 0, 9, b"\0\0\0\0\x10"), id="priority"),
        pytest.param(hp.window_update(0, 1), id="window_update"),
        pytest.param(hp.frame(0xFA, 0, 0, b""), id="unknown_type"),
    ],
)
def test_control_frame_flood(native, frame_):
    """h2_connection.h control_frame_burst (2000): 6000 frames that cost work but carry no
    request, sent without reading the answers: GOAWAY ENHANCE_YOUR_CALM."""
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        flood(peer, frame_ * 6000).join(hp.TIMEOUT_S)
        assert_goaway(peer, ErrorCodes.ENHANCE_YOUR_CALM)
    assert_serves(native)


def test_control_frames_within_the_burst_are_served(native):
    """500 PINGs (a quarter of the burst) are all answered and the connection lives."""
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        assert peer.send(b"".join(hp.ping(i.to_bytes(8, "big")) for i in range(500)))
        acks = []
        while len(acks) < 500:
            f = peer.next_frame(lambda f: f.type in (hp.PING, hp.GOAWAY))
            assert f is not None and f.type == hp.PING, f
            acks.append(int.from_bytes(f.payload, "big"))
        assert acks == list(range(500))
        assert_call_ok(peer, 1, native.repo)


def test_rapid_reset(native):
    """h2_connection.h reset_burst (1000): 3000 streams opened and reset at once (CVE-2023-44487):
    GOAWAY ENHANCE_YOUR_CALM."""
    block = hp.request_block()
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        frames = b"".join(hp.headers(sid, block) + hp.rst_stream(sid) for sid in range(1, 6001, 2))
        flood(peer, frames)
        assert_goaway(peer, ErrorCodes.ENHANCE_YOUR_CALM)
    assert_serves(native)


def test_streams_beyond_max_concurrent_are_refused(streams16):
    """SETTINGS_MAX_CONCURRENT_STREAMS 16: 16 streams that never finish stay open, each of
    1000 more is RST_STREAM(REFUSED_STREAM) (RFC 9113 section 5.1.2); closing one frees a
    slot."""
    server = streams16
    block = hp.request_block()
    with RawPeer(server.grpc) as peer:
        first = peer.handshake()
        assert first.settings.get(hp.MAX_CONCURRENT_STREAMS) == 16, first.settings
        opened = list(range(1, 33, 2))
        extra = list(range(33, 33 + 2000, 2))
        assert peer.send(b"".join(hp.headers(s, block) for s in opened + extra))
        refused = set()
        while len(refused) < len(extra):
            f = peer.next_frame(lambda f: f.type in (hp.RST_STREAM, hp.GOAWAY, hp.HEADERS))
            assert f is not None and f.type == hp.RST_STREAM, (f, len(refused))
            assert f.error_code == ErrorCodes.REFUSED_STREAM, f
            assert f.stream_id in extra, f"open stream {f.stream_id} was reset: {f}"
            refused.add(f.stream_id)
        assert peer.frames(0.5) == []
        assert_serves(server)  # another connection is served meanwhile
        # end one of the 16; a new stream then fits
        assert peer.send(hp.rst_stream(opened[0]))
        time.sleep(0.2)
        assert_call_ok(peer, extra[-1] + 2, server.repo)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_unfinished_streams_expire(streams16):
    """h2_connection.h stream_read_timeout_ns (30 s): a stream whose request never completes
    is reset CANCEL, which frees its slot."""
    server = streams16
    with RawPeer(server.grpc) as peer:
        peer.handshake()
        opened = list(range(1, 33, 2))
        start = time.monotonic()
        assert peer.send(b"".join(hp.headers(s, hp.request_block()) for s in opened))
        resets = {}
        while len(resets) < len(opened):
            f = peer.next_frame(lambda f: f.type in (hp.RST_STREAM, hp.GOAWAY, hp.HEADERS), 45)
            assert f is not None and f.type in (hp.RST_STREAM, hp.HEADERS), f
            resets[f.stream_id] = (time.monotonic() - start, f)
        elapsed = [t for t, _ in resets.values()]
        assert min(elapsed) > 25, f"streams reset after {min(elapsed):.1f} s, before the timeout"
        for _, f in resets.values():
            assert f.type == hp.RST_STREAM and f.error_code == ErrorCodes.CANCEL, f
        assert_call_ok(peer, 101, server.repo)
    assert_serves(server)


def test_compressed_message_flag_is_unimplemented(native):
    """A message with the Compressed-Flag set (and no grpc-encoding): UNIMPLEMENTED (12)."""
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        frames = hp.headers(1, hp.request_block())
        frames += hp.data(1, hp.grpc_frame(hp.infer_request(X1), compressed=True), True)
        assert peer.send(frames)
        resp = peer.read_response(1)
        assert resp.grpc_status == 12, resp
        assert_call_ok(peer, 3, native.repo)
    assert_serves(native)


def test_unknown_grpc_encoding_is_unimplemented(native):
    """grpc-encoding other than identity: UNIMPLEMENTED (12), as the gRPC spec asks."""
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        resp = peer.call(1, hp.infer_request(X1), extra=[("grpc-encoding", "gzip")])
        assert resp.grpc_status == 12, resp
        assert_call_ok(peer, 3, native.repo)
    assert_serves(native)


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", None])
def test_wrong_content_type_is_415(native, content_type):
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        resp = peer.call(1, hp.infer_request(X1), content_type=content_type)
        assert resp.status == 415, resp
        assert_call_ok(peer, 3, native.repo)
    assert_serves(native)


def test_get_is_405(native):
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        assert peer.send(hp.headers(1, hp.request_block(method="GET"), end_stream=True))
        resp = peer.read_response(1)
        assert resp.status == 405, resp
        assert_call_ok(peer, 3, native.repo)
    assert_serves(native)


_PSEUDO = [(":method", "POST"), (":scheme", "http"), (":path", hp.MODEL_INFER)]
MALFORMED = {
    # RFC 9113 section 8.2: names are lower case; 8.2.2: no connection-specific fields,
    # te only "trailers"; 8.3: pseudo-headers known, once, before regular fields, required
    "upper_case_name": [*_PSEUDO, ("X-Up", "1")],
    "connection_header": [*_PSEUDO, ("connection", "keep-alive")],
    "te_gzip": [*_PSEUDO, ("te", "gzip")],
    "unknown_pseudo_header": [*_PSEUDO, (":protocol", "x")],
    "pseudo_after_regular": [*_PSEUDO[:2], ("x-a", "1"), _PSEUDO[2]],
    "missing_path": _PSEUDO[:2],
    "duplicate_method": [_PSEUDO[0], *_PSEUDO],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_request_is_stream_protocol_error(native, case):
    """RFC 9113 section 8.1.1: a malformed request is a stream error PROTOCOL_ERROR."""
    fields = MALFORMED[case]
    block = hp.request_block(pseudo=fields, te=None)
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        assert peer.send(hp.headers(1, block, end_stream=True))
        resp = peer.read_response(1)
        assert resp.reset == ErrorCodes.PROTOCOL_ERROR, resp
        assert_call_ok(peer, 3, native.repo)
    assert_serves(native)


def test_message_over_max_message_mb(native):
    """A 1.5 MiB message to a server with --max-message-mb 1: RESOURCE_EXHAUSTED naming both
    sizes; the rest of its DATA is ignored and the connection lives."""
    limit = MAX_MESSAGE_MB * MIB
    rows = (3 * MIB // 2) // (4 * N_FEATURES)
    message = hp.infer_request(np.zeros((rows, N_FEATURES), np.float32))
    assert len(message) > limit
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        resp = peer.call_flow(1, message)
        assert resp.grpc_status == 8, resp
        assert str(len(message)) in resp.grpc_message, resp.grpc_message
        assert str(limit) in resp.grpc_message, resp.grpc_message
        assert_call_ok(peer, 3, native.repo)
    assert_serves(native)


def test_declared_message_size_is_refused_before_the_bytes_come(native):
    """A prefix declaring 512 MiB is refused at once: the server does not wait for (or
    allocate) the body."""
    with RawPeer(native.grpc) as peer:
        peer.handshake()
        assert peer.send(hp.headers(1, hp.request_block()) + hp.data(1, b"\0\x20\0\0\0"))
        resp = peer.read_response(1, timeout=3.0)
        assert resp.grpc_status == 8, resp
        assert str(512 * MIB) in resp.grpc_message, resp.grpc_message
        assert_call_ok(peer, 3, native.repo)
    assert_serves(native)


# -- servers with their own limits --------------------------------------------------------------


@pytest.mark.timeout(90)
def test_idle_connection_is_closed(launch, model_repo):
    """--idle-timeout-s 1: a connection with no call gets GOAWAY(NO_ERROR) after about a
    second and is closed; one that keeps sending PINGs is not idle."""
    server = launch(model_repo, "--frontend", "native", "--idle-timeout-s", "1", name="idle")
    with RawPeer(server.grpc) as idle, RawPeer(server.grpc) as busy:
        idle.handshake()
        busy.handshake()
        start = time.monotonic()
        while time.monotonic() - start < 2.5:
            assert busy.send(hp.ping())
            busy.frames(0.3)
        assert all(f.type != hp.GOAWAY for f in busy.received), busy.received
        assert not busy.closed
        goaway = idle.expect_goaway(5.0)
        assert goaway.error_code == ErrorCodes.NO_ERROR, goaway
        assert idle.wait_closed(3.0), "no close after the idle GOAWAY"
        assert_call_ok(busy, 1, server.repo)
    # the idle GOAWAY came no sooner than the timeout
    with RawPeer(server.grpc) as peer:
        peer.handshake()
        t0 = time.monotonic()
        peer.expect_goaway(5.0)
        assert time.monotonic() - t0 > 0.8
    assert_serves(server)


def _refused(server) -> bool:
    """Whether a new connection is refused at once (GOAWAY); if not, it serves a call."""
    with RawPeer(server.grpc) as peer:
        try:
            goaway = peer.next_frame(lambda f: f.type == hp.GOAWAY, 0.5)
        except TimeoutError:  # no GOAWAY: accepted
            assert peer.send(hp.PREFACE + hp.settings() + hp.settings(ack=True))
            assert_call_ok(peer, 1, server.repo)
            return False
        return goaway is not None


def _wait_accepting(server, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while _refused(server):
        assert time.monotonic() < deadline, f"closed connections' slots not freed in {timeout} s"
        time.sleep(0.1)


@pytest.mark.timeout(90)
def test_max_connections(launch, model_repo):
    """--max-connections 2: the third connection gets a GOAWAY naming the limit and is
    closed; the two go on; closing one makes room."""
    server = launch(model_repo, "--frontend", "native", "--max-connections", "2", name="maxconn")
    one, two = RawPeer(server.grpc), RawPeer(server.grpc)
    try:
        one.handshake()
        two.handshake()
        third = RawPeer(server.grpc)
        try:  # read only: a peer that sent nothing gets a clean close, not a reset
            goaway = third.expect_goaway()
            assert goaway.last_stream_id == 0, goaway
            assert re.search(r"\b2\b", goaway.debug) and "connection" in goaway.debug, goaway
            assert goaway.error_code != ErrorCodes.NO_ERROR, goaway
            assert third.wait_closed()
        finally:
            third.close()
        assert_call_ok(one, 1, server.repo)
        assert_call_ok(two, 1, server.repo)
        one.close()
        _wait_accepting(server)  # the server notices the close asynchronously
    finally:
        one.close()
        two.close()
    _wait_accepting(server)
    assert_serves(server)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_silent_connection_is_closed_after_the_preface_timeout(native):
    """h2_connection.h preface_timeout_ns (10 s): a TCP connection that never sends the
    preface is closed."""
    with RawPeer(native.grpc) as peer:
        start = time.monotonic()
        assert peer.wait_closed(20.0), "a connection without a preface stayed open 20 s"
        assert time.monotonic() - start > 5.0
    assert_serves(native)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_slow_reader_holds_bounded_memory(launch, tmp_path):
    """A client that sends thousands of calls with 16 KiB answers and never reads: the server
    stops reading it (max_pending_output_bytes, 4 MiB) instead of buffering the answers,
    its RSS stays bounded, and another client on the same I/O thread is served meanwhile."""
    width = 4096  # FP32: 16 KiB per row, in and out
    repo = onnx_models.make_repo(
        tmp_path / "repo",
        {
            "wide": functools.partial(onnx_models.write_identity, dims=(-1, width)),
            "linear": functools.partial(
                onnx_models.write_linear, n_in=N_FEATURES, n_out=N_OUTPUTS, seed=7
            ),
        },
        configs={"wide": linear_config(8, 1000), "linear": linear_config(16, 1000)},
    )
    server = launch(repo, "--frontend", "native", "--io-threads", "1", name="slowreader")
    x = np.ones((1, width), np.float32)
    client = grpcclient.InferenceServerClient(server.grpc)
    try:
        inp = grpcclient.InferInput("input", [1, width], "FP32")
        inp.set_data_from_numpy(x)
        # warm the batcher, the arenas and the buffers with full batches before measuring
        done, answers = threading.Event(), []

        def on_answer(result, error):
            answers.append(error)
            if len(answers) == 400:
                done.set()

        for _ in range(400):
            client.async_infer("wide", [inp], callback=on_answer, client_timeout=30.0)
        assert done.wait(60) and not any(answers), answers[:3]
        assert_serves(server)
        before = hp.start_peak_rss(server.proc.pid)

        n = 4000  # 64 MiB of answers if the server buffered them all
        request = hp.grpc_frame(hp.infer_request(x, model="wide", input_name="input"))
        block = hp.request_block()
        peer = RawPeer(server.grpc, timeout=60.0, rcvbuf=4096)
        peer.handshake({hp.INITIAL_WINDOW_SIZE: hp.MAX_WINDOW}, window=hp.MAX_WINDOW - 65535)
        progress = {"sent": 0}

        def send_all():
            for i in range(n):
                sid = 1 + 2 * i
                if not peer.send(hp.headers(sid, block) + hp.data_frames(sid, request)):
                    return
                progress["sent"] = i + 1

        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        last, still = -1, 0
        while still < 10 and sender.is_alive():  # until the sender is stuck for 1 s
            time.sleep(0.1)
            still = still + 1 if progress["sent"] == last else 0
            last = progress["sent"]
        assert sender.is_alive() and progress["sent"] < n, (
            f"the server read all {n} calls from a peer that reads nothing"
        )
        # another client, on the same (only) I/O thread, is served while the reader stalls
        for _ in range(10):
            assert_serves(server)
            np.testing.assert_array_equal(
                client.infer("wide", [inp], client_timeout=T).as_numpy("output"), x
            )
        # bound: 4 MiB of pending output + 256 streams' 16 KiB requests and answers, about
        # 12 MiB; buffering every answer instead would be 64 MiB
        grew = hp.peak_rss_growth(server.proc.pid, before)
        assert grew < 32 * MIB, (
            f"server peak RSS grew by {grew / MIB:.1f} MiB holding a slow reader "
            f"({progress['sent']} calls sent)"
        )
        peer.close()
        sender.join(10)
    finally:
        client.close()
    assert_serves(server)
