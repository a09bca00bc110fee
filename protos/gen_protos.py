#!/usr/bin/env python
"""Regenerate python/steadyserve/_proto from protos/*.proto.

    python protos/gen_protos.py            # rewrite the checked-in modules
    python protos/gen_protos.py --check    # exit 1 if they differ from a fresh run
    python protos/gen_protos.py --out DIR  # write into DIR instead

Runs ``grpc_tools.protoc`` (pip install grpcio-tools) with ``-I protos``, so
the descriptors are registered under the bare names "grpc_predict_v2.proto"
and "model_config.proto", then makes the imports between the generated modules
package-relative (``from . import model_config_pb2``): protoc writes them as
top-level imports, which only work with the output folder on sys.path.

The output depends on the grpcio-tools version: the generated code refuses to
load under a protobuf runtime older than the protoc that made it, and under a
grpcio older than the grpcio-tools that made it. ``__init__.py`` records both
versions; regenerate with the same grpcio-tools to get identical files.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
OUT_DIR = ROOT / "python" / "steadyserve" / "_proto"

# Message modules only: the server registers its own handlers for the service's
# methods (server/grpc_service.py), so protoc's servicer/stub module (*_pb2_grpc, a
# base class of "not implemented" methods and a grpcio version check) is not made.
PROTOS = ["model_config.proto", "grpc_predict_v2.proto", "feedback.proto"]
MODULES = sorted(Path(p).stem + "_pb2" for p in PROTOS)

_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)
_GENCODE = re.compile(r"^# Protobuf Python Version: (\S+)$", re.MULTILINE)

INIT_TEMPLATE = '''"""Generated protobuf modules of the KServe V2 protocol (``inference``).

DO NOT EDIT: made by protos/gen_protos.py from protos/*.proto; a test fails when
regenerating would change them.

    from steadyserve._proto import grpc_predict_v2_pb2 as pb

Importing these modules registers ``inference.*`` in protobuf's default
descriptor pool, as tritonclient's generated modules do too: the two cannot be
imported into the same process.
"""

# The tools that made these files. The protobuf runtime must be at least
# PROTOBUF_GENCODE_VERSION.
GRPCIO_TOOLS_VERSION = "{tools}"
PROTOBUF_GENCODE_VERSION = "{gencode}"
'''


def _relative_imports(text: str) -> str:
    """``import x_pb2 as y`` -> ``from . import x_pb2 as y`` for our own modules only."""

    def fix(m: re.Match[str]) -> str:
        if m.group(1) in MODULES:
            return f"from . import {m.group(1)} as {m.group(2)}"
        return m.group(0)

    return _IMPORT.sub(fix, text)


def generate(out: Path) -> list[Path]:
    """Write the generated modules into ``out`` (created if missing); return their paths."""
    try:
        from grpc_tools import protoc
    except ImportError:
        sys.exit("protos/gen_protos.py needs grpcio-tools: pip install grpcio-tools")
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    with tempfile.TemporaryDirectory() as tmp:
        for proto in PROTOS:
            args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={tmp}"]
            args.append(str(PROTO_DIR / proto))
            if protoc.main(args) != 0:
                sys.exit(f"protoc failed on {proto}")
        out.mkdir(parents=True, exist_ok=True)
        written = []
        gencode = None
        for name in MODULES:
            text = (Path(tmp) / f"{name}.py").read_text(encoding="utf-8")
            if gencode is None and (m := _GENCODE.search(text)):
                gencode = m.group(1)
            target = out / f"{name}.py"
            target.write_text(_relative_imports(text), encoding="utf-8", newline="\n")
            written.append(target)
    init = out / "__init__.py"
    init.write_text(
        INIT_TEMPLATE.format(
            tools=importlib.metadata.version("grpcio-tools"), gencode=gencode or "unknown"
        ),
        encoding="utf-8",
        newline="\n",
    )
    return [init, *written]


def _differences(expected_dir: Path, actual_dir: Path) -> list[str]:
    names = {p.name for p in expected_dir.glob("*.py")} | {p.name for p in actual_dir.glob("*.py")}
    diffs = []
    for name in sorted(names):
        a, b = expected_dir / name, actual_dir / name
        if not a.exists():
            diffs.append(f"{name}: checked in but not generated")
        elif not b.exists():
            diffs.append(f"{name}: generated but not checked in")
        elif a.read_bytes() != b.read_bytes():
            diffs.append(f"{name}: differs")
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help=f"default: {OUT_DIR}")
    parser.add_argument(
        "--check",
        action="store_true",
        help="compare with --out instead of writing; exit 1 if different",
    )
    args = parser.parse_args(argv)
    if not args.check:
        for path in generate(args.out):
            print(f"wrote {path}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        diffs = _differences(Path(tmp), args.out)
    for line in diffs:
        print(line)
    if diffs:
        print("run: python protos/gen_protos.py", file=sys.stderr)
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
