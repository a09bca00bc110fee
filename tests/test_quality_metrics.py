"""Live quality in /metrics and in the alerts: ``monitoring.quality``'s collector over a
``QualityMonitor`` (the exposition prometheus_client writes, parsed back) and the
``model_quality`` rule on a real Runtime with a prediction log, evaluated by the
``AlertEvaluator`` the server runs. (The join itself: tests/test_feedback.py.)
"""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import onnx_models
import steadyserve
from steadyserve.config import model_config_from_mapping
from steadyserve.monitoring.alerts import AlertEvaluator
from steadyserve.monitoring.quality import register
from steadyserve.predictions.capture import LoggedBatch
from steadyserve.predictions.feedback import QualityMonitor

EPOCH = 1_700_000_000.0


def batch(ids, outputs, *, model, asked=None, version="1", t=None) -> LoggedBatch:
    outputs = np.asarray(outputs)
    return LoggedBatch(
        model=model,
        version=version,
        time=time.time() if t is None else t,
        request_ids=list(ids),
        asked=[model] * len(ids) if asked is None else list(asked),
        rows=np.ones(len(ids), dtype=np.int64),
        inputs={"x": np.zeros((len(ids), 4), np.float32)},
        scaled={},
        outputs={"y": outputs},
    )


def scores(classes, k: int = 3) -> np.ndarray:
    out = np.full((len(classes), k), 0.1, np.float32)
    out[np.arange(len(classes)), classes] = 0.9
    return out


def samples(registry: CollectorRegistry) -> dict[str, dict[tuple, float]]:
    """Metric sample name -> {sorted label items: value}, from the text exposition."""
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def key(**labels: str) -> tuple:
    return tuple(sorted(labels.items()))


# -- the collector ----------------------------------------------------------------------


@pytest.fixture
def monitor(tmp_path):
    """``monitor(configs)``: a QualityMonitor over tmp_path at a fixed time; closed at
    the end."""
    made = []

    def _make(configs):
        made.append(QualityMonitor(tmp_path, configs.get, clock=lambda: EPOCH))
        return made[-1]

    yield _make
    for m in made:
        m.close()


def test_the_exposition_has_each_windows_kpis_breaches_and_label_outcomes(monitor):
    configs = {
        "clf": model_config_from_mapping(
            {
                "quality": {
                    "task": "classification",
                    "min_labelled": 2,
                    "thresholds": {"min_accuracy": 0.9, "min_recall": 0.1},
                }
            }
        ),
        "reg": model_config_from_mapping({"quality": {"task": "regression"}}),
    }
    mon = monitor(configs)
    registry = CollectorRegistry()
    register(registry, mon)
    mon.on_batch(batch(["a", "b", "c"], scores([0, 1, 2]), model="clf", t=EPOCH))
    mon.on_batch(batch(["k"], scores([1]), model="spare", asked=["clf"], t=EPOCH))
    mon.on_batch(batch(["r1", "r2"], [[1.0], [3.0]], model="reg", t=EPOCH))
    mon.feedback("clf", [{"id": i, "label": 0} for i in ("a", "b", "c", "k")])
    mon.feedback("clf", [{"id": "z", "label": 1}, {"id": "bad", "label": "x"}])
    mon.feedback("reg", [{"id": "r1", "label": 2.0}, {"id": "r2", "label": 5.0}])
    got = samples(registry)

    clf = key(model="clf", answered_by="clf", version="1")
    spare = key(model="clf", answered_by="spare", version="1")
    reg = key(model="reg", answered_by="reg", version="1")
    assert got["steadyserve_model_accuracy"] == {clf: pytest.approx(1 / 3), spare: 0.0}
    assert set(got["steadyserve_model_f1"]) == {clf, spare}
    assert got["steadyserve_model_mae"] == {reg: 1.5}  # only the regression model's
    assert got["steadyserve_model_rmse"] == {reg: pytest.approx(np.sqrt(2.5))}
    assert got["steadyserve_model_labelled_requests"] == {clf: 3, spare: 1, reg: 2}
    # The primary's thresholds: accuracy 1/3 < 0.9 breached; recall (the macro average
    # over classes 0, 1, 2: (1/3 + 0 + 0) / 3) above 0.1 not. The backup has none.
    assert got["steadyserve_model_quality_breach"] == {
        key(model="clf", version="1", kpi="accuracy"): 1,
        key(model="clf", version="1", kpi="recall"): 0,
    }
    assert got["steadyserve_feedback_labels_total"] == {
        key(model="clf", outcome="joined"): 4,
        key(model="clf", outcome="pending"): 1,
        key(model="clf", outcome="rejected"): 1,
        key(model="reg", outcome="joined"): 2,
    }
    for name in ("steadyserve_model_accuracy", "steadyserve_feedback_labels_total"):
        assert name in generate_latest(registry).decode()


# -- the alert rule ---------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return EPOCH + self.now


@pytest.fixture
def runtime(tmp_path):
    """A Runtime over ``m`` (a linear 4 -> 3 with a quality section: accuracy >= 0.75
    over 4 labelled requests) and ``plain`` (no quality section), with a prediction log;
    its AlertEvaluator on a fake clock."""
    root = tmp_path / "repo"
    linear = functools.partial(onnx_models.write_linear, n_in=4, n_out=3, seed=1)
    quality = {
        "task": "classification",
        "window": 4,
        "min_labelled": 4,
        "thresholds": {"min_accuracy": 0.75},
    }
    onnx_models.make_repo(
        root,
        {"m": linear, "plain": linear},
        configs={"m": {"quality": quality, "alerts": {"model_quality": {"for_s": 0}}}},
    )
    clock = FakeClock()
    rt = steadyserve.Runtime(root, warmup=False, clock=clock, prediction_log=tmp_path / "log")
    ev = AlertEvaluator(rt, interval_s=1.0, clock=clock, wall=clock.wall)
    yield rt, ev, clock
    rt.close()


def quality_alerts(ev) -> dict[str, dict]:
    return {
        a["model"]: a for a in ev.report()["alerts"] if a["alertname"] == "SteadyServeModelQuality"
    }


def label(rt, ids, classes_predicted, labels, model="m") -> None:
    rt.quality.on_batch(batch(ids, scores(classes_predicted), model=model))
    rt.feedback(model, [{"id": i, "label": y} for i, y in zip(ids, labels, strict=True)])


def test_model_quality_fires_for_a_breach_and_resolves_when_the_kpis_recover(runtime):
    rt, ev, clock = runtime
    label(rt, ["a", "b", "c"], [0, 1, 2], [0, 1, 2])
    ev.evaluate()
    assert quality_alerts(ev) == {}  # 3 labelled: below min_labelled
    label(rt, ["d", "e"], [0, 0], [1, 1])  # the window: b, c right, d, e wrong
    clock.now += 1
    ev.evaluate()
    alert = quality_alerts(ev)["m"]
    assert alert["state"] == "firing" and alert["severity"] == "warning"
    assert (alert["value"], alert["threshold"]) == (0.5, 0.75)
    assert alert["description"].startswith("model 'm' version 1: accuracy 0.5 is below the ")
    assert "over the last 4 labelled requests" in alert["description"]
    get = rt.metrics.registry.get_sample_value
    assert get("steadyserve_model_accuracy", {"model": "m", "answered_by": "m", "version": "1"})
    label(rt, ["f", "g", "h", "i"], [1, 1, 1, 1], [1, 1, 1, 1])
    clock.now += 1
    ev.evaluate()
    assert quality_alerts(ev) == {}  # resolved


def test_model_quality_is_not_checked_for_a_model_without_a_quality_section(runtime):
    rt, ev, clock = runtime
    # Labels for ``plain`` are stored, never joined: nothing to alert on.
    assert rt.feedback("plain", [{"id": "p", "label": 1}])["joined"] == 0
    ev.evaluate()
    assert quality_alerts(ev) == {}
    assert rt.quality.report("plain")["quality"] is False


def test_model_quality_without_a_prediction_log_applies_to_no_model(tmp_path):
    root = tmp_path / "repo"
    linear = functools.partial(onnx_models.write_linear, n_in=4, n_out=3, seed=1)
    onnx_models.make_repo(root, {"m": linear}, configs={"m": {"quality": {}}})
    clock = FakeClock()
    rt = steadyserve.Runtime(root, warmup=False, clock=clock)
    try:
        assert rt.quality is None
        ev = AlertEvaluator(rt, interval_s=1.0, clock=clock, wall=clock.wall)
        ev.evaluate()
        assert quality_alerts(ev) == {} and ev.report()["evaluation_failures"] == 0
    finally:
        rt.close()
