"""protos/*.proto against Triton's definitions, as shipped in tritonclient.

Wire compatibility means: same package, message names, field names, numbers,
types, labels, message/enum type names and oneof membership, same enum values,
same service and method names with the same request/response types. Every
message we define is compared with tritonclient's, nested ones included;
grpc_predict_v2.proto messages must match exactly, and model_config.proto
declares every field that Triton's ModelConfig reaches (config.pbtxt files are
parsed with it, steadyserve/triton_config.py).

Descriptor pools: this module compiles protos/ with grpc_tools.protoc into a
FileDescriptorSet and loads it into a private ``DescriptorPool``. It never
imports steadyserve._proto, whose import would register ``inference.*`` in the
default pool that tritonclient's modules (imported here, as in the integration
tests) already occupy.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, unknown_fields

tsvc = pytest.importorskip("tritonclient.grpc.service_pb2", reason="needs tritonclient[grpc]")
tcfg = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc]")
pytest.importorskip("grpc_tools.protoc", reason="needs grpcio-tools to compile protos/")

PROTOS = Path(__file__).resolve().parent.parent / "protos"
SERVICE = "inference.GRPCInferenceService"
METHODS = [
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelStreamInfer",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
]


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> descriptor_pool.DescriptorPool:
    out = tmp_path_factory.mktemp("descriptors") / "set.pb"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            "--include_imports",
            f"--descriptor_set_out={out}",
            "grpc_predict_v2.proto",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:  # protoc writes dependencies first
        assert f.package == "inference" and f.syntax == "proto3", f.name
        pool.Add(f)
    return pool


def _messages(file_desc):
    """Every message of a file, nested ones included."""
    todo = list(file_desc.message_types_by_name.values())
    while todo:
        msg = todo.pop()
        yield msg
        todo.extend(msg.nested_types)


def _enums(file_desc):
    yield from file_desc.enum_types_by_name.values()
    for msg in _messages(file_desc):
        yield from msg.enum_types


def _field_facts(field) -> dict:
    return {
        "number": field.number,
        "type": field.type,
        "repeated": _repeated(field),
        "message_type": field.message_type.full_name if field.message_type else None,
        "enum_type": field.enum_type.full_name if field.enum_type else None,
        "oneof": field.containing_oneof.name if field.containing_oneof else None,
        "packed": _packed(field),
        "options": field.GetOptions().SerializeToString(deterministic=True),
    }


def _repeated(field) -> bool:
    if hasattr(type(field), "is_repeated"):  # protobuf >= 6.31; label is deprecated there
        return field.is_repeated
    return field.label == field.LABEL_REPEATED


def _packed(field) -> bool | None:
    if hasattr(type(field), "is_packed"):
        return field.is_packed
    return field.GetOptions().packed if field.GetOptions().HasField("packed") else None


def _is_map_entry(msg) -> bool:
    return msg.GetOptions().map_entry


def _triton(full_name: str):
    return tsvc.DESCRIPTOR.pool.FindMessageTypeByName(full_name)


@pytest.mark.parametrize("file_name", ["grpc_predict_v2.proto", "model_config.proto"])
def test_every_message_matches_triton(ours, file_name: str) -> None:
    subset_allowed = file_name == "model_config.proto"
    problems = []
    checked = 0
    for msg in _messages(ours.FindFileByName(file_name)):
        try:
            theirs = _triton(msg.full_name)
        except KeyError:
            problems.append(f"{msg.full_name}: Triton has no such message")
            continue
        checked += 1
        if _is_map_entry(msg) != _is_map_entry(theirs):
            problems.append(
                f"{msg.full_name}: map entry {_is_map_entry(msg)} vs {_is_map_entry(theirs)}"
            )
        for field in msg.fields:
            other = theirs.fields_by_name.get(field.name)
            if other is None:
                problems.append(f"{field.full_name}: Triton has no such field")
            elif _field_facts(field) != _field_facts(other):
                problems.append(
                    f"{field.full_name}: ours {_field_facts(field)} vs {_field_facts(other)}"
                )
        missing = set(theirs.fields_by_name) - set(msg.fields_by_name)
        if missing and not subset_allowed:
            problems.append(f"{msg.full_name}: fields missing {sorted(missing)}")
        for oneof in msg.oneofs:
            if oneof.name not in theirs.oneofs_by_name:
                problems.append(f"{msg.full_name}: Triton has no oneof {oneof.name}")
    assert checked > 0
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("file_name", ["grpc_predict_v2.proto", "model_config.proto"])
def test_every_enum_matches_triton(ours, file_name: str) -> None:
    problems = []
    for enum in _enums(ours.FindFileByName(file_name)):
        theirs = tsvc.DESCRIPTOR.pool.FindEnumTypeByName(enum.full_name)
        ours_values = {v.name: v.number for v in enum.values}
        their_values = {v.name: v.number for v in theirs.values}
        if ours_values != their_values:
            problems.append(f"{enum.full_name}: {ours_values} vs {their_values}")
    assert not problems, "\n".join(problems)


def test_model_config_subset_has_the_fields_we_fill(ours) -> None:
    config = ours.FindMessageTypeByName("inference.ModelConfig")
    assert {
        "name",
        "platform",
        "backend",
        "max_batch_size",
        "input",
        "output",
        "dynamic_batching",
        "version_policy",
        "instance_group",
        "parameters",
    } <= set(config.fields_by_name)
    assert set(ours.FindEnumTypeByName("inference.DataType").values_by_name) >= {
        "TYPE_BOOL",
        "TYPE_FP16",
        "TYPE_FP32",
        "TYPE_INT64",
    }


def test_model_config_declares_every_triton_field(ours) -> None:
    """config.pbtxt files are parsed with our ModelConfig: every field Triton defines, in
    every message reachable from it, must be there, or a real Triton file fails to parse."""
    problems = []
    todo, seen = ["inference.ModelConfig"], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        theirs = _triton(name)
        try:
            mine = ours.FindMessageTypeByName(name)
        except KeyError:
            problems.append(f"{name}: not declared")
            continue
        missing = sorted(set(theirs.fields_by_name) - set(mine.fields_by_name))
        if missing:
            problems.append(f"{name}: fields missing {missing}")
        todo.extend(f.message_type.full_name for f in theirs.fields if f.message_type)
    assert not problems, "\n".join(problems)


def test_service_matches_triton(ours) -> None:
    service = ours.FindServiceByName(SERVICE)
    theirs = tsvc.DESCRIPTOR.pool.FindServiceByName(SERVICE)
    assert [m.name for m in service.methods] == METHODS
    for method in service.methods:
        other = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == other.input_type.full_name, method.name
        assert method.output_type.full_name == other.output_type.full_name, method.name
        assert method.client_streaming == other.client_streaming, method.name
        assert method.server_streaming == other.server_streaming, method.name


def _our_class(pool, full_name: str):
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))


def test_tritonclient_parses_our_model_config(ours) -> None:
    """What ModelConfig answers is readable by tritonclient, field for field."""
    Response = _our_class(ours, "inference.ModelConfigResponse")
    resp = Response()
    c = resp.config
    c.name, c.platform, c.backend, c.max_batch_size = (
        "tabular",
        "onnxruntime_onnx",
        "onnxruntime",
        64,
    )
    c.version_policy.specific.versions.extend([1, 3])
    c.input.add(name="features", data_type=11, dims=[32])
    c.output.add(name="probabilities", data_type=11, dims=[2])
    c.dynamic_batching.preferred_batch_size.extend([16, 32])
    c.dynamic_batching.max_queue_delay_microseconds = 500
    c.dynamic_batching.default_queue_policy.max_queue_size = 1024
    c.instance_group.add(count=2, kind=2)
    c.parameters["slo_ms"].string_value = "25"

    theirs = tsvc.ModelConfigResponse.FromString(resp.SerializeToString())
    t = theirs.config
    assert (t.name, t.platform, t.backend, t.max_batch_size) == (
        "tabular",
        "onnxruntime_onnx",
        "onnxruntime",
        64,
    )
    assert list(t.version_policy.specific.versions) == [1, 3]
    assert t.input[0].name == "features" and t.input[0].data_type == tcfg.TYPE_FP32
    assert list(t.input[0].dims) == [32] and list(t.output[0].dims) == [2]
    assert t.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert list(t.dynamic_batching.preferred_batch_size) == [16, 32]
    assert t.dynamic_batching.max_queue_delay_microseconds == 500
    assert t.dynamic_batching.default_queue_policy.max_queue_size == 1024
    assert t.instance_group[0].count == 2
    assert t.instance_group[0].kind == tcfg.ModelInstanceGroup.KIND_CPU
    assert t.parameters["slo_ms"].string_value == "25"
    assert theirs.SerializeToString(deterministic=True) == resp.SerializeToString(
        deterministic=True
    )


def _unknown(msg) -> list[str]:
    """Paths of messages (nested ones included) that hold fields their type does not declare."""
    found = [msg.DESCRIPTOR.full_name] if len(unknown_fields.UnknownFieldSet(msg)) else []
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            value = (
                value.values() if field.message_type.fields_by_name["value"].message_type else []
            )
        elif not _repeated(field):
            value = [value]
        for sub in value:
            found.extend(_unknown(sub))
    return found


def test_infer_messages_cross_the_wire_both_ways(ours) -> None:
    """A tritonclient request parses into ours with nothing unknown, and our response back."""
    req = tsvc.ModelInferRequest(model_name="m", model_version="2", id="7")
    req.parameters["priority"].int64_param = 1
    t = req.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    t.parameters["binary_data_size"].int64_param = 8
    req.outputs.add(name="y").parameters["classification"].int64_param = 0
    req.raw_input_contents.append(b"\0" * 8)
    ours_req = _our_class(ours, "inference.ModelInferRequest").FromString(req.SerializeToString())
    assert _unknown(ours_req) == []
    assert ours_req.SerializeToString(deterministic=True) == req.SerializeToString(
        deterministic=True
    )

    resp = _our_class(ours, "inference.ModelInferResponse")(
        model_name="m", model_version="2", id="7"
    )
    out = resp.outputs.add(name="y", datatype="INT64", shape=[1])
    out.contents.int64_contents.append(3)
    resp.parameters["served_by"].string_param = "backup"
    resp.raw_output_contents.append(b"\1" + b"\0" * 7)
    theirs = tsvc.ModelInferResponse.FromString(resp.SerializeToString())
    assert _unknown(theirs) == []
    assert theirs.SerializeToString(deterministic=True) == resp.SerializeToString(
        deterministic=True
    )
