"""The join state of one model asked for: its logged predictions by request id, the
labels waiting for theirs, and the KPI windows of the requests joined.

Bounded twice: by time (a prediction or a waiting label stays ``join_window_s``
seconds) and by count (``MAX_INDEXED_PER_MODEL`` predictions, ``MAX_PENDING_PER_MODEL``
labels; the oldest go first). Each is a dict for look-up plus a deque in arrival order
for eviction, so eviction is amortised O(1) per entry. An id that comes again replaces
its dict entry and leaves a stale deque entry behind; the count bound is on the deque,
so memory stays bounded even when one id comes again and again.

Not thread-safe: ``feedback.QualityMonitor`` holds its lock around every call. The
outcome counts go to the ``counts`` the caller passes (a ``collections.Counter``).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from ..config import QualityConfig
from .kpi import KpiWindow, Labelled
from .label_values import LabelValue

MAX_INDEXED_PER_MODEL = 1_000_000  # logged predictions waiting for (or holding) a label
MAX_PENDING_PER_MODEL = 1_000_000  # labels waiting for their prediction


@dataclass(slots=True)
class Logged:
    """One indexed prediction."""

    time: float  # unix seconds, when its batch ran
    answered_by: str
    version: str
    prediction: np.ndarray  # [rows, *dims]: the request's rows of the scored output
    labelled: bool = False


@dataclass(slots=True)
class Waiting:
    """A label waiting for its prediction."""

    time: float  # unix seconds, when it arrived
    label: LabelValue


@dataclass(slots=True)
class Pair:
    """A label and its prediction, on the way into a window."""

    model: str
    request_id: str
    label: LabelValue
    time: float  # when it joins: the window time
    logged: Logged
    index: int | None = None  # the item's place in its feedback call (None: no caller)


class ModelJoin:
    def __init__(self, model: str, quality: QualityConfig):
        self.model = model
        self.quality = quality  # the latest seen: eviction needs one when the model is gone
        self.indexed: dict[str, Logged] = {}
        self._indexed_order: deque[tuple[float, str, Logged]] = deque()
        self.pending: dict[str, Waiting] = {}
        self._pending_order: deque[tuple[float, str, Waiting]] = deque()
        self.windows: dict[tuple[str, str], KpiWindow] = {}  # (answered_by, version)

    def index(self, rid: str, entry: Logged, counts: Counter) -> None:
        old = self.indexed.get(rid)
        if old is not None and not old.labelled:  # the id came again: the old one is lost
            counts["unmatched"] += 1
        self.indexed[rid] = entry
        self._indexed_order.append((entry.time, rid, entry))
        while len(self._indexed_order) > MAX_INDEXED_PER_MODEL:
            _, gone_id, gone = self._indexed_order.popleft()
            if self.indexed.get(gone_id) is gone:
                del self.indexed[gone_id]
                counts["evicted"] += 1
                if not gone.labelled:
                    counts["unmatched"] += 1

    def pend(self, rid: str, waiting: Waiting, counts: Counter) -> None:
        self.pending[rid] = waiting
        self._pending_order.append((waiting.time, rid, waiting))
        while len(self._pending_order) > MAX_PENDING_PER_MODEL:
            _, gone_id, gone = self._pending_order.popleft()
            if self.pending.get(gone_id) is gone:
                del self.pending[gone_id]
                counts["expired"] += 1

    def evict(self, now: float, counts: Counter) -> None:
        """Drop predictions and labels past the join window, and window entries past
        theirs (a window left empty goes)."""
        start = now - self.quality.join_window_s
        order = self._indexed_order
        while order and order[0][0] < start:
            _, rid, entry = order.popleft()
            if self.indexed.get(rid) is entry:
                del self.indexed[rid]
                if not entry.labelled:
                    counts["unmatched"] += 1
        waiting = self._pending_order
        while waiting and waiting[0][0] < start:
            _, rid, label = waiting.popleft()
            if self.pending.get(rid) is label:
                del self.pending[rid]
                counts["expired"] += 1
        for key, window in list(self.windows.items()):
            window.evict(self.quality, now)
            if not window.labelled:
                del self.windows[key]

    def window_task(self, answered_by: str, version: str) -> str | None:
        window = self.windows.get((answered_by, version))
        return None if window is None else window.task

    def add(
        self, pair: Pair, labels: np.ndarray, task: str, now: float, counts: Counter | None
    ) -> None:
        """Put a validated pair in the window of the model and version that answered;
        ``counts`` None: not counted (a restore)."""
        key = (pair.logged.answered_by, pair.logged.version)
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = KpiWindow(self.model, *key)
        entry = Labelled(pair.time, labels, pair.logged.prediction)
        window.add(pair.request_id, entry, self.quality, now, task)
        if counts is not None:
            counts["joined"] += 1
            if pair.logged.labelled:
                counts["replaced"] += 1
        pair.logged.labelled = True

    def latest_primary(self) -> KpiWindow | None:
        """The window of the version answering for itself that was labelled last."""
        primaries = [w for w in self.windows.values() if w.primary]
        return max(primaries, key=lambda w: w.last_label_time) if primaries else None


__all__ = [
    "MAX_INDEXED_PER_MODEL",
    "MAX_PENDING_PER_MODEL",
    "Logged",
    "ModelJoin",
    "Pair",
    "Waiting",
]
