"""Drift and data quality: PSI, the live sliding window, prediction drift, the report over
HTTP (`GET /v2/models/{m}/drift`, `steadyserve drift`) and the Prometheus gauges."""

from __future__ import annotations

import functools
import json
import math
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import onnx_models
from steadyserve import Runtime, _core
from steadyserve.cli import main as cli_main
from steadyserve.config import ContractConfig, DriftConfig
from steadyserve.demo import FEATURE_NAMES, build_demo_repository, demo_dataset
from steadyserve.errors import InvalidArgumentError
from steadyserve.features.drift import PSI_EPSILON, psi
from steadyserve.features.stats import fit_stats, write_stats
from steadyserve.features.transform import build_transform

N = 8  # features of the small test models
NAMES = [f"x{i}" for i in range(N)]


def psi_by_hand(reference, live, eps=PSI_EPSILON):
    """sum over bins of (q - p) ln(q / p), shares floored at eps: one feature, plain Python."""
    p = [max(c / sum(reference), eps) for c in reference]
    q = [max(c / max(sum(live), 1), eps) for c in live]
    return sum((qi - pi) * math.log(qi / pi) for pi, qi in zip(p, q, strict=True))


# --------------------------------------------------------------------------- PSI


def test_psi_worked_example():
    # reference 50/50, live 90/10: 0.4 ln 1.8 + 0.4 ln 5
    assert psi([50, 50], [90, 10]) == pytest.approx(0.4 * math.log(1.8) + 0.4 * math.log(5))
    assert psi([50, 50], [5, 5]) == 0.0  # same shares, any scale


def test_psi_matches_the_hand_reference_on_random_counts():
    rng = np.random.default_rng(3)
    for _ in range(50):
        bins = int(rng.integers(2, 20))
        ref = rng.integers(0, 1000, (4, bins))
        ref[:, 0] += 1  # a reference is never empty
        live = rng.integers(0, 50, (4, bins)) * rng.integers(0, 2, (4, bins))  # empty bins too
        got = psi(ref, live)
        for f in range(4):
            assert got[f] == pytest.approx(psi_by_hand(ref[f].tolist(), live[f].tolist()))


def test_live_counts_give_the_psi_of_a_numpy_histogram():
    """The window's PSI equals PSI computed from numpy.searchsorted over the same rows."""
    rng = np.random.default_rng(4)
    ref = rng.normal(0, 1, (3000, N)).astype(np.float32)
    stats = fit_stats({"x": ref}, names={"x": NAMES})["inputs"]["x"]
    live = rng.normal(0.3, 1.2, (700, N)).astype(np.float32)
    live[5, 2] = np.nan  # missing (imputed with 0): counted as missing, not binned
    t = build_transform(
        "m", "x", N, ContractConfig(missing="constant"), DriftConfig(), stats, "test"
    )
    t.apply(live)
    snap = t.snapshot()
    edges = np.asarray(stats["bin_edges"], np.float32)
    want = np.stack(
        [
            np.bincount(
                np.searchsorted(edges[f], live[np.isfinite(live[:, f]), f], "right"),
                minlength=len(edges[f]) + 1,
            )
            for f in range(N)
        ]
    )
    np.testing.assert_array_equal(snap["counts"], want)
    assert snap["missing"].tolist() == [0, 0, 1, 0, 0, 0, 0, 0]
    np.testing.assert_allclose(
        psi(stats["reference_counts"], snap["counts"]),
        [psi_by_hand(stats["reference_counts"][f], want[f].tolist()) for f in range(N)],
    )


# --------------------------------------------------------------------------- window


def _window_transform(**window):
    edges = [0.0] * N  # 2 bins per feature: < 0 and >= 0
    return _core.FeatureTransform(
        "m", "x", [], [-1.0] * N, [1.0] * N, [0] * N, [1] * N, [0.0] * N, [0.0] * N, [1.0] * N,
        bins=2, edges=edges, **window,
    )  # fmt: skip


def test_row_window_slides_by_whole_sub_windows():
    t = _window_transform(sub_windows=4, sub_window_rows=25)  # a window of 100 rows
    t.apply(np.full((100, N), -0.5, np.float32))  # 100 rows in bin 0
    snap = t.snapshot()
    # the 4th sub-window filled up, so the oldest was dropped to open a new one
    assert snap["rows"] == 75 and snap["counts"][0].tolist() == [75, 0]
    t.apply(np.full((60, N), 0.5, np.float32))  # 60 rows in bin 1
    snap = t.snapshot()
    assert snap["rows"] == 85  # 1 old sub-window + 2 new full ones + 10 rows
    assert snap["counts"][0].tolist() == [25, 60]
    t.apply(np.full((40, N), 0.5, np.float32))
    assert t.snapshot()["counts"][0].tolist() == [0, 75]  # the old rows are gone
    # out of range and missing are counted per window too
    t.apply(np.array([[5.0] + [np.nan] + [0.0] * (N - 2)], np.float32))
    snap = t.snapshot()
    assert snap["out_of_range"][0] == 1 and snap["missing"][1] == 1
    t.reset()
    assert t.snapshot()["rows"] == 0


def test_time_window_forgets_old_rows():
    t = _window_transform(sub_windows=2, sub_window_s=0.15)  # a window of 0.3 s
    t.apply(np.full((10, N), -0.5, np.float32))
    assert t.snapshot()["rows"] == 10
    time.sleep(0.35)  # more than the whole window
    t.apply(np.full((3, N), 0.5, np.float32))
    snap = t.snapshot()
    assert snap["rows"] == 3 and snap["counts"][0].tolist() == [0, 3]


def test_window_smaller_than_its_sub_windows():
    from steadyserve.features.transform import _sub_window

    assert _sub_window(DriftConfig(window_rows=10, sub_windows=1000)) == (10, 1, 0.0)
    assert _sub_window(DriftConfig(window_rows=10_000, sub_windows=10)) == (10, 1000, 0.0)
    assert _sub_window(DriftConfig(window_seconds=60, sub_windows=6)) == (6, 1, 10.0)


# --------------------------------------------------------------------------- through a model

REF_ROWS = 4000


@pytest.fixture(scope="module")
def linear_repo(tmp_path_factory):
    """A linear model 8 -> 3 with a contract, its stats fitted on N(0, 1) reference data
    (inputs, and outputs for prediction drift)."""
    root = tmp_path_factory.mktemp("drift")
    onnx_models.make_repo(
        root,
        {"lin": functools.partial(onnx_models.write_linear, n_in=N, n_out=3)},
        configs={
            "lin": {
                "max_batch_size": 64,
                "inputs": [{"name": "x", "contract": {"feature_names": NAMES, "min": -8,
                                                      "max": 8, "missing": "reject"}}],
                "drift": {"window_rows": 2000, "sub_windows": 4, "min_rows": 200},
            }
        },
    )  # fmt: skip
    ref = np.random.default_rng(10).standard_normal((REF_ROWS, N)).astype(np.float32)
    import onnxruntime as ort

    y = ort.InferenceSession(str(root / "lin" / "1" / "model.onnx")).run(None, {"x": ref})[0]
    write_stats(root / "lin" / "1" / "stats.json", fit_stats({"x": ref}, {"y": y}))
    return root


@pytest.fixture
def lin(linear_repo):
    with Runtime(linear_repo, warmup=False) as rt:
        yield rt


def _send(rt, x, model="lin", name="x", batch=50):
    for start in range(0, len(x), batch):
        rt.infer(model, {name: np.ascontiguousarray(x[start : start + batch], np.float32)})


def test_report_is_quiet_on_a_sample_of_the_reference(lin):
    _send(lin, np.random.default_rng(11).standard_normal((1500, N)))
    report = lin.get_model("lin").drift_report()
    x, y = report["inputs"]["x"], report["outputs"]["y"]
    assert x["rows"] == 1500 and x["enough_rows"] and y["rows"] == 1500
    assert x["flagged"] == [] and y["flagged"] == []
    assert x["worst"]["psi"] < 0.05 and y["worst"]["psi"] < 0.05
    assert [f["feature"] for f in x["features"]] == NAMES
    assert all(f["missing_rate"] == 0 and f["out_of_range_rate"] == 0 for f in x["features"])


def test_report_flags_the_shifted_feature_and_the_predictions(lin):
    x = np.random.default_rng(12).standard_normal((1500, N))
    x[:, 3] += 2.0
    _send(lin, x)
    report = lin.get_model("lin").drift_report()
    inputs = report["inputs"]["x"]
    assert inputs["flagged"] == ["x3"]
    assert inputs["worst"]["feature"] == "x3" and inputs["worst"]["psi"] > 0.5
    assert max(f["psi"] for f in inputs["features"] if f["feature"] != "x3") < 0.05
    # y0 and y1 lean on x3 (weights -1.27, -0.62), y2 hardly (0.04): prediction drift
    assert report["outputs"]["y"]["flagged"] == ["0", "1"]
    assert report["psi_threshold"] == 0.2 and report["window_rows"] == 2000


def test_report_needs_min_rows_before_flagging(lin):
    x = np.random.default_rng(13).standard_normal((100, N)) + 3.0
    _send(lin, x)
    report = lin.get_model("lin").drift_report()["inputs"]["x"]
    assert report["rows"] == 100 and not report["enough_rows"] and report["min_rows"] == 200
    assert report["flagged"] == [] and report["worst"]["psi"] > 1  # shown, not flagged


def test_shifted_rows_slide_out_of_the_window(lin):
    rng = np.random.default_rng(14)
    shifted = rng.standard_normal((2000, N))
    shifted[:, 5] -= 2.0
    _send(lin, shifted)
    model = lin.get_model("lin")
    assert model.drift_report()["inputs"]["x"]["flagged"] == ["x5"]
    _send(lin, rng.standard_normal((2000, N)))  # a whole window of normal traffic
    report = model.drift_report()["inputs"]["x"]
    assert report["flagged"] == [] and 1500 <= report["rows"] <= 2000


def test_refused_rows_are_not_counted(lin):
    x = np.zeros((3, N), np.float32)
    x[2, 6] = np.inf
    with pytest.raises(InvalidArgumentError, match=r"row 2, feature 'x6' \(index 6\)"):
        lin.infer("lin", {"x": x})
    report = lin.get_model("lin").drift_report()
    assert report["inputs"]["x"]["rows"] == 0 and report["outputs"]["y"]["rows"] == 0


def _samples(registry) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name.startswith(("steadyserve_feature_", "steadyserve_drift_")):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_export_psi_once_the_window_is_meaningful(lin):
    tensor = (("model", "lin"), ("tensor", "x"), ("version", "1"))
    samples = _samples(lin.metrics.registry)
    assert samples[("steadyserve_drift_window_rows", tensor)] == 0
    assert not any(k[0] == "steadyserve_feature_psi" for k in samples)
    x = np.random.default_rng(15).standard_normal((400, N))
    x[:, 1] += 2
    x[:, 7] = np.clip(x[:, 7], -8, 8)
    _send(lin, x)
    samples = _samples(lin.metrics.registry)
    label = (("feature", "x1"), ("model", "lin"), ("tensor", "x"), ("version", "1"))
    report = lin.get_model("lin").drift_report()
    x1 = report["inputs"]["x"]["features"][1]
    assert samples[("steadyserve_feature_psi", label)] == x1["psi"] > 0.2
    assert samples[("steadyserve_drift_worst_psi", tensor)] == report["inputs"]["x"]["worst"]["psi"]
    assert samples[("steadyserve_drift_window_rows", tensor)] == 400
    assert samples[("steadyserve_feature_missing_ratio", label)] == 0
    assert samples[("steadyserve_feature_out_of_range_ratio", label)] == 0
    # prediction drift has gauges too, features named by index
    out = (("feature", "0"), ("model", "lin"), ("tensor", "y"), ("version", "1"))
    assert ("steadyserve_feature_psi", out) in samples


def test_two_runtimes_sharing_a_registry_each_export_their_models(linear_repo, tmp_path):
    onnx_models.make_repo(
        tmp_path,
        {"other": functools.partial(onnx_models.write_linear, n_in=N, n_out=3)},
        configs={"other": {"max_batch_size": 8, "inputs": [{"name": "x", "contract": {}}]}},
    )
    with (
        Runtime(linear_repo, warmup=False) as a,
        Runtime(tmp_path, warmup=False, metrics=a.metrics) as b,
    ):
        rows = {
            dict(k[1])["model"]
            for k in _samples(b.metrics.registry)
            if k[0] == "steadyserve_drift_window_rows"
        }
        assert rows == {"lin", "other"}


# --------------------------------------------------------------------------- the demo


@pytest.fixture(scope="module")
def demo_repo(tmp_path_factory):
    return build_demo_repository(tmp_path_factory.mktemp("demo"))


def test_demo_ships_its_contract_and_stats(demo_repo, tmp_path):
    for name in ("tabular", "tabular-lite"):
        stats = json.loads((demo_repo / name / "1" / "stats.json").read_text())
        assert stats["inputs"]["features"]["feature_names"] == FEATURE_NAMES
        assert stats["inputs"]["features"]["rows"] == 4096
        assert set(stats["outputs"]) == {"probabilities"}
    build_demo_repository(tmp_path)  # deterministic, like the model files
    for name in ("tabular", "tabular-lite"):
        rel = f"{name}/1/stats.json"
        assert (tmp_path / rel).read_bytes() == (demo_repo / rel).read_bytes()


def test_demo_refuses_nan_and_sees_shifted_data(demo_repo):
    with Runtime(demo_repo, models=["tabular"], warmup=False) as rt:
        x, _ = demo_dataset(2000, seed=99)
        x[7, 12] = np.nan
        with pytest.raises(InvalidArgumentError) as err:
            rt.infer("tabular", {"features": x[:50]})
        assert str(err.value) == (
            "model 'tabular': input 'features' row 7, feature 'f12' (index 12): value nan is "
            "not allowed (NaN/inf policy: reject)"
        )
        x[7, 12] = 0
        _send(rt, x, "tabular", "features")
        report = rt.get_model("tabular").drift_report()
        assert report["inputs"]["features"]["flagged"] == []
        assert report["outputs"]["probabilities"]["flagged"] == []
        x[:, 0] += 1.0  # f00 drives the label: the predictions move too
        _send(rt, x, "tabular", "features")
        report = rt.get_model("tabular").drift_report()
        assert report["inputs"]["features"]["flagged"] == ["f00"]


# --------------------------------------------------------------------------- HTTP + CLI


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _grpc_send(client, x):
    import tritonclient.grpc as grpcclient

    for start in range(0, len(x), 64):
        part = np.ascontiguousarray(x[start : start + 64], np.float32)
        inp = grpcclient.InferInput("features", list(part.shape), "FP32")
        inp.set_data_from_numpy(part)
        client.infer("tabular", [inp], client_timeout=30)


def test_drift_over_http_cli_and_metrics(launch, tmp_path, capsys):
    """The demo served: a NaN refused over gRPC, the report quiet on reference-like data,
    then flagging a shifted feature at /v2/models/tabular/drift, in `steadyserve drift`
    and in /metrics."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    server = launch(None, "--demo", "--demo-dir", str(tmp_path / "demo"))
    http = server.http
    client = grpcclient.InferenceServerClient(server.grpc)
    try:
        x, _ = demo_dataset(640, seed=5)
        bad = x[:2].copy()
        bad[1, 30] = np.nan
        with pytest.raises(InferenceServerException) as err:
            _grpc_send(client, bad)
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "row 1, feature 'f30' (index 30): value nan is not allowed" in err.value.message()

        _grpc_send(client, x)
        status, report = _get(f"{http}/v2/models/tabular/drift")
        assert status == 200 and report["model"] == "tabular" and report["version"] == "1"
        assert report["inputs"]["features"]["rows"] == 640
        assert report["inputs"]["features"]["flagged"] == []
        assert cli_main(["drift", "--url", http.removeprefix("http://"), "tabular"]) == 0
        assert "input 'features': 640 rows in the window" in capsys.readouterr().out

        x, _ = demo_dataset(1280, seed=6)
        x[:, 8] += 1.5
        _grpc_send(client, x)
        status, report = _get(f"{http}/v2/models/tabular/versions/1/drift")
        assert status == 200 and report["inputs"]["features"]["flagged"] == ["f08"]

        assert cli_main(["drift", "--url", http, "tabular"]) == 3
        out = capsys.readouterr().out
        assert "DRIFT: f08" in out
        assert out.splitlines()[4].split()[0] == "f08"  # sorted by PSI, the worst first
        assert cli_main(["drift", "--url", http, "tabular", "--json"]) == 3
        assert json.loads(capsys.readouterr().out)["inputs"]["features"]["flagged"] == ["f08"]

        with urllib.request.urlopen(f"{http}/metrics", timeout=30) as r:
            metrics = r.read().decode()
        gauge = (
            'steadyserve_feature_psi{feature="f08",model="tabular",tensor="features",version="1"}'
        )
        line = next(ln for ln in metrics.splitlines() if ln.startswith(gauge))
        assert float(line.split()[-1]) == report["inputs"]["features"]["features"][8]["psi"]

        assert _get(f"{http}/v2/models/nope/drift")[0] == 404
        assert _get(f"{http}/v2/models/tabular/versions/9/drift")[0] == 404
        assert _get(f"{http}/v2/models/a..b/drift")[0] == 400
        assert cli_main(["drift", "--url", http, "nope"]) == 1
        assert "HTTP 404: model 'nope' not found" in capsys.readouterr().err
    finally:
        client.close()


def test_drift_cli_when_no_server_listens(capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on (bound, not listening)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert cli_main(["drift", "--url", f"127.0.0.1:{port}", "tabular", "--timeout", "5"]) == 1
    err = capsys.readouterr().err
    assert "cannot get http://127.0.0.1:" in err and "HTTP port" in err


def test_drift_and_fault_pointed_at_the_grpc_port_say_so(server, capsys):
    """The gRPC port answers HTTP/1.1 with HTTP/2 bytes (or closes): the commands say which
    port they want instead of printing a parse error's traceback."""
    grpc_url = server.grpc
    assert cli_main(["drift", "--url", grpc_url, "linear", "--timeout", "5"]) == 1
    err = capsys.readouterr().err
    assert "is --url the gRPC port?" in err and "--http-port" in err
    assert "Traceback" not in err
    assert cli_main(["fault", "linear", "clear", "--url", grpc_url, "--timeout", "5"]) == 1
    err = capsys.readouterr().err
    assert "is --url the gRPC port?" in err and "Traceback" not in err


def test_a_reset_connection_says_which_port_too(capsys):
    """The native gRPC port may close an HTTP/1.1 request with a reset while its body is
    still going out (it answers with a GOAWAY): that too is "is --url the gRPC port?"."""
    import socket
    import struct
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def reset_everyone():
        for _ in range(2):
            conn, _ = listener.accept()
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()  # RST, not FIN

    thread = threading.Thread(target=reset_everyone, daemon=True)
    thread.start()
    url = f"127.0.0.1:{listener.getsockname()[1]}"
    assert cli_main(["fault", "linear", "clear", "--url", url, "--timeout", "5"]) == 1
    assert cli_main(["drift", "--url", url, "linear", "--timeout", "5"]) == 1
    thread.join(timeout=10)
    listener.close()
    err = capsys.readouterr().err
    assert err.count("is --url the gRPC port?") == 2 and "Traceback" not in err


def test_a_reset_reads_as_the_grpc_port_however_it_surfaces():
    """urllib reports a reset bare (hit while reading the answer) or wrapped in a URLError
    (hit while sending the request): both say which port the commands want."""
    import http.client
    import urllib.error

    from steadyserve.cli import NOT_HTTP_PORT, _why_unreachable

    for exc in (
        ConnectionResetError(104, "Connection reset by peer"),
        urllib.error.URLError(ConnectionResetError(104, "Connection reset by peer")),
        http.client.BadStatusLine("\x00\x00\x12\x04"),
    ):
        assert _why_unreachable(exc) == NOT_HTTP_PORT
    refused = urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
    assert "is the server up" in _why_unreachable(refused)
