"""Model repository layout: ``REPO/<model>/config.yaml`` and ``REPO/<model>/<version>/model.onnx``.

A model's config is its ``config.yaml``, or else Triton's ``config.pbtxt``
(triton_config.py); having both is an error. The model file in each version
directory is ``model_filename`` of the config (default ``model.onnx``).

Scanning reads the file tree and the configs, nothing more: it loads no sessions.
One broken model (bad config, no versions) is reported on its ``ModelSource`` and
never stops the others from loading. A model directory, version directory or model
file that is a symlink leading out of the repository is skipped with a warning:
names come from clients, and what they name must stay inside the root.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from .config import ModelConfig, load_model_config
from .errors import ConfigError, InvalidArgumentError
from .triton_config import CONFIG_FILE as TRITON_CONFIG_FILE
from .triton_config import load_pbtxt

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.onnx"  # the default of ModelConfig.model_filename
MAX_NAME_LENGTH = 255  # longest directory name common file systems allow

# A name is used as a directory name under the repository root, so it must not be
# able to climb out of it: no separators, no leading dot, no "..".
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_VERSION = re.compile(r"[1-9][0-9]*")  # no leading zeros: "7" and "007" must not collide


@dataclass
class ModelSource:
    """One model directory as found on disk, before any session is loaded."""

    name: str
    directory: Path
    config: ModelConfig | None  # None when the config is invalid (see error)
    error: str | None  # why the model cannot be served; None when it can
    versions: dict[int, Path] = field(default_factory=dict)  # version -> its model file
    config_path: Path | None = None  # config.yaml or config.pbtxt; None: none (defaults)

    def selected_versions(self) -> list[int]:
        """The versions to serve according to ``config.versions``, ascending."""
        if self.config is None or not self.versions:
            return []
        wanted = self.config.versions
        if wanted == "latest":
            return sorted(self.versions)[-self.config.latest_versions :]
        if wanted == "all":
            return sorted(self.versions)
        return sorted(v for v in wanted if v in self.versions)


def validate_model_name(name: str) -> None:
    """Refuse names that are not a plain model name (path tricks, empty, odd characters)."""
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError("model name is empty")
    if len(name) > MAX_NAME_LENGTH or not _NAME.fullmatch(name) or ".." in name:
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise InvalidArgumentError(
            f"invalid model name {shown!r}: a model name is 1 to {MAX_NAME_LENGTH} characters "
            "of A-Z a-z 0-9 _ . -, starts with a letter or digit and contains no '..'"
        )


def scan_repository(root: Path | str) -> dict[str, ModelSource]:
    """Every valid model directory under ``root``, by name (sorted).

    Raises ``errors.ConfigError`` when ``root`` is missing or not a directory.
    Directories with invalid names, and symlinks leading out of ``root``, are
    skipped with a warning in the log.
    """
    root = Path(root)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a directory"
        raise ConfigError(f"model repository {root} {what}")
    inside = _Inside(root)
    models: dict[str, ModelSource] = {}
    for directory in sorted(root.iterdir()):
        if not directory.is_dir():
            continue  # README files and the like live next to models
        try:
            validate_model_name(directory.name)
        except InvalidArgumentError as exc:
            if not directory.name.startswith("."):  # hidden dirs are skipped silently
                log.warning("skipping %s: %s", directory, exc)
            continue
        if inside(directory):
            models[directory.name] = _scan_model(directory, inside)
    return models


def scan_model(root: Path | str, name: str) -> ModelSource | None:
    """The one model directory ``root/name`` as ``scan_repository`` would find it, or
    None when there is none (a reload reads its own model only)."""
    validate_model_name(name)
    root = Path(root)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a directory"
        raise ConfigError(f"model repository {root} {what}")
    directory = root / name
    inside = _Inside(root)
    if not directory.is_dir() or not inside(directory):
        return None
    return _scan_model(directory, inside)


class _Inside:
    """Whether a path stays inside the repository root; warns about one that does not.

    Only a symlink can lead out (names are checked, version names are digits), so a
    plain entry costs one lstat and only symlinks are resolved."""

    def __init__(self, root: Path):
        self.root = root.resolve()

    def __call__(self, path: Path) -> bool:
        if not path.is_symlink():
            return True
        target = path.resolve()
        if target.is_relative_to(self.root):
            return True
        log.warning(
            "skipping %s: it is a symlink to %s, outside the model repository %s",
            path,
            target,
            self.root,
        )
        return False


def _config_path(directory: Path) -> Path | None:
    """The model's config file: config.yaml, else config.pbtxt, else None (the defaults)."""
    yaml_path = directory / CONFIG_FILE
    pbtxt_path = directory / TRITON_CONFIG_FILE
    has_yaml, has_pbtxt = yaml_path.exists(), pbtxt_path.exists()
    if has_yaml and has_pbtxt:
        raise ConfigError(
            f"{directory} has both {CONFIG_FILE} and {TRITON_CONFIG_FILE} ({yaml_path} and "
            f"{pbtxt_path}); keep one"
        )
    return yaml_path if has_yaml else pbtxt_path if has_pbtxt else None


def _load_config(path: Path | None) -> ModelConfig:
    if path is None:
        return ModelConfig()
    return load_pbtxt(path) if path.name == TRITON_CONFIG_FILE else load_model_config(path)


def _find_versions(directory: Path, filename: str, inside: _Inside) -> dict[int, Path]:
    versions = {}
    for sub in directory.iterdir():
        if not (_VERSION.fullmatch(sub.name) and sub.is_dir() and inside(sub)):
            continue
        model = sub / filename
        if model.is_file() and inside(model):
            versions[int(sub.name)] = model
    return dict(sorted(versions.items()))


def _scan_model(directory: Path, inside: _Inside) -> ModelSource:
    config_path = None
    try:
        config_path = _config_path(directory)
        config = _load_config(config_path)
    except ConfigError as exc:
        # Still listed, for the index: under the default file name, the config being unread.
        versions = _find_versions(directory, MODEL_FILE, inside)
        return ModelSource(directory.name, directory, None, str(exc), versions, config_path)
    filename = config.model_filename
    versions = _find_versions(directory, filename, inside)
    error = None
    if not versions:
        error = (
            f"no version directories with {filename} under {directory} "
            f"(expected e.g. {directory / '1' / filename})"
        )
    elif isinstance(config.versions, list):
        missing = [v for v in config.versions if v not in versions]
        if missing:
            error = (
                f"{config_path}: versions lists {missing} but {directory} has only "
                f"{sorted(versions)} (each needs <version>/{filename})"
            )
    return ModelSource(directory.name, directory, config, error, versions, config_path)


__all__ = ["ModelSource", "scan_model", "scan_repository", "validate_model_name"]
