"""server/codec.py: V2 requests to numpy and back, and every refusal it owes a bad request.

How these tests run: the cases live in tests/_codec_checks.py and run in ONE
child Python process per session, whose JSON report the tests below read; each
``check_*`` function there is one test here (names found by parsing that file,
so this module never imports it).

Why: steadyserve._proto and tritonclient both register ``inference.*`` in
protobuf's default descriptor pool, and a process can hold only one of them.
The pytest process is where the integration tests use tritonclient as a client,
so it must never import steadyserve._proto (nor steadyserve.server.codec). The
child process is a real interpreter running the real modules; nothing is
mocked.

Run one case by hand: ``python tests/_codec_checks.py check_rank_limit``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

CHECKS = Path(__file__).with_name("_codec_checks.py")
CASES = [
    node.name
    for node in ast.parse(CHECKS.read_text(encoding="utf-8")).body
    if isinstance(node, ast.FunctionDef) and node.name.startswith("check_")
]


@pytest.fixture(scope="module")
def report() -> dict[str, str | None]:
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(CHECKS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        pytest.fail(
            f"{CHECKS.name} exited with {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}",
            pytrace=False,
        )
    return json.loads(lines[-1])


def test_cases_were_found() -> None:
    assert len(CASES) >= 20, CASES


@pytest.mark.parametrize("case", CASES)
def test_codec(report: dict[str, str | None], case: str) -> None:
    assert case in report, f"{case} did not run"
    if report[case] is not None:
        pytest.fail(f"{case} failed in the child process:\n{report[case]}", pytrace=False)


def test_this_process_holds_no_inference_protos() -> None:
    # The point of the child process: nothing here registered our messages.
    assert "steadyserve._proto" not in sys.modules
    assert "steadyserve.server.codec" not in sys.modules
