"""The start-up line: ``steadyserve ready grpc=HOST:PORT http=HOST:PORT`` once both
ports listen and every required model serves, ``steadyserve not-ready grpc=...
http=...`` when they listen but a required model does not (the lines after it say
which and why). Scripts and tests read the ports from it; the word agrees with
/v2/health/ready and grpc.health.v1 at that moment.
"""

from __future__ import annotations

import re

_LINE = re.compile(r"^steadyserve (ready|not-ready) grpc=(\S+:\d+) http=(\S+:\d+)$")


def start_line(ready: bool, grpc: str, http: str) -> str:
    return f"steadyserve {'ready' if ready else 'not-ready'} grpc={grpc} http={http}"


def parse_start_line(line: str) -> tuple[bool, str, str] | None:
    """(ready, grpc host:port, http host:port) of a start-up line, or None."""
    match = _LINE.match(line.rstrip("\n"))
    if match is None:
        return None
    return match.group(1) == "ready", match.group(2), match.group(3)


__all__ = ["parse_start_line", "start_line"]
