"""A generation: the versions of one model that serve (or served) together, and the
fingerprints that tell a reload what changed on disk."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ModelConfig
from ..model import ServableModel
from ..repository import ModelSource


@dataclass
class Generation:
    """The versions of one model that serve (or served) together."""

    name: str
    config: ModelConfig
    source: ModelSource
    models: dict[str, ServableModel]  # version -> model
    fingerprints: dict[str, str]  # version -> what its files and config looked like
    directory_fingerprint: str = ""
    evaluation: dict | None = None  # the gate's scores of the latest version
    promoted_at: float = field(default_factory=time.monotonic)

    @property
    def latest(self) -> ServableModel:
        return self.models[max(self.models, key=int)]

    def backends(self) -> set[int]:
        return {id(m.backend) for m in self.models.values()}


def close_backends(generation: Generation, keep: set[int]) -> None:
    for model in generation.models.values():
        if id(model.backend) not in keep:
            model.backend.close()


def config_path(source: ModelSource) -> Path:
    path = getattr(source, "config_path", None)
    return path if path is not None else source.directory / "config.yaml"


def file_print(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return "missing"
    return f"{st.st_size} bytes, mtime {st.st_mtime_ns}"


def version_fingerprint(source: ModelSource, number: int) -> str:
    """What one version's serving depends on: its model file, the files next to it
    (stats), and the model's config."""
    path = source.versions[number]
    parts = [source.config.model_dump_json() if source.config else ""]
    for file in sorted(path.parent.iterdir()):
        if file.is_file():
            parts.append(f"{file.name}:{file_print(file)}")
    return "|".join(parts)


def directory_fingerprint(directory: Path) -> str:
    """A cheap summary of a model directory (names, sizes, mtimes two levels deep): a
    change to any file in it changes this."""
    parts = []
    try:
        for entry in sorted(directory.iterdir()):
            parts.append(f"{entry.name}:{file_print(entry)}")
            if entry.is_dir():
                for sub in sorted(entry.iterdir()):
                    parts.append(f"{entry.name}/{sub.name}:{file_print(sub)}")
    except OSError as exc:
        parts.append(f"error:{exc}")
    return "|".join(parts)


__all__ = [
    "Generation",
    "close_backends",
    "config_path",
    "directory_fingerprint",
    "file_print",
    "version_fingerprint",
]
