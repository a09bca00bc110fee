"""The feedback loop in-process (``Runtime(prediction_log=DIR)``): request ids on
InferResult, ``Runtime.feedback``, and what a quality breach does besides its alert:
roll back to the replaced version, or hold the circuit open so the backup answers
until the KPIs recover."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import yaml

import onnx_models
from conftest import wait_for
from steadyserve import Runtime
from steadyserve.errors import FailedPreconditionError

LINEAR = onnx_models.write_linear  # x [-1, 4] -> y [-1, 3]
X = np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)


def _quality(on_breach: str, **extra) -> dict:
    return {
        "task": "classification",
        "min_labelled": 5,
        "thresholds": {"min_accuracy": 0.8},
        "on_breach": on_breach,
        **extra,
    }


def _wrong_labels(rt: Runtime, model: str, n: int) -> list[dict]:
    """``n`` requests, each labelled with a class its answer did not predict."""
    items = []
    for _ in range(n):
        result = rt.infer(model, {"x": X})
        items.append({"id": result.request_id, "label": (int(np.argmax(result["y"][0])) + 1) % 3})
    return items


def test_in_process_ids_and_feedback(tmp_path):
    onnx_models.make_repo(
        tmp_path / "repo",
        {"m": LINEAR},
        {"m": {"max_batch_size": 4, "quality": _quality("alert", thresholds={})}},
    )
    with Runtime(tmp_path / "repo", prediction_log=tmp_path / "log", warmup=False) as rt:
        mine = rt.infer("m", {"x": X}, request_id="mine-1")
        assert mine.request_id == "mine-1"
        made = rt.infer("m", {"x": X})
        assert made.request_id and made.request_id != "mine-1"
        predicted = int(np.argmax(mine["y"][0]))
        wrong = (int(np.argmax(made["y"][0])) + 1) % 3
        answer = rt.feedback(
            "m", [{"id": "mine-1", "label": predicted}, {"id": made.request_id, "label": wrong}]
        )
        assert answer["accepted"] == 2, answer

        def window():
            found = [w for w in rt.quality.kpis() if w["labelled"] == 2]
            return found and found[0]

        w = wait_for(window, "both labels in the KPI window")
        assert (w["model"], w["answered_by"], w["version"]) == ("m", "m", "1")
        assert w["values"]["accuracy"] == 0.5
    with Runtime(tmp_path / "repo", warmup=False) as rt:
        assert rt.infer("m", {"x": X}).request_id == ""  # no log: nothing made up
        with pytest.raises(FailedPreconditionError, match="--prediction-log"):
            rt.feedback("m", [{"id": "a", "label": 1}])


def test_a_breach_rolls_back_to_the_replaced_version(tmp_path):
    repo = tmp_path / "repo"
    config = {"max_batch_size": 4, "quality": _quality("rollback")}
    onnx_models.make_repo(repo, {"m": functools.partial(LINEAR, seed=1)}, {"m": config})
    with Runtime(
        repo, prediction_log=tmp_path / "log", model_control="explicit", warmup=False
    ) as rt:
        (repo / "m" / "2").mkdir()
        LINEAR(repo / "m" / "2" / "model.onnx", seed=2)
        rt.load_model("m")
        assert rt.infer("m", {"x": X}).model_version == "2"
        answer = rt.feedback("m", _wrong_labels(rt, "m", 6))
        assert answer["accepted"] == 6
        wait_for(lambda: rt.infer("m", {"x": X}).model_version == "1", "the rollback to version 1")
        rollbacks = rt.metrics.registry.get_sample_value(
            "steadyserve_model_rollbacks_total", {"model": "m", "trigger": "quality"}
        )
        assert rollbacks == 1


def test_a_breach_fails_over_until_the_kpis_recover(tmp_path):
    repo = tmp_path / "repo"
    configs = {
        # The breach's labels leave the window after 2 s: the hold is released, probes
        # reach the primary and, as they succeed, it serves again.
        "m": {
            "max_batch_size": 4,
            "backup": "b",
            "quality": _quality("failover", window_s=2.0),
            "failover": {"circuit": {"half_open_probes": 1}},
        },
        "b": {"max_batch_size": 4},
    }
    onnx_models.make_repo(
        repo,
        {"m": functools.partial(LINEAR, seed=1), "b": functools.partial(LINEAR, seed=2)},
        configs,
    )
    (repo / "m" / "config.yaml").write_text(yaml.safe_dump(configs["m"]))
    with Runtime(repo, prediction_log=tmp_path / "log", warmup=False) as rt:
        assert rt.infer("m", {"x": X}).model_name == "m"
        rt.feedback("m", _wrong_labels(rt, "m", 6))
        wait_for(lambda: rt.infer("m", {"x": X}).model_name == "b", "the backup to answer")
        assert rt.failover_report()["circuits"]["m"]["state"] == "open"
        # The backup's answers for m are labelled too: their own window, apart from m's.
        answered = [rt.infer("m", {"x": X}) for _ in range(3)]
        assert {r.model_name for r in answered} == {"b"}
        rt.feedback(
            "m", [{"id": r.request_id, "label": int(np.argmax(r["y"][0]))} for r in answered]
        )

        def backup_window():
            found = [w for w in rt.quality.kpis() if w["answered_by"] == "b" and w["labelled"] == 3]
            return found and found[0]

        window = wait_for(backup_window, "the backup's KPI window")
        assert window["model"] == "m" and window["values"]["accuracy"] == 1.0
        wait_for(lambda: rt.infer("m", {"x": X}).model_name == "m", "the primary back", 20.0)
