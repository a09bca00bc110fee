"""The feedback loop through a real server: the prediction log (sampled, raw and scaled
inputs, outputs, request ids as the answers carried them), labels over REST and gRPC
joined to it, live KPIs in /metrics against a reference, an alert on a breach, a
restart that keeps the join, write failures that never fail a request, and
``steadyserve export``.

Records are read back with ``steadyserve.predictions.reader`` (the files are the
contract); the server is always a subprocess, the clients tritonclient, urllib and
grpcio.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

import onnx_models
from conftest import am_alerts, linear_config, only_frontend, wait_for
from steadyserve.features.stats import fit_stats, write_stats
from steadyserve.predictions.reader import read_predictions

T = 10.0
REF = np.random.default_rng(3).normal([1, -2, 10, 0], [2, 0.5, 3, 1], (400, 4)).astype(np.float32)


def _repo(root: Path, *, sample_rate: float = 1.0, min_accuracy: float | None = None) -> Path:
    """``clf``: a linear model (x [-1, 4] -> class scores y [-1, 3]) behind a standard
    scaling contract, logged at ``sample_rate``, with a classification quality section."""
    quality = {"task": "classification", "min_labelled": 10, "window": 500}
    if min_accuracy is not None:
        quality["thresholds"] = {"min_accuracy": min_accuracy}
    config = linear_config(
        8,
        1000,
        inputs=[{"name": "x", "contract": {"scaling": "standard"}}],
        prediction_log={"sample_rate": sample_rate},
        quality=quality,
        alerts={"model_quality": {"for_s": 0}},
    )
    onnx_models.make_repo(
        root, {"clf": functools.partial(onnx_models.write_linear, seed=5)}, {"clf": config}
    )
    write_stats(root / "clf" / "1" / "stats.json", fit_stats({"x": REF}))
    return root


def _infer(server, x: np.ndarray, request_id: str | None = None):
    """(scores, the x-request-id the answer carried) over tritonclient gRPC."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(server.grpc) as client:
        inp = grpcclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        headers = {"x-request-id": request_id} if request_id else None
        result = client.infer("clf", [inp], headers=headers, client_timeout=T)
        answer = result.get_response()
    return result.as_numpy("y"), answer


def _http(server, path: str, body=None) -> tuple[int, dict | list | str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        server.http + path, data=data, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=T) as response:
            raw, status = response.read(), response.status
    except urllib.error.HTTPError as error:
        raw, status = error.read(), error.code
    text = raw.decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def _metric(server, name: str, **labels) -> float | None:
    _, text = _http(server, "/metrics")
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            head, value = line.rsplit(" ", 1)
            got = ",".join(sorted(head[len(name) + 1 : -1].split(",")))
            if got == want:
                return float(value)
    return None


def _records(log_dir: Path, model: str = "clf") -> list[dict]:
    return list(read_predictions(log_dir, model))


def _stop(server) -> None:
    assert server.stop() == 0, server.stderr()[-3000:]


# ----------------------------------------------------------------------------- the log


@only_frontend("native")
def test_records_round_trip_with_the_ids_the_answers_carried(tmp_path, launch):
    repo, log_dir = _repo(tmp_path / "repo"), tmp_path / "log"
    server = launch(repo, "--prediction-log", str(log_dir))
    rng = np.random.default_rng(11)
    sent = {}
    for i in range(12):
        x = rng.normal(0, 3, (1 + i % 3, 4)).astype(np.float32)
        given = f"client-{i}" if i % 2 == 0 else None
        y, _ = _infer(server, x, given)
        sent[given or f"#{i}"] = (x, y)
    _stop(server)  # a clean shutdown writes everything
    records = _records(log_dir)
    assert len(records) == 12
    stats = fit_stats({"x": REF})["inputs"]["x"]
    mean, std = np.float32(stats["mean"]), np.float32(stats["std"])
    by_id = {r["request_id"]: r for r in records}
    for key in (k for k in sent if k.startswith("client-")):
        x, y = sent[key]
        record = by_id[key]
        assert record["model"] == record["answered_by"] == "clf"
        assert record["version"] == "1" and record["failover"] is False
        assert record["rows"] == len(x)
        np.testing.assert_array_equal(record["inputs"]["x"], x)  # raw, bit for bit
        assert record["inputs"]["x"].dtype == np.float32
        np.testing.assert_allclose(record["scaled"]["x"], (x - mean) / std, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(record["outputs"]["y"], y)
    # Requests that sent no header still have an id; it is the one their answer carried.
    assert len(by_id) == 12


@only_frontend("native", "grpcio")
def test_the_header_id_is_the_logged_id_on_both_frontends(tmp_path, launch):
    repo, log_dir = _repo(tmp_path / "repo"), tmp_path / "log"
    server = launch(repo, "--prediction-log", str(log_dir))
    x = np.ones((1, 4), np.float32)
    _infer(server, x, "hdr-1")
    _stop(server)
    assert [r["request_id"] for r in _records(log_dir)] == ["hdr-1"]


@only_frontend("native")
def test_the_sample_rate_is_honoured(tmp_path, launch):
    rate, n = 0.3, 400
    repo, log_dir = _repo(tmp_path / "repo", sample_rate=rate), tmp_path / "log"
    server = launch(repo, "--prediction-log", str(log_dir))
    x = np.ones((1, 4), np.float32)
    for i in range(n):
        _infer(server, x, f"r-{i}")
    _stop(server)
    logged = _records(log_dir)
    # Binomial(400, 0.3): mean 120, sd 9.2; the bounds are 6 sd out.
    assert 65 <= len(logged) <= 175, len(logged)
    assert len({r["request_id"] for r in logged}) == len(logged)


@only_frontend("native")
def test_write_failures_are_counted_and_requests_still_succeed(tmp_path, launch):
    repo, log_dir = _repo(tmp_path / "repo"), tmp_path / "log"
    log_dir.mkdir()
    (log_dir / "clf").write_text("not a directory: every write of the model's log fails\n")
    server = launch(repo, "--prediction-log", str(log_dir))
    x = np.ones((2, 4), np.float32)
    for i in range(20):
        y, _ = _infer(server, x, f"w-{i}")
        assert y.shape == (2, 3)
    dropped = wait_for(
        lambda: _metric(
            server, "steadyserve_prediction_log_dropped_total", model="clf", reason="write_error"
        ),
        "write errors to be counted",
    )
    assert dropped >= 1
    code, _ = _http(server, "/v2/health/ready")
    assert code == 200
    _stop(server)


# ------------------------------------------------------------------- feedback and KPIs


def _grpc_feedback(address: str, model: str, labels: list[tuple[str, int]]) -> dict:
    """ModelFeedback over grpcio, in a subprocess: our protos cannot share this process's
    descriptor pool with tritonclient's."""
    code = """
import json, sys, grpc
from steadyserve._proto import feedback_pb2 as pb
request = pb.ModelFeedbackRequest(model_name=sys.argv[2])
for rid, label in json.loads(sys.argv[3]):
    request.labels.add(id=rid, class_label=label)
request.labels.add(id="no-label")
with grpc.insecure_channel(sys.argv[1]) as channel:
    call = channel.unary_unary(
        "/steadyserve.v1.Feedback/ModelFeedback",
        request_serializer=pb.ModelFeedbackRequest.SerializeToString,
        response_deserializer=pb.ModelFeedbackResponse.FromString,
    )
    r = call(request, timeout=10)
print(json.dumps({"accepted": r.accepted, "joined": r.joined, "pending": r.pending,
                  "rejected": [[x.index, x.id, x.error] for x in r.rejected]}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code, address, model, json.dumps(labels)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


@only_frontend("native")
def test_labels_join_and_the_kpis_equal_a_reference(tmp_path, launch):
    repo, log_dir = _repo(tmp_path / "repo"), tmp_path / "log"
    server = launch(repo, "--prediction-log", str(log_dir))
    rng = np.random.default_rng(2)
    predicted, labels = [], []
    for i in range(40):
        y, _ = _infer(server, rng.normal(0, 3, (1, 4)).astype(np.float32), f"k-{i}")
        cls = int(np.argmax(y[0]))
        label = cls if rng.random() < 0.7 else (cls + 1) % 3
        predicted.append(cls)
        labels.append(label)
    # Half over REST, half over gRPC (with one item that has no label).
    code, answer = _http(
        server,
        "/v2/models/clf/feedback",
        [{"id": f"k-{i}", "label": labels[i]} for i in range(20)],
    )
    assert code == 200, answer
    assert answer["accepted"] == 20 and answer["rejected"] == []
    over_grpc = _grpc_feedback(server.grpc, "clf", [(f"k-{i}", labels[i]) for i in range(20, 40)])
    assert over_grpc["accepted"] == 20
    assert [r[:2] for r in over_grpc["rejected"]] == [[20, "no-label"]]
    labelled = wait_for(
        lambda: (
            _metric(
                server,
                "steadyserve_model_labelled_requests",
                model="clf",
                answered_by="clf",
                version="1",
            )
            == 40
        ),
        "40 labelled requests in the KPI window",
    )
    assert labelled
    labels_of = dict(model="clf", answered_by="clf", version="1")
    accuracy = _metric(server, "steadyserve_model_accuracy", **labels_of)
    assert accuracy == pytest.approx(accuracy_score(labels, predicted))
    f1 = _metric(server, "steadyserve_model_f1", **labels_of)
    assert f1 == pytest.approx(f1_score(labels, predicted, average="macro", zero_division=0))
    code, report = _http(server, "/v2/models/clf/quality")
    assert code == 200 and report["breach"] is None and report["pending"] == 0
    (window,) = report["windows"]
    assert (window["answered_by"], window["version"], window["labelled"]) == ("clf", "1", 40)
    assert window["values"]["accuracy"] == pytest.approx(accuracy)
    # Bad feedback is refused with its reason, and the server keeps serving.
    code, answer = _http(server, "/v2/models/clf/feedback", {"id": "k-1", "label": 1})
    assert code == 400 and "list" in answer["error"]
    code, answer = _http(server, "/v2/models/nosuch/feedback", [{"id": "a", "label": 1}])
    assert code == 404 and "nosuch" in answer["error"]
    _infer(server, np.ones((1, 4), np.float32))
    _stop(server)


@only_frontend("native")
def test_a_breach_raises_the_quality_alert_in_a_real_alertmanager(tmp_path, launch, alertmanager):
    repo, log_dir = _repo(tmp_path / "repo", min_accuracy=0.9), tmp_path / "log"
    server = launch(
        repo,
        "--prediction-log",
        str(log_dir),
        "--alert-interval-s",
        "0.2",
        "--alertmanager-url",
        alertmanager,
    )
    items = []
    for i in range(12):
        y, _ = _infer(server, np.full((1, 4), float(i), np.float32), f"b-{i}")
        items.append({"id": f"b-{i}", "label": (int(np.argmax(y[0])) + 1) % 3})  # all wrong
    code, answer = _http(server, "/v2/models/clf/feedback", items)
    assert code == 200, answer

    def firing():
        _, report = _http(server, "/v2/alerts")
        return [
            a
            for a in report["alerts"]
            if a["alertname"] == "SteadyServeModelQuality" and a["state"] == "firing"
        ]

    alert = wait_for(firing, "SteadyServeModelQuality to fire")[0]
    assert alert["model"] == "clf" and alert["threshold"] == 0.9 and alert["value"] == 0.0
    assert "accuracy" in alert["description"]
    assert (
        _metric(
            server, "steadyserve_model_quality_breach", model="clf", version="1", kpi="accuracy"
        )
        == 1
    )
    received = wait_for(
        lambda: am_alerts(alertmanager, "SteadyServeModelQuality", "clf"),
        "the alert in Alertmanager",
    )
    assert received[0]["labels"]["severity"] == "warning"
    assert "accuracy" in received[0]["annotations"]["description"]
    _stop(server)


@only_frontend("native")
def test_a_late_label_joins_after_a_restart(tmp_path, launch):
    repo, log_dir = _repo(tmp_path / "repo"), tmp_path / "log"
    server = launch(repo, "--prediction-log", str(log_dir))
    y, _ = _infer(server, np.ones((1, 4), np.float32), "late-1")
    _stop(server)
    server = launch(repo, "--prediction-log", str(log_dir), name="restarted")
    code, answer = _http(
        server, "/v2/models/clf/feedback", [{"id": "late-1", "label": int(np.argmax(y[0]))}]
    )
    assert code == 200 and answer["joined"] == 1, answer
    assert (
        _metric(server, "steadyserve_model_accuracy", model="clf", answered_by="clf", version="1")
        == 1.0
    )
    _stop(server)


@only_frontend("native")
def test_export_reproduces_the_logged_rows(tmp_path, launch):
    repo, log_dir = _repo(tmp_path / "repo"), tmp_path / "log"
    server = launch(repo, "--prediction-log", str(log_dir))
    rng = np.random.default_rng(4)
    xs = [rng.normal(0, 2, (1, 4)).astype(np.float32) for _ in range(6)]
    for i, x in enumerate(xs):
        _infer(server, x, f"e-{i}")
    code, _ = _http(
        server, "/v2/models/clf/feedback", [{"id": f"e-{i}", "label": i % 3} for i in range(4)]
    )
    assert code == 200
    _stop(server)
    out = tmp_path / "train.csv"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "steadyserve",
            "export",
            "clf",
            "--log",
            str(log_dir),
            "--out",
            str(out),
            "--labelled",
            "--since",
            "1h",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote 4 rows" in done.stdout
    import csv

    with open(out, newline="") as f:
        rows = {r["request_id"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == [f"e-{i}" for i in range(4)]
    for i in range(4):
        row = rows[f"e-{i}"]
        features = [np.float32(row[f"x[{j}]"]) for j in range(4)]
        np.testing.assert_array_equal(features, xs[i][0])
        assert int(float(row["label"])) == i % 3 and row["model_version"] == "1"


def test_the_log_is_refused_with_several_workers(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "steadyserve", "serve", str(_repo(tmp_path / "repo")),
         "--workers", "2", "--prediction-log", str(tmp_path / "log")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "prediction_log needs workers 1" in done.stderr
    assert not (tmp_path / "log").exists()
