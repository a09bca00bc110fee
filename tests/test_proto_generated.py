"""The checked-in python/steadyserve/_proto is what protos/gen_protos.py makes from protos/.

The generator runs as a child process and the checked-in modules are read as
text, never imported: importing them would register ``inference.*`` in this
process's default descriptor pool, which belongs to tritonclient here (see
tests/test_codec.py).
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "protos" / "gen_protos.py"
CHECKED_IN = ROOT / "python" / "steadyserve" / "_proto"
FILES = [
    "__init__.py",
    "grpc_predict_v2_pb2.py",
    "model_config_pb2.py",
    "feedback_pb2.py",
]


def _recorded(name: str) -> str:
    text = (CHECKED_IN / "__init__.py").read_text(encoding="utf-8")
    match = re.search(rf'^{name} = "([^"]+)"$', text, re.MULTILINE)
    assert match, f"{name} missing from {CHECKED_IN / '__init__.py'}"
    return match.group(1)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def test_checked_in_files_are_exactly_the_generated_ones() -> None:
    assert sorted(p.name for p in CHECKED_IN.glob("*.py")) == sorted(FILES)


def test_regenerating_changes_nothing(tmp_path: Path) -> None:
    try:
        tools = importlib.metadata.version("grpcio-tools")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("grpcio-tools is not installed; it is needed to regenerate protos")
    recorded = _recorded("GRPCIO_TOOLS_VERSION")
    if tools != recorded:
        pytest.skip(
            f"checked-in code was made by grpcio-tools {recorded}, this has {tools}: "
            "the output differs between versions; compare with that version"
        )
    proc = subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in tmp_path.glob("*.py")) == sorted(FILES)
    stale = [
        name for name in FILES if (tmp_path / name).read_bytes() != (CHECKED_IN / name).read_bytes()
    ]
    assert not stale, f"out of date: {stale}; run: python protos/gen_protos.py"


def test_imports_between_generated_modules_are_package_relative() -> None:
    for name in FILES[1:]:
        text = (CHECKED_IN / name).read_text(encoding="utf-8")
        top_level = re.findall(r"^import \w+_pb2\b.*$", text, re.MULTILINE)
        assert not top_level, f"{name}: {top_level}"
    assert (
        "from . import model_config_pb2 as" in (CHECKED_IN / "grpc_predict_v2_pb2.py").read_text()
    )


def test_installed_runtimes_can_load_the_generated_code() -> None:
    """protobuf and grpcio refuse generated code newer than themselves; say so plainly here."""
    import google.protobuf
    import grpc

    gencode = _recorded("PROTOBUF_GENCODE_VERSION")
    assert _version(google.protobuf.__version__) >= _version(gencode), (
        f"protobuf {google.protobuf.__version__} is older than the gencode {gencode}"
    )
    tools = _recorded("GRPCIO_TOOLS_VERSION")
    assert _version(grpc.__version__) >= _version(tools), (
        f"grpcio {grpc.__version__} is older than grpcio-tools {tools} that made the stubs"
    )


def test_dependency_floors_allow_the_generated_code() -> None:
    """pyproject's floors for protobuf and grpcio must be at least what the generated code needs."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    floors = {}
    for package in ("protobuf", "grpcio"):
        match = re.search(rf'"{package}>=([0-9.]+)', text)
        assert match, f"pyproject.toml has no {package}>= requirement"
        floors[package] = match.group(1)
    needs = {
        "protobuf": _recorded("PROTOBUF_GENCODE_VERSION"),
        "grpcio": _recorded("GRPCIO_TOOLS_VERSION"),
    }
    too_low = {
        p: f"floor {floors[p]} < {needs[p]}"
        for p in needs
        if _version(floors[p]) < _version(needs[p])
    }
    assert not too_low, (
        f"generated code would not load at the pyproject floors: {too_low}; raise them "
        "or regenerate with an older grpcio-tools"
    )
