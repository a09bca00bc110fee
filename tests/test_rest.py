"""KServe V2 REST on the HTTP port: tritonclient.http, KServe's REST client and curl
against real servers, each answer compared with tritonclient.grpc's for the same request.

- Inference with JSON tensors and with Triton's binary tensor data extension (inputs,
  outputs, both, mixed), on ``linear``, ``add``, ``fixed`` and the demo ``tabular`` of the
  session server; BYTES, FP16, BOOL and integer tensors, request-id handling, failover
  parameters and the body limit on a server of this module (``rest_server``).
- Server and model metadata, model config and statistics: the gRPC answer in substance.
- Bad requests get a JSON error with a status from the error's gRPC code, naming what was
  wrong, and the server goes on serving.
- The codec alone (``steadyserve.server.rest_codec`` loads no protobuf code).

REST does not depend on the gRPC frontend, so the session-server tests run with the
native one only.
"""

from __future__ import annotations

import functools
import http.client
import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
import textwrap
import urllib.parse

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

import onnx_models
from conftest import N_FEATURES, N_OUTPUTS, only_frontend, start_server

T = 10.0  # seconds: every client call's timeout
HEADER = "Inference-Header-Content-Length"
native = only_frontend("native")
TEXTS = ["cat", "", "straße", "日本語", "🙂 emoji", "a\x00b", "x" * 300, "dog"]
NO_TRIP = {"consecutive_failures": 10_000, "min_requests": 10_000}  # circuit stays closed


# -- helpers ---------------------------------------------------------------------------


def call(base: str, method: str, path: str, body: bytes | None = None, headers=None):
    """(status, headers with lower-case names, body) of one HTTP/1.1 request."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=T)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def post_json(base: str, path: str, body, headers=None):
    """(status, headers, parsed JSON) of a POST with a JSON body."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, head, raw = call(
        base, "POST", path, data, {"Content-Type": "application/json", **(headers or {})}
    )
    return status, head, json.loads(raw)


def http_client(server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(
        server.http.removeprefix("http://"), connection_timeout=T, network_timeout=T
    )


def grpc_metadata(server, model: str) -> dict:
    with grpcclient.InferenceServerClient(server.grpc) as client:
        return client.get_model_metadata(model, as_json=True)


def sample_inputs(server, model: str, rows: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """Values for every input of ``model`` (dynamic dims = ``rows``), within the demo
    contract's range."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in grpc_metadata(server, model)["inputs"]:
        shape = [rows if int(d) < 0 else int(d) for d in spec["shape"]]
        out[spec["name"]] = rng.uniform(-1, 1, shape).astype(np.float32)
    return out


def grpc_infer(server, model: str, arrays: dict[str, np.ndarray], datatypes=None, **kw):
    datatypes = datatypes or {}
    inputs = []
    for name, array in arrays.items():
        datatype = datatypes.get(name) or _v2(array)
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    with grpcclient.InferenceServerClient(server.grpc) as client:
        return client.infer(model, inputs, client_timeout=T, **kw)


def http_infer(server, model, arrays, *, binary_in, binary_out, outputs=None, datatypes=None, **kw):
    datatypes = datatypes or {}
    inputs = []
    for name, array in arrays.items():
        tensor = httpclient.InferInput(name, list(array.shape), datatypes.get(name) or _v2(array))
        tensor.set_data_from_numpy(array, binary_data=binary_in)
        inputs.append(tensor)
    requested = None
    if outputs is not None:
        requested = [httpclient.InferRequestedOutput(n, binary_data=binary_out) for n in outputs]
    client = http_client(server)
    try:
        return client.infer(model, inputs, outputs=requested, **kw)
    finally:
        client.close()


def _v2(array: np.ndarray) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(array.dtype)


def output_names(server, model: str) -> list[str]:
    return [o["name"] for o in grpc_metadata(server, model)["outputs"]]


# The zero values of model_config.proto's enums that a config here can hold.
ENUM_DEFAULTS = ("TYPE_INVALID", "FORMAT_NONE", "KIND_AUTO", "REJECT", "PRIORITY_DEFAULT")


def substance(value):
    """A JSON value with default (empty, zero, false, enum zero) fields dropped and integers
    written as strings (protobuf's JSON mapping of 64-bit ints) read as numbers: what is
    left is what the gRPC and REST forms of one message must agree on."""
    if isinstance(value, dict):
        kept = {k: substance(v) for k, v in value.items()}
        return {
            k: v
            for k, v in kept.items()
            if v not in (0, "", False, None, [], {}) and v not in ENUM_DEFAULTS
        }
    if isinstance(value, list):
        return [substance(v) for v in value]
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        return int(value)
    return value


def grpc_error(server, model, arrays, **kw) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        grpc_infer(server, model, arrays, **kw)
    return caught.value


def as_bytes(array: np.ndarray) -> list:
    return [x.encode() if isinstance(x, str) else bytes(x) for x in array.ravel()]


def still_serves(server) -> None:
    x = np.zeros((1, N_FEATURES), np.float32)
    body = {
        "inputs": [
            {"name": "x", "shape": [1, N_FEATURES], "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }
    status, _, answer = post_json(server.http, "/v2/models/linear/infer", body)
    assert status == 200, answer
    want = grpc_infer(server, "linear", {"x": x}).as_numpy("y")
    np.testing.assert_array_equal(np.array(answer["outputs"][0]["data"], np.float32), want.ravel())


# -- the module's own server -------------------------------------------------------------


def write_identity_3(path, datatype: str) -> None:
    onnx_models.write_identity(path, datatype=datatype, dims=(-1, 3))


@pytest.fixture(scope="module")
def rest_server(tmp_path_factory):
    """BYTES, FP16, BOOL, INT32 and UINT8 identities, a linear ``primary`` with a
    ``backup``, ``linear`` (as in the session repo); 1 MiB messages, fault injection on."""
    root = tmp_path_factory.mktemp("rest_repo")
    linear = functools.partial(onnx_models.write_linear, n_in=N_FEATURES, n_out=N_OUTPUTS)
    onnx_models.make_repo(
        root,
        {
            "echo": functools.partial(onnx_models.write_identity, datatype="BYTES", dims=(-1, 2)),
            "half": functools.partial(write_identity_3, datatype="FP16"),
            "flags": functools.partial(write_identity_3, datatype="BOOL"),
            "ints": functools.partial(write_identity_3, datatype="INT32"),
            "small": functools.partial(write_identity_3, datatype="UINT8"),
            "primary": functools.partial(linear, seed=1),
            "backup": functools.partial(linear, seed=7),
            "linear": functools.partial(linear, seed=7),
        },
        configs={
            "echo": {"max_batch_size": 8},
            "half": {"max_batch_size": 8},
            "flags": {"max_batch_size": 8},
            "ints": {"max_batch_size": 8},
            "small": {"max_batch_size": 8},
            "primary": {"max_batch_size": 8, "backup": "backup", "failover": {"circuit": NO_TRIP}},
            "backup": {"max_batch_size": 8},
            "linear": {"max_batch_size": 8},
        },
    )
    proc = start_server(
        root,
        "--allow-fault-injection",
        "--max-message-mb",
        "1",
        log_dir=tmp_path_factory.mktemp("rest_logs"),
        name="rest",
    )
    yield proc
    rc = proc.stop()
    assert rc == 0, f"server exited with {rc}; stderr:\n{proc.stderr()[-4000:]}"


# -- inference through tritonclient.http, against tritonclient.grpc ----------------------


@native
@pytest.mark.parametrize("model", ["linear", "add", "fixed", "tabular"])
@pytest.mark.parametrize(
    ("binary_in", "binary_out"), [(False, False), (True, True), (False, True), (True, False)]
)
def test_infer_equals_grpc(server, model, binary_in, binary_out):
    arrays = sample_inputs(server, model, rows=1 if model == "fixed" else 3)
    names = output_names(server, model)
    want = grpc_infer(server, model, arrays)
    got = http_infer(
        server, model, arrays, binary_in=binary_in, binary_out=binary_out, outputs=names
    )
    response = got.get_response()
    assert (response["model_name"], response["model_version"]) == (model, "1")
    for entry in response["outputs"]:
        assert ("data" in entry) is not binary_out, entry
        assert ("binary_data_size" in entry.get("parameters", {})) is binary_out, entry
    for name in names:
        np.testing.assert_array_equal(got.as_numpy(name), want.as_numpy(name))
        assert got.as_numpy(name).dtype == want.as_numpy(name).dtype


@native
def test_no_outputs_named_means_every_output_binary(server):
    # tritonclient.http asks with binary_data_output when no outputs are named.
    arrays = sample_inputs(server, "tabular")
    got = http_infer(server, "tabular", arrays, binary_in=True, binary_out=True)
    want = grpc_infer(server, "tabular", arrays)
    entries = got.get_response()["outputs"]
    assert sorted(e["name"] for e in entries) == sorted(output_names(server, "tabular"))
    assert all("binary_data_size" in e["parameters"] for e in entries)
    for entry in entries:
        np.testing.assert_array_equal(got.as_numpy(entry["name"]), want.as_numpy(entry["name"]))


@native
def test_mixed_binary_and_json_inputs_and_outputs_of_one_request(server):
    a, b = (np.arange(8, dtype=np.float32).reshape(2, 4) * k for k in (1.5, -0.25))
    body = {
        "inputs": [
            {
                "name": "a",
                "shape": [2, 4],
                "datatype": "FP32",
                "parameters": {"binary_data_size": a.nbytes},
            },
            {"name": "b", "shape": [2, 4], "datatype": "FP32", "data": b.tolist()},  # nested
        ],
        "outputs": [{"name": "sum", "parameters": {"binary_data": True}}],
    }
    head = json.dumps(body).encode()
    status, headers, raw = call(
        server.http,
        "POST",
        "/v2/models/add/infer",
        head + a.tobytes(),
        {HEADER: str(len(head)), "Content-Type": "application/octet-stream"},
    )
    assert status == 200, raw
    assert headers["content-type"] == "application/octet-stream"
    n = int(headers[HEADER.lower()])
    answer = json.loads(raw[:n])
    (out,) = answer["outputs"]
    assert out["parameters"]["binary_data_size"] == len(raw) - n == 2 * 4 * 4
    got = np.frombuffer(raw[n:], dtype="<f4").reshape(out["shape"])
    np.testing.assert_array_equal(got, grpc_infer(server, "add", {"a": a, "b": b}).as_numpy("sum"))


@native
@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_compressed_request_bodies(server, compression):
    arrays = sample_inputs(server, "linear")
    got = http_infer(
        server,
        "linear",
        arrays,
        binary_in=True,
        binary_out=True,
        request_compression_algorithm=compression,
    )
    np.testing.assert_array_equal(
        got.as_numpy("y"), grpc_infer(server, "linear", arrays).as_numpy("y")
    )


@native
def test_a_named_output_subset_is_all_that_comes_back(server):
    arrays = sample_inputs(server, "tabular")
    first = output_names(server, "tabular")[0]
    got = http_infer(server, "tabular", arrays, binary_in=False, binary_out=False, outputs=[first])
    assert [o["name"] for o in got.get_response()["outputs"]] == [first]


def test_bytes_tensors_json_and_binary(rest_server):
    texts = np.array(TEXTS, dtype=object).reshape(4, 2)
    want = as_bytes(grpc_infer(rest_server, "echo", {"input": texts}).as_numpy("output"))
    assert want == [t.encode() for t in TEXTS]
    for binary_in in (False, True):
        for binary_out in (False, True):
            got = http_infer(
                rest_server,
                "echo",
                {"input": texts},
                binary_in=binary_in,
                binary_out=binary_out,
                outputs=["output"],
            )
            assert as_bytes(got.as_numpy("output")) == want, (binary_in, binary_out)
            assert list(got.as_numpy("output").shape) == [4, 2]


def test_bytes_that_are_not_utf8_are_refused_like_grpc(rest_server):
    bad = np.array([[b"ok", b"\xff\xfe"]], dtype=object)
    with pytest.raises(InferenceServerException) as caught:
        http_infer(
            rest_server, "echo", {"input": bad}, binary_in=True, binary_out=True, outputs=["output"]
        )
    assert caught.value.status() == "400"
    assert caught.value.message() == grpc_error(rest_server, "echo", {"input": bad}).message()
    assert "input 'input'" in caught.value.message()


@pytest.mark.parametrize(
    ("model", "array"),
    [
        ("half", np.array([[0.5, -2.25, 65504.0], [1e-3, 0.0, -0.0]], np.float16)),
        ("flags", np.array([[True, False, True], [False, False, True]])),
        ("ints", np.array([[-(2**31), 0, 2**31 - 1], [7, -7, 1]], np.int32)),
        ("small", np.array([[0, 255, 1], [2, 3, 4]], np.uint8)),
    ],
)
@pytest.mark.parametrize("binary", [False, True])
def test_datatypes_json_and_binary(rest_server, model, array, binary):
    want = grpc_infer(rest_server, model, {"input": array}).as_numpy("output")
    got = http_infer(
        rest_server,
        model,
        {"input": array},
        binary_in=binary,
        binary_out=binary,
        outputs=["output"],
    )
    assert got.as_numpy("output").dtype == want.dtype == array.dtype
    np.testing.assert_array_equal(got.as_numpy("output"), want)
    entry = got.get_response()["outputs"][0]
    if not binary:  # JSON as the protocol writes it: numbers, true/false
        kinds = {bool} if model == "flags" else {float} if model == "half" else {int}
        assert {type(v) for v in entry["data"]} == kinds


def test_values_out_of_a_datatypes_range_are_refused(rest_server):
    cases = [
        ("small", "UINT8", [[300, 0, 0]], "value 300 is out of the range of UINT8"),
        ("small", "UINT8", [[-1, 0, 0]], "value -1 is out of the range of UINT8"),
        ("half", "FP16", [[1e6, 0, 0]], "out of the range of FP16"),
        ("ints", "INT32", [[1.5, 0, 0]], "INT32 data must be integers"),
        ("flags", "BOOL", [[1, 0, 1]], "BOOL data must be true or false"),
    ]
    for model, datatype, data, words in cases:
        body = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": datatype, "data": data}]}
        status, _, answer = post_json(rest_server.http, f"/v2/models/{model}/infer", body)
        assert (status, words in answer["error"]) == (400, True), (model, answer)
        assert "input 'input'" in answer["error"]


def test_failover_parameters_come_back_as_in_grpc(rest_server):
    x = np.linspace(-1, 1, 2 * N_FEATURES, dtype=np.float32).reshape(2, N_FEATURES)
    status, _, _ = post_json(rest_server.http, "/v2/models/primary/fault", {"kind": "error"})
    assert status == 200
    try:
        got = http_infer(
            rest_server, "primary", {"x": x}, binary_in=True, binary_out=True, outputs=["y"]
        )
        want = grpc_infer(rest_server, "primary", {"x": x})
    finally:
        post_json(rest_server.http, "/v2/models/primary/fault", {"kind": "clear"})
    response = got.get_response()
    assert response["model_name"] == "backup"
    grpc_params = {
        k: getattr(v, v.WhichOneof("parameter_choice"))
        for k, v in want.get_response().parameters.items()
    }
    assert response["parameters"] == grpc_params
    assert response["parameters"]["failover"] is True
    assert response["parameters"]["failover_from"] == "primary"
    np.testing.assert_array_equal(got.as_numpy("y"), want.as_numpy("y"))


# -- request ids, parameters ----------------------------------------------------------------


def linear_body(request_id=None, **parameters) -> dict:
    body: dict = {
        "inputs": [
            {"name": "x", "shape": [1, N_FEATURES], "datatype": "FP32", "data": [0.25] * N_FEATURES}
        ]
    }
    if request_id is not None:
        body["id"] = request_id
    if parameters:
        body["parameters"] = parameters
    return body


def test_request_id_round_trip(rest_server):
    path = "/v2/models/linear/infer"
    # The V2 id alone: echoed in the JSON and the header.
    status, head, answer = post_json(rest_server.http, path, linear_body("req-0"))
    assert (status, answer["id"], head["x-request-id"]) == (200, "req-0", "req-0")
    # Both: each place echoes its own (as gRPC does: metadata header, response id).
    status, head, answer = post_json(
        rest_server.http, path, linear_body("req-1"), {"x-request-id": "from-header"}
    )
    assert (status, answer["id"], head["x-request-id"]) == (200, "req-1", "from-header")
    # The header alone.
    status, head, answer = post_json(
        rest_server.http, path, linear_body(), {"x-request-id": "hdr-2"}
    )
    assert (status, answer["id"], head["x-request-id"]) == (200, "hdr-2", "hdr-2")
    # Neither: a new one, the same in both places, different each time.
    ids = set()
    for _ in range(2):
        status, head, answer = post_json(rest_server.http, path, linear_body())
        assert status == 200
        assert re.fullmatch(r"[0-9a-f]{32}", answer["id"]), answer["id"]
        assert head["x-request-id"] == answer["id"]
        ids.add(answer["id"])
    assert len(ids) == 2
    # Errors carry it too.
    bad = {"inputs": [{"name": "nope", "shape": [1], "datatype": "FP32", "data": [1]}]}
    status, head, answer = post_json(rest_server.http, path, bad, {"x-request-id": "hdr-3"})
    assert (status, head["x-request-id"]) == (400, "hdr-3")
    status, head, _ = post_json(rest_server.http, path, b"{")
    assert status == 400 and re.fullmatch(r"[0-9a-f]{32}", head["x-request-id"])
    # tritonclient's request_id is the V2 id.
    x = np.zeros((1, N_FEATURES), np.float32)
    got = http_infer(
        rest_server, "linear", {"x": x}, binary_in=True, binary_out=True, request_id="tc-4"
    )
    assert got.get_response()["id"] == "tc-4"


def test_timeout_and_priority_parameters_read_as_on_grpc(rest_server):
    x = np.zeros((1, N_FEATURES), np.float32)
    got = http_infer(
        rest_server,
        "linear",
        {"x": x},
        binary_in=True,
        binary_out=True,
        timeout=30_000_000,
        priority=1,
    )
    np.testing.assert_array_equal(
        got.as_numpy("y"), grpc_infer(rest_server, "linear", {"x": x}).as_numpy("y")
    )
    # A wrong value is refused in the core's words, the same as over gRPC (tritonclient's
    # gRPC side cannot send a negative priority: it is a uint64 there).
    status, _, answer = post_json(
        rest_server.http, "/v2/models/linear/infer", linear_body(timeout=-1)
    )
    want = grpc_error(rest_server, "linear", {"x": x}, timeout=-1)
    assert (status, answer["error"]) == (400, want.message())
    status, _, answer = post_json(
        rest_server.http, "/v2/models/linear/infer", linear_body(priority=-3)
    )
    assert (status, answer["error"]) == (
        400,
        "request parameter 'priority' must be >= 0 (0 is the default level); got -3",
    )
    for value in (1.5, "10", True):
        status, _, answer = post_json(
            rest_server.http, "/v2/models/linear/infer", linear_body(timeout=value)
        )
        assert status == 400
        assert answer["error"] == "request parameter 'timeout' must be an integer (microseconds)"


def test_a_deadline_that_cannot_be_met_is_504_as_grpc_says_deadline_exceeded(rest_server):
    x = np.zeros((1, N_FEATURES), np.float32)
    status, _, answer = post_json(
        rest_server.http, "/v2/models/linear/infer", linear_body(timeout=1)
    )
    want = grpc_error(rest_server, "linear", {"x": x}, timeout=1)
    assert want.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert status == 504, answer
    assert answer["error"]
    still_serves(rest_server)


def test_a_body_over_the_message_limit_is_413_and_the_server_goes_on(rest_server):
    rows = 9000  # 9000 x 32 x 4 bytes > 1 MiB (--max-message-mb 1)
    body = {
        "inputs": [
            {
                "name": "x",
                "shape": [rows, N_FEATURES],
                "datatype": "FP32",
                "parameters": {"binary_data_size": rows * N_FEATURES * 4},
            }
        ]
    }
    head = json.dumps(body).encode()
    status, headers, raw = call(
        rest_server.http,
        "POST",
        "/v2/models/linear/infer",
        head + bytes(rows * N_FEATURES * 4),
        {HEADER: str(len(head))},
    )
    assert status == 413, raw
    assert headers["content-type"] == "application/json"
    assert "larger than 1048576 bytes" in json.loads(raw)["error"]
    still_serves(rest_server)


# -- bad requests --------------------------------------------------------------------------

ROW = [0.5] * N_FEATURES
GOOD_INPUT = {"name": "x", "shape": [1, N_FEATURES], "datatype": "FP32", "data": ROW}
BINARY_INPUT = {
    "name": "x",
    "shape": [1, N_FEATURES],
    "datatype": "FP32",
    "parameters": {"binary_data_size": 4 * N_FEATURES},
}
RAW_ROW = np.asarray(ROW, np.float32).tobytes()


def _with_binary(body: dict, tail: bytes, header: str | None = None) -> tuple[bytes, dict]:
    head = json.dumps(body).encode()
    return head + tail, {HEADER: header if header is not None else str(len(head))}


BAD_REQUESTS = {
    "not JSON": (
        "linear", b'{"inputs": [', {}, 400, ["request body is not JSON"],
    ),
    "not an object": ("linear", b"[1, 2]", {}, 400, ["must be a JSON object"]),
    "no inputs": ("linear", b"{}", {}, 400, ["needs 'inputs'"]),
    "wrong shape": (
        "linear",
        {"inputs": [{**GOOD_INPUT, "shape": [1, 5], "data": [1.0] * 5}]},
        {}, 400, ["input 'x'", "[1, 5]", "[-1, 32]"],
    ),
    "shape and data disagree": (
        "linear", {"inputs": [{**GOOD_INPUT, "data": ROW[:-1]}]}, {}, 400,
        ["input 'x'", "needs 32 elements but 'data' has 31"],
    ),
    "unknown datatype": (
        "linear", {"inputs": [{**GOOD_INPUT, "datatype": "FP8"}]}, {}, 400,
        ["input 'x'", "unknown datatype 'FP8'"],
    ),
    "strings for FP32": (
        "linear", {"inputs": [{**GOOD_INPUT, "data": ["a"] * N_FEATURES}]}, {}, 400,
        ["input 'x'", "FP32 data must be numbers"],
    ),
    "a ragged nested list": (
        "linear", {"inputs": [{**GOOD_INPUT, "shape": [2, 2], "data": [[1.0], [2.0, 3.0, 4.0]]}]},
        {}, 400, ["input 'x'", "[2, 2]"],
    ),
    "unknown input": (
        "linear", {"inputs": [{**GOOD_INPUT, "name": "z"}]}, {}, 400,
        ["model 'linear' has no input 'z'"],
    ),
    "input twice": (
        "linear", {"inputs": [GOOD_INPUT, GOOD_INPUT]}, {}, 400,
        ["input 'x' appears more than once"],
    ),
    "unknown output": (
        "linear", {"inputs": [GOOD_INPUT], "outputs": [{"name": "nope"}]}, {}, 400,
        ["has no output 'nope'"],
    ),
    "classification": (
        "linear",
        {"inputs": [GOOD_INPUT], "outputs": [{"name": "y", "parameters": {"classification": 2}}]},
        {}, 400, ["output 'y'", "classification extension is not supported"],
    ),
    "unknown model": ("nope", {"inputs": [GOOD_INPUT]}, {}, 404, ["model 'nope' not found"]),
    "version not found": (
        "linear/versions/9", {"inputs": [GOOD_INPUT]}, {}, 404, ["has no version '9'"],
    ),
    "binary size short of the shape": (
        "linear",
        *_with_binary({"inputs": [{**BINARY_INPUT, "parameters": {"binary_data_size": 100}}]},
                      RAW_ROW[:100]),
        400, ["input 'x'", "binary_data_size is 100 bytes", "needs 128 bytes"],
    ),
    "binary sizes beyond the body": (
        "linear", *_with_binary({"inputs": [BINARY_INPUT]}, RAW_ROW[:64]), 400,
        ["input 'x'", "binary_data_size is 128 bytes but only 64"],
    ),
    "binary bytes left over": (
        "linear", *_with_binary({"inputs": [BINARY_INPUT]}, RAW_ROW + b"\0" * 4), 400,
        ["132 bytes of binary data", "add up to 128"],
    ),
    "header longer than the body": (
        "linear", *_with_binary({"inputs": [BINARY_INPUT]}, RAW_ROW, "100000"), 400,
        [f"{HEADER} is 100000", "has only"],
    ),
    "header not a number": (
        "linear", *_with_binary({"inputs": [BINARY_INPUT]}, RAW_ROW, "12a"), 400,
        [f"{HEADER} must be a byte count"],
    ),
    "header cutting the JSON": (
        "linear", *_with_binary({"inputs": [BINARY_INPUT]}, RAW_ROW, "20"), 400,
        ["the first 20 bytes of the body", "is not JSON"],
    ),
    "binary data without the header": (
        "linear", json.dumps({"inputs": [BINARY_INPUT]}).encode() + RAW_ROW, {}, 400,
        ["is not JSON", f"needs the {HEADER} header"],
    ),
    "binary_data_size without binary data": (
        "linear", {"inputs": [BINARY_INPUT]}, {}, 400,
        ["input 'x'", f"no {HEADER} header"],
    ),
    "no data": (
        "linear", {"inputs": [{k: v for k, v in GOOD_INPUT.items() if k != "data"}]}, {}, 400,
        ["input 'x' has no data"],
    ),
}  # fmt: skip


@native
@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_json_error_and_the_server_goes_on(server, case):
    model, body, headers, status, words = BAD_REQUESTS[case]
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    got, head, raw = call(
        server.http,
        "POST",
        f"/v2/models/{model}/infer",
        data,
        {"Content-Type": "application/json", **headers},
    )
    assert head["content-type"] == "application/json"
    assert "x-request-id" in head
    message = json.loads(raw)["error"]
    assert got == status, message
    for word in words:
        assert word in message, (word, message)
    still_serves(server)


@native
def test_errors_of_the_core_say_over_rest_what_they_say_over_grpc(server):
    cases = [
        {"x": np.zeros((1, 5), np.float32)},  # wrong shape
        {"z": np.zeros((1, N_FEATURES), np.float32)},  # unknown input
    ]
    for arrays in cases:
        want = grpc_error(server, "linear", arrays)
        for binary in (False, True):
            with pytest.raises(InferenceServerException) as caught:
                http_infer(
                    server, "linear", arrays, binary_in=binary, binary_out=binary, outputs=["y"]
                )
            assert (caught.value.status(), caught.value.message()) == ("400", want.message())
    # The demo's feature contract refuses NaN naming row and feature, on both transports.
    nan = {"features": np.full((1, 32), np.nan, np.float32)}
    want = grpc_error(server, "tabular", nan)
    with pytest.raises(InferenceServerException) as caught:
        http_infer(server, "tabular", nan, binary_in=True, binary_out=True)
    assert (caught.value.status(), caught.value.message()) == ("400", want.message())


@native
def test_unknown_routes_and_models_are_json_404(server):
    for path in (
        "/v2/models/nope",
        "/v2/models/nope/config",
        "/v2/models/nope/stats",
        "/v2/models/linear/versions/9",
        "/v2/nothing",
    ):
        status, head, raw = call(server.http, "GET", path)
        assert status == 404, path
        assert "error" in json.loads(raw), path


# -- metadata, config, statistics ------------------------------------------------------------


@native
def test_server_metadata(server):
    client = http_client(server)
    try:
        got = client.get_server_metadata()
    finally:
        client.close()
    with grpcclient.InferenceServerClient(server.grpc) as grpc:
        want = grpc.get_server_metadata(as_json=True)
    assert got["name"] == want["name"] == "steadyserve"
    assert got["version"] == want["version"]
    assert got["extensions"] == [*want["extensions"], "binary_tensor_data"]


@native
@pytest.mark.parametrize("model", ["linear", "add", "fixed", "tabular"])
def test_model_metadata_and_config_equal_grpc(server, model):
    client = http_client(server)
    try:
        metadata = client.get_model_metadata(model)
        versioned = client.get_model_metadata(model, "1")
        config = client.get_model_config(model)
        versioned_config = client.get_model_config(model, "1")
    finally:
        client.close()
    with grpcclient.InferenceServerClient(server.grpc) as grpc:
        want_metadata = grpc.get_model_metadata(model, as_json=True)
        want_config = grpc.get_model_config(model, as_json=True)["config"]
    assert metadata == versioned
    assert substance(metadata) == substance(want_metadata)
    # Shapes are numbers (-1 for the batch dimension), as the V2 REST protocol has them.
    shapes = [t["shape"] for t in metadata["inputs"] + metadata["outputs"]]
    assert all(type(d) is int for shape in shapes for d in shape)
    if model != "fixed":
        assert all(shape[0] == -1 for shape in shapes)
    assert config == versioned_config
    assert substance(config) == substance(want_config)
    # Triton's REST form: every field, 64-bit integers as numbers.
    assert config["max_batch_size"] == (0 if model == "fixed" else want_config["max_batch_size"])
    assert all(type(d) is int for t in config["input"] + config["output"] for d in t["dims"])
    if "dynamic_batching" in config:
        assert type(config["dynamic_batching"]["max_queue_delay_microseconds"]) is int


@native
def test_statistics_equal_grpc(server):
    arrays = sample_inputs(server, "fixed", rows=1)
    for binary in (False, True):
        http_infer(server, "fixed", arrays, binary_in=binary, binary_out=binary)
    client = http_client(server)
    try:
        one = client.get_inference_statistics("fixed")
        versioned = client.get_inference_statistics("fixed", "1")
        every = client.get_inference_statistics()
    finally:
        client.close()
    with grpcclient.InferenceServerClient(server.grpc) as grpc:
        want = grpc.get_inference_statistics("fixed", as_json=True)
        want_every = grpc.get_inference_statistics(as_json=True)
    assert one == versioned
    assert substance(one) == substance(want)
    (stats,) = one["model_stats"]
    assert (stats["name"], stats["version"]) == ("fixed", "1")
    assert stats["inference_stats"]["success"]["count"] >= 2
    assert type(stats["inference_stats"]["success"]["ns"]) is int
    assert type(stats["last_inference"]) is int and stats["last_inference"] > 0
    assert sorted(s["name"] for s in every["model_stats"]) == sorted(
        s["name"] for s in want_every["model_stats"]
    )
    status, _, raw = call(server.http, "GET", "/v2/models/fixed/versions/9/stats")
    assert status == 404 and "has no version '9'" in json.loads(raw)["error"]


# -- other clients ------------------------------------------------------------------------------


@native
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_with_a_json_body(server, tmp_path):
    x = np.linspace(-1, 1, 2 * N_FEATURES, dtype=np.float32).reshape(2, N_FEATURES)
    body = tmp_path / "body.json"
    body.write_text(
        json.dumps(
            {
                "id": "curl-1",
                "inputs": [
                    {"name": "x", "shape": [2, N_FEATURES], "datatype": "FP32", "data": x.tolist()}
                ],
            }
        )
    )
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            f"@{body}",
            "-D",
            str(tmp_path / "head"),
            f"{server.http}/v2/models/linear/infer",
        ],
        capture_output=True,
        timeout=30,
        check=True,
    )
    head = (tmp_path / "head").read_text().lower()
    assert head.startswith("http/1.1 200") and "x-request-id: curl-1" in head
    answer = json.loads(done.stdout)
    (out,) = answer["outputs"]
    assert (answer["id"], out["name"], out["shape"]) == ("curl-1", "y", [2, N_OUTPUTS])
    want = grpc_infer(server, "linear", {"x": x}).as_numpy("y")
    np.testing.assert_array_equal(np.array(out["data"], np.float32).reshape(want.shape), want)
    done = subprocess.run(
        ["curl", "-sS", f"{server.http}/v2/models/linear"],
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert json.loads(done.stdout)["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, N_FEATURES]}
    ]


KSERVE_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    import numpy as np
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    base, rows = sys.argv[1], json.loads(sys.argv[2])
    x = np.asarray(rows, dtype=np.float32)

    async def main():
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
        out = {"server_ready": await client.is_server_ready(base),
               "model_ready": await client.is_model_ready(base, "linear")}
        for binary in (False, True):
            tensor = InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            params = {"binary_data_output": True} if binary else None
            request = InferRequest(model_name="linear", infer_inputs=[tensor],
                                   request_id=f"ks-{binary}", parameters=params)
            response = await client.infer(base, request, model_name="linear")
            y = response.outputs[0]
            out[f"binary={binary}"] = {"id": response.id, "model_name": response.model_name,
                                       "name": y.name, "y": y.as_numpy().tolist()}
        bad = InferInput("x", [1, 5], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 5), np.float32), binary_data=False)
        try:
            await client.infer(base, InferRequest(model_name="linear", infer_inputs=[bad]),
                               model_name="linear")
        except Exception as exc:
            out["error"] = str(exc)
        await client.close()
        print(json.dumps(out))

    asyncio.run(main())
    """
)


@native
@pytest.mark.skipif(importlib.util.find_spec("kserve") is None, reason="needs kserve")
def test_kserve_rest_client(server):
    # In its own process: kserve's protobuf messages and tritonclient's cannot share one
    # descriptor pool.
    x = np.linspace(-1, 1, 3 * N_FEATURES, dtype=np.float32).reshape(3, N_FEATURES)
    done = subprocess.run(
        [sys.executable, "-c", KSERVE_SCRIPT, server.http, json.dumps(x.tolist())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["server_ready"] is True and out["model_ready"] is True
    want = grpc_infer(server, "linear", {"x": x}).as_numpy("y")
    for binary in (False, True):
        answer = out[f"binary={binary}"]
        assert (answer["id"], answer["model_name"], answer["name"]) == (
            f"ks-{binary}",
            "linear",
            "y",
        )
        np.testing.assert_array_equal(np.asarray(answer["y"], np.float32), want)
    assert "input 'x' has shape [1, 5]" in out["error"]
    assert "400" in out["error"]


# -- the codec alone -----------------------------------------------------------------------------


def test_the_codec_loads_no_protobuf_code():
    code = (
        "import sys, steadyserve.server.rest_codec\n"
        "prefixes = ('steadyserve._proto', 'google.protobuf')\n"
        "loaded = [m for m in sys.modules if m.startswith(prefixes)]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def codec():
    from steadyserve.server import rest_codec

    return rest_codec


ARRAYS = {
    "BOOL": np.array([[True, False], [False, True]]),
    "UINT8": np.array([[0, 255], [1, 2]], np.uint8),
    "UINT16": np.array([[0, 65535], [1, 2]], np.uint16),
    "UINT32": np.array([[0, 2**32 - 1], [1, 2]], np.uint32),
    "UINT64": np.array([[0, 2**64 - 1], [1, 2]], np.uint64),
    "INT8": np.array([[-128, 127], [1, 2]], np.int8),
    "INT16": np.array([[-(2**15), 2**15 - 1], [1, 2]], np.int16),
    "INT32": np.array([[-(2**31), 2**31 - 1], [1, 2]], np.int32),
    "INT64": np.array([[-(2**63), 2**63 - 1], [1, 2]], np.int64),
    "FP16": np.array([[0.5, -1.0], [65504.0, 0.0]], np.float16),
    "FP32": np.array([[0.1, -1e30], [3.0, np.inf]], np.float32),
    "FP64": np.array([[0.1, -1e300], [3.0, np.nan]], np.float64),
    "BYTES": np.array([["a", "ß"], ["", "🙂"]], dtype=object),
}


@pytest.mark.parametrize("datatype", list(ARRAYS))
@pytest.mark.parametrize("binary", [False, True])
def test_codec_round_trip(datatype, binary):
    """An encoded answer's tensor, sent back as a request's input, decodes to itself."""
    c = codec()
    array = ARRAYS[datatype]
    body, n = c.encode_response(
        model_name="m",
        model_version="1",
        request_id="r",
        parameters={},
        outputs={"t": array},
        binary_output=binary,
        requested=None,
    )
    head = json.loads(body[:n] if n else body)
    (entry,) = head["outputs"]
    assert (entry["datatype"], entry["shape"]) == (datatype, [2, 2])
    request = {"id": "r", "inputs": [entry]}
    json_part = json.dumps(request).encode()
    tail = body[n:] if n else b""
    decoded = c.decode_request(json_part + tail, str(len(json_part)) if n else None)
    got = decoded.inputs["t"]
    assert got.shape == array.shape
    if datatype == "BYTES":
        assert as_bytes(got) == as_bytes(array)
    else:
        assert got.dtype == array.dtype
        np.testing.assert_array_equal(got, array)


def test_codec_nested_and_flat_data_are_the_same():
    c = codec()
    flat = c.decode_json_data("x", "FP32", (2, 3), 6, [1, 2, 3, 4, 5, 6])
    nested = c.decode_json_data("x", "FP32", (2, 3), 6, [[1, 2, 3], [4, 5, 6]])
    deeper = c.decode_json_data("x", "FP32", (2, 3), 6, [[[1], [2, 3]], [4, [5, [6]]]])
    for got in (nested, deeper):
        np.testing.assert_array_equal(got, flat)
    assert flat.dtype == np.float32 and flat.shape == (2, 3)
    # JSON numbers are rounded to the datatype (0.1 is not a float32).
    assert c.decode_json_data("x", "FP32", (1,), 1, [0.1])[0] == np.float32(0.1)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\x01\x00\x00", "ends inside the 4-byte length of element 0"),
        (b"\x05\x00\x00\x00abc", "element 0 says 5 bytes but only 3 are left"),
        (b"\x01\x00\x00\x00a", "has 1 elements but shape [2] needs 2"),
        (b"\x01\x00\x00\x00a" * 3, "has 3 elements but shape [2] needs 2"),
    ],
)
def test_codec_refuses_malformed_bytes_tensors(data, words):
    from steadyserve.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match=re.escape(words)) as caught:
        codec().decode_binary("t", "BYTES", (2,), 2, memoryview(data))
    assert "input 't'" in str(caught.value)


@pytest.mark.parametrize(
    ("datatype", "data", "words"),
    [
        ("INT64", [2**70], f"value {2**70} is out of the range of INT64"),
        ("UINT64", [-1], "value -1 is out of the range of UINT64"),
        ("INT8", [128], "value 128 is out of the range of INT8"),
        ("FP32", [1e40], "value 1e+40 (element 0) is out of the range of FP32"),
        ("FP32", [True], "FP32 data must be numbers; got a boolean (true)"),
        ("INT32", ["1"], "INT32 data must be integers; got a string ('1')"),
        ("BOOL", [0], "BOOL data must be true or false; got a number (0)"),
        ("BYTES", [1], "BYTES data must be strings; element 0 is a number (1)"),
    ],
)
def test_codec_refuses_values_the_datatype_cannot_hold(datatype, data, words):
    from steadyserve.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match=re.escape(words)):
        codec().decode_json_data("t", datatype, (1,), 1, data)


def test_codec_bool_bytes_must_be_0_or_1():
    from steadyserve.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="BOOL byte 1 is 2"):
        codec().decode_binary("t", "BOOL", (3,), 3, memoryview(b"\x01\x02\x00"))


def test_codec_shapes_are_counted_without_allocating():
    from steadyserve.errors import InvalidArgumentError

    huge = [2**40, 2**40]
    with pytest.raises(InvalidArgumentError, match="binary_data_size is 4 bytes"):
        codec().decode_binary("t", "FP32", tuple(huge), math.prod(huge), memoryview(b"\0" * 4))
