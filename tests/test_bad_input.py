"""Malformed or hostile requests get a clear status, and the server keeps serving.

Every test ends with a good request that must still succeed (the ``still_serving``
fixture), on the same session server.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import onnx_models

T = 10.0
N_FEATURES = 32  # "linear": x FP32 [-1, 32] -> y FP32 [-1, 4], max_batch_size 16
MAX_BATCH = 16
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"


def _good_request(client) -> None:
    x = np.full((1, N_FEATURES), 0.5, np.float32)
    inp = grpcclient.InferInput("x", [1, N_FEATURES], "FP32")
    inp.set_data_from_numpy(x)
    y = client.infer("linear", [inp], client_timeout=T).as_numpy("y")
    assert y.shape == (1, 4) and np.isfinite(y).all()


@pytest.fixture
def still_serving(client):
    """After the test body, a good request on the same server must succeed."""
    yield
    _good_request(client)


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _infer_error(client, model: str, inputs, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as err:
        client.infer(model, inputs, client_timeout=T, **kwargs)
    return err.value


def _input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    return inp


def _raw_request(model: str, name: str, datatype: str, shape, raw: bytes):
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype=datatype, shape=list(shape))
    request.raw_input_contents.append(raw)
    return request


def _stub_error(stub, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request, timeout=T)
    return err.value


def test_unknown_model(client, still_serving):
    x = np.zeros((1, N_FEATURES), np.float32)
    err = _infer_error(client, "no-such-model", [_input("x", x, "FP32")])
    assert err.status() == "StatusCode.NOT_FOUND"
    assert "no-such-model" in err.message()


def test_unknown_input_name(client, still_serving):
    x = np.zeros((1, N_FEATURES), np.float32)
    err = _infer_error(client, "linear", [_input("nope", x, "FP32")])
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "nope" in err.message()


def test_missing_input(client, still_serving):
    a = np.zeros((1, 4), np.float32)
    err = _infer_error(client, "add", [_input("a", a, "FP32")])
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "'b'" in err.message() or '"b"' in err.message() or " b " in err.message()


def test_wrong_rank(client, still_serving):
    x = np.zeros((N_FEATURES,), np.float32)
    err = _infer_error(client, "linear", [_input("x", x, "FP32")])
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "x" in err.message()


def test_wrong_feature_count(client, still_serving):
    x = np.zeros((1, N_FEATURES - 1), np.float32)
    err = _infer_error(client, "linear", [_input("x", x, "FP32")])
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert str(N_FEATURES) in err.message()


def test_lossless_datatype_conversion_is_accepted(client, still_serving):
    ints = np.arange(N_FEATURES, dtype=np.int32).reshape(1, N_FEATURES) - 16
    via_int = client.infer("linear", [_input("x", ints, "INT32")], client_timeout=T).as_numpy("y")
    floats = ints.astype(np.float32)
    via_float = client.infer("linear", [_input("x", floats, "FP32")], client_timeout=T)
    np.testing.assert_array_equal(via_int, via_float.as_numpy("y"))


@pytest.mark.parametrize(
    ("array", "datatype"),
    [
        (np.full((1, N_FEATURES), 0.1, np.float64), "FP64"),  # 0.1 is not a float32
        (np.full((1, N_FEATURES), 2**24 + 1, np.int32), "INT32"),  # beyond float32's mantissa
    ],
    ids=["fp64-0.1", "int32-2**24+1"],
)
def test_lossy_datatype_conversion_is_refused(client, still_serving, array, datatype):
    err = _infer_error(client, "linear", [_input("x", array, datatype)])
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "x" in err.message()


def test_raw_byte_size_mismatch(stub, still_serving):
    request = _raw_request("linear", "x", "FP32", [1, N_FEATURES], b"\0" * 100)
    err = _stub_error(stub, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "100" in err.details() and "128" in err.details()


def test_negative_dims(stub, still_serving):
    request = _raw_request("linear", "x", "FP32", [-1, N_FEATURES], b"\0" * 128)
    err = _stub_error(stub, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "-1" in err.details()


def test_enormous_dims_refused_before_allocation(stub, still_serving):
    request = _raw_request("linear", "x", "FP32", [2**40, N_FEATURES], b"\0" * 128)
    err = _stub_error(stub, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "x" in err.details()


def test_malformed_protobuf(server, still_serving):
    # Field 1 (model_name) claims 2**31 bytes of a string that is not there.
    garbage = b"\x0a\xff\xff\xff\xff\x07" + b"\xde\xad\xbe\xef" * 4
    with grpc.insecure_channel(server.grpc) as channel:
        call = channel.unary_unary(INFER_METHOD)  # no serializers: bytes in, bytes out
        with pytest.raises(grpc.RpcError) as err:
            call(garbage, timeout=T)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ModelInferRequest" in err.value.details()


def test_empty_tensor(client, still_serving):
    x = np.zeros((0, N_FEATURES), np.float32)
    err = _infer_error(client, "linear", [_input("x", x, "FP32")])
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "'x'" in err.message() and "0 rows" in err.message()


def test_batch_larger_than_max_batch_size(client, still_serving):
    x = np.zeros((MAX_BATCH + 1, N_FEATURES), np.float32)
    err = _infer_error(client, "linear", [_input("x", x, "FP32")])
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert str(MAX_BATCH) in err.message()


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "linear/../linear", "/etc/passwd", ""])
def test_path_tricks_in_model_names(client, stub, still_serving, name):
    x = np.zeros((1, N_FEATURES), np.float32)
    err = _infer_error(client, name, [_input("x", x, "FP32")])
    assert err.status() in ("StatusCode.NOT_FOUND", "StatusCode.INVALID_ARGUMENT"), err
    with pytest.raises(grpc.RpcError) as meta_err:
        stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=name), timeout=T)
    assert meta_err.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    assert not client.is_model_ready(name, client_timeout=T)


def test_bad_parameters(client, still_serving):
    x = np.zeros((1, N_FEATURES), np.float32)
    err = _infer_error(client, "linear", [_input("x", x, "FP32")], timeout=-5)
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "timeout" in err.message()


def test_unknown_version(client, still_serving):
    x = np.zeros((1, N_FEATURES), np.float32)
    err = _infer_error(client, "linear", [_input("x", x, "FP32")], model_version="7")
    assert err.status() == "StatusCode.NOT_FOUND"
    assert "7" in err.message()


def test_message_over_size_limit(tmp_path, launch):
    """A server started with --max-message-mb 1 refuses a 2 MiB request and keeps serving."""
    repo = onnx_models.make_repo(
        tmp_path / "repo",
        {"linear": lambda p: onnx_models.write_linear(p, n_in=N_FEATURES, n_out=4)},
        configs={"linear": {"max_batch_size": 4096}},
    )
    proc = launch(repo, "--max-message-mb", "1")
    with grpcclient.InferenceServerClient(proc.grpc) as client:
        # 2 MiB of raw data: the transport refuses it before its rows are counted.
        big = np.zeros((16_384, N_FEATURES), np.float32)
        err = _infer_error(client, "linear", [_input("x", big, "FP32")])
        assert err.status() == "StatusCode.RESOURCE_EXHAUSTED"
        _good_request(client)
    assert proc.stop() == 0
