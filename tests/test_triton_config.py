"""Triton repositories work unchanged: a model directory with config.pbtxt and no config.yaml.

Real files in tmp_path and real ONNX models; the pbtxt texts are written as Triton's
own documentation and model repositories write them.
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

import steadyserve
from onnx_models import write_fixed_shape, write_identity, write_linear
from steadyserve.config import MAX_INSTANCES
from steadyserve.errors import ConfigError
from steadyserve.repository import scan_repository
from steadyserve.triton_config import load_pbtxt, parse_pbtxt

LOGGER = "steadyserve.repository"

TRITON_STYLE = """
name: "tabular"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "x"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
output [
  {
    name: "y"
    data_type: TYPE_FP32
    dims: [ 3 ]
  }
]
# Triton's spelling of "the two newest versions"
version_policy: { latest: { num_versions: 2 } }
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 500
}
instance_group [
  {
    count: 2
    kind: KIND_CPU
  }
]
default_model_filename: "net.onnx"
"""


def write_model(root, name: str, pbtxt: str, build=write_identity, versions=(1,), filename=None):
    """root/<name>/config.pbtxt and a model file in each version directory."""
    directory = root / name
    for version in versions:
        build(directory / str(version) / (filename or "model.onnx"))
    (directory / "config.pbtxt").write_text(pbtxt)
    return directory / "config.pbtxt"


def pbtxt_config(tmp_path, text: str, name: str = "m"):
    path = tmp_path / name / "config.pbtxt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return load_pbtxt(path)


def ignored_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and r.levelno == logging.WARNING and "does not honour" in r.message
    ]


# --- a whole Triton repository through the Runtime --------------------------------------


def test_triton_repository_loads_and_serves_with_its_settings(tmp_path, caplog):
    weights = {}
    for version in (1, 2, 3):
        path = tmp_path / "tabular" / str(version) / "net.onnx"
        weights[version] = write_linear(path, n_in=4, n_out=3, seed=version)
    # A version directory with the default file name but not the configured one is no version.
    write_linear(tmp_path / "tabular" / "4" / "model.onnx", n_in=4, n_out=3)
    (tmp_path / "tabular" / "config.pbtxt").write_text(TRITON_STYLE)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        rt = steadyserve.Runtime(tmp_path, warmup=False)
    try:
        assert rt.model_versions("tabular") == ["2", "3"]
        model = rt.get_model("tabular")
        c = model.config
        assert c.max_batch_size == 8
        assert c.batching.preferred_batch_sizes == [4, 8]
        assert c.batching.max_queue_delay_us == 500
        assert c.instances == 2
        assert c.onnxruntime.device == "cpu"
        assert (c.versions, c.latest_versions, c.model_filename) == ("latest", 2, "net.onnx")
        assert [(t.name, t.datatype, t.dims) for t in c.inputs] == [("x", "FP32", [4])]
        assert [(t.name, t.datatype, t.dims) for t in c.outputs] == [("y", "FP32", [3])]

        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        for version in (None, "2"):
            result = rt.infer("tabular", {"x": x}, version=version)
            w, b = weights[3 if version is None else 2]
            assert result.model_version == ("3" if version is None else "2")
            np.testing.assert_allclose(result["y"], x @ w + b, rtol=1e-5)
    finally:
        rt.close()
    assert ignored_warnings(caplog) == []  # every field of that file is honoured
    assert not [r for r in caplog.records if r.name == LOGGER and "config.pbtxt" in r.message]


def test_scan_reports_the_pbtxt_as_the_config_used(tmp_path):
    path = write_model(tmp_path, "tabular", TRITON_STYLE, versions=(1, 2), filename="net.onnx")
    src = scan_repository(tmp_path)["tabular"]
    assert src.error is None and src.config_path == path
    assert src.versions == {v: tmp_path / "tabular" / str(v) / "net.onnx" for v in (1, 2)}
    assert src.selected_versions() == [1, 2]


def test_model_without_batching_keys_is_unbatched_as_in_triton(tmp_path):
    # Triton's max_batch_size defaults to 0: the model's own shapes, no batch dimension.
    write_model(tmp_path, "fixed", 'platform: "onnxruntime_onnx"\n', build=write_fixed_shape)
    with steadyserve.Runtime(tmp_path, warmup=False) as rt:
        model = rt.get_model("fixed")
        assert model.config.max_batch_size == 0
        assert "max_batch_size" in model.config.model_fields_set  # explicit, never our default
        x = np.ones((2, 3), np.float32)
        np.testing.assert_allclose(rt.infer("fixed", {"x": x})["y"], 2 * x)


def test_max_batch_size_is_always_explicit(tmp_path):
    c = pbtxt_config(tmp_path, 'backend: "onnxruntime"\nmax_batch_size: 0\n')
    assert c.max_batch_size == 0 and "max_batch_size" in c.model_fields_set


# --- the mapping, field by field ----------------------------------------------------------


def test_dynamic_batching_queue_and_priorities(tmp_path):
    c = pbtxt_config(
        tmp_path,
        """
        max_batch_size: 16
        dynamic_batching {
          preferred_batch_size: [ 16, 4 ]
          max_queue_delay_microseconds: 300
          priority_levels: 3
          default_priority_level: 2
          default_queue_policy {
            timeout_action: REJECT
            default_timeout_microseconds: 25000
            allow_timeout_override: true
            max_queue_size: 128
          }
          priority_queue_policy {
            key: 1
            value: { max_queue_size: 8 }
          }
          priority_queue_policy {
            key: 3
            value: { max_queue_size: 64 }
          }
        }
        """,
    )
    assert c.batching.preferred_batch_sizes == [4, 16]
    assert c.batching.max_queue_delay_us == 300
    assert c.batching.max_queue_size == 128
    assert c.slo.priority_levels == 3 and c.slo.default_priority == 2
    assert c.slo.default_deadline_ms == 25.0
    assert {k: v.max_queue_size for k, v in c.slo.priority_queues.items()} == {1: 8, 3: 64}


def test_no_dynamic_batching_runs_requests_as_they_come(tmp_path):
    c = pbtxt_config(tmp_path, "max_batch_size: 8\n")
    assert c.batching.max_queue_delay_us == 0 and c.batching.preferred_batch_sizes == []
    assert c.slo.priority_levels == 1 and c.slo.default_deadline_ms is None


def test_priority_levels_0_means_one_level(tmp_path):
    c = pbtxt_config(tmp_path, "max_batch_size: 8\ndynamic_batching { priority_levels: 0 }\n")
    assert c.slo.priority_levels == 1


@pytest.mark.parametrize(
    ("policy", "versions", "latest"),
    [
        ("latest: { num_versions: 3 }", "latest", 3),
        ("latest: {}", "latest", 1),
        ("all: {}", "all", 1),
        ("specific: { versions: [ 1, 3 ] }", [1, 3], 1),
    ],
)
def test_version_policy(tmp_path, policy, versions, latest):
    c = pbtxt_config(tmp_path, f"version_policy: {{ {policy} }}\n")
    assert (c.versions, c.latest_versions) == (versions, latest)


def test_datatypes_take_their_v2_names(tmp_path):
    c = pbtxt_config(
        tmp_path,
        """
        max_batch_size: 4
        input [ { name: "text" data_type: TYPE_STRING dims: [ 1 ] },
                { name: "ids" data_type: TYPE_INT64 dims: [ -1 ] } ]
        output [ { name: "score" data_type: TYPE_FP16 dims: [ 2, -1 ] } ]
        """,
    )
    assert [(t.name, t.datatype, t.dims) for t in c.inputs] == [
        ("text", "BYTES", [1]),
        ("ids", "INT64", [-1]),
    ]
    assert [(t.name, t.datatype, t.dims) for t in c.outputs] == [("score", "FP16", [2, -1])]


def test_instance_groups_add_up_and_place_on_the_first_device(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        c = pbtxt_config(
            tmp_path,
            """
            instance_group [
              { name: "first" count: 3 kind: KIND_GPU gpus: [ 1, 0 ] },
              { kind: KIND_CPU }
            ]
            """,
        )
    assert c.instances == 4  # 3, and Triton's count 0 read as 1
    assert (c.onnxruntime.device, c.onnxruntime.device_id) == ("cuda", 1)
    notes = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert any("instance_group[0].gpus lists [1, 0]" in n and "GPU 1" in n for n in notes)
    assert any("instance_group[1] asks for the CPU" in n for n in notes)
    assert ignored_warnings(caplog) == []  # both groups were honoured, in part


@pytest.mark.parametrize("kind", ["KIND_CPU", "KIND_AUTO"])
def test_cpu_and_auto_instances_run_on_the_cpu(tmp_path, kind):
    c = pbtxt_config(tmp_path, f"instance_group [ {{ count: 2 kind: {kind} }} ]\n")
    assert (c.instances, c.onnxruntime.device) == (2, "cpu")


def test_too_many_instances_is_an_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"instance_group") as info:
        pbtxt_config(tmp_path, "instance_group [ { count: 10 }, { count: 10 } ]\n")
    assert f"1..{MAX_INSTANCES}" in str(info.value) and "20 instances" in str(info.value)


def test_unlimited_queue_is_bounded_and_says_so(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        c = pbtxt_config(
            tmp_path,
            "max_batch_size: 8\n"
            "dynamic_batching { default_queue_policy { default_timeout_microseconds: 9000 } }\n",
        )
    assert c.batching.max_queue_size == 1024 and c.slo.default_deadline_ms == 9.0
    [note] = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert "max_queue_size is 0" in note and "1024" in note and "config.pbtxt" in note


def test_validation_errors_name_the_pbtxt_field(tmp_path):
    with pytest.raises(ConfigError) as info:
        pbtxt_config(
            tmp_path, "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: -1 }\n"
        )
    assert "invalid config.pbtxt at line 2" in str(info.value)  # uint64: a parse error
    with pytest.raises(ConfigError) as info:
        pbtxt_config(
            tmp_path,
            "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 20000000 }\n",
        )
    message = str(info.value)
    assert str(tmp_path / "m" / "config.pbtxt") in message
    assert "batching.max_queue_delay_us" in message
    assert "dynamic_batching.max_queue_delay_microseconds" in message


# --- what is not honoured is said, never dropped ------------------------------------------


def test_unhonoured_fields_are_named_in_one_warning(tmp_path, caplog):
    path = tmp_path / "m" / "config.pbtxt"
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        pbtxt_config(
            tmp_path,
            """
            sequence_batching { max_sequence_idle_microseconds: 5000000 }
            model_warmup [ { name: "zeros" batch_size: 1 } ]
            response_cache { enable: true }
            """,
        )
    assert ignored_warnings(caplog) == [
        f"{path}: steadyserve does not honour sequence_batching, model_warmup, response_cache; "
        "they are ignored"
    ]


# fmt: off
@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('runtime: "model.onnx"', "runtime"),
        ('parameters { key: "intra_op_thread_count" value: { string_value: "2" } }',
         "parameters[intra_op_thread_count]"),
        ('metric_tags { key: "team" value: "ranking" }', "metric_tags[team]"),
        ('cc_model_filenames { key: "7.5" value: "m.onnx" }', "cc_model_filenames[7.5]"),
        ("optimization { execution_accelerators { gpu_execution_accelerator "
         '[ { name: "tensorrt" } ] } }', "optimization"),
        ("optimization { graph: { level: 1 } }", "optimization"),
        ('model_operations { op_library_filename: "libcustom.so" }', "model_operations"),
        ("model_transaction_policy { decoupled: true }", "model_transaction_policy"),
        ('model_repository_agents { agents [ { name: "checksum" } ] }', "model_repository_agents"),
        ('model_metrics { metric_control [ { metric_identifier { family: "x" } } ] }',
         "model_metrics"),
        ('batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "n" } ]', "batch_input"),
        ('batch_output [ { target_name: "y" source_input: "x" } ]', "batch_output"),
        ('ensemble_scheduling { step [ { model_name: "a" model_version: -1 } ] }',
         "ensemble_scheduling"),
        ('input [ { name: "x" dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]', "input[0].reshape"),
        ('input [ { name: "x" format: FORMAT_NCHW dims: [ 3 ] } ]', "input[0].format"),
        ('input [ { name: "x" optional: true } ]', "input[0].optional"),
        ('input [ { name: "x" allow_ragged_batch: true } ]', "input[0].allow_ragged_batch"),
        ('input [ { name: "x" is_shape_tensor: true } ]', "input[0].is_shape_tensor"),
        ('output [ { name: "y" label_filename: "labels.txt" } ]', "output[0].label_filename"),
        ("dynamic_batching { preserve_ordering: true }", "dynamic_batching.preserve_ordering"),
        ("dynamic_batching { default_queue_policy { timeout_action: DELAY "
         "max_queue_size: 4 } }", "dynamic_batching.default_queue_policy.timeout_action"),
        ("dynamic_batching { priority_levels: 2 priority_queue_policy { key: 2 value: "
         "{ default_timeout_microseconds: 100 } } }",
         "dynamic_batching.priority_queue_policy[2].default_timeout_microseconds"),
        ("instance_group [ { kind: KIND_MODEL } ]", "instance_group[0].kind"),
        ("instance_group [ { kind: KIND_CPU gpus: [ 0 ] } ]", "instance_group[0].gpus"),
        ("instance_group [ { rate_limiter { priority: 2 } } ]", "instance_group[0].rate_limiter"),
        ("instance_group [ { passive: true } ]", "instance_group[0].passive"),
        ('instance_group [ { profile: [ "0" ] } ]', "instance_group[0].profile"),
        ('instance_group [ { host_policy: "numa0" } ]', "instance_group[0].host_policy"),
    ],
)
# fmt: on
def test_each_unhonoured_field_is_named(tmp_path, caplog, text, named):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        pbtxt_config(tmp_path, "max_batch_size: 8\n" + text + "\n")
    [warning] = ignored_warnings(caplog)
    assert warning.startswith(f"{tmp_path / 'm' / 'config.pbtxt'}: steadyserve does not honour ")
    listed = warning.split("does not honour ", 1)[1].rsplit(";", 1)[0].split(", ")
    assert named in listed, warning


def test_delayed_timeouts_are_not_turned_into_deadlines(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        c = pbtxt_config(
            tmp_path,
            "max_batch_size: 8\ndynamic_batching { default_queue_policy { timeout_action: DELAY "
            "default_timeout_microseconds: 5000 max_queue_size: 32 } }\n",
        )
    assert c.slo.default_deadline_ms is None and c.batching.max_queue_size == 32
    [warning] = ignored_warnings(caplog)
    assert "dynamic_batching.default_queue_policy.timeout_action" in warning
    assert "dynamic_batching.default_queue_policy.default_timeout_microseconds" in warning


# --- errors -----------------------------------------------------------------------------


def test_both_config_files_is_an_error_naming_both(tmp_path):
    write_model(tmp_path, "m", "max_batch_size: 8\n")
    (tmp_path / "m" / "config.yaml").write_text("max_batch_size: 8\n")
    write_model(tmp_path, "good", "max_batch_size: 8\n")
    models = scan_repository(tmp_path)
    src = models["m"]
    assert src.config is None and src.selected_versions() == []
    assert str(tmp_path / "m" / "config.yaml") in src.error
    assert str(tmp_path / "m" / "config.pbtxt") in src.error
    assert "has both config.yaml and config.pbtxt" in src.error and "keep one" in src.error
    assert models["good"].error is None  # isolated to its model


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('platform: "tensorrt_plan"', "tensorrt_plan"),
        ('platform: "pytorch_libtorch"', "pytorch_libtorch"),
        ('backend: "python"', "python"),
        ('platform: "onnxruntime_onnx"\nbackend: "openvino"', "openvino"),
    ],
)
def test_platforms_other_than_onnx_runtime_are_refused(tmp_path, text, value):
    with pytest.raises(ConfigError) as info:
        pbtxt_config(tmp_path, text + "\n")
    message = str(info.value)
    assert repr(value) in message and "onnxruntime_onnx" in message and "ONNX Runtime" in message


def test_name_must_be_the_directory_name(tmp_path):
    with pytest.raises(ConfigError) as info:
        pbtxt_config(tmp_path, 'name: "resnet"\n', name="tabular")
    message = str(info.value)
    assert "'resnet'" in message and "'tabular'" in message
    assert pbtxt_config(tmp_path, 'name: "tabular"\n', name="tabular").max_batch_size == 0


def test_syntax_error_names_line_and_column(tmp_path):
    text = 'name: "m"\nmax_batch_size: 8\ninput [ { name: "x" dims: [ 4 } ]\n'
    with pytest.raises(ConfigError) as info:
        pbtxt_config(tmp_path, text)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'm' / 'config.pbtxt'}: invalid config.pbtxt at line 3")
    assert "line 3, column 31" in message


def test_unknown_field_is_an_error_with_its_place(tmp_path):
    with pytest.raises(ConfigError) as info:
        pbtxt_config(tmp_path, "max_batch_size: 8\n  max_queue_delay: 100\n")
    message = str(info.value)
    assert "at line 2, column 3" in message and '"max_queue_delay"' in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("max_batch_size: 8\nmax_batch_size: 4\n", "multiple"),
        ('input [ { name: "x" data_type: TYPE_FLOAT } ]', "TYPE_FLOAT"),
        ("dynamic_batching { }\nsequence_batching { }\n", "oneof"),
        ("max_batch_size: 99999999999\n", "out of range"),
    ],
)
def test_other_parse_errors(tmp_path, text, problem):
    with pytest.raises(ConfigError, match="invalid config.pbtxt at line") as info:
        pbtxt_config(tmp_path, text)
    assert problem in str(info.value)


def test_bad_pbtxt_is_isolated_to_its_model(tmp_path):
    write_model(tmp_path, "bad", "max_batch_size: [\n")
    write_model(tmp_path, "good", "max_batch_size: 8\n", build=write_linear)
    models = scan_repository(tmp_path)
    assert models["bad"].config is None and "invalid config.pbtxt" in models["bad"].error
    assert models["bad"].config_path == tmp_path / "bad" / "config.pbtxt"
    assert models["good"].error is None and models["good"].config.max_batch_size == 8


def test_parsing_shares_a_process_with_tritonclient():
    """The pbtxt message lives in a private descriptor pool: tritonclient's ``inference.*``
    in the default pool (as in these tests' process) must not clash with it, and
    steadyserve._proto, which would, is never imported for it."""
    triton = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    ours = parse_pbtxt('name: "m"\ndynamic_batching { preferred_batch_size: [ 2 ] }\n')
    theirs = triton.ModelConfig.FromString(ours.SerializeToString())
    assert theirs.name == "m" and list(theirs.dynamic_batching.preferred_batch_size) == [2]
    assert "steadyserve._proto.model_config_pb2" not in sys.modules
