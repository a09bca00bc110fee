"""The sliding window of labelled requests of one (asked model, model that answered,
version), its live KPIs and whether they breach the model's thresholds.

A window holds the last ``quality.window`` labelled requests joined within the last
``quality.window_s`` seconds (joined: when the label arrived, or the prediction when the
label came first), each with its labels and the rows of the output they are for. The
KPIs are ``evaluation.score`` over those rows (the one scorer of the package), kept
until the window changes: a scrape and an alert evaluation reading the same window
score it once.

Not thread-safe on its own: ``feedback.QualityMonitor`` holds its lock around every
call except ``score``, which it runs on a ``Snapshot`` outside the lock.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..config import QUALITY_KPIS, QualityConfig
from ..errors import InvalidArgumentError
from ..evaluation import score

# The KPIs reported (and thresholds checked) for each task; score() returns a few more
# (roc_auc, r2) that have no threshold here.
TASK_KPIS = {
    "classification": tuple(k for k in QUALITY_KPIS if k not in ("mae", "rmse")),
    "regression": ("mae", "rmse"),
}


@dataclass(slots=True)
class Labelled:
    """One labelled request in a window."""

    # Unix seconds it joined (the window slides by this): its label's arrival, or its
    # prediction's when the label came first and waited.
    time: float
    labels: np.ndarray  # [rows]
    prediction: np.ndarray  # [rows, *dims]: the request's rows of the scored output


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What scoring a window needs, taken under the monitor's lock."""

    generation: int
    task: str
    labels: list[np.ndarray]
    predictions: list[np.ndarray]


@dataclass(frozen=True, slots=True)
class Breach:
    kpi: str
    bound: str  # "min" | "max"
    value: float
    limit: float
    description: str

    def to_json(self) -> dict:
        return {
            "kpi": self.kpi,
            "bound": self.bound,
            "value": self.value,
            "limit": self.limit,
            "description": self.description,
        }


def check_pairs(task: str, labels: list[np.ndarray], predictions: list[np.ndarray]) -> list:
    """Whether each (labels, prediction) pair can be scored under ``task``: None, or the
    reason it cannot (``evaluation.score``'s own message). The pairs are scored together
    first (one call in the common case), one by one only when that fails."""
    if not labels:
        return []
    try:
        score(task, np.concatenate(labels), np.concatenate(predictions))
        return [None] * len(labels)
    except (InvalidArgumentError, ValueError):  # ValueError: rows of different shapes
        pass
    reasons: list[str | None] = []
    first_shape = predictions[0].shape[1:]
    for label, prediction in zip(labels, predictions, strict=True):
        try:
            score(task, label, prediction)
        except InvalidArgumentError as exc:
            reasons.append(str(exc))
            continue
        if prediction.shape[1:] != first_shape:
            reasons.append(
                f"the prediction rows have shape {list(prediction.shape[1:])}, other requests' "
                f"{list(first_shape)}; a window scores rows of one shape"
            )
            continue
        reasons.append(None)
    return reasons


class KpiWindow:
    """The labelled requests of one (model asked for, model that answered, version)."""

    def __init__(self, model: str, answered_by: str, version: str):
        self.model = model
        self.answered_by = answered_by
        self.version = version
        self.task: str | None = None  # resolved on the first labelled data, then kept
        self._entries: OrderedDict[str, Labelled] = OrderedDict()  # in order of joining
        self._generation = 0  # changes whenever the entries do
        self._scored: tuple[int, dict[str, float], str | None] = (-1, {}, None)

    @property
    def primary(self) -> bool:
        """Whether the model asked for answered (not a backup)."""
        return self.answered_by == self.model

    @property
    def labelled(self) -> int:
        return len(self._entries)

    @property
    def last_label_time(self) -> float:
        return next(reversed(self._entries.values())).time if self._entries else -np.inf

    def add(
        self,
        request_id: str,
        entry: Labelled,
        quality: QualityConfig,
        now: float,
        task: str | None = None,
    ) -> None:
        """Put a labelled request in, at the back; one already in is replaced (its later
        label wins, as in the label files). ``task`` resolves an "auto" window that has
        none yet."""
        if self.task is None or quality.task != "auto":
            self.task = quality.task if quality.task != "auto" else task
        self._entries.pop(request_id, None)
        self._entries[request_id] = entry
        self._generation += 1
        self.evict(quality, now)

    def evict(self, quality: QualityConfig, now: float) -> None:
        """Drop what is past ``quality.window`` requests or ``quality.window_s`` seconds."""
        entries = self._entries
        start = now - quality.window_s
        before = len(entries)
        while len(entries) > quality.window:
            entries.popitem(last=False)
        while entries and next(iter(entries.values())).time < start:
            entries.popitem(last=False)
        if len(entries) != before:
            self._generation += 1

    def snapshot(self) -> Snapshot | None:
        """What ``score`` needs, or None when the cached values are current (or there is
        nothing to score)."""
        if self._scored[0] == self._generation or self.task is None or not self._entries:
            return None
        entries = list(self._entries.values())
        return Snapshot(
            self._generation,
            self.task,
            [e.labels for e in entries],
            [e.prediction for e in entries],
        )

    def store(self, snapshot: Snapshot, scored: tuple[dict[str, float], str | None]) -> None:
        """Keep ``score(snapshot)``'s result, unless the window changed meanwhile."""
        if snapshot.generation == self._generation:
            self._scored = (snapshot.generation, *scored)

    def values(self) -> dict[str, float]:
        """The KPIs as last stored ({} before any scoring, or when the window is empty).
        Between a change and the next scoring they are the previous values: a join
        racing a scrape must not read as "no values", i.e. out of breach and back in."""
        return self._scored[1] if self._entries else {}

    def error(self) -> str | None:
        """Why the window could not be scored when it was last, if it could not."""
        return self._scored[2] if self._entries else None

    def breaches(self, quality: QualityConfig) -> list[Breach]:
        """Every threshold the current values are past, once ``quality.min_labelled``
        labelled requests are in the window."""
        n = len(self._entries)
        if n < quality.min_labelled:
            return []
        values = self.values()
        out = []
        for kpi, bound, limit in quality.thresholds.limits():
            value = values.get(kpi)
            if value is None or not (value < limit if bound == "min" else value > limit):
                continue
            side = "below the minimum" if bound == "min" else "above the maximum"
            by = "" if self.primary else f" (answered by its backup '{self.answered_by}')"
            out.append(
                Breach(
                    kpi,
                    bound,
                    value,
                    limit,
                    f"model '{self.model}' version {self.version}{by}: {kpi} {value:.4g} is "
                    f"{side} {limit:g} over the last {n} labelled requests (window: "
                    f"{quality.window} requests, {quality.window_s:g} s; thresholds apply "
                    f"from {quality.min_labelled})",
                )
            )
        return out

    def to_json(self, quality: QualityConfig | None) -> dict:
        checked = quality is not None and self.primary  # thresholds are the primary's
        limits = quality.thresholds.limits() if checked else []
        breached = {b.kpi for b in self.breaches(quality)} if checked else set()
        return {
            "model": self.model,
            "answered_by": self.answered_by,
            "version": self.version,
            "task": self.task,
            "labelled": len(self._entries),
            "values": dict(self.values()),
            "error": self.error(),
            "breached": {kpi: kpi in breached for kpi, _, _ in limits},
        }


def score_snapshot(snapshot: Snapshot) -> tuple[dict[str, float], str | None]:
    """The task's KPIs over a window's rows, and None; or {} and why they cannot be
    computed (rows joined under an earlier config that no longer fit, say)."""
    try:
        metrics = score(
            snapshot.task, np.concatenate(snapshot.labels), np.concatenate(snapshot.predictions)
        )
    except (InvalidArgumentError, ValueError) as exc:
        return {}, str(exc)
    return {k: metrics[k] for k in TASK_KPIS[snapshot.task] if k in metrics}, None


__all__ = [
    "TASK_KPIS",
    "Breach",
    "KpiWindow",
    "Labelled",
    "Snapshot",
    "check_pairs",
    "score_snapshot",
]
