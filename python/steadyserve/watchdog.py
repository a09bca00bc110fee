"""The execution timeout: a model run that outlives it is terminated.

ONNX Runtime stops a run when its ``RunOptions.terminate`` flag is set from
another thread; the run then fails, and the batch's requests go to the backup.
One watchdog thread per model watches the runs in flight (one per executor)
and sleeps until the earliest of their deadlines, so a run costs two short lock
holds, not a timer thread of its own.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any


class ExecutionWatchdog:
    def __init__(self, model: str, timeout_s: float):
        self.timeout_s = timeout_s
        self.terminated = 0  # runs stopped by the timeout
        self._cv = threading.Condition()
        self._runs: dict[int, tuple[float, Any, threading.Event]] = {}
        self._ids = itertools.count(1)
        self._stopped = False
        self._thread = threading.Thread(
            target=self._watch, name=f"steadyserve-watchdog-{model}", daemon=True
        )
        self._thread.start()

    def begin(self, run_options: Any, abort: threading.Event) -> int:
        """A run starts: terminate it (and set ``abort``) if it is still going at the timeout."""
        with self._cv:
            run_id = next(self._ids)
            self._runs[run_id] = (time.monotonic() + self.timeout_s, run_options, abort)
            self._cv.notify()
        return run_id

    def end(self, run_id: int) -> None:
        with self._cv:
            self._runs.pop(run_id, None)

    def _watch(self) -> None:
        with self._cv:
            while not self._stopped:
                if not self._runs:
                    self._cv.wait()
                    continue
                run_id, (deadline, run_options, abort) = min(
                    self._runs.items(), key=lambda item: item[1][0]
                )
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    self._cv.wait(remaining)
                    continue
                del self._runs[run_id]
                if run_options is not None:
                    run_options.terminate = True
                abort.set()
                self.terminated += 1

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._thread.join()
