"""The execution timeout: a model run that outlives it is terminated.

ONNX Runtime stops a run when its ``RunOptions.terminate`` flag is set from
another thread; the run then fails, and the batch's requests go to the backup.
One watchdog thread per model polls the runs in flight a few times per timeout
period. Starting and ending a run only stores and removes an entry under an
uncontended lock: no thread is woken per batch, which matters when a batch of
a small model runs in tens of microseconds. A run is terminated between 1 and
1.25 timeouts after it started.
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
        self._poll_s = min(max(timeout_s / 4, 0.001), 0.05)
        self._lock = threading.Lock()
        self._runs: dict[int, tuple[float, Any, threading.Event]] = {}
        self._ids = itertools.count(1)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, name=f"steadyserve-watchdog-{model}", daemon=True
        )
        self._thread.start()

    def begin(self, run_options: Any, abort: threading.Event) -> int:
        """A run starts: terminate it (and set ``abort``) if it is still going at the timeout."""
        run_id = next(self._ids)
        with self._lock:
            self._runs[run_id] = (time.monotonic() + self.timeout_s, run_options, abort)
        return run_id

    def end(self, run_id: int) -> None:
        with self._lock:
            self._runs.pop(run_id, None)

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_s):
            now = time.monotonic()
            with self._lock:
                late = [
                    run_id for run_id, (deadline, _, _) in self._runs.items() if deadline <= now
                ]
                stopped = [self._runs.pop(run_id) for run_id in late]
            for _, run_options, abort in stopped:
                if run_options is not None:
                    run_options.terminate = True
                abort.set()
                self.terminated += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
