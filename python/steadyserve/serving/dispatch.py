"""How Python callers hand requests to the native core and get their answers.

Sync callers: one native call submits (the core decodes, routes, queues), then
the caller waits inside the core with the GIL released. asyncio callers: the
core answers into a completion queue per event loop whose eventfd the loop
watches, so a batch's answers wake the loop once. Inline models (fast ones run
on the submitting thread) are drained right after a submit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Mapping, Sequence

from .. import _core, _native  # noqa: F401  (_native hands the core our exception types)
from ..errors import InvalidArgumentError


class LoopCompletions:
    """The completion queue of one event loop and the futures waiting on it."""

    def __init__(self, core, loop: asyncio.AbstractEventLoop):
        self.core = core
        self.loop = loop
        self.queue = _core.CompletionQueue()
        self.futures: dict[int, asyncio.Future] = {}
        self.tags = itertools.count(1)
        self.drain_scheduled = False  # an inline drain is queued on this loop
        loop.add_reader(self.queue.fd, self.drain)

    def drain(self) -> None:
        futures = self.futures
        for tag, value, failed in self.queue.drain(self.core):
            future = futures.pop(tag, None)
            if future is None or future.done():
                continue  # the caller gave up
            if failed:
                future.set_exception(value)
            else:
                future.set_result(value)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, ValueError):  # the loop is closed already
            self.loop.remove_reader(self.queue.fd)


class Dispatcher:
    """Submits in-process requests to an ``_core.InferenceCore``."""

    def __init__(self, max_requests: int):
        self.core = _core.InferenceCore(max_requests)
        self._loops: dict[asyncio.AbstractEventLoop, LoopCompletions] = {}
        self._loops_lock = threading.Lock()
        self.inline: list = []  # executors of inline models: drained after a submit

    def completions(self, loop: asyncio.AbstractEventLoop) -> LoopCompletions:
        c = self._loops.get(loop)
        if c is None:
            with self._loops_lock:
                c = self._loops.get(loop)
                if c is None:
                    c = self._loops[loop] = LoopCompletions(self.core, loop)
        return c

    def run_inline(self) -> None:
        # Until nothing ran: a failed batch sends its requests on to the backup, which
        # may be an inline model drained earlier in this pass.
        ran = True
        while ran:
            ran = False
            for executor in list(self.inline):
                if executor.inline and executor.drain():
                    ran = True

    def _drain_soon(self, completions: LoopCompletions) -> None:
        # Scheduled after a submit on the loop: every request that reached the loop in the
        # same iteration is queued by now, so they share this batch. The answers it made
        # are taken at once (which also resets the queue's eventfd), saving the loop a
        # wake-up and an iteration per batch.
        completions.drain_scheduled = False
        self.run_inline()
        completions.drain()

    def schedule_inline(self, loop, completions: LoopCompletions) -> None:
        """After a submit on the loop: run inline models' ready batches once this
        iteration's callbacks are done."""
        if self.inline and not completions.drain_scheduled:
            completions.drain_scheduled = True
            loop.call_soon(self._drain_soon, completions)

    @staticmethod
    def _inputs(inputs) -> dict:
        """The core takes a dict of arrays (it converts array-likes and string arrays itself)."""
        if type(inputs) is dict:
            return inputs
        if not isinstance(inputs, Mapping):
            raise InvalidArgumentError("inputs must be a mapping of input name to array")
        return dict(inputs)

    def infer(
        self,
        model: str,
        version: str | None,
        inputs,
        *,
        deadline_ns: int | None = None,
        priority: int = 0,
        outputs: Sequence[str] | None = None,
        request_id: str | None = None,
    ):
        pending = self.core.submit(
            model,
            version or "",
            self._inputs(inputs),
            None if outputs is None else list(outputs),
            deadline_ns or 0,
            priority,
            None,
            0,
            request_id or "",
        )
        if isinstance(pending, tuple):  # answered at once
            return pending[0]
        if self.inline:
            self.run_inline()  # run it (and whatever else is ready) in this thread
        return pending.wait()

    async def infer_async(
        self,
        model: str,
        version: str | None,
        inputs,
        *,
        deadline_ns: int | None = None,
        priority: int = 0,
        outputs: Sequence[str] | None = None,
        request_id: str | None = None,
    ):
        loop = asyncio.get_running_loop()
        c = self.completions(loop)
        tag = next(c.tags)
        handle = self.core.submit(
            model,
            version or "",
            self._inputs(inputs),
            None if outputs is None else list(outputs),
            deadline_ns or 0,
            priority,
            c.queue,
            tag,
            request_id or "",
        )
        if isinstance(handle, tuple):
            return handle[0]
        future = loop.create_future()
        c.futures[tag] = future
        self.schedule_inline(loop, c)
        try:
            return await future
        except asyncio.CancelledError:
            c.futures.pop(tag, None)
            self.core.cancel(handle)
            raise
