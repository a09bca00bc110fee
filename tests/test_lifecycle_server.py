"""Model lifecycle over the network: tritonclient's load_model/unload_model over gRPC
and HTTP, reloads under load from gRPC clients, management refused without the mode
or the token, path tricks, rollback and the lifecycle report over REST, a Triton
repository (config.pbtxt) served with its batching settings.
"""

from __future__ import annotations

import functools
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from onnx_models import linear_seed, make_repo, write_linear

T = 20.0  # seconds: a client timeout no test comes near
TOKEN = "s3cret-token-for-tests"
X = np.arange(8, dtype=np.float32).reshape(2, 4) / 8.0


def which(y: np.ndarray, seeds) -> int:
    """The seed whose weights computed ``y`` (for the input X)."""
    return linear_seed(y, X, seeds)


def add_version(root, version: int, seed: int, name: str = "m") -> None:
    target = root / name / str(version) / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_linear(target, seed=seed)


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    make_repo(
        root,
        {
            "m": functools.partial(write_linear, seed=1),
            "other": functools.partial(write_linear, seed=5),
        },
    )
    return root


def grpc_client(server):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(server.grpc)


def http_client(server):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(server.http.removeprefix("http://"))


def infer_grpc(client, name: str = "m"):
    import tritonclient.grpc as grpcclient

    x = grpcclient.InferInput("x", list(X.shape), "FP32")
    x.set_data_from_numpy(X)
    result = client.infer(name, [x], client_timeout=T)
    return result.as_numpy("y"), result.get_response().model_version


def post(server, path: str, body=None, token: str | None = None):
    """(status, parsed JSON) of a POST to the HTTP port."""
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(server.http + path, data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=T) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def get(server, path: str):
    try:
        with urllib.request.urlopen(server.http + path, timeout=T) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_reloads_under_grpc_load_fail_no_request(repo, launch):
    server = launch(repo, "--model-control-mode", "explicit", "--load-model", "m")
    errors: list[BaseException] = []
    answers: list[tuple[float, int]] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client_loop():
        client = grpc_client(server)
        try:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    y, _ = infer_grpc(client)
                    seed = which(y, range(1, 10))
                except BaseException as error:
                    with lock:
                        errors.append(error)
                    continue
                with lock:
                    answers.append((sent, seed))
        finally:
            client.close()

    threads = [threading.Thread(target=client_loop) for _ in range(3)]
    for t in threads:
        t.start()
    control = grpc_client(server)
    swaps = []
    try:
        time.sleep(0.2)
        for version in range(2, 6):
            add_version(repo, version, seed=version)
            control.load_model("m", client_timeout=T)
            swaps.append((time.monotonic(), version))
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        control.close()
    assert not errors, errors[:3]
    for returned, seed in swaps:
        later = [s for sent, s in answers if sent > returned]
        assert later and all(s >= seed for s in later)
    assert {s for _, s in answers} == {1, 2, 3, 4, 5}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tritonclient_load_and_unload(repo, launch, protocol):
    server = launch(repo, "--model-control-mode", "explicit", "--load-model", "m")
    client = grpc_client(server) if protocol == "grpc" else http_client(server)
    try:
        assert client.is_model_ready("m") and not client.is_model_ready("other")
        index = client.get_model_repository_index()
        states = (
            {m.name: m.state for m in index.models}
            if protocol == "grpc"
            else {m["name"]: m["state"] for m in index}
        )
        assert states == {"m": "READY", "other": "UNAVAILABLE"}
        client.load_model("other")
        assert client.is_model_ready("other")
        y, _ = infer_grpc(grpc_client(server), "other")
        assert which(y, [5]) == 5
        # A config given with the load request replaces the model's config for it.
        client.load_model("other", config=json.dumps({"max_batch_size": 4}))
        assert grpc_client(server).get_model_config("other").config.max_batch_size == 4
        client.unload_model("other")
        assert not client.is_model_ready("other")
        from tritonclient.utils import InferenceServerException

        with pytest.raises(InferenceServerException, match="no model 'missing'"):
            client.load_model("missing")
        # Over HTTP the client sends the name in the path, where ".." is resolved away
        # before routing: a 404 (as JSON) instead of the name check's message.
        says = "invalid model name" if protocol == "grpc" else "Not Found"
        with pytest.raises(InferenceServerException, match=says):
            client.load_model("../m")
        with pytest.raises(InferenceServerException, match="invalid model name"):
            client.load_model(".hidden")
        with pytest.raises(InferenceServerException, match="model files"):
            client.load_model("m", files={"file:1/model.onnx": b"\x00"})
    finally:
        client.close()


def test_a_corrupt_version_fails_the_load_and_the_old_one_serves(repo, launch):
    server = launch(repo, "--model-control-mode", "explicit", "--load-model", "m")
    bad = repo / "m" / "2" / "model.onnx"
    bad.parent.mkdir()
    bad.write_bytes(b"\x08garbage")
    from tritonclient.utils import InferenceServerException

    client = grpc_client(server)
    with pytest.raises(InferenceServerException) as info:
        client.load_model("m", client_timeout=T)
    assert str(bad) in info.value.message()
    y, version = infer_grpc(client)
    assert which(y, [1]) == 1 and version == "1"
    status, index = post(server, "/v2/repository/index")
    assert status == 200
    by_version = {e["version"]: e for e in index if e["name"] == "m"}
    assert by_version["1"]["state"] == "READY"
    assert by_version["2"]["state"] == "UNAVAILABLE" and str(bad) in by_version["2"]["reason"]
    client.close()


@pytest.mark.parametrize("mode", ["none", "poll"])
def test_management_refused_unless_explicit(repo, launch, mode):
    server = launch(repo, "--model-control-mode", mode)
    import grpc
    from tritonclient.utils import InferenceServerException

    client = grpc_client(server)
    with pytest.raises(InferenceServerException) as info:
        client.load_model("m")
    assert info.value.status() == str(grpc.StatusCode.FAILED_PRECONDITION)
    assert f"mode '{mode}'" in info.value.message()
    status, body = post(server, "/v2/repository/models/m/unload")
    assert status == 409 and f"mode '{mode}'" in body["error"]
    y, _ = infer_grpc(client)
    assert which(y, [1]) == 1
    client.close()


def test_management_needs_the_token(repo, launch):
    server = launch(
        repo,
        "--model-control-mode",
        "explicit",
        "--load-model",
        "*",
        "--management-token",
        TOKEN,
    )
    import grpc
    from tritonclient.utils import InferenceServerException

    client = grpc_client(server)
    for headers, says in (
        (None, "needs the management token"),
        ({"authorization": "Bearer x"}, "wrong"),
    ):
        with pytest.raises(InferenceServerException) as info:
            client.unload_model("m", headers=headers)
        assert info.value.status() == str(grpc.StatusCode.UNAUTHENTICATED)
        assert says in info.value.message()
    status, body = post(server, "/v2/repository/models/m/unload")
    assert status == 401 and "management token" in body["error"]
    status, body = post(server, "/v2/repository/models/m/rollback", token="wrong-token")
    assert status == 401
    assert client.is_model_ready("m")
    client.unload_model("m", headers={"authorization": f"Bearer {TOKEN}"})
    assert not client.is_model_ready("m")
    status, _ = post(server, "/v2/repository/models/m/load", token=TOKEN)
    assert status == 200 and client.is_model_ready("m")
    client.close()


@pytest.mark.parametrize("path", ["..%2Fm", "%2Fetc%2Fpasswd", "m%00x", ".hidden", "a..b"])
def test_path_tricks_are_refused_over_rest(repo, launch, path):
    server = launch(repo, "--model-control-mode", "explicit")
    status, body = post(server, f"/v2/repository/models/{path}/load")
    assert status in (400, 404), body
    assert "error" in body
    status, index = post(server, "/v2/repository/index")
    assert all(e["state"] != "READY" for e in index)


def test_rollback_and_the_lifecycle_report_over_rest(repo, launch):
    server = launch(repo, "--model-control-mode", "explicit", "--load-model", "m")
    status, body = post(server, "/v2/repository/models/m/rollback")
    assert status == 409 and "no previous version" in body["error"]
    add_version(repo, 2, seed=2)
    assert post(server, "/v2/repository/models/m/load")[0] == 200
    client = grpc_client(server)
    assert which(infer_grpc(client)[0], [1, 2]) == 2
    status, report = get(server, "/v2/models/m/lifecycle")
    assert status == 200 and report["versions"] == ["2"] and report["previous_versions"] == ["1"]
    status, body = post(server, "/v2/repository/models/m/rollback")
    assert (status, body) == (200, {"model": "m", "versions": ["1"]})
    y, version = infer_grpc(client)
    assert which(y, [1, 2]) == 1 and version == "1"
    status, body = get(server, "/v2/models/nope/lifecycle")
    assert status == 404 and "nope" in body["error"]
    client.close()


def test_the_cli_rolls_back(repo, launch):
    import subprocess
    import sys

    server = launch(repo, "--model-control-mode", "explicit", "--load-model", "m")
    add_version(repo, 2, seed=2)
    assert post(server, "/v2/repository/models/m/load")[0] == 200
    done = subprocess.run(
        [sys.executable, "-m", "steadyserve", "rollback", "m", "--url", server.http],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "versions 1" in done.stdout
    assert which(infer_grpc(grpc_client(server))[0], [1, 2]) == 1
    again = subprocess.run(
        [sys.executable, "-m", "steadyserve", "rollback", "m", "--url", server.http],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 1 and "no previous version" in again.stderr


TRITON_CONFIG = """
name: "tri"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 500
}
instance_group [ { count: 2 kind: KIND_CPU } ]
"""


def test_a_triton_repository_is_served_with_its_batching_settings(tmp_path, launch):
    root = tmp_path / "triton"
    make_repo(root, {"tri": functools.partial(write_linear, seed=3)})
    (root / "tri" / "config.pbtxt").write_text(TRITON_CONFIG)
    server = launch(root)
    client = grpc_client(server)
    assert which(infer_grpc(client, "tri")[0], [3]) == 3
    config = client.get_model_config("tri").config
    assert config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.instance_group[0].count == 2
    client.close()
