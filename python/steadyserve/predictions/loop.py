"""The feedback loop of one Runtime, put together: the prediction log, the quality
monitor it feeds (the join and the KPIs), the breach actions, and their metrics."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import FailedPreconditionError
from .actions import QualityActions
from .capture import BatchCapture
from .feedback import NO_LOG, QualityMonitor
from .writer import PredictionLog


class FeedbackLoop:
    def __init__(self, runtime, log: PredictionLog | str | os.PathLike):
        if not isinstance(log, PredictionLog):
            log = PredictionLog(Path(log))
        self.log = log
        self.actions = QualityActions(runtime)
        self.monitor = QualityMonitor(log.root, runtime.config_of, on_breach=self.actions.on_breach)
        log.on_batch = self.monitor.on_batch  # on the writer thread, once a batch is written
        from ..monitoring.prediction_log import register as register_log
        from ..monitoring.quality import register as register_quality

        register_log(runtime.metrics.registry, log)
        register_quality(runtime.metrics.registry, self.monitor)

    def capture(self, model) -> BatchCapture | None:
        """The executor's hand-over for a ServableModel (None: its config logs nothing)."""
        settings = model.config.prediction_log
        if not settings.enabled or settings.sample_rate <= 0:
            return None
        return BatchCapture(
            self.log,
            model.name,
            model.version,
            [s.name for s in model.inputs],
            [s.name for s in model.outputs],
            model.config.max_batch_size > 0,
        )

    def restore(self) -> None:
        """At start, once the models are loaded: the joins and KPI windows from disk."""
        self.monitor.restore()

    def close(self, timeout: float | None) -> None:
        """After the executors drained: everything logged is written, then the rest stops."""
        self.log.close(timeout)
        self.monitor.close()
        self.actions.close()


def no_log_error() -> FailedPreconditionError:
    return FailedPreconditionError(NO_LOG)
