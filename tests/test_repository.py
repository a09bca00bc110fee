"""Repository scanning: models, versions, names, and one bad model not spoiling the rest."""

from __future__ import annotations

import logging
from functools import partial

import pytest

from onnx_models import make_repo, write_identity, write_linear
from steadyserve.errors import ConfigError, InvalidArgumentError
from steadyserve.repository import ModelSource, scan_repository, validate_model_name


def touch_model(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not parsed by the scan")


def test_models_and_versions_are_found(tmp_path):
    make_repo(tmp_path, {"linear": write_linear, "echo": write_identity}, versions=(1, 2, 10))
    models = scan_repository(tmp_path)
    assert list(models) == ["echo", "linear"]
    src = models["linear"]
    assert isinstance(src, ModelSource)
    assert src.name == "linear" and src.directory == tmp_path / "linear" and src.error is None
    assert src.versions == {v: tmp_path / "linear" / str(v) / "model.onnx" for v in (1, 2, 10)}
    assert src.selected_versions() == [10]  # "latest" is numeric, not by name (10 > 2)


def test_only_positive_numbered_dirs_with_a_model_are_versions(tmp_path):
    model = tmp_path / "m"
    for version in ("1", "3", "0", "007", "v2", "-1", "1.5"):
        touch_model(model / version / "model.onnx")
    (model / "4").mkdir()  # no model.onnx yet (e.g. mid-copy)
    touch_model(model / "5" / "other.onnx")
    (model / "6").write_text("a file, not a directory")
    src = scan_repository(tmp_path)["m"]
    assert sorted(src.versions) == [1, 3]
    assert src.error is None


@pytest.mark.parametrize(
    ("versions", "selected"), [("latest", [3]), ("all", [1, 2, 3]), ([3, 1], [1, 3]), ([2], [2])]
)
def test_selected_versions_follow_the_config(tmp_path, versions, selected):
    make_repo(
        tmp_path, {"m": write_identity}, configs={"m": {"versions": versions}}, versions=(1, 2, 3)
    )
    src = scan_repository(tmp_path)["m"]
    assert src.error is None
    assert src.selected_versions() == selected


def test_configured_version_that_does_not_exist(tmp_path):
    make_repo(tmp_path, {"m": write_identity}, configs={"m": {"versions": [1, 4]}})
    src = scan_repository(tmp_path)["m"]
    assert src.config is not None
    assert "versions lists [4]" in src.error and "config.yaml" in src.error and "[1]" in src.error
    assert src.selected_versions() == [1]


def test_model_without_versions(tmp_path):
    (tmp_path / "empty" / "1").mkdir(parents=True)
    make_repo(tmp_path, {"good": write_identity})
    models = scan_repository(tmp_path)
    src = models["empty"]
    assert src.versions == {} and src.selected_versions() == []
    assert src.error.startswith(
        f"no version directories with model.onnx under {tmp_path / 'empty'}"
    )
    assert models["good"].error is None


def test_bad_config_is_isolated_to_its_model(tmp_path):
    make_repo(
        tmp_path,
        {"bad": write_identity, "good": partial(write_linear, n_in=2, n_out=2)},
        configs={"bad": {"batching": {"max_queue_delay_us": -5}}, "good": {"max_batch_size": 8}},
    )
    models = scan_repository(tmp_path)
    bad, good = models["bad"], models["good"]
    assert bad.config is None
    assert str(tmp_path / "bad" / "config.yaml") in bad.error
    assert "batching.max_queue_delay_us" in bad.error and "-5" in bad.error
    assert bad.versions == {1: tmp_path / "bad" / "1" / "model.onnx"}  # still listed, for the index
    assert bad.selected_versions() == []
    assert (
        good.error is None and good.config.max_batch_size == 8 and good.selected_versions() == [1]
    )


def test_yaml_syntax_error_is_isolated_too(tmp_path):
    make_repo(tmp_path, {"bad": write_identity, "good": write_identity})
    (tmp_path / "bad" / "config.yaml").write_text("max_batch_size: [\n")
    models = scan_repository(tmp_path)
    assert models["bad"].config is None and "invalid YAML" in models["bad"].error
    assert models["good"].error is None


def test_invalid_names_and_files_are_skipped(tmp_path, caplog):
    make_repo(tmp_path, {"ok-model_v1.2": write_identity})
    for name in ("bad name", "-dash", "a..b", "ünï", ".hidden", "_private"):
        touch_model(tmp_path / name / "1" / "model.onnx")
    (tmp_path / "README.md").write_text("not a model")
    with caplog.at_level(logging.WARNING, logger="steadyserve.repository"):
        models = scan_repository(tmp_path)
    assert list(models) == ["ok-model_v1.2"]
    logged = caplog.text
    assert "bad name" in logged and "a..b" in logged and "-dash" in logged
    assert ".hidden" not in logged  # hidden directories are skipped quietly


def test_missing_root(tmp_path):
    with pytest.raises(ConfigError, match=f"model repository {tmp_path / 'nope'} does not exist"):
        scan_repository(tmp_path / "nope")


def test_root_is_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is not a directory"):
        scan_repository(tmp_path / "file")


def test_empty_root(tmp_path):
    assert scan_repository(str(tmp_path)) == {}


@pytest.mark.parametrize("name", ["m", "tabular-lite", "resnet50.v2", "A_1", "9lives"])
def test_valid_model_names(name):
    validate_model_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../etc",
        "a/b",
        "/abs",
        "a\\b",
        "..\\x",
        "a\x00b",
        ".hidden",
        "a..b",
        "-x",
        "_x",
        "sp ace",
        "tab\t",
        "ünï",
        "x" * 256,
        "name\n",
    ],
)
def test_path_tricks_are_refused(name):
    with pytest.raises(InvalidArgumentError, match="model name"):
        validate_model_name(name)


def test_invalid_name_message_states_the_rule():
    with pytest.raises(InvalidArgumentError) as info:
        validate_model_name("../secrets")
    message = str(info.value)
    assert "'../secrets'" in message and "A-Z a-z 0-9 _ . -" in message and "'..'" in message


def test_latest_versions_selects_the_newest_n(tmp_path):
    make_repo(
        tmp_path,
        {"m": write_identity},
        configs={"m": {"latest_versions": 2}},
        versions=(1, 3, 10),
    )
    assert scan_repository(tmp_path)["m"].selected_versions() == [3, 10]
    (tmp_path / "m" / "config.yaml").write_text("latest_versions: 5\n")  # more than there are
    assert scan_repository(tmp_path)["m"].selected_versions() == [1, 3, 10]


def test_model_filename_names_the_version_file(tmp_path):
    make_repo(tmp_path, {"m": write_identity}, configs={"m": {"model_filename": "net.onnx"}})
    touch_model(tmp_path / "m" / "2" / "net.onnx")
    src = scan_repository(tmp_path)["m"]
    assert src.versions == {2: tmp_path / "m" / "2" / "net.onnx"}  # 1 has only model.onnx
    assert src.config_path == tmp_path / "m" / "config.yaml"
    (tmp_path / "m" / "2" / "net.onnx").unlink()
    src = scan_repository(tmp_path)["m"]
    assert src.versions == {}
    assert src.error == (
        f"no version directories with net.onnx under {tmp_path / 'm'} "
        f"(expected e.g. {tmp_path / 'm' / '1' / 'net.onnx'})"
    )


def test_config_path_is_none_without_a_config_file(tmp_path):
    make_repo(tmp_path, {"m": write_identity})
    src = scan_repository(tmp_path)["m"]
    assert src.config_path is None and src.error is None and src.selected_versions() == [1]


@pytest.fixture
def outside(tmp_path):
    """A model directory outside the repository, for symlinks to point at."""
    make_repo(tmp_path / "elsewhere", {"stray": write_identity})
    return tmp_path / "elsewhere" / "stray"


def test_symlinks_out_of_the_repository_are_skipped(tmp_path, outside, caplog):
    repo = tmp_path / "repo"
    make_repo(repo, {"good": write_identity, "linked_version": write_identity})
    make_repo(repo, {"linked_file": write_identity})
    (repo / "escaped").symlink_to(outside, target_is_directory=True)
    (repo / "linked_version" / "2").symlink_to(outside / "1", target_is_directory=True)
    (repo / "linked_file" / "1" / "model.onnx").unlink()
    (repo / "linked_file" / "1" / "model.onnx").symlink_to(outside / "1" / "model.onnx")
    with caplog.at_level(logging.WARNING, logger="steadyserve.repository"):
        models = scan_repository(repo)
    assert sorted(models) == ["good", "linked_file", "linked_version"]
    assert sorted(models["linked_version"].versions) == [1]
    assert models["linked_file"].versions == {} and "no version directories" in (
        models["linked_file"].error
    )
    logged = caplog.text
    for path in (
        repo / "escaped",
        repo / "linked_version" / "2",
        repo / "linked_file" / "1" / "model.onnx",
    ):
        assert f"skipping {path}: it is a symlink to" in logged
    assert "outside the model repository" in logged


def test_symlinks_inside_the_repository_are_followed(tmp_path, caplog):
    make_repo(tmp_path, {"good": write_identity}, versions=(1, 2))
    (tmp_path / "alias").symlink_to(tmp_path / "good", target_is_directory=True)
    (tmp_path / "good" / "3").symlink_to(tmp_path / "good" / "2", target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="steadyserve.repository"):
        models = scan_repository(tmp_path)
    assert sorted(models) == ["alias", "good"]
    assert sorted(models["good"].versions) == [1, 2, 3]
    assert models["alias"].versions[1] == tmp_path / "alias" / "1" / "model.onnx"
    assert caplog.text == ""


def test_repository_root_reached_through_a_symlink(tmp_path, caplog):
    make_repo(tmp_path / "real", {"m": write_identity})
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "real" / "n").symlink_to(tmp_path / "real" / "m", target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="steadyserve.repository"):
        models = scan_repository(tmp_path / "link")
    assert sorted(models) == ["m", "n"] and caplog.text == ""
