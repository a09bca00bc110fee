"""Model repository layout: ``REPO/<model>/config.yaml`` and ``REPO/<model>/<version>/model.onnx``.

Scanning reads the file tree and the configs, nothing more: it loads no sessions.
One broken model (bad config, no versions) is reported on its ``ModelSource`` and
never stops the others from loading.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from .config import ModelConfig, load_model_config
from .errors import ConfigError, InvalidArgumentError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.onnx"
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
    config: ModelConfig | None  # None when config.yaml is invalid (see error)
    error: str | None  # why the model cannot be served; None when it can
    versions: dict[int, Path] = field(default_factory=dict)  # version -> .../<version>/model.onnx

    def selected_versions(self) -> list[int]:
        """The versions to serve according to ``config.versions``, ascending."""
        if self.config is None or not self.versions:
            return []
        wanted = self.config.versions
        if wanted == "latest":
            return [max(self.versions)]
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
    Directories with invalid names are skipped with a warning in the log.
    """
    root = Path(root)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a directory"
        raise ConfigError(f"model repository {root} {what}")
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
        models[directory.name] = _scan_model(directory)
    return models


def _scan_model(directory: Path) -> ModelSource:
    versions = {
        int(sub.name): sub / MODEL_FILE
        for sub in directory.iterdir()
        if _VERSION.fullmatch(sub.name) and sub.is_dir() and (sub / MODEL_FILE).is_file()
    }
    versions = dict(sorted(versions.items()))
    try:
        config: ModelConfig | None = load_model_config(directory / CONFIG_FILE)
    except ConfigError as exc:
        return ModelSource(directory.name, directory, None, str(exc), versions)
    error = None
    if not versions:
        error = (
            f"no version directories with {MODEL_FILE} under {directory} "
            f"(expected e.g. {directory / '1' / MODEL_FILE})"
        )
    elif isinstance(config.versions, list):
        missing = [v for v in config.versions if v not in versions]
        if missing:
            error = (
                f"{directory / CONFIG_FILE}: versions lists {missing} but {directory} has only "
                f"{sorted(versions)} (each needs <version>/{MODEL_FILE})"
            )
    return ModelSource(directory.name, directory, config, error, versions)


__all__ = ["ModelSource", "scan_repository", "validate_model_name"]
