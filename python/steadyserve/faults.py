"""Fault injection for drills and tests: make a model fail on purpose.

Off unless the runtime was created with ``allow_fault_injection=True`` (the
server's ``--allow-fault-injection``). A fault applies to every batch the model
executes until it is cleared:

    error  the execution raises (as if ONNX Runtime failed)
    hang   the execution blocks until the fault is cleared or the batch is
           terminated by the execution timeout
    nan    the execution succeeds but every floating-point output is NaN
    slow   each execution takes ``delay_ms`` longer

The injector sits between the executor and the backend, so everything around
the model (batching, deadlines, stats, failover) sees exactly what a real
failure would look like.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from .errors import InternalError, InvalidArgumentError

FAULT_KINDS = ("error", "hang", "nan", "slow")


@dataclass(frozen=True)
class Fault:
    kind: str
    delay_ms: float = 0.0

    def describe(self) -> str:
        return f"{self.kind} ({self.delay_ms:g} ms)" if self.kind == "slow" else self.kind


class FaultInjector:
    """The fault currently injected into one model, if any. Thread-safe."""

    def __init__(self, model: str):
        self._model = model
        self._lock = threading.Lock()
        self._fault: Fault | None = None
        self._cleared = threading.Event()  # set whenever no hang is active
        self._cleared.set()

    @property
    def fault(self) -> Fault | None:
        return self._fault

    def inject(self, kind: str, delay_ms: float = 0.0) -> Fault:
        if kind not in FAULT_KINDS:
            raise InvalidArgumentError(
                f"unknown fault '{kind}' (faults: {', '.join(FAULT_KINDS)}, or clear)"
            )
        if kind == "slow" and not delay_ms > 0:
            raise InvalidArgumentError("fault 'slow' needs delay_ms > 0")
        fault = Fault(kind, float(delay_ms))
        with self._lock:
            self._fault = fault
            if kind == "hang":
                self._cleared.clear()
            else:
                self._cleared.set()
        return fault

    def clear(self) -> None:
        with self._lock:
            self._fault = None
            self._cleared.set()

    def before_run(self, abort: threading.Event | None = None) -> None:
        """Called by the executor before the model runs (GIL released while waiting)."""
        fault = self._fault
        if fault is None:
            return
        if fault.kind == "error":
            raise InternalError(f"model '{self._model}': injected fault: error")
        if fault.kind == "slow":
            time.sleep(fault.delay_ms / 1000.0)
        elif fault.kind == "hang":
            # Hang until cleared or until the execution timeout aborts this batch.
            while not self._cleared.wait(0.01):
                if abort is not None and abort.is_set():
                    raise InternalError(
                        f"model '{self._model}': execution terminated after the timeout "
                        "(injected fault: hang)"
                    )

    def after_run(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        fault = self._fault
        if fault is None or fault.kind != "nan":
            return outputs
        return {
            name: np.full_like(out, np.nan) if out.dtype.kind == "f" else out
            for name, out in outputs.items()
        }
