"""Ground truth sent to the feedback endpoint, joined to the logged predictions, and the
live KPIs that come of it (``QualityMonitor``).

Per model asked for (a backup's answers for it join under it too; ``join.ModelJoin``):

- **Predictions** of models with a ``quality`` section are indexed by request id as the
  prediction log's writer thread writes them (``on_batch``): when, who answered, which
  version, and the request's rows of the scored output (``quality.output``, else the
  first output; a backup without an output of that name is scored on its first).
- **Labels** (``feedback``) are checked item by item (``label_values``), appended to the
  model's label file (fsynced) and joined: to an indexed prediction at once, else kept
  pending until their prediction is indexed (it may still be in the writer's queue, or
  it was never sampled) or ``join_window_s`` passes.
- A **joined** request enters the KPI window of the model and version that answered
  (``kpi.KpiWindow``), with the time it joined: its label's arrival, or its
  prediction's when the label came first.

Choices:

- A label for a request of k rows is a list of k values, or one value for every row; a
  list of another length is refused (at once when the prediction is indexed; when it
  arrives later, counted ``rejected``: the caller is gone by then).
- A later label for a request already joined replaces the earlier one in its window (as
  a later line replaces an earlier one in the label files): counted ``joined`` and
  ``replaced``.
- A model without a ``quality`` section still has its labels stored (for ``steadyserve
  export``); they are not joined.
- ``on_breach`` is called on the thread that saw the breach start (the log's writer, a
  feedback call, a scrape or an alert evaluation), outside the lock: the callee must not
  block (``actions.QualityActions`` queues the rollback or failover for its own thread).

Counters (``counters()``, this process's lifetime), by model and outcome: ``joined``,
``replaced`` (of the joined), ``pending`` (had to wait, counted when they started),
``expired`` (waited out ``join_window_s``, or pushed out by the cap, without their
prediction), ``rejected`` (invalid), and for predictions ``unmatched`` (left the index
unlabelled) and ``evicted`` (pushed out by the index's cap before their time).

Thread safety: ``on_batch`` (writer thread), ``feedback`` (any thread), ``kpis`` /
``breaches`` (scrape and alert threads) share one lock, held for dictionary work only:
the label file's fsync, the live config look-up, validation and scoring run outside it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from ..config import ModelConfig, QualityConfig
from ..errors import (
    BackendUnavailableError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from ..evaluation import task_of
from .capture import LoggedBatch
from .join import MAX_INDEXED_PER_MODEL, Logged, ModelJoin, Pair, Waiting
from .kpi import check_pairs, score_snapshot
from .label_values import LabelValue, label_rows, parse_item, parse_label
from .labels import LabelFile, latest_labels
from .reader import read_predictions

log = logging.getLogger("steadyserve.predictions.feedback")

MAX_FEEDBACK_ITEMS = 10_000  # labels in one feedback call
MAX_LISTED_REASONS = 3  # rejections an all-invalid call's error names
# Joins re-score their windows (and look for breaches) at most this often: a window of
# 1000 requests costs about a millisecond to score, and labels may come one per call.
# Readers (kpis, breaches: a scrape, an alert evaluation) always get current values.
RESCORE_INTERVAL_S = 1.0
OUTCOMES = ("joined", "replaced", "pending", "expired", "rejected", "unmatched", "evicted")
NO_LOG = (
    "feedback needs the prediction log: the server runs without --prediction-log DIR, so "
    "there are no logged predictions to join labels to (start it with --prediction-log)"
)


class QualityMonitor:
    """Joins feedback labels to logged predictions and keeps live KPIs per model version;
    see the module docstring. ``config_of(model)`` is the model's live config (None: not
    known); ``root`` None: no prediction log, and feedback is refused."""

    def __init__(
        self,
        root: Path | None,
        config_of: Callable[[str], ModelConfig | None],
        *,
        clock: Callable[[], float] = time.time,
        on_breach: Callable[[str, str, str, str], None] | None = None,
    ):
        self.root = None if root is None else Path(root)
        self._config_of = config_of
        self._clock = clock
        self._on_breach = on_breach
        self._lock = threading.Lock()
        self._joins: dict[str, ModelJoin] = {}
        self._counts: dict[str, Counter] = {}  # model -> outcome -> n
        self._breached: set[tuple[str, str]] = set()  # (model, version) of primaries
        self._refreshed = -float("inf")  # clock: when joins last re-scored the windows
        self._files: dict[str, LabelFile] = {}
        self._files_lock = threading.Lock()

    # -- predictions ----------------------------------------------------------------------

    def on_batch(self, batch: LoggedBatch) -> None:
        """Index the batch's requests whose model asked for has a quality section, and
        join the labels that were waiting for them. On the log's writer thread."""
        qualities = {m: self._quality(m) for m in set(batch.asked)}
        if not any(qualities.values()) or not batch.outputs:
            return
        starts = batch.starts()
        logged = []
        for i, (rid, asked) in enumerate(zip(batch.request_ids, batch.asked, strict=True)):
            quality = qualities[asked]
            if quality is None:
                continue
            name = quality.output if quality.output in batch.outputs else next(iter(batch.outputs))
            start, rows = int(starts[i]), int(batch.rows[i])
            mine = batch.outputs[name][start : start + rows].copy()  # not a view of the batch
            logged.append((asked, rid, Logged(batch.time, batch.model, batch.version, mine)))
        now = self._clock()
        pairs = []
        with self._lock:
            for asked, rid, entry in logged:
                join = self._join(asked, qualities[asked])
                join.index(rid, entry, self._counter(asked))
                waiting = join.pending.pop(rid, None)
                if waiting is not None:
                    pairs.append(Pair(asked, rid, waiting.label, max(now, waiting.time), entry))
            for model in {m for m, _, _ in logged}:
                self._joins[model].evict(now, self._counter(model))
        if pairs:
            good, bad = self._validate(pairs, qualities)
            with self._lock:
                self._commit(good, now)
                for pair, _ in bad:  # on disk already, and nobody to tell: counted
                    self._counter(pair.model)["rejected"] += 1
            self._rescore(now)

    # -- labels ---------------------------------------------------------------------------

    def feedback(self, model: str, items: object) -> dict:
        """Record ground-truth labels for requests of ``model``: ``items`` is a list of
        {"id": request id, "label": value}. Invalid items are refused one by one, the
        others kept: on disk (the model's label file) when this returns, and joined to
        their predictions. Returns {"accepted", "joined", "pending", "rejected": [{"index",
        "id", "error"}]}. InvalidArgumentError only when no item is valid or the body is
        not such a list."""
        if self.root is None:
            raise FailedPreconditionError(NO_LOG)
        config = self._config_of(model)
        if config is None:
            raise NotFoundError(f"model '{model}' is not known; feedback is for a served model")
        if not isinstance(items, list | tuple):
            raise InvalidArgumentError(
                f'feedback for model \'{model}\' takes a list of {{"id", "label"}} items; '
                f"got {type(items).__name__}"
            )
        if not 1 <= len(items) <= MAX_FEEDBACK_ITEMS:
            raise InvalidArgumentError(
                f"feedback for model '{model}' has {len(items)} items; a call takes "
                f"1..{MAX_FEEDBACK_ITEMS}"
            )
        now = self._clock()
        rejected: list[dict] = []
        valid: list[tuple[int, str, LabelValue]] = []
        for index, item in enumerate(items):
            try:
                valid.append((index, *parse_item(item)))
            except ValueError as exc:
                rid = item.get("id") if isinstance(item, Mapping) else None
                rejected.append(_rejection(index, rid, str(exc)))
        quality = config.quality
        good: list = []
        unjoined = valid
        if quality is not None and valid:
            with self._lock:
                join = self._join(model, quality)
                join.evict(now, self._counter(model))
                found = {rid: join.indexed.get(rid) for _, rid, _ in valid}
            pairs = [
                Pair(model, rid, label, now, found[rid], index)
                for index, rid, label in valid
                if found[rid] is not None
            ]
            unjoined = [(index, rid, label) for index, rid, label in valid if found[rid] is None]
            good, bad = self._validate(pairs, {model: quality})
            rejected += [_rejection(p.index, p.request_id, why) for p, why in bad]
        joined_now = [(p.index, p.request_id, p.label) for p, _, _ in good]
        accepted = sorted(joined_now + unjoined, key=lambda item: item[0])  # the call's order
        if not accepted:
            self._refuse_all(model, len(items), rejected)
        self._label_file(model).append((rid, label, now) for _, rid, label in accepted)
        late_bad: list = []
        pending = 0  # no quality section: stored for export, nothing to join
        if quality is not None:
            with self._lock:
                self._commit(good, now)
                late = self._wait(model, quality, unjoined, now)
            # Indexed between the look-up and now: joined now, checked like the others.
            late_good, late_bad = self._validate(late, {model: quality})
            rejected += [_rejection(p.index, p.request_id, why) for p, why in late_bad]
            with self._lock:
                self._commit(late_good, now)
            good += late_good
            pending = len(unjoined) - len(late)
        with self._lock:
            self._counter(model)["rejected"] += len(rejected)
        if good:
            self._rescore(now)
        return {
            "accepted": len(accepted) - len(late_bad),
            "joined": len(good),
            "pending": pending,
            "rejected": sorted(rejected, key=lambda r: r["index"]),
        }

    def _refuse_all(self, model: str, items: int, rejected: list[dict]) -> None:
        with self._lock:
            self._counter(model)["rejected"] += len(rejected)
        rejected.sort(key=lambda r: r["index"])
        shown = "; ".join(f"item {r['index']}: {r['error']}" for r in rejected[:MAX_LISTED_REASONS])
        more = len(rejected) - MAX_LISTED_REASONS
        raise InvalidArgumentError(
            f"feedback for model '{model}': none of the {items} items is valid ({shown}"
            f"{f'; and {more} more' if more > 0 else ''})"
        )

    def _label_file(self, model: str) -> LabelFile:
        assert self.root is not None  # feedback() refused already
        with self._files_lock:
            file = self._files.get(model)
            if file is None:
                file = self._files[model] = LabelFile(self.root, model)
            return file

    # -- the join (the caller holds the lock, except around _validate and _refresh) -------

    def _quality(self, model: str) -> QualityConfig | None:
        config = self._config_of(model)
        return None if config is None else config.quality

    def _join(self, model: str, quality: QualityConfig) -> ModelJoin:
        join = self._joins.get(model)
        if join is None:
            join = self._joins[model] = ModelJoin(model, quality)
        join.quality = quality
        return join

    def _counter(self, model: str) -> Counter:
        counts = self._counts.get(model)
        if counts is None:
            counts = self._counts[model] = Counter()
        return counts

    def _wait(self, model: str, quality: QualityConfig, unjoined: list, now: float) -> list[Pair]:
        """Labels whose prediction is not indexed wait; returns those whose prediction
        was indexed since the caller looked, as pairs to join."""
        join = self._join(model, quality)
        counts = self._counter(model)
        late = []
        for index, rid, label in unjoined:
            entry = join.indexed.get(rid)
            if entry is not None:
                late.append(Pair(model, rid, label, now, entry, index))
            else:
                join.pend(rid, Waiting(now, label), counts)
                counts["pending"] += 1
        return late

    def _commit(self, good: list, now: float, *, count: bool = True) -> None:
        for pair, labels, task in good:
            join = self._joins.get(pair.model)
            if join is None:  # its quality section went meanwhile (a reload)
                continue
            join.add(pair, labels, task, now, self._counter(pair.model) if count else None)

    def _validate(self, pairs: list[Pair], qualities: dict) -> tuple[list, list]:
        """Split pairs into (pair, labels [rows], task) that can be scored and (pair,
        reason) that cannot (``evaluation.score``'s own reason). Outside the lock."""
        good: list = []
        bad: list = []
        groups: dict[tuple[str, str, str], list[tuple[Pair, np.ndarray]]] = {}
        for pair in pairs:
            try:
                labels = label_rows(pair.label, pair.logged.prediction.shape[0])
            except ValueError as exc:
                bad.append((pair, str(exc)))
                continue
            key = (pair.model, pair.logged.answered_by, pair.logged.version)
            groups.setdefault(key, []).append((pair, labels))
        if not groups:
            return good, bad
        with self._lock:
            tasks = {
                key: self._joins[key[0]].window_task(key[1], key[2])
                if key[0] in self._joins
                else None
                for key in groups
            }
        for key, members in groups.items():
            quality = qualities[key[0]]
            labels = [rows for _, rows in members]
            predictions = [pair.logged.prediction for pair, _ in members]
            task = quality.task if quality.task != "auto" else tasks[key]
            if task is None:
                task = _auto_task(labels, predictions)
            reasons = check_pairs(task, labels, predictions)
            for (pair, rows), why in zip(members, reasons, strict=True):
                if why is None:
                    good.append((pair, rows, task))
                else:
                    bad.append((pair, why))
        return good, bad

    def _rescore(self, now: float) -> None:
        """After a join: refresh, unless a join did within RESCORE_INTERVAL_S."""
        with self._lock:
            due = now - self._refreshed >= RESCORE_INTERVAL_S
            if due:
                self._refreshed = now
        if due:
            self._refresh()

    def _refresh(self) -> dict[str, QualityConfig]:
        """Evict by time, score the windows that changed (outside the lock) and call
        on_breach for primaries' versions that entered breach. Returns the live quality
        config of each model with join state (one the config no longer knows keeps its
        state, unreported; one whose quality section went is dropped)."""
        with self._lock:
            names = list(self._joins)
        configs = {name: self._config_of(name) for name in names}
        now = self._clock()
        live: dict[str, QualityConfig] = {}
        snapshots = []
        with self._lock:
            for name, config in configs.items():
                join = self._joins.get(name)
                if join is None:
                    continue
                if config is not None and config.quality is None:
                    del self._joins[name]
                    continue
                if config is not None:
                    join.quality = live[name] = config.quality
                join.evict(now, self._counter(name))
                for window in join.windows.values():
                    snapshot = window.snapshot()
                    if snapshot is not None:
                        snapshots.append((window, snapshot))
        scored = [(window, snapshot, score_snapshot(snapshot)) for window, snapshot in snapshots]
        calls = []
        with self._lock:
            for window, snapshot, result in scored:
                window.store(snapshot, result)
            breached: dict[tuple[str, str], str] = {}
            for name, quality in live.items():
                join = self._joins.get(name)
                for window in () if join is None else join.windows.values():
                    found = window.breaches(quality) if window.primary else []
                    if found:
                        breached[(name, window.version)] = "; ".join(b.description for b in found)
            for (name, version), text in breached.items():
                if (name, version) not in self._breached:
                    calls.append((name, version, live[name].on_breach, text))
            self._breached = set(breached)
        for model, version, action, text in calls:
            self._report_breach(model, version, action, text)
        return live

    def _report_breach(self, model: str, version: str, action: str, text: str) -> None:
        if self._on_breach is None:
            extra = {"model": model, "version": version, "action": action, "reason": text}
            log.warning("model quality breach", extra=extra)
            return
        try:
            self._on_breach(model, version, action, text)
        except Exception:  # the breach is still reported: breaches(), the alert, /metrics
            log.exception("on_breach failed", extra={"model": model, "version": version})

    # -- what others read ------------------------------------------------------------------

    def kpis(self) -> list[dict]:
        """Every window: {"model" (asked), "answered_by", "version", "task", "labelled",
        "values": {kpi: value}, "error" (why it could not be scored, or None),
        "breached": {kpi: bool} (the primary's thresholds)}."""
        live = self._refresh()
        with self._lock:
            out = [
                window.to_json(quality)
                for name, quality in live.items()
                if name in self._joins
                for window in self._joins[name].windows.values()
            ]
        return sorted(out, key=lambda w: (w["model"], w["answered_by"], w["version"]))

    def breaches(self) -> dict[str, dict]:
        """Model asked for -> the breach of its latest-labelled primary version: {"version",
        "kpi", "bound", "value", "limit", "labelled", "description"} (the first threshold
        past its limit, in the config's order; the description names every one)."""
        live = self._refresh()
        out = {}
        with self._lock:
            for name, quality in live.items():
                join = self._joins.get(name)
                window = None if join is None else join.latest_primary()
                found = [] if window is None else window.breaches(quality)
                if found:
                    out[name] = {
                        "version": window.version,
                        **found[0].to_json(),
                        "labelled": window.labelled,
                        "description": "; ".join(b.description for b in found),
                    }
        return out

    def counters(self) -> dict[tuple[str, str], int]:
        """(model, outcome) -> how many, over this process's life (see the module doc)."""
        with self._lock:
            return {(m, o): n for m, counts in self._counts.items() for o, n in counts.items() if n}

    def report(self, model: str) -> dict:
        """One model's join and windows (the GET of the feedback endpoint)."""
        config = self._config_of(model)
        if config is None:
            raise NotFoundError(f"model '{model}' is not known")
        windows = [w for w in self.kpis() if w["model"] == model]
        breach = self.breaches().get(model)
        with self._lock:
            join = self._joins.get(model)
            counts = {o: n for o, n in self._counts.get(model, Counter()).items() if n}
            indexed = 0 if join is None else len(join.indexed)
            pending = 0 if join is None else len(join.pending)
        quality = config.quality
        return {
            "model": model,
            "prediction_log": self.root is not None,
            "quality": quality is not None,
            "join_window_s": None if quality is None else quality.join_window_s,
            "indexed": indexed,
            "pending": pending,
            "windows": windows,
            "breach": breach,
            "counters": counts,
        }

    # -- start and stop --------------------------------------------------------------------

    def restore(self) -> None:
        """Rebuild the join from disk (at start): the predictions and labels of the last
        join_window_s of each model with a quality section. Joined pairs fill the windows
        again (those within window_s), unmatched predictions are indexed, unmatched labels
        wait. Labels that no longer fit are skipped (they were checked when they came; a
        new version or config may not take them). Not counted in ``counters()``."""
        if self.root is None or not self.root.is_dir():
            return
        now = self._clock()
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            quality = self._quality(folder.name)
            if quality is not None:
                self._restore_model(folder.name, quality, now)
        self._refresh()

    def _restore_model(self, model: str, quality: QualityConfig, now: float) -> None:
        assert self.root is not None
        since = now - quality.join_window_s
        logged = []
        try:
            # Newest first, up to what the index holds: a day of logs at full sampling is
            # more than a restart should read, and the oldest would be evicted first.
            records = read_predictions(
                self.root, model, since=since, newest_first=True, kinds=("output",)
            )
            for record in records:
                if len(logged) >= MAX_INDEXED_PER_MODEL:
                    break
                outputs = record["outputs"]
                if not outputs:
                    continue
                name = quality.output if quality.output in outputs else next(iter(outputs))
                entry = Logged(
                    float(record["time"]),
                    record["answered_by"],
                    str(record["version"]),
                    np.asarray(outputs[name]),
                )
                logged.append((record["request_id"], entry))
        except BackendUnavailableError as exc:  # Parquet files without pyarrow
            # Serving goes on: labels still wait, the KPIs fill again as labels come.
            log.warning("quality restore of model %s without its predictions: %s", model, exc)
        logged.sort(key=lambda item: item[1].time)
        lines = sorted(latest_labels(self.root, model, since).values(), key=_label_time)
        pairs = []
        ignored: Counter = Counter()  # a restore is not this process's feedback
        with self._lock:
            join = self._join(model, quality)
            for rid, entry in logged:
                join.index(rid, entry, ignored)
            for line in lines:
                try:
                    label = parse_label(line.get("label"))
                except ValueError:
                    continue
                rid, t = line["request_id"], _label_time(line)
                entry = join.indexed.get(rid)
                if entry is None:
                    join.pend(rid, Waiting(t, label), ignored)
                else:
                    pairs.append(Pair(model, rid, label, max(t, entry.time), entry))
        pairs.sort(key=lambda p: p.time)
        good, _ = self._validate(pairs, {model: quality})
        with self._lock:
            self._commit(good, now, count=False)

    def close(self) -> None:
        """Close the label files."""
        with self._files_lock:
            files, self._files = list(self._files.values()), {}
        for file in files:
            file.close()


def _rejection(index: int | None, rid: object, error: str) -> dict:
    return {"index": index, "id": rid if isinstance(rid, str) else None, "error": error}


def _label_time(line: dict) -> float:
    try:
        return float(line.get("time", 0.0))
    except (TypeError, ValueError):
        return 0.0


def _auto_task(labels: list[np.ndarray], predictions: list[np.ndarray]) -> str:
    """The task "auto" stands for, read off a window's first labelled data."""
    try:
        return task_of("auto", np.concatenate(labels), np.concatenate(predictions))
    except ValueError:  # rows of different shapes: the first request decides
        return task_of("auto", labels[0], predictions[0])


__all__ = ["MAX_FEEDBACK_ITEMS", "NO_LOG", "OUTCOMES", "QualityMonitor"]
