"""Ground truth joined to logged predictions: ``predictions.feedback.QualityMonitor``.

Batches are ``LoggedBatch`` objects built here (what an executor hands the prediction
log); the monitor works over a tmp_path log root with a clock the tests move, so a label
"hours later" takes no time. The restart tests write real prediction files through
``predictions.writer.PredictionLog``. KPI values are checked against scikit-learn.
(Metrics and the alert rule: tests/test_quality_metrics.py.)
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    precision_score,
    recall_score,
)

from steadyserve.config import model_config_from_mapping
from steadyserve.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from steadyserve.predictions.capture import LoggedBatch
from steadyserve.predictions.feedback import MAX_FEEDBACK_ITEMS, QualityMonitor
from steadyserve.predictions.labels import read_labels
from steadyserve.predictions.writer import PredictionLog

HOUR = 3600.0
T0 = 1_764_600_000.0  # unix seconds: where the fake clock starts


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def configs(**models: dict | None) -> dict:
    """name -> ModelConfig with that quality section (None: no quality section)."""
    return {
        name: model_config_from_mapping({} if q is None else {"quality": q})
        for name, q in models.items()
    }


def batch(ids, outputs, *, model="m", version="1", t=T0, rows=None, asked=None, name="y"):
    """A LoggedBatch of requests ``ids`` (one row each unless ``rows``) answered by
    ``model``; ``outputs`` holds the requests' rows one after the other."""
    rows = np.ones(len(ids), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    outputs = np.asarray(outputs)
    return LoggedBatch(
        model=model,
        version=version,
        time=t,
        request_ids=list(ids),
        asked=[model] * len(ids) if asked is None else list(asked),
        rows=rows,
        inputs={"x": np.zeros((int(rows.sum()), 2), np.float32)},
        scaled={},
        outputs={name: outputs},
    )


def scores(classes, k: int = 2) -> np.ndarray:
    """Class scores whose argmax is ``classes``."""
    out = np.full((len(classes), k), 0.1, np.float32)
    out[np.arange(len(classes)), classes] = 0.9
    return out


@pytest.fixture
def monitor(tmp_path):
    """``monitor(models, **kwargs)`` -> (QualityMonitor over tmp_path/log, its clock)."""
    made = []

    def _make(models, **kwargs):
        clock = kwargs.pop("clock", None) or Clock()
        m = QualityMonitor(tmp_path / "log", models.get, clock=clock, **kwargs)
        made.append(m)
        return m, clock

    yield _make
    for m in made:
        m.close()


def window(mon, model="m", answered_by=None, version="1") -> dict:
    by = model if answered_by is None else answered_by
    found = [
        w
        for w in mon.kpis()
        if (w["model"], w["answered_by"], w["version"]) == (model, by, version)
    ]
    assert len(found) == 1, mon.kpis()
    return found[0]


# -- the join ---------------------------------------------------------------------------


def test_a_label_hours_later_joins_its_prediction(monitor):
    mon, clock = monitor(configs(m={"task": "classification"}))
    mon.on_batch(batch(["a", "b"], scores([1, 0])))
    clock.now += 5 * HOUR
    got = mon.feedback("m", [{"id": "a", "label": 1}, {"id": "b", "label": 1}])
    assert got == {"accepted": 2, "joined": 2, "pending": 0, "rejected": []}
    w = window(mon)
    assert w["labelled"] == 2 and w["task"] == "classification"
    assert w["values"]["accuracy"] == 0.5
    assert mon.counters() == {("m", "joined"): 2}


def test_a_label_before_its_prediction_waits_then_joins(monitor):
    mon, clock = monitor(configs(m={}))
    got = mon.feedback("m", [{"id": "early", "label": 2}])
    assert got == {"accepted": 1, "joined": 0, "pending": 1, "rejected": []}
    assert mon.kpis() == [] and mon.report("m")["pending"] == 1
    clock.now += 30
    mon.on_batch(batch(["early"], scores([2], k=3), t=clock.now))
    w = window(mon)
    assert w["labelled"] == 1 and w["values"]["accuracy"] == 1.0
    assert mon.report("m")["pending"] == 0
    assert mon.counters() == {("m", "pending"): 1, ("m", "joined"): 1}


def test_labels_and_predictions_expire_after_the_join_window(monitor):
    mon, clock = monitor(configs(m={"join_window_s": 600}))
    mon.feedback("m", [{"id": "lost-label", "label": 1}])
    mon.on_batch(batch(["lost-prediction"], scores([1])))
    clock.now += 601
    report = mon.report("m")
    assert (report["pending"], report["indexed"]) == (0, 0)
    assert mon.counters() == {("m", "pending"): 1, ("m", "expired"): 1, ("m", "unmatched"): 1}
    # Neither joins any more: the late prediction indexes, the late label waits.
    mon.on_batch(batch(["lost-label"], scores([1]), t=clock.now))
    got = mon.feedback("m", [{"id": "lost-prediction", "label": 1}])
    assert (got["joined"], got["pending"]) == (0, 1)
    assert mon.kpis() == []


def test_a_multi_row_request_takes_one_label_per_row_or_one_for_all(monitor):
    mon, clock = monitor(configs(m={"task": "regression"}))
    values = np.array([[1.0], [2.0], [3.0], [10.0], [20.0]], np.float32)
    mon.on_batch(batch(["three", "two"], values, rows=[3, 2]))
    got = mon.feedback(
        "m",
        [
            {"id": "three", "label": [1.0, 2.0]},  # 2 values for 3 rows: refused
            {"id": "three", "label": [1.5, 2.0, 3.0]},
            {"id": "two", "label": 15},  # each of its 2 rows
        ],
    )
    assert (got["accepted"], got["joined"]) == (2, 2)
    assert [(r["index"], r["id"]) for r in got["rejected"]] == [(0, "three")]
    assert "2 values for a request of 3 rows" in got["rejected"][0]["error"]
    w = window(mon)
    assert w["labelled"] == 2
    assert w["values"]["mae"] == pytest.approx((0.5 + 5 + 5) / 5)
    # A label that waited and does not fit its prediction is counted when it arrives.
    mon.feedback("m", [{"id": "later", "label": [1, 2]}])
    mon.on_batch(batch(["later"], values[:1]))
    assert mon.counters()[("m", "rejected")] == 2


def test_a_later_label_replaces_the_earlier_one(monitor):
    mon, clock = monitor(configs(m={}))
    mon.on_batch(batch(["a", "b"], scores([1, 1])))
    mon.feedback("m", [{"id": "a", "label": 0}, {"id": "b", "label": 1}])
    assert window(mon)["values"]["accuracy"] == 0.5
    clock.now += 60
    got = mon.feedback("m", [{"id": "a", "label": 1}])  # a corrected label
    assert got["joined"] == 1
    w = window(mon)
    assert (w["labelled"], w["values"]["accuracy"]) == (2, 1.0)
    assert mon.counters()[("m", "replaced")] == 1


def test_labels_are_on_disk_when_feedback_returns(monitor, tmp_path):
    mon, clock = monitor(configs(m={}, plain=None))
    mon.feedback("m", [{"id": "a", "label": "1"}, {"id": "b", "label": True}])
    got = mon.feedback("plain", [{"id": "c", "label": [1, 2]}])  # no quality: stored only
    assert got == {"accepted": 1, "joined": 0, "pending": 0, "rejected": []}
    lines = {e["request_id"]: e for e in read_labels(tmp_path / "log", "m")}
    assert {k: (v["label"], v["time"]) for k, v in lines.items()} == {"a": (1, T0), "b": (1, T0)}
    assert [e["label"] for e in read_labels(tmp_path / "log", "plain")] == [[1, 2]]


# -- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ({"id": "", "label": 1}, "'id' must be a non-empty string"),
        ({"id": 7, "label": 1}, "'id' must be a non-empty string .*got 7"),
        ({"id": "x" * 257, "label": 1}, "'id' has 257 characters; at most 256"),
        ({"id": "a"}, "the item has no 'label'"),
        ({"id": "a", "lable": 1}, "unknown key\\(s\\) 'lable'"),
        ({"id": "a", "label": "cat"}, "label 'cat' is a string that is not a number"),
        ({"id": "a", "label": math.nan}, "label nan is not finite"),
        ({"id": "a", "label": {"class": 1}}, "label is dict; use a number"),
        ({"id": "a", "label": []}, "label is an empty list"),
        ({"id": "a", "label": [1, "2"]}, "label value 1 is str; a list holds numbers"),
        ({"id": "a", "label": 2**64}, "out of the 64-bit integer range"),
        (["a", 1], "item is list; an item is a mapping"),
    ],
)
def test_an_invalid_item_is_refused_with_its_reason_and_the_others_accepted(monitor, item, reason):
    mon, clock = monitor(configs(m={}))
    mon.on_batch(batch(["ok"], scores([1])))
    got = mon.feedback("m", [{"id": "ok", "label": 1}, item])
    assert (got["accepted"], got["joined"]) == (1, 1)
    [rejection] = got["rejected"]
    rid = item.get("id") if isinstance(item, dict) else None
    assert rejection["index"] == 1 and rejection["id"] == (rid if isinstance(rid, str) else None)
    assert re.search(reason, rejection["error"]), rejection["error"]
    assert mon.counters()[("m", "rejected")] == 1


def test_a_label_the_prediction_cannot_be_scored_with_is_refused(monitor):
    mon, clock = monitor(configs(m={"task": "classification"}))
    mon.on_batch(batch(["a", "b"], scores([0, 1], k=3)))
    got = mon.feedback("m", [{"id": "a", "label": 5}, {"id": "b", "label": 1}])
    assert got["accepted"] == 1
    assert "the prediction has 3 class score columns" in got["rejected"][0]["error"]


def test_a_bad_body_unknown_model_or_no_log_raise_specific_errors(monitor, tmp_path):
    mon, clock = monitor(configs(m={}))
    with pytest.raises(NotFoundError, match="model 'nope' is not known"):
        mon.feedback("nope", [{"id": "a", "label": 1}])
    with pytest.raises(InvalidArgumentError, match="takes a list .* got dict"):
        mon.feedback("m", {"id": "a", "label": 1})
    with pytest.raises(InvalidArgumentError, match="has 0 items; a call takes 1..10000"):
        mon.feedback("m", [])
    too_many = [{"id": str(i), "label": 1} for i in range(MAX_FEEDBACK_ITEMS + 1)]
    with pytest.raises(InvalidArgumentError, match="has 10001 items"):
        mon.feedback("m", too_many)
    with pytest.raises(InvalidArgumentError, match=r"none of the 2 items is valid \(item 0: "):
        mon.feedback("m", [{"id": "a"}, {"id": "b", "label": "x"}])
    no_log = QualityMonitor(None, configs(m={}).get)
    with pytest.raises(FailedPreconditionError, match="--prediction-log"):
        no_log.feedback("m", [{"id": "a", "label": 1}])
    assert not (tmp_path / "log" / "nope").exists()


# -- KPIs -------------------------------------------------------------------------------


def _random_requests(rng, n: int):
    """Request ids and rows per request (1..3)."""
    return [f"r{i}" for i in range(n)], rng.integers(1, 4, n)


@pytest.mark.parametrize("k", [2, 4])
def test_classification_kpis_equal_scikit_learn(monitor, k):
    rng = np.random.default_rng(k)
    mon, clock = monitor(configs(m={"window": 10_000}))  # task auto: class scores
    ids, rows = _random_requests(rng, 300)
    out = rng.random((int(rows.sum()), k)).astype(np.float32)
    labels = rng.integers(0, k, int(rows.sum()))
    for lo in range(0, 300, 50):  # six batches
        start, end = int(rows[:lo].sum()), int(rows[: lo + 50].sum())
        mon.on_batch(batch(ids[lo : lo + 50], out[start:end], rows=rows[lo : lo + 50]))
    starts = np.r_[0, np.cumsum(rows)[:-1]]
    items = [
        {"id": rid, "label": labels[s : s + n].tolist()}
        for rid, s, n in zip(ids, starts, rows, strict=True)
    ]
    assert mon.feedback("m", items)["joined"] == 300
    w = window(mon)
    predicted = out.argmax(axis=1)
    average = "binary" if k == 2 else "macro"
    expected = {
        "accuracy": accuracy_score(labels, predicted),
        "precision": precision_score(labels, predicted, average=average, zero_division=0),
        "recall": recall_score(labels, predicted, average=average, zero_division=0),
        "f1": f1_score(labels, predicted, average=average, zero_division=0),
    }
    assert w["task"] == "classification" and w["labelled"] == 300
    assert w["values"] == pytest.approx(expected)


def test_regression_kpis_equal_scikit_learn(monitor):
    rng = np.random.default_rng(7)
    mon, clock = monitor(configs(m={"window": 10_000}))  # auto: float labels, one column
    ids, rows = _random_requests(rng, 200)
    out = rng.normal(size=(int(rows.sum()), 1)).astype(np.float32)
    labels = out[:, 0] + rng.normal(scale=0.5, size=len(out))
    mon.on_batch(batch(ids, out, rows=rows))
    starts = np.r_[0, np.cumsum(rows)[:-1]]
    mon.feedback(
        "m",
        [
            {"id": r, "label": labels[s : s + n].tolist()}
            for r, s, n in zip(ids, starts, rows, strict=True)
        ],
    )
    w = window(mon)
    assert w["task"] == "regression"
    assert w["values"] == pytest.approx(
        {
            "mae": mean_absolute_error(labels, out[:, 0]),
            "rmse": math.sqrt(mean_squared_error(labels, out[:, 0])),
        }
    )


def test_the_window_keeps_the_last_window_requests_within_window_s(monitor):
    mon, clock = monitor(configs(m={"window": 4, "window_s": 100, "task": "classification"}))
    ids = [f"r{i}" for i in range(6)]
    mon.on_batch(batch(ids, scores([1] * 6)))
    for i, rid in enumerate(ids):  # r0, r1 wrong; the rest right
        mon.feedback("m", [{"id": rid, "label": 0 if i < 2 else 1}])
        clock.now += 10
    w = window(mon)
    assert (w["labelled"], w["values"]["accuracy"]) == (4, 1.0)  # r2..r5: the last 4
    clock.now += 75  # r2 and r3 (labelled at 20 s and 30 s) are past window_s at 135 s
    assert window(mon)["labelled"] == 2
    clock.now += 100
    assert mon.kpis() == []  # an empty window goes


def test_windows_are_kept_apart_per_version_and_per_backup(monitor):
    mon, clock = monitor(configs(m={"task": "classification"}))
    mon.on_batch(batch(["v1"], scores([1]), version="1"))
    mon.on_batch(batch(["v2"], scores([1]), version="2"))
    mon.on_batch(batch(["bk"], scores([1]), model="backup", version="3", asked=["m"]))
    mon.feedback(
        "m", [{"id": "v1", "label": 1}, {"id": "v2", "label": 0}, {"id": "bk", "label": 1}]
    )
    got = {(w["answered_by"], w["version"]): w["values"]["accuracy"] for w in mon.kpis()}
    assert got == {("m", "1"): 1.0, ("m", "2"): 0.0, ("backup", "3"): 1.0}
    assert {w["model"] for w in mon.kpis()} == {"m"}


def test_a_breach_calls_on_breach_once_until_it_leaves_and_enters_again(monitor):
    calls = []
    quality = {
        "task": "classification",
        "window": 4,
        "min_labelled": 4,
        "thresholds": {"min_accuracy": 0.75},
        "on_breach": "rollback",
    }
    mon, clock = monitor(configs(m=quality), on_breach=lambda *call: calls.append(call))
    n = 0

    def label(right: bool) -> None:
        nonlocal n
        n += 1
        clock.now += 2  # past the re-scoring interval: each join looks for breaches
        mon.on_batch(batch([f"r{n}"], scores([1]), t=clock.now))
        mon.feedback("m", [{"id": f"r{n}", "label": 1 if right else 0}])

    for right in (False, False, True):  # 3 labelled: below min_labelled, no breach
        label(right)
    assert calls == [] and mon.breaches() == {}
    label(False)  # accuracy 1/4
    assert len(calls) == 1
    model, version, action, text = calls[0]
    assert (model, version, action) == ("m", "1", "rollback")
    assert "accuracy 0.25 is below the minimum 0.75 over the last 4 labelled requests" in text
    label(False)  # still in breach: no second call
    assert len(calls) == 1
    assert mon.breaches()["m"] | {"description": ""} == {
        "version": "1",
        "kpi": "accuracy",
        "bound": "min",
        "value": 0.25,
        "limit": 0.75,
        "labelled": 4,
        "description": "",
    }
    for _ in range(4):
        label(True)
    assert mon.breaches() == {} and len(calls) == 1
    label(False)
    label(False)
    assert len(calls) == 2


# -- restart ----------------------------------------------------------------------------


def test_a_restart_restores_the_windows_pending_labels_and_later_joins(tmp_path, monitor):
    root = tmp_path / "log"
    models = configs(m={"task": "classification"})
    mon, clock = monitor(models)
    log = PredictionLog(root, format="jsonl", on_batch=mon.on_batch)
    log.offer(batch(["a", "b", "c"], scores([1, 0, 1], k=3), t=clock.now))
    log.offer(batch(["bk"], scores([2], k=3), model="backup", asked=["m"], t=clock.now))
    assert log.flush(10.0)
    clock.now += HOUR
    mon.feedback("m", [{"id": "a", "label": 1}, {"id": "b", "label": 1}, {"id": "bk", "label": 2}])
    mon.feedback("m", [{"id": "later", "label": 2}])  # its prediction comes after the restart
    before = mon.kpis()
    assert [w["labelled"] for w in before] == [1, 2]
    log.close(10.0)
    mon.close()

    clock.now += HOUR
    again, _ = monitor(models, clock=clock)
    again.restore()
    assert again.kpis() == before
    report = again.report("m")
    assert (report["indexed"], report["pending"]) == (4, 1)
    assert again.counters() == {}  # a restore is not feedback
    # "c" was logged before the restart and labelled after it.
    assert again.feedback("m", [{"id": "c", "label": 1}])["joined"] == 1
    log = PredictionLog(root, format="jsonl", on_batch=again.on_batch)
    log.offer(batch(["later"], scores([2], k=3), t=clock.now))
    assert log.close(10.0)
    w = window(again)
    assert (w["labelled"], w["values"]["accuracy"]) == (4, 0.75)


def test_a_restart_leaves_out_what_is_past_the_windows(tmp_path, monitor):
    root = tmp_path / "log"
    models = configs(m={"task": "classification", "window_s": HOUR, "join_window_s": 3 * HOUR})
    mon, clock = monitor(models)
    log = PredictionLog(root, format="jsonl")
    log.offer(batch(["old", "new"], scores([1, 1]), t=clock.now))
    assert log.close(10.0)
    mon.on_batch(batch(["old", "new"], scores([1, 1]), t=clock.now))
    mon.feedback("m", [{"id": "old", "label": 1}])
    clock.now += 2 * HOUR
    mon.feedback("m", [{"id": "new", "label": 1}])
    mon.close()
    again, _ = monitor(models, clock=clock)
    again.restore()
    assert window(again)["labelled"] == 1  # "old" joined 2 h ago: past window_s
    clock.now += 2 * HOUR  # the predictions are past join_window_s now
    late, _ = monitor(models, clock=clock)
    late.restore()
    assert late.report("m")["indexed"] == 0 and late.kpis() == []
