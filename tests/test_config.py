"""config.yaml: the schema, its bounds and cross-field rules, and the errors an operator reads."""

from __future__ import annotations

import textwrap

import pytest

from steadyserve.config import ModelConfig, load_model_config, model_config_from_mapping
from steadyserve.errors import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def config_error(tmp_path, text: str) -> tuple[str, str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_model_config(path)
    return str(info.value), str(path)


def test_no_file_and_empty_file_give_defaults(tmp_path):
    assert load_model_config(None) == ModelConfig()
    assert load_model_config(tmp_path / "absent.yaml") == ModelConfig()
    assert load_model_config(write(tmp_path, "")) == ModelConfig()
    assert load_model_config(write(tmp_path, "# only a comment\n")) == ModelConfig()


def test_defaults_are_the_documented_ones():
    c = ModelConfig()
    assert (c.backend, c.max_batch_size, c.versions, c.instances) == (
        "onnxruntime",
        64,
        "latest",
        1,
    )
    assert c.batching.preferred_batch_sizes == []
    assert (c.batching.max_queue_delay_us, c.batching.max_queue_size) == (0, 1024)
    ort = c.onnxruntime
    assert (ort.device, ort.device_id, ort.intra_op_threads, ort.inter_op_threads) == (
        "cpu",
        0,
        "auto",
        1,
    )
    assert (ort.allow_spinning, ort.graph_optimization, ort.warmup) == (False, "all", True)
    assert c.slo.default_deadline_ms is None


def test_full_config_is_read(tmp_path):
    c = load_model_config(
        write(
            tmp_path,
            """
            backend: onnxruntime
            max_batch_size: 32
            versions: [2, 1]
            inputs:
              - {name: features, datatype: FP32, dims: [32]}
            outputs:
              - name: probabilities
                dims: [-1]
            batching:
              preferred_batch_sizes: [16, 4, 8]
              max_queue_delay_us: 2000
              max_queue_size: 100
            instances: 2
            onnxruntime:
              device: cuda
              device_id: 1
              intra_op_threads: 0
              inter_op_threads: 2
              allow_spinning: true
              graph_optimization: basic
              warmup: false
            slo:
              default_deadline_ms: 50
            """,
        )
    )
    assert c.max_batch_size == 32 and c.versions == [2, 1] and c.instances == 2
    assert (
        c.inputs[0].name == "features"
        and c.inputs[0].datatype == "FP32"
        and c.inputs[0].dims == [32]
    )
    assert c.outputs[0].datatype is None and c.outputs[0].dims == [-1]
    assert c.batching.preferred_batch_sizes == [4, 8, 16]  # kept sorted for the batcher
    assert c.onnxruntime.device == "cuda" and c.onnxruntime.device_id == 1
    assert c.onnxruntime.allow_spinning is True and c.onnxruntime.graph_optimization == "basic"
    assert c.slo.default_deadline_ms == 50.0


def test_not_batching_model(tmp_path):
    c = load_model_config(write(tmp_path, "max_batch_size: 0\n"))
    assert c.max_batch_size == 0


# (config text, dotted key, bad value as shown, what the message says is allowed)
BAD = [
    (
        "batching:\n  max_queue_delay_us: 20000000\n",
        "batching.max_queue_delay_us",
        "20000000",
        "0..10000000",
    ),
    ("batching:\n  max_queue_delay_us: -1\n", "batching.max_queue_delay_us", "-1", "0..10000000"),
    ("batching:\n  max_queue_size: 0\n", "batching.max_queue_size", "0", "1..65536"),
    ("batching:\n  max_queue_size: 65537\n", "batching.max_queue_size", "65537", "1..65536"),
    (
        "slo:\n  priority_levels: 2\n  priority_queues:\n    2:\n      max_queue_size: 100000\n",
        "slo.priority_queues[2].max_queue_size",
        "100000",
        "1..65536",
    ),
    ("batching:\n  preferred_batch_sizes: [0]\n", "batching.preferred_batch_sizes[0]", "0", ">= 1"),
    (
        "batching:\n  preferred_batch_sizes: [4, 4]\n",
        "batching.preferred_batch_sizes",
        "[4, 4]",
        "no duplicates",
    ),
    ("max_batch_size: -1\n", "max_batch_size", "-1", "0..4096"),
    ("max_batch_size: 4097\n", "max_batch_size", "4097", "0..4096"),
    ("max_batch_size: 1000000000000\n", "max_batch_size", "1000000000000", "0..4096"),
    ("max_batch_size: '8'\n", "max_batch_size", "'8'", "0..4096"),
    ("max_batch_size: 8.5\n", "max_batch_size", "8.5", "0..4096"),
    ("max_batch_size: true\n", "max_batch_size", "True", "0..4096"),
    ("instances: 0\n", "instances", "0", "1..16"),
    ("instances: 17\n", "instances", "17", "1..16"),
    ("backend: tensorflow\n", "backend", "'tensorflow'", "'onnxruntime'"),
    ("versions: newest\n", "versions", "'newest'", "'latest', 'all' or a list"),
    ("versions: [0]\n", "versions", "[0]", "'latest', 'all' or a list"),
    ("versions: []\n", "versions", "[]", "'latest', 'all' or a list"),
    ("versions: [1, 1]\n", "versions", "[1, 1]", "listed twice"),
    ("onnxruntime:\n  device: gpu\n", "onnxruntime.device", "'gpu'", "'cpu' or 'cuda'"),
    ("onnxruntime:\n  device_id: -1\n", "onnxruntime.device_id", "-1", ">= 0"),
    ("onnxruntime:\n  intra_op_threads: -2\n", "onnxruntime.intra_op_threads", "-2", ">= 0"),
    ("onnxruntime:\n  inter_op_threads: x\n", "onnxruntime.inter_op_threads", "'x'", ">= 0"),
    ("onnxruntime:\n  allow_spinning: 2\n", "onnxruntime.allow_spinning", "2", "true/false"),
    (
        "onnxruntime:\n  graph_optimization: max\n",
        "onnxruntime.graph_optimization",
        "'max'",
        "'extended'",
    ),
    ("slo:\n  default_deadline_ms: 0\n", "slo.default_deadline_ms", "0", "> 0"),
    ("inputs:\n  - name: x\n    datatype: FLOAT\n", "inputs[0].datatype", "'FLOAT'", "FP32"),
    ("inputs:\n  - name: x\n    dims: [3, 0]\n", "inputs[0].dims[1]", "0", "-1"),
    ("inputs:\n  - name: x\n    dims: [-2]\n", "inputs[0].dims[0]", "-2", "-1"),
    ("outputs:\n  - name: ''\n", "outputs[0].name", "''", "tensor name"),
]


@pytest.mark.parametrize(
    ("text", "key", "value", "allowed"), BAD, ids=[b[1] + "=" + b[2] for b in BAD]
)
def test_bad_value_names_file_key_value_and_rule(tmp_path, text, key, value, allowed):
    message, path = config_error(tmp_path, text)
    assert path in message
    assert f"- {key} (line " in message
    assert value in message
    assert allowed in message


def test_line_of_the_bad_key_is_given(tmp_path):
    message, _ = config_error(tmp_path, "max_batch_size: 8\nbatching:\n  max_queue_size: 0\n")
    assert "batching.max_queue_size (line 3)" in message


def test_unknown_key_suggests_the_right_one_and_lists_allowed(tmp_path):
    message, path = config_error(tmp_path, "batching:\n  max_queue_delay: 100\n")
    assert path in message
    assert "batching.max_queue_delay (line 2): unknown key" in message
    assert "did you mean 'max_queue_delay_us'?" in message
    assert "preferred_batch_sizes, max_queue_delay_us, max_queue_size" in message


def test_unknown_top_level_key(tmp_path):
    message, _ = config_error(tmp_path, "max_batch: 8\n")
    assert "max_batch (line 1): unknown key; did you mean 'max_batch_size'?" in message


def test_missing_tensor_name(tmp_path):
    message, _ = config_error(tmp_path, "inputs:\n  - datatype: FP32\n")
    assert "inputs[0].name" in message and "required key is missing" in message


def test_every_problem_is_reported_at_once(tmp_path):
    message, _ = config_error(
        tmp_path, "instances: 0\nmax_batch_size: -3\nonnxruntime:\n  device: tpu\n"
    )
    assert (
        "instances" in message and "max_batch_size" in message and "onnxruntime.device" in message
    )


# Cross-field rules.


def test_preferred_size_above_max_batch_size(tmp_path):
    message, path = config_error(
        tmp_path, "max_batch_size: 32\nbatching:\n  preferred_batch_sizes: [8, 64]\n"
    )
    assert path in message
    assert "batching.preferred_batch_sizes[1] (line 3): 64" in message
    assert "larger than max_batch_size 32" in message and "1..32" in message


@pytest.mark.parametrize(
    ("batching", "key"),
    [
        ("preferred_batch_sizes: [4]", "batching.preferred_batch_sizes"),
        ("max_queue_delay_us: 100", "batching.max_queue_delay_us"),
    ],
)
def test_batching_settings_refused_when_model_does_not_batch(tmp_path, batching, key):
    message, path = config_error(tmp_path, f"max_batch_size: 0\nbatching:\n  {batching}\n")
    assert path in message and key in message
    assert "max_batch_size is 0" in message and "set max_batch_size >= 1" in message


def test_queue_delay_must_be_shorter_than_default_deadline(tmp_path):
    message, _ = config_error(
        tmp_path, "batching:\n  max_queue_delay_us: 5000\nslo:\n  default_deadline_ms: 5\n"
    )
    assert "batching.max_queue_delay_us" in message and "5000" in message
    assert "shorter than slo.default_deadline_ms (5 ms" in message
    ok = load_model_config(
        write(tmp_path, "batching:\n  max_queue_delay_us: 4999\nslo:\n  default_deadline_ms: 5\n")
    )
    assert ok.batching.max_queue_delay_us == 4999


def test_device_id_needs_cuda(tmp_path):
    message, _ = config_error(tmp_path, "onnxruntime:\n  device_id: 1\n")
    assert "onnxruntime.device_id (line 2): 1" in message and "device: cuda" in message


def test_tensor_listed_twice(tmp_path):
    message, _ = config_error(tmp_path, "inputs:\n  - name: x\n  - name: x\n")
    assert "inputs[1].name (line 3): 'x'" in message and "listed twice" in message


# The file itself.


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    message, path = config_error(tmp_path, "max_batch_size: 8\nbatching: {max_queue_size: 3\n")
    assert path in message and "invalid YAML" in message
    assert "line 3" in message and "starts at line 2" in message


def test_bad_indentation(tmp_path):
    message, path = config_error(
        tmp_path, "batching:\n  max_queue_size: 3\n max_queue_delay_us: 2\n"
    )
    assert path in message and "invalid YAML at line 3" in message


def test_duplicate_key_is_an_error_not_a_silent_override(tmp_path):
    message, path = config_error(tmp_path, "max_batch_size: 8\nmax_batch_size: 16\n")
    assert path in message and "line 2" in message
    assert "'max_batch_size' appears twice (first on line 1)" in message


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    message, path = config_error(tmp_path, text)
    assert path in message and "top level must be a mapping" in message


def test_unreadable_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(b"max_batch_size: \xff\xfe\n")
    with pytest.raises(ConfigError, match="cannot read model config .*config.yaml"):
        load_model_config(path)


def test_from_mapping_names_its_source():
    with pytest.raises(ConfigError, match=r"invalid model config <inline>:\n  - instances: 99"):
        model_config_from_mapping({"instances": 99}, source="<inline>")
    assert model_config_from_mapping({"instances": 2}).instances == 2


def test_json_schema_describes_the_file():
    schema = ModelConfig.model_json_schema()
    assert schema["additionalProperties"] is False
    assert {"max_batch_size", "batching", "onnxruntime", "slo", "versions"} <= set(
        schema["properties"]
    )
    batching = schema["$defs"]["BatchingConfig"]["properties"]["max_queue_delay_us"]
    assert (batching["minimum"], batching["maximum"]) == (0, 10_000_000)


def test_empty_sections_mean_defaults(tmp_path):
    """`batching:` with everything under it commented out reads as null in YAML."""
    c = load_model_config(
        write(tmp_path, "batching:\n#  max_queue_size: 3\nonnxruntime:\nslo:\ninputs:\noutputs:\n")
    )
    assert c == ModelConfig()


@pytest.mark.parametrize("value", [".inf", ".nan"])
def test_deadline_must_be_finite(tmp_path, value):
    message, _ = config_error(tmp_path, f"slo:\n  default_deadline_ms: {value}\n")
    assert "slo.default_deadline_ms (line 2)" in message and "finite" in message


def test_unhashable_key_is_a_yaml_error(tmp_path):
    message, path = config_error(tmp_path, "[a]: 1\n")
    assert path in message and "unhashable key" in message


def test_upper_bounds_themselves_are_allowed(tmp_path):
    from steadyserve.config import MAX_BATCH_SIZE, MAX_QUEUE_SIZE

    assert (MAX_BATCH_SIZE, MAX_QUEUE_SIZE) == (4096, 65536)
    c = load_model_config(
        write(
            tmp_path,
            "max_batch_size: 4096\nbatching:\n  max_queue_size: 65536\n"
            "slo:\n  priority_levels: 2\n  priority_queues:\n    2:\n      max_queue_size: 65536\n",
        )
    )
    assert (c.max_batch_size, c.batching.max_queue_size) == (4096, 65536)
    assert c.slo.priority_queues[2].max_queue_size == 65536
    schema = ModelConfig.model_json_schema()
    assert schema["properties"]["max_batch_size"]["maximum"] == 4096
