"""BYTES tensors end to end, as Triton encodes them (a 4-byte little-endian length before
each element): string outputs of a skl2onnx classifier, string inputs, in-process and
over gRPC, batched across callers; malformed BYTES refused with the input named.

Models:
- ``labels``: scikit-learn LogisticRegression trained on string labels, converted with
  skl2onnx (zipmap off): X FP32 [-1, 4] -> label BYTES [-1], probabilities FP32 [-1, 3].
- ``echo``: text BYTES [-1, 2] -> echo BYTES [-1, 2] (Identity) and code INT64 [-1, 2]
  (ai.onnx.ml LabelEncoder: "cat" 1, "dog" 2, "straße" 3, anything else -1).
- ``*_batched``: the same with max_batch_size 8 and a queue window far longer than any
  test, so a batch closes only when full: batch counts are deterministic.
- ``echo_fixed``: text BYTES [3] -> echo, unbatched (max_batch_size 0).
"""

from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper
from tritonclient.grpc import service_pb2, service_pb2_grpc

import onnx_models
import steadyserve
from conftest import start_server
from steadyserve.errors import InvalidArgumentError

T = 10.0
LONG_WINDOW_US = 10_000_000
CLASSES = ("cat", "dog", "bird")
CODES = {"cat": 1, "dog": 2, "straße": 3}
# Non-ASCII (2-, 3- and 4-byte UTF-8), empty, NUL inside, long, and plain.
TEXTS = ["cat", "", "straße", "日本語", "🙂 emoji", "a\x00b", "x" * 300, "dog"]


def _train():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 4)).astype(np.float32)
    y = np.array(CLASSES)[np.argmax(x[:, :3] + 0.3 * x[:, 3:], axis=1)]
    return LogisticRegression(max_iter=1000).fit(x, y)


def write_classifier(path, clf) -> None:
    from skl2onnx import to_onnx

    model = to_onnx(
        clf,
        np.zeros((1, 4), np.float32),
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    model.ir_version = min(model.ir_version, onnx_models.IR_VERSION)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))


def write_echo(path, dims=("batch", 2)) -> None:
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["text"], ["echo"]),
            helper.make_node(
                "LabelEncoder",
                ["text"],
                ["code"],
                domain="ai.onnx.ml",
                keys_strings=list(CODES),
                values_int64s=list(CODES.values()),
                default_int64=-1,
            ),
        ],
        "echo",
        [helper.make_tensor_value_info("text", TensorProto.STRING, list(dims))],
        [
            helper.make_tensor_value_info("echo", TensorProto.STRING, list(dims)),
            helper.make_tensor_value_info("code", TensorProto.INT64, list(dims)),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 2)],
    )
    model.ir_version = onnx_models.IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))


@pytest.fixture(scope="module")
def clf():
    return _train()


@pytest.fixture(scope="module")
def repo(tmp_path_factory, clf):
    root = tmp_path_factory.mktemp("bytes_repo")
    batched = {"max_batch_size": 8, "batching": {"max_queue_delay_us": LONG_WINDOW_US}}
    onnx_models.make_repo(
        root,
        {
            "labels": functools.partial(write_classifier, clf=clf),
            "labels_batched": functools.partial(write_classifier, clf=clf),
            "echo": write_echo,
            "echo_batched": write_echo,
            "echo_fixed": functools.partial(write_echo, dims=(3,)),
        },
        configs={
            "labels": {"max_batch_size": 64},
            "labels_batched": batched,
            "echo": {"max_batch_size": 16},
            "echo_batched": batched,
            "echo_fixed": {"max_batch_size": 0},
        },
    )
    return root


@pytest.fixture(scope="module")
def runtime(repo):
    rt = steadyserve.Runtime(repo)
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    proc = start_server(repo, log_dir=tmp_path_factory.mktemp("bytes_logs"), name="bytes")
    yield proc
    assert proc.stop() == 0, proc.stderr()[-4000:]


@pytest.fixture(scope="module")
def client(server):
    c = grpcclient.InferenceServerClient(server.grpc)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)


def _decisive(clf, x: np.ndarray) -> np.ndarray:
    """Rows whose top two class probabilities are not within float32 noise of each other
    (ONNX computes in float32, scikit-learn in float64)."""
    p = np.sort(clf.predict_proba(x), axis=1)
    return x[p[:, -1] - p[:, -2] > 1e-4]


def _texts(n: int, seed: int) -> np.ndarray:
    """[n, 2] distinct strings (each names its row), mixed with TEXTS."""
    out = np.empty((n, 2), dtype=object)
    for i in range(n):
        out[i, 0] = f"{seed}:{i}:{TEXTS[i % len(TEXTS)]}"
        out[i, 1] = TEXTS[(i + seed) % len(TEXTS)]
    return out


def _encoded(texts: np.ndarray) -> list:
    return np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(texts).tolist()


def _codes(texts: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda s: CODES.get(s, -1), otypes=[np.int64])(texts)


def _element(data: bytes) -> bytes:
    return len(data).to_bytes(4, "little") + data


def _serialized(texts) -> bytes:
    return b"".join(_element(s.encode("utf-8")) for s in np.asarray(texts).reshape(-1))


# -- the signature -----------------------------------------------------------------------


def test_string_tensors_are_bytes_in_the_signature(repo, runtime):
    session = ort.InferenceSession(str(repo / "labels" / "1" / "model.onnx"))
    types = {o.name: o.type for o in session.get_outputs()}
    assert types == {"label": "tensor(string)", "probabilities": "tensor(float)"}
    labels = runtime.get_model("labels")
    assert [(s.name, s.datatype, s.shape) for s in labels.outputs] == [
        ("label", "BYTES", (-1,)),
        ("probabilities", "FP32", (-1, 3)),
    ]
    echo = runtime.get_model("echo")
    assert [(s.name, s.datatype) for s in echo.inputs] == [("text", "BYTES")]
    assert [(s.name, s.datatype) for s in echo.outputs] == [("echo", "BYTES"), ("code", "INT64")]


# -- in-process --------------------------------------------------------------------------


def test_classifier_labels_equal_predict(clf, runtime):
    x = _decisive(clf, _rows(1000, seed=1))
    assert len(x) > 900
    labels, probabilities = [], []
    for start in range(0, len(x), 64):
        result = runtime.infer("labels", {"X": x[start : start + 64]})
        assert result["label"].dtype == object
        labels.extend(result["label"].tolist())
        probabilities.append(result["probabilities"])
    assert all(isinstance(label, bytes) for label in labels)
    assert [label.decode() for label in labels] == clf.predict(x).tolist()
    np.testing.assert_allclose(np.concatenate(probabilities), clf.predict_proba(x), atol=1e-5)


def test_batched_labels_each_caller_gets_its_rows(clf, runtime):
    """32 callers of 2 rows each, batches of 8 rows: every batch holds 4 callers' labels
    of different lengths ("cat", "bird"); each caller gets exactly its own two."""
    model = runtime.get_model("labels_batched")
    before = model.statistics()
    x = _decisive(clf, _rows(200, seed=2))[:64].reshape(32, 2, 4)
    answers: dict[int, tuple] = {}

    def caller(i: int) -> None:
        r = runtime.infer("labels_batched", {"X": x[i]})
        answers[i] = (r["label"], r["probabilities"])

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(32):
        labels, probabilities = answers[i]
        assert labels.shape == (2,)
        assert [label.decode() for label in labels] == clf.predict(x[i]).tolist()
        np.testing.assert_allclose(probabilities, clf.predict_proba(x[i]), atol=1e-5)
    after = model.statistics()
    assert after.inference_count - before.inference_count == 64
    assert after.execution_count - before.execution_count == 8  # 4 callers per batch


@pytest.mark.parametrize("kind", ["object", "str", "bytes", "list"])
def test_string_input_round_trips_in_process(runtime, kind):
    texts = np.array([TEXTS[:2], TEXTS[2:4], TEXTS[4:6], TEXTS[6:8]], dtype=object)
    inputs = {
        "object": texts,
        "str": texts.astype(str),
        "bytes": np.vectorize(lambda s: s.encode(), otypes=[object])(texts),
        "list": texts.tolist(),
    }[kind]
    result = runtime.infer("echo", {"text": inputs})
    assert result["echo"].shape == (4, 2) and result["echo"].dtype == object
    assert result["echo"].tolist() == _encoded(texts)
    np.testing.assert_array_equal(result["code"], _codes(texts))


def test_string_tensors_round_trip_through_the_prediction_log(repo, tmp_path):
    from steadyserve.predictions.reader import read_predictions

    sent = [_texts(3, seed=1), _texts(1, seed=2)]
    with steadyserve.Runtime(repo, models=["echo", "echo_fixed"], prediction_log=tmp_path) as rt:
        ids = [rt.infer("echo", {"text": texts}).request_id for texts in sent]
        fixed = np.array(TEXTS[:3], dtype=object)
        rt.infer("echo_fixed", {"text": fixed}, request_id="unbatched")
    records = {r["request_id"]: r for r in read_predictions(tmp_path, "echo")}
    for rid, texts in zip(ids, sent, strict=True):
        record = records[rid]
        assert record["inputs"]["text"].tolist() == _encoded(texts)
        assert record["outputs"]["echo"].tolist() == _encoded(texts)
        np.testing.assert_array_equal(record["outputs"]["code"], _codes(texts))
    (unbatched,) = read_predictions(tmp_path, "echo_fixed")  # one row of the model's shape
    assert unbatched["request_id"] == "unbatched"
    assert unbatched["inputs"]["text"].tolist() == [_encoded(fixed)]
    assert unbatched["outputs"]["echo"].tolist() == [_encoded(fixed)]


def test_batched_string_inputs_each_caller_gets_its_rows(runtime):
    """Callers' BYTES inputs are concatenated into one batch and the BYTES outputs cut
    back per caller: each gets exactly the strings it sent."""
    model = runtime.get_model("echo_batched")
    before = model.statistics()
    sent = {i: _texts(2, seed=i) for i in range(16)}
    answers: dict[int, object] = {}

    def caller(i: int) -> None:
        answers[i] = runtime.infer("echo_batched", {"text": sent[i]})

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(16):
        assert answers[i]["echo"].tolist() == _encoded(sent[i])
        np.testing.assert_array_equal(answers[i]["code"], _codes(sent[i]))
    assert model.statistics().execution_count - before.execution_count == 4


def test_unbatched_string_model(runtime):
    texts = np.array(["", "straße", "🙂"], dtype=object)
    result = runtime.infer("echo_fixed", {"text": texts})
    assert result["echo"].tolist() == _encoded(texts)
    np.testing.assert_array_equal(result["code"], [-1, 3, -1])


def test_asyncio_string_round_trip(runtime):
    import asyncio

    async def main():
        return await asyncio.gather(
            *(runtime.infer_async("echo", {"text": _texts(3, seed=s)}) for s in range(8))
        )

    for seed, result in enumerate(asyncio.run(main())):
        assert result["echo"].tolist() == _encoded(_texts(3, seed=seed))


def test_in_process_strings_that_are_not_text_are_refused(runtime):
    not_text = r"input 'text': BYTES element 1 is not valid UTF-8"
    with pytest.raises(InvalidArgumentError, match=not_text):
        runtime.infer("echo", {"text": np.array([[b"ok", b"\xff\xfe"]], dtype=object)})
    with pytest.raises(InvalidArgumentError, match=r"input 'text': element 1 is int 7"):
        runtime.infer("echo", {"text": np.array([["ok", 7]], dtype=object)})
    with pytest.raises(InvalidArgumentError, match=r"input 'text'.*BYTES"):
        runtime.infer("echo", {"text": np.zeros((1, 2), np.float32)})
    with pytest.raises(InvalidArgumentError, match=r"input 'X'.*BYTES"):
        runtime.infer("labels", {"X": np.full((1, 4), "1.0")})
    assert runtime.infer("echo", {"text": [["still", "serving"]]})["echo"].tolist() == [
        [b"still", b"serving"]
    ]


# -- gRPC --------------------------------------------------------------------------------


def test_grpc_metadata_and_config_of_bytes_models(client):
    meta = client.get_model_metadata("labels", as_json=True, client_timeout=T)
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {
        "label": "BYTES",
        "probabilities": "FP32",
    }
    meta = client.get_model_metadata("echo", as_json=True, client_timeout=T)
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("text", "BYTES", ["-1", "2"])
    ]
    config = client.get_model_config("echo", as_json=True, client_timeout=T)["config"]
    assert config["input"][0]["data_type"] == "TYPE_STRING"
    assert [o["data_type"] for o in config["output"]] == ["TYPE_STRING", "TYPE_INT64"]


def test_startup_example_for_a_string_model_runs(server, capsys):
    """The "try it" snippet printed at start-up is for the first model, ``echo``, whose
    input is BYTES: it must be code that works."""
    out = server.wait_for_output("print(result.as_numpy(")
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if "try it" in line) + 1
    code = "\n".join(line[4:] for line in lines[start:] if line.startswith("    "))
    assert '"BYTES"' in code
    exec(compile(code, "<startup example>", "exec"), {})
    assert "[[b'text' b'text']]" in capsys.readouterr().out


def _infer_labels(client, x: np.ndarray, model: str = "labels") -> np.ndarray:
    inp = grpcclient.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp], client_timeout=T).as_numpy("label")


def test_grpc_classifier_labels_equal_predict(clf, client):
    x = _decisive(clf, _rows(500, seed=3))
    labels = np.concatenate([_infer_labels(client, x[s : s + 64]) for s in range(0, len(x), 64)])
    assert labels.dtype == object and labels.shape == (len(x),)
    assert [label.decode() for label in labels] == clf.predict(x).tolist()


def _executions(client, model: str) -> int:
    stats = client.get_inference_statistics(model, as_json=True, client_timeout=T)
    return int(stats["model_stats"][0].get("execution_count", 0))


def test_grpc_batched_labels_each_caller_gets_its_rows(clf, client):
    """16 callers of 4 rows, batches of 8: the wire answers cut each batch's labels
    back into every caller's own 4."""
    before = _executions(client, "labels_batched")
    x = _decisive(clf, _rows(200, seed=4))[:64].reshape(16, 4, 4)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: _infer_labels(client, x[i], "labels_batched"), range(16)))
    for i, labels in enumerate(answers):
        assert [label.decode() for label in labels] == clf.predict(x[i]).tolist()
    assert _executions(client, "labels_batched") - before == 8


def _infer_echo(client, texts: np.ndarray, model: str = "echo"):
    inp = grpcclient.InferInput("text", list(texts.shape), "BYTES")
    inp.set_data_from_numpy(texts)
    return client.infer(model, [inp], client_timeout=T)


def test_grpc_string_input_round_trips(client):
    texts = np.array([TEXTS[:2], TEXTS[2:4], TEXTS[4:6], TEXTS[6:8]], dtype=object)
    result = _infer_echo(client, texts)
    assert result.as_numpy("echo").tolist() == _encoded(texts)
    np.testing.assert_array_equal(result.as_numpy("code"), _codes(texts))
    # bytes elements too, and only the requested output
    raw = np.vectorize(lambda s: s.encode(), otypes=[object])(texts)
    inp = grpcclient.InferInput("text", [4, 2], "BYTES")
    inp.set_data_from_numpy(raw)
    only = client.infer(
        "echo", [inp], outputs=[grpcclient.InferRequestedOutput("echo")], client_timeout=T
    )
    assert only.as_numpy("echo").tolist() == raw.tolist() and only.as_numpy("code") is None


def test_grpc_batched_string_inputs_each_caller_gets_its_rows(client):
    before = _executions(client, "echo_batched")
    sent = {i: _texts(4, seed=i) for i in range(16)}
    with ThreadPoolExecutor(16) as pool:
        results = dict(
            zip(
                sent,
                pool.map(lambda i: _infer_echo(client, sent[i], "echo_batched"), sent),
                strict=True,
            )
        )
    for i, result in results.items():
        assert result.as_numpy("echo").tolist() == _encoded(sent[i])
        np.testing.assert_array_equal(result.as_numpy("code"), _codes(sent[i]))
    assert _executions(client, "echo_batched") - before == 8


def test_grpc_typed_bytes_contents(stub):
    request = service_pb2.ModelInferRequest(model_name="echo")
    inp = request.inputs.add(name="text", datatype="BYTES", shape=[1, 2])
    inp.contents.bytes_contents.extend(["straße".encode(), b""])
    response = stub.ModelInfer(request, timeout=T)
    assert [o.name for o in response.outputs] == ["echo", "code"]
    assert response.outputs[0].datatype == "BYTES"
    assert response.raw_output_contents[0] == _serialized(["straße", ""])


def test_grpc_unbatched_string_model(client):
    texts = np.array(["a", "日本", ""], dtype=object)
    assert _infer_echo(client, texts, "echo_fixed").as_numpy("echo").tolist() == _encoded(texts)


# -- malformed BYTES over gRPC -----------------------------------------------------------


def _raw_echo(raw: bytes, shape=(1, 2), datatype: str = "BYTES"):
    request = service_pb2.ModelInferRequest(model_name="echo")
    request.inputs.add(name="text", datatype=datatype, shape=list(shape))
    request.raw_input_contents.append(raw)
    return request


MALFORMED = {
    "length past the end": (
        _element(b"ab") + (255).to_bytes(4, "little") + b"x",
        "element 1 says 255 bytes but only 1 remain",
    ),
    "trailing bytes": (_element(b"a") + _element(b"b") + b"zz", "2 bytes after its 2 elements"),
    "ends inside a length": (_element(b"a") + b"\x01\x00", "ends inside the length of element 1"),
    "empty for two elements": (b"", "ends inside the length of element 0"),
    "one element for two": (_element(b"only"), "ends inside the length of element 1"),
    "huge length": (b"\xff\xff\xff\xff" + b"abc", "element 0 says 4294967295 bytes"),
    "not UTF-8": (_element(b"ok") + _element(b"\xc3\x28"), "element 1 is not valid UTF-8"),
    "surrogate": (_element(b"\xed\xa0\x80") + _element(b""), "element 0 is not valid UTF-8"),
}


@pytest.mark.parametrize("raw,message", MALFORMED.values(), ids=list(MALFORMED))
def test_malformed_bytes_refused_naming_the_input(stub, client, raw, message):
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(_raw_echo(raw), timeout=T)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'text'" in err.value.details() and message in err.value.details()
    texts = np.array([["still", "serving"]], dtype=object)
    assert _infer_echo(client, texts).as_numpy("echo").tolist() == _encoded(texts)


def test_typed_bytes_contents_that_are_not_text_are_refused(stub, client):
    request = service_pb2.ModelInferRequest(model_name="echo")
    inp = request.inputs.add(name="text", datatype="BYTES", shape=[1, 2])
    inp.contents.bytes_contents.extend([b"fine", b"\xff"])
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request, timeout=T)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'text'" in err.value.details() and "UTF-8" in err.value.details()
    texts = np.array([["still", "serving"]], dtype=object)
    assert _infer_echo(client, texts).as_numpy("echo").tolist() == _encoded(texts)


def test_bytes_and_numbers_do_not_mix(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(_raw_echo(b"\0" * 8, datatype="FP32"), timeout=T)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'text' is BYTES" in err.value.details() and "FP32" in err.value.details()
    request = service_pb2.ModelInferRequest(model_name="labels")
    request.inputs.add(name="X", datatype="BYTES", shape=[1, 4])
    request.raw_input_contents.append(_serialized(["1", "2", "3", "4"]))
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request, timeout=T)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'X' is FP32" in err.value.details() and "BYTES" in err.value.details()
