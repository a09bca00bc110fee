"""The request log: one line per sampled inference request (``--log-sample-rate``).

Each line is the ``request`` event of logger ``steadyserve.requests`` with the
request id, the model asked for and the one that answered (a failover shows), the
version, the gRPC status, the error if any and the latency. With the native
frontend the I/O threads sample and record natively (nothing per request in Python);
this module drains the records every ``DRAIN_S`` and writes them. With rate 0 (the
default) nothing is sampled and the cost is one branch per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger("steadyserve.requests")

DRAIN_S = 0.5
# gRPC status numbers -> names, for the log lines.
_STATUS = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    16: "UNAUTHENTICATED",
}


def write(record: dict) -> None:
    """One request's line."""
    status = record.pop("grpc_status", 0)
    record["status"] = _STATUS.get(status, str(status))
    log.info("request", extra=record)


class Sampler:
    """Every 1/rate-th request, deterministically (the native frontend's rule too)."""

    def __init__(self, rate: float):
        self.rate = rate
        self._credit = 0.0

    def take(self) -> bool:
        if self.rate <= 0:
            return False
        self._credit += self.rate
        if self._credit < 1.0:
            return False
        self._credit -= 1.0
        return True


class NativeRequestLog:
    """Drains the native frontend's sampled records into the log."""

    def __init__(self, frontend):
        self._frontend = frontend
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="request-log")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(DRAIN_S)
            self.drain()

    def drain(self) -> None:
        records, dropped = self._frontend.take_request_log()
        for record in records:
            write(record)
        if dropped:
            log.warning("request log fell behind: records dropped", extra={"dropped": int(dropped)})

    async def stop(self) -> None:
        """Stop draining; what is recorded by now is written."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.drain()


__all__ = ["NativeRequestLog", "Sampler", "write"]
