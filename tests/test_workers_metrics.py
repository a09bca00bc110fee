"""`steadyserve serve --workers N`: /metrics, ModelStatistics and the drift and failover
reports describe the whole server, whichever worker a connection reaches.

Regression: each worker answered with its own figures only, so repeated scrapes of one
server flipped between workers' counts and `steadyserve drift` between flagged and fine.
Each worker now serves its own figures on a unix socket in the supervisor's private
directory (``--worker-dir``) and the one that answers merges its siblings'
(``server/siblings.py``, ``monitoring/aggregate.py``). The tests read each worker's own
figures from those sockets too, to check that more than one worker served and that the
merged figures are their sum.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc

from steadyserve.features.drift import drift_section, psi
from steadyserve.monitoring import aggregate

T = 30.0  # seconds: the client timeout of every call
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # a new connection per client
MODEL, BACKUP = "tabular", "tabular-lite"
PROMTOOL = shutil.which("promtool")


# -- helpers -----------------------------------------------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("worker", timeout=T)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def worker_get(worker_dir: str, index: int, route: str) -> bytes:
    """GET ``route`` from worker ``index``'s own socket: that worker's figures only."""
    conn = _UnixConnection(os.path.join(worker_dir, f"worker-{index}.sock"))
    try:
        conn.request("GET", route)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, body
        return body
    finally:
        conn.close()


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=T) as response:  # a new connection each time
        return response.read()


def samples(text: str, name: str, **labels) -> list[float]:
    return [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def value(text: str, name: str, **labels) -> float:
    found = samples(text, name, **labels)
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def successes(text: str) -> float:
    return sum(samples(text, "steadyserve_requests_total", model=MODEL, outcome="success"))


def check_with_promtool(text: str) -> None:
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), done


def worker_dir_of(server) -> tuple[str, list[int]]:
    """The supervisor's worker directory and its workers' pids (from their command lines)."""
    pid = server.proc.pid
    children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    argv = Path(f"/proc/{children[0]}/cmdline").read_bytes().decode().split("\0")
    return argv[argv.index("--worker-dir") + 1], children


def infer(client, rows: int = 1, shift: float = 2.0) -> None:
    x = np.random.default_rng(rows).standard_normal((rows, 32)).astype(np.float32) + shift
    inp = grpcclient.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    client.infer(MODEL, [inp], client_timeout=T)


def statistics_with_workers(grpc_url: str) -> tuple[dict, dict]:
    """ModelStatistics of MODEL over a new connection, and its steadyserve-workers metadata."""
    with grpc.insecure_channel(grpc_url, options=OWN_CONNECTION) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response, call = stub.ModelStatistics.with_call(
            service_pb2.ModelStatisticsRequest(name=MODEL), timeout=T
        )
    stats = response.model_stats[0]
    trailing = dict(call.trailing_metadata() or ())
    return {
        "inference_count": stats.inference_count,
        "success": stats.inference_stats.success.count,
        "execution_count": stats.execution_count,
    }, json.loads(trailing.get("steadyserve-workers", "null"))


@pytest.fixture(scope="module")
def demo_repo(tmp_path_factory) -> Path:
    from steadyserve.demo import build_demo_repository

    return build_demo_repository(tmp_path_factory.mktemp("demo"))


def reference(repo: Path) -> np.ndarray:
    stats = json.loads((repo / MODEL / "1" / "stats.json").read_text())
    return np.asarray(stats["inputs"]["features"]["reference_counts"])


# -- the merge itself (pure) ---------------------------------------------------------------


def _worker_registry(
    requests: int, ready: int, circuit: int, queued: int, agree: float
) -> CollectorRegistry:
    r = CollectorRegistry()
    Counter("steadyserve_requests", "Requests.", ["model"], registry=r).labels("m").inc(requests)
    h = Histogram("steadyserve_request_duration_seconds", "Time.", ["model"], registry=r)
    for _ in range(requests):
        h.labels("m").observe(0.003)
    Gauge("steadyserve_model_ready", "Ready.", ["model"], registry=r).labels("m").set(ready)
    Gauge("steadyserve_circuit_state", "Circuit.", ["model"], registry=r).labels("m").set(circuit)
    Gauge("steadyserve_queue_depth", "Queued.", ["model"], registry=r).labels("m").set(queued)
    Gauge("steadyserve_shadow_agreement_ratio", "Agreement.", registry=r).set(agree)
    Gauge("steadyserve_something_new", "A gauge not in the table.", registry=r).set(7)
    return r


def _worker_exposition(**figures) -> str:
    return generate_latest(_worker_registry(**figures)).decode()


def test_merged_exposition_sums_amounts_keeps_the_worst_state_and_labels_the_rest():
    texts = {
        0: _worker_exposition(requests=3, ready=1, circuit=0, queued=2, agree=0.9),
        1: _worker_exposition(requests=5, ready=0, circuit=2, queued=4, agree=0.5),
    }
    merged = aggregate.merge_expositions(texts, missing=[2])
    assert value(merged, "steadyserve_requests_total", model="m") == 8
    assert value(merged, "steadyserve_request_duration_seconds_count", model="m") == 8
    assert value(merged, "steadyserve_request_duration_seconds_bucket", model="m", le="0.005") == 8
    assert value(merged, "steadyserve_model_ready", model="m") == 0  # min
    assert value(merged, "steadyserve_circuit_state", model="m") == 2  # max
    assert value(merged, "steadyserve_queue_depth", model="m") == 6  # sum
    for worker, ratio in (("0", 0.9), ("1", 0.5)):  # per worker, never summed
        assert value(merged, "steadyserve_shadow_agreement_ratio", worker=worker) == ratio
        assert value(merged, "steadyserve_something_new", worker=worker) == 7
    created = [value(text, "steadyserve_requests_created", model="m") for text in texts.values()]
    assert value(merged, "steadyserve_requests_created", model="m") == max(created)
    assert value(merged, "steadyserve_workers", state="answered") == 2
    assert value(merged, "steadyserve_workers", state="missing") == 1
    types = [line for line in merged.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types))  # HELP and TYPE once per family
    if PROMTOOL:  # (test_promtool_finds_nothing_after_real_traffic skips without it)
        check_with_promtool(merged)


def test_families_sent_as_json_merge_like_the_text_expositions():
    figures = [
        {"requests": 3, "ready": 1, "circuit": 0, "queued": 2, "agree": 0.9},
        {"requests": 5, "ready": 1, "circuit": 1, "queued": 0, "agree": 0.7},
    ]
    registries = {i: _worker_registry(**f) for i, f in enumerate(figures)}
    texts = {i: generate_latest(r).decode() for i, r in registries.items()}
    sent = {  # what a sibling's /families carries: JSON of its collected families
        i: aggregate.families_of_plain(
            json.loads(json.dumps(aggregate.plain_families(r.collect())))
        )
        for i, r in registries.items()
    }
    from_json = aggregate.render(aggregate.merge_families(sent))
    assert from_json == aggregate.merge_expositions(texts)
    assert value(from_json, "steadyserve_requests_total", model="m") == 8


def test_statistics_merge_sums_counts_and_takes_the_latest_inference():
    a = {"inference_count": 2, "last_inference_ms": 10, "success": {"count": 2, "ns": 50}}
    b = {"inference_count": 3, "last_inference_ms": 7, "success": {"count": 3, "ns": 70}}
    a["batch_stats"] = {"1": {"count": 2, "compute_infer_ns": 5}}
    b["batch_stats"] = {"1": {"count": 1, "compute_infer_ns": 4}, "2": {"count": 1}}
    merged = aggregate.statistics_from_dict(aggregate.merge_statistics([a, b]))
    assert merged.inference_count == 5 and merged.last_inference_ms == 10
    assert (merged.success.count, merged.success.ns) == (5, 120)
    assert merged.batch_stats[1].count == 3 and merged.batch_stats[1].compute_infer_ns == 9
    assert merged.batch_stats[2].count == 1


def test_failover_merge_sums_counts_and_reports_each_workers_circuit():
    def report(state: str, opened: int, count: int) -> dict:
        return {
            "circuits": {"m": {"state": state, "opened": opened, "reason": state, "since_s": 1}},
            "backups": {"m": "b"},
            "failovers": [{"model": "m", "answered_by": "b", "count": count}],
            "skipped": [{"model": "m", "reason": "execution_error", "count": count}],
        }

    merged = aggregate.merge_failover({0: report("closed", 0, 2), 1: report("open", 1, 3)})
    circuit = merged["circuits"]["m"]
    assert (circuit["state"], circuit["reason"], circuit["opened"]) == ("open", "open", 1)
    assert {w: c["state"] for w, c in circuit["workers"].items()} == {"0": "closed", "1": "open"}
    assert merged["failovers"] == [{"model": "m", "answered_by": "b", "count": 5}]
    assert merged["skipped"] == [{"model": "m", "reason": "execution_error", "count": 5}]


def test_drift_windows_are_summed_before_psi_never_averaged():
    class Drift:
        psi_threshold, min_rows = 0.2, 10

    ref = np.array([[25, 25, 25, 25]])
    stats = {"bin_edges": [[0, 1, 2, 3, 4]], "reference_counts": ref.tolist()}
    a = {"rows": 8, "counts": [[8, 0, 0, 0]], "missing": [0], "out_of_range": [1]}
    b = {"rows": 8, "counts": [[0, 2, 3, 3]], "missing": [2], "out_of_range": [0]}
    summed = aggregate.sum_snapshots([a, b])
    section = drift_section(summed, stats, ["f"], Drift)
    expected = float(psi(ref, np.array([[8, 2, 3, 3]]))[0])
    assert section["features"][0]["psi"] == pytest.approx(expected, abs=1e-6)
    mean_of_psis = np.mean([psi(ref, np.array(s["counts"]))[0] for s in (a, b)])
    assert abs(expected - mean_of_psis) > 0.1  # averaging would have given another answer
    assert section["enough_rows"]  # 16 rows together, 8 each: only the sum is meaningful
    assert section["features"][0]["missing_rate"] == pytest.approx(2 / 16)
    with pytest.raises(ValueError):
        aggregate.sum_snapshots([a, {**b, "counts": [[1, 2, 3]]}])


# -- real servers ------------------------------------------------------------------------------


def test_workers_answer_for_the_whole_server(demo_repo, launch, frontend):
    server = launch(demo_repo, "--workers", "2", name="workers")
    worker_dir, _ = worker_dir_of(server)
    # Rounds of requests, each on a new connection, until both workers have served some
    # (each worker's own socket says what it served).
    sent, served = 0, [0.0, 0.0]
    for _ in range(64):
        client = grpcclient.InferenceServerClient(server.grpc, channel_args=OWN_CONNECTION)
        try:
            for _ in range(20):
                infer(client)
                sent += 1
        finally:
            client.close()
        served = [successes(worker_get(worker_dir, i, "/metrics").decode()) for i in (0, 1)]
        if sent >= 240 and all(served):
            break
    assert all(served), f"one worker served everything: {served}"
    assert sum(served) == sent

    for _ in range(10):  # whichever worker answers (new connections): the whole figures
        text = get(f"{server.http}/metrics").decode()
        assert successes(text) == sent
        assert value(text, "steadyserve_workers", state="answered") == 2
        assert value(text, "steadyserve_workers", state="missing") == 0
        assert value(text, "steadyserve_drift_window_rows", model=MODEL, tensor="features") == sent
        stats, workers = statistics_with_workers(server.grpc)
        assert stats["inference_count"] == stats["success"] == sent
        # (the native frontend's bridge carries no trailing metadata)
        assert workers == ({"answered": [0, 1], "missing": []} if frontend == "grpcio" else None)
        client = grpcclient.InferenceServerClient(server.grpc, channel_args=OWN_CONNECTION)
        stats = client.get_inference_statistics(MODEL, as_json=True, client_timeout=T)
        client.close()
        assert int(stats["model_stats"][0]["inference_count"]) == sent

    # The drift verdict: the same every time, and PSI from the workers' summed counts.
    windows = [json.loads(worker_get(worker_dir, i, f"/drift?name={MODEL}")) for i in (0, 1)]
    counts = sum(np.asarray(w[0]["inputs"]["features"]["window"]["counts"]) for w in windows)
    expected = psi(reference(demo_repo), counts)
    url = server.http.removeprefix("http://")
    verdicts = set()
    for _ in range(4):
        done = subprocess.run(
            [sys.executable, "-m", "steadyserve", "drift", "--url", url, MODEL, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        report = json.loads(done.stdout)
        section = report["inputs"]["features"]
        verdicts.add((done.returncode, tuple(section["flagged"])))
        assert section["rows"] == sent
        assert report["workers"] == {"answered": [0, 1], "missing": []}
        got = [f["psi"] for f in section["features"]]
        np.testing.assert_allclose(got, expected, atol=1e-6)
    assert len(verdicts) == 1 and verdicts.pop()[0] == 3  # shifted inputs: flagged, always
    assert server.stop() == 0, server.stderr()[-4000:]
    assert not os.path.exists(worker_dir)  # the supervisor removes it


def _launch_workers(launch, repo: Path, count: int, worker_dir: str) -> list:
    """``count`` workers started by hand (no supervisor), each on its own ports, so a
    test can send each one its own traffic and stop one."""
    return [
        launch(
            repo,
            "--allow-fault-injection",
            "--workers",
            str(count),
            "--worker-index",
            str(i),
            "--worker-dir",
            worker_dir,
            name=f"worker{i}",
        )
        for i in range(count)
    ]


def test_failovers_add_up_and_a_silent_worker_is_reported_missing(demo_repo, launch, frontend):
    worker_dir = tempfile.mkdtemp(prefix="sw-")  # short: a unix socket path has a limit
    workers = _launch_workers(launch, demo_repo, 3, worker_dir)
    # Who answered, as ModelStatistics' trailing metadata: the native frontend's bridge
    # carries no trailing metadata (bridge.py), so there it is absent.
    said = (lambda listed: listed) if frontend == "grpcio" else (lambda listed: None)
    stopped = None
    try:
        sent = [7, 11, 13]
        for server, k in zip(workers, sent, strict=True):
            request = urllib.request.Request(
                f"{server.http}/v2/models/{MODEL}/fault", data=b'{"kind": "error"}'
            )
            with urllib.request.urlopen(request, timeout=T) as response:
                assert response.status == 200
            client = grpcclient.InferenceServerClient(server.grpc)
            for _ in range(k):
                infer(client)  # the backup answers
            client.close()
        own = [json.loads(worker_get(worker_dir, i, "/failover")) for i in range(3)]
        own_stats = [
            json.loads(worker_get(worker_dir, i, f"/statistics?name={MODEL}"))[0]["statistics"]
            for i in range(3)
        ]
        for server in workers:
            report = json.loads(get(f"{server.http}/v2/failover"))
            assert report["workers"] == {"answered": [0, 1, 2], "missing": []}
            answered = {(f["model"], f["answered_by"]): f["count"] for f in report["failovers"]}
            assert answered[(MODEL, BACKUP)] == sum(sent)
            skips = {(s["model"], s["reason"]): s["count"] for s in report["skipped"]}
            for key, count in skips.items():  # each reason: the sum of the workers' own
                assert count == sum(
                    s["count"]
                    for o in own
                    for s in o["skipped"]
                    if (s["model"], s["reason"]) == key
                )
            circuit = report["circuits"][MODEL]
            assert set(circuit["workers"]) == {"0", "1", "2"}
            assert circuit["opened"] == sum(o["circuits"][MODEL]["opened"] for o in own)
            stats, listed = statistics_with_workers(server.grpc)
            assert listed == said({"answered": [0, 1, 2], "missing": []})
            assert stats["inference_count"] == sum(o["inference_count"] for o in own_stats)
            assert stats["execution_count"] == sum(o["execution_count"] for o in own_stats)
            text = get(f"{server.http}/metrics").decode()
            assert value(text, "steadyserve_failovers_total", model=MODEL) == sum(sent)
            if PROMTOOL:
                check_with_promtool(text)

        # A worker that does not answer (stopped) is left out after the timeout and said;
        # so is one that is gone (killed).
        workers[2].proc.send_signal(signal.SIGSTOP)
        stopped = workers[2]
        workers[1].proc.kill()
        workers[1].proc.wait(timeout=T)
        text = get(f"{workers[0].http}/metrics").decode()
        assert value(text, "steadyserve_workers", state="answered") == 1
        assert value(text, "steadyserve_workers", state="missing") == 2
        assert value(text, "steadyserve_failovers_total", model=MODEL) == sent[0]
        for route in ("/v2/failover", f"/v2/models/{MODEL}/drift"):
            report = json.loads(get(f"{workers[0].http}{route}"))
            assert report["workers"] == {"answered": [0], "missing": [1, 2]}
        stats, listed = statistics_with_workers(workers[0].grpc)
        assert stats["inference_count"] == own_stats[0]["inference_count"]
        assert listed == said({"answered": [0], "missing": [1, 2]})
    finally:
        if stopped is not None:
            stopped.proc.send_signal(signal.SIGCONT)
        for server in workers:
            if server.proc.poll() is None:
                assert server.stop() == 0, server.stderr()[-4000:]
        shutil.rmtree(worker_dir, ignore_errors=True)


def test_promtool_finds_nothing_after_real_traffic(demo_repo, launch):
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    for flags in ((), ("--workers", "2")):
        server = launch(demo_repo, "--allow-fault-injection", *flags, name="promtool")
        client = grpcclient.InferenceServerClient(server.grpc)
        for _ in range(30):
            infer(client, rows=4)
        request = urllib.request.Request(
            f"{server.http}/v2/models/{MODEL}/fault", data=b'{"kind": "nan"}'
        )
        urllib.request.urlopen(request, timeout=T).close()
        for _ in range(30):  # failovers, a circuit that opens
            infer(client, rows=4)
        client.close()
        check_with_promtool(get(f"{server.http}/metrics").decode())
        assert server.stop() == 0, server.stderr()[-4000:]
