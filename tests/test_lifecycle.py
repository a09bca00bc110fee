"""Model lifecycle in process: load, reload under load, unload, rollback, probation,
model control modes, polling.

Models are tiny linear models (x FP32 [-1, 4] -> y FP32 [-1, 3]) whose weights come
from a seed, so an answer shows which file computed it.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import steadyserve
from onnx_models import linear_answer, linear_seed, make_repo, write_linear
from steadyserve.errors import (
    ConfigError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    SteadyServeError,
    UnavailableError,
)

X = np.arange(8, dtype=np.float32).reshape(2, 4) / 8.0
T = 10.0  # seconds: a timeout no test comes near


def expected(seed: int, x: np.ndarray = X) -> np.ndarray:
    return linear_answer(seed, x)


def which(y: np.ndarray, seeds) -> int:
    """The seed whose weights computed ``y`` (for the input X)."""
    return linear_seed(y, X, seeds)


def add_version(root, name: str, version: int, seed: int) -> None:
    target = root / name / str(version) / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_linear(target, seed=seed)


def write_config(root, name: str, config: dict) -> None:
    (root / name / "config.yaml").write_text(yaml.safe_dump(config))


def metric(rt, name: str, **labels) -> float:
    text = steadyserve_metrics(rt)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def steadyserve_metrics(rt) -> str:
    from prometheus_client import generate_latest

    return generate_latest(rt.metrics.registry).decode()


def wait_for(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    make_repo(root, {"m": functools.partial(write_linear, seed=1)})
    return root


@pytest.fixture
def runtime(request):
    opened = []

    def _runtime(root, **kwargs):
        kwargs.setdefault("model_control", "explicit")
        rt = steadyserve.Runtime(root, **kwargs)
        opened.append(rt)
        return rt

    yield _runtime
    for rt in opened:
        rt.close()


class Load:
    """Client threads sending requests without pause; each answer is recorded with the
    time it was sent and the seed that computed it."""

    def __init__(self, rt, seeds, threads: int = 3):
        self.rt = rt
        self.seeds = seeds
        self.answers: list[tuple[float, int, str]] = []  # (sent at, seed, version)
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                result = self.rt.infer("m", {"x": X}, timeout=T)
                seed = which(result["y"], self.seeds)
            except BaseException as error:  # any failure is what the test looks for
                with self._lock:
                    self.errors.append(error)
                continue
            with self._lock:
                self.answers.append((sent, seed, result.model_version))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def wait_answers(self, n: int) -> None:
        target = self.count() + n
        wait_for(lambda: self.count() >= target or self.errors, f"{n} more answers")


def test_reloads_under_load_drop_nothing_and_switch_versions(repo, runtime):
    rt = runtime(repo)
    seeds = list(range(1, 8))
    swaps = []  # (time the load returned, seed now served)
    with Load(rt, seeds) as load:
        load.wait_answers(20)
        for version in range(2, 7):
            add_version(repo, "m", version, seed=version)
            rt.load_model("m")
            swaps.append((time.monotonic(), version))
            assert rt.model_versions("m") == [str(version)]
            load.wait_answers(20)
    assert not load.errors, load.errors[:3]
    for returned, seed in swaps:
        # Every request sent after a load returned is answered by the new version
        # (or a later one).
        later = [s for sent, s, _ in load.answers if sent > returned]
        assert later and all(s >= seed for s in later)
    assert {s for _, s, _ in load.answers} == {1, 2, 3, 4, 5, 6}
    assert metric(rt, "steadyserve_model_loads_total", model="m", outcome="loaded") == 6
    assert [(e.version, e.state) for e in rt.model_index()] == [("6", "READY")]


def test_reload_of_the_same_version_with_new_weights(repo, runtime):
    rt = runtime(repo)
    assert which(rt.infer("m", {"x": X})["y"], [1, 2]) == 1
    write_linear(repo / "m" / "1" / "model.onnx", seed=2)
    rt.load_model("m")
    result = rt.infer("m", {"x": X})
    assert which(result["y"], [1, 2]) == 2 and result.model_version == "1"


def test_unchanged_versions_are_carried_over(repo, runtime):
    write_config(repo, "m", {"versions": "all"})
    rt = runtime(repo)
    first = rt.get_model("m", "1")
    add_version(repo, "m", 2, seed=2)
    rt.load_model("m")
    assert rt.model_versions("m") == ["1", "2"]
    assert rt.get_model("m", "1") is first  # same session, figures and drift windows
    assert which(rt.infer("m", {"x": X}, version="1")["y"], [1, 2]) == 1
    assert which(rt.infer("m", {"x": X})["y"], [1, 2]) == 2


def test_corrupt_file_fails_the_load_and_changes_nothing(repo, runtime):
    rt = runtime(repo)
    bad = repo / "m" / "2" / "model.onnx"
    bad.parent.mkdir()
    bad.write_bytes(b"this is not an onnx file")
    with pytest.raises(SteadyServeError) as info:
        rt.load_model("m")
    assert str(bad) in str(info.value)
    assert rt.model_versions("m") == ["1"]
    assert which(rt.infer("m", {"x": X})["y"], [1]) == 1
    states = {e.version: (e.state, e.reason) for e in rt.model_index()}
    assert states["1"] == ("READY", "")
    assert states["2"][0] == "UNAVAILABLE" and str(bad) in states["2"][1]
    assert metric(rt, "steadyserve_model_loads_total", model="m", outcome="failed") == 1
    assert rt.ready()


def test_bad_config_fails_the_load_and_changes_nothing(repo, runtime):
    rt = runtime(repo)
    (repo / "m" / "config.yaml").write_text("max_batch_size: lots\n")
    with pytest.raises(ConfigError, match="max_batch_size"):
        rt.load_model("m")
    assert which(rt.infer("m", {"x": X})["y"], [1]) == 1


def test_a_new_signature_that_breaks_a_backup_chain_is_refused(tmp_path, runtime):
    root = tmp_path / "repo"
    make_repo(
        root,
        {
            "m": functools.partial(write_linear, seed=1),
            "b": functools.partial(write_linear, seed=2),
        },
        configs={"m": {"backup": "b"}},
    )
    rt = runtime(root)
    add_version(root, "b", 2, seed=3)
    write_linear(root / "b" / "2" / "model.onnx", n_out=5, seed=3)
    with pytest.raises(ConfigError, match="failover of 'm'"):
        rt.load_model("b")
    assert rt.model_versions("b") == ["1"]
    # ... and the model itself may not get a backup whose outputs differ.
    write_linear(root / "b" / "2" / "model.onnx", seed=3)
    rt.load_model("b")
    assert rt.model_versions("b") == ["2"]


def test_config_override_in_the_load_request(repo, runtime):
    rt = runtime(repo)
    assert rt.get_model("m").max_batch_size == 64
    rt.load_model("m", config=json.dumps({"max_batch_size": 8}))
    assert rt.get_model("m").max_batch_size == 8
    with pytest.raises(ConfigError, match="not JSON"):
        rt.load_model("m", config="{max_batch_size: 8")
    with pytest.raises(ConfigError, match="max_batch_size"):
        rt.load_model("m", config=json.dumps({"max_batch_size": -1}))
    assert rt.get_model("m").max_batch_size == 8


def test_unload_then_load_again(repo, runtime):
    rt = runtime(repo)
    rt.unload_model("m")
    with pytest.raises(UnavailableError, match="unloaded"):
        rt.infer("m", {"x": X})
    assert [(e.state, e.reason) for e in rt.model_index()] == [("UNAVAILABLE", "unloaded")]
    assert rt.ready()  # nothing is asked to serve
    rt.load_model("m")
    assert which(rt.infer("m", {"x": X})["y"], [1]) == 1
    with pytest.raises(NotFoundError):
        rt.unload_model("nope")


def test_explicit_mode_loads_only_what_is_named(tmp_path, runtime):
    root = tmp_path / "repo"
    make_repo(
        root,
        {
            "a": functools.partial(write_linear, seed=1),
            "b": functools.partial(write_linear, seed=2),
        },
    )
    rt = runtime(root, models=["a"])
    assert [(e.name, e.state, e.reason) for e in rt.model_index()] == [
        ("a", "READY", ""),
        ("b", "UNAVAILABLE", "not loaded"),
    ]
    assert rt.ready()
    rt.load_model("b")
    assert rt.infer("b", {"x": X}).model_name == "b"
    everything = runtime(root, models=["*"])
    assert everything.model_names() == ["a", "b"] and everything.ready()


@pytest.mark.parametrize("mode", ["none", "poll"])
def test_management_is_refused_unless_explicit(repo, runtime, mode):
    rt = runtime(repo, model_control=mode)
    for call in (rt.load_model, rt.unload_model):
        with pytest.raises(FailedPreconditionError, match=f"mode '{mode}'"):
            call("m")
    assert which(rt.infer("m", {"x": X})["y"], [1]) == 1


@pytest.mark.parametrize(
    "name", ["../m", "/etc", "m/../m", "a\0b", "", ".hidden", "m/1", "x" * 300]
)
def test_names_that_would_leave_the_repository_are_refused(repo, runtime, name):
    rt = runtime(repo)
    for call in (rt.load_model, rt.unload_model, rt.rollback):
        with pytest.raises(InvalidArgumentError):
            call(name)


def test_a_model_directory_linked_from_outside_is_not_loaded(tmp_path, repo, runtime):
    outside = tmp_path / "outside"
    make_repo(outside, {"secret": functools.partial(write_linear, seed=3)})
    os.symlink(outside / "secret", repo / "secret")
    rt = runtime(repo)
    with pytest.raises(NotFoundError):
        rt.load_model("secret")


def test_rollback_by_command(repo, runtime):
    rt = runtime(repo)
    with pytest.raises(FailedPreconditionError, match="no previous version"):
        rt.rollback("m")
    add_version(repo, "m", 2, seed=2)
    rt.load_model("m")
    assert which(rt.infer("m", {"x": X})["y"], [1, 2]) == 2
    assert rt.rollback("m") == {"model": "m", "versions": ["1"]}
    result = rt.infer("m", {"x": X})
    assert which(result["y"], [1, 2]) == 1 and result.model_version == "1"
    assert rt.lifecycle_report("m")["previous_versions"] == []
    with pytest.raises(FailedPreconditionError, match="no previous version"):
        rt.rollback("m")
    assert metric(rt, "steadyserve_model_rollbacks_total", model="m", trigger="command") == 1


def test_rollback_restores_the_stats_and_config_it_had(repo, runtime):
    """A rollback is to what served, not to what the files say now."""
    rt = runtime(repo)
    write_linear(repo / "m" / "1" / "model.onnx", seed=2)
    write_config(repo, "m", {"max_batch_size": 4})
    rt.load_model("m")
    assert rt.get_model("m").max_batch_size == 4
    rt.rollback("m")
    assert rt.get_model("m").max_batch_size == 64
    assert which(rt.infer("m", {"x": X})["y"], [1, 2]) == 1


def test_rollback_under_load_drops_nothing(repo, runtime):
    rt = runtime(repo)
    add_version(repo, "m", 2, seed=2)
    rt.load_model("m")
    with Load(rt, [1, 2]) as load:
        load.wait_answers(20)
        rt.rollback("m")
        returned = time.monotonic()
        load.wait_answers(20)
    assert not load.errors, load.errors[:3]
    assert all(s == 1 for sent, s, _ in load.answers if sent > returned)


def test_failures_in_probation_roll_back(repo, runtime):
    write_config(repo, "m", {"probation": {"window_s": 60, "max_failures": 2}})
    rt = runtime(repo, allow_fault_injection=True)
    add_version(repo, "m", 2, seed=2)
    rt.load_model("m")
    rt.inject_fault("m", "error", version="2")
    with pytest.raises(SteadyServeError):
        rt.infer("m", {"x": X}, timeout=T)
    assert rt.model_versions("m") == ["2"]  # one failure of the two allowed
    with pytest.raises(SteadyServeError):
        rt.infer("m", {"x": X}, timeout=T)
    wait_for(lambda: rt.model_versions("m") == ["1"], "the rollback to version 1")
    assert which(rt.infer("m", {"x": X})["y"], [1, 2]) == 1
    assert (
        metric(rt, "steadyserve_model_rollbacks_total", model="m", trigger="probation_failures")
        == 1
    )


def test_an_open_circuit_in_probation_rolls_back(tmp_path, runtime):
    root = tmp_path / "repo"
    circuit = {"consecutive_failures": 1, "min_requests": 1, "open_s": 60}
    make_repo(
        root,
        {
            "m": functools.partial(write_linear, seed=1),
            "b": functools.partial(write_linear, seed=9),
        },
        configs={
            "m": {
                "backup": "b",
                "failover": {"circuit": circuit},
                "probation": {"window_s": 60, "max_failures": 100},
            }
        },
    )
    rt = runtime(root, allow_fault_injection=True)
    add_version(root, "m", 2, seed=2)
    rt.load_model("m")
    rt.inject_fault("m", "error", version="2")
    assert rt.infer("m", {"x": X}, timeout=T).model_name == "b"  # the backup answered
    # Rolled back, and the circuit closed again once version 2 has drained.
    wait_for(
        lambda: (
            rt.model_versions("m") == ["1"]
            and rt.failover_report()["circuits"]["m"]["state"] == "closed"
        ),
        "the rollback to version 1",
    )
    result = rt.infer("m", {"x": X}, timeout=T)
    assert result.model_name == "m" and which(result["y"], [1]) == 1
    assert (
        metric(rt, "steadyserve_model_rollbacks_total", model="m", trigger="probation_circuit") == 1
    )


def test_failures_after_probation_do_not_roll_back(repo, runtime):
    write_config(repo, "m", {"probation": {"window_s": 0.05, "max_failures": 1}})
    rt = runtime(repo, allow_fault_injection=True)
    add_version(repo, "m", 2, seed=2)
    rt.load_model("m")
    time.sleep(0.1)  # the window is over
    rt.inject_fault("m", "error", version="2")
    with pytest.raises(SteadyServeError):
        rt.infer("m", {"x": X}, timeout=T)
    rt.clear_fault("m", version="2")
    assert which(rt.infer("m", {"x": X})["y"], [1, 2]) == 2
    assert rt.model_versions("m") == ["2"]


def test_poll_mode_follows_the_repository(repo, runtime):
    rt = runtime(repo, model_control="poll", poll_s=0.05)
    add_version(repo, "m", 2, seed=2)
    wait_for(lambda: rt.model_versions("m") == ["2"], "version 2 polled in")
    assert which(rt.infer("m", {"x": X})["y"], [1, 2]) == 2
    make_repo(repo, {"n": functools.partial(write_linear, seed=3)})
    wait_for(lambda: "n" in rt.model_versions("n") or rt.model_versions("n"), "model n")
    assert which(rt.infer("n", {"x": X})["y"], [3]) == 3
    # A rollback holds until the files change again.
    rt.rollback("m")
    time.sleep(0.3)
    assert rt.model_versions("m") == ["1"]
    import shutil

    shutil.rmtree(repo / "n")
    wait_for(lambda: not rt.model_versions("n"), "model n unloaded")
    with pytest.raises(UnavailableError, match="unloaded"):
        rt.infer("n", {"x": X})


# -- the evaluation gate -------------------------------------------------------------


def shuffled_copy(source, target, seed: int = 0) -> None:
    """The model at ``source`` with the rows of its weight matrix shuffled: the same
    signature, degraded answers."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    for i, init in enumerate(model.graph.initializer):
        if init.name == "W":
            w = numpy_helper.to_array(init).copy()
            np.random.default_rng(seed).shuffle(w)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(w, "W"))
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))


@pytest.fixture
def gated(tmp_path):
    """A classifier (3 class scores) whose holdout labels are its own argmax: version 1
    scores accuracy 1.0; the gate wants 0.9 and at most 0.02 worse than live."""
    root = tmp_path / "repo"
    make_repo(root, {"m": functools.partial(write_linear, seed=1)})
    rng = np.random.default_rng(7)
    x = rng.standard_normal((400, 4)).astype(np.float32)
    labels = np.argmax(expected(1, x), axis=1)
    np.savez(root / "m" / "holdout.npz", x=x, label=labels)
    write_config(
        root,
        "m",
        {
            "evaluation": {"data": "holdout.npz", "output": "y"},
            "gate": {"rules": [{"metric": "accuracy", "min": 0.9, "max_regression": 0.02}]},
        },
    )
    return root


def test_the_gate_keeps_a_degraded_model_out(gated, runtime):
    rt = runtime(gated)
    assert rt.lifecycle_report("m")["evaluation"]["metrics"]["accuracy"] == 1.0
    shuffled_copy(gated / "m" / "1" / "model.onnx", gated / "m" / "2" / "model.onnx")
    with pytest.raises(FailedPreconditionError, match="version 2 not promoted") as info:
        rt.load_model("m")
    assert "accuracy" in str(info.value) and "min 0.9" in str(info.value)
    assert rt.model_versions("m") == ["1"]
    assert which(rt.infer("m", {"x": X})["y"], [1]) == 1
    states = {e.version: (e.state, e.reason) for e in rt.model_index()}
    assert states["1"] == ("READY", "")
    assert states["2"][0] == "UNAVAILABLE" and "not promoted" in states["2"][1]
    assert metric(rt, "steadyserve_model_loads_total", model="m", outcome="rejected") == 1
    # A good candidate (the same weights as version 1) passes and serves.
    add_version(gated, "m", 3, seed=1)
    rt.load_model("m")
    assert rt.model_versions("m") == ["3"]
    assert rt.lifecycle_report("m")["evaluation"]["version"] == "3"


def test_the_gate_refuses_a_regression_against_the_live_version(gated, runtime):
    rule = {"metric": "accuracy", "max_regression": 0.02}
    config = yaml.safe_load((gated / "m" / "config.yaml").read_text())
    config["gate"]["rules"] = [rule]
    write_config(gated, "m", config)
    rt = runtime(gated)
    add_version(gated, "m", 2, seed=2)  # other weights: far below version 1's 1.0
    with pytest.raises(FailedPreconditionError, match="worse than the live version's 1.0000"):
        rt.load_model("m")
    assert rt.model_versions("m") == ["1"]
    # A new holdout set: the live version is scored again on it before the comparison.
    x = np.load(gated / "m" / "holdout.npz")["x"]
    np.savez(gated / "m" / "holdout.npz", x=x, label=np.argmax(expected(2, x), axis=1))
    rt.load_model("m")
    assert rt.model_versions("m") == ["2"]
    assert rt.lifecycle_report("m")["evaluation"]["metrics"]["accuracy"] == 1.0


# -- shadow traffic through the config ---------------------------------------------


def test_a_shadow_version_from_config_mirrors_and_reports(repo, runtime):
    add_version(repo, "m", 2, seed=1)  # the same weights: agrees on every row
    add_version(repo, "m", 3, seed=2)  # other weights
    write_config(repo, "m", {"versions": [1], "shadow": {"version": 2, "fraction": 1.0}})
    rt = runtime(repo)
    for _ in range(5):
        assert which(rt.infer("m", {"x": X})["y"], [1]) == 1
    wait_for(lambda: rt.shadow_report("m")["rows"]["compared"] == 10, "5 batches compared")
    report = rt.shadow_report("m")
    assert (report["live_version"], report["shadow_version"], report["agreement"]) == (
        "1",
        "2",
        1.0,
    )
    # A reload with another shadow version replaces the mirror; none stops it.
    write_config(repo, "m", {"versions": [1], "shadow": {"version": 3, "fraction": 1.0}})
    rt.load_model("m")
    assert rt.shadow_report("m")["shadow_version"] == "3"
    write_config(repo, "m", {"versions": [1]})
    rt.load_model("m")
    with pytest.raises(NotFoundError, match="no shadow version"):
        rt.shadow_report("m")
    assert not [t for t in threading.enumerate() if t.name.startswith("steadyserve-shadow")]


def test_a_shadow_version_that_cannot_mirror_fails_the_load(repo, runtime):
    rt = runtime(repo)
    target = repo / "m" / "2" / "model.onnx"
    target.parent.mkdir()
    write_linear(target, n_in=5, seed=2)
    write_config(repo, "m", {"versions": [1], "shadow": {"version": 2}})
    with pytest.raises(ConfigError, match="shadow"):
        rt.load_model("m")
    write_config(repo, "m", {"versions": [1], "shadow": {"version": 9}})
    with pytest.raises(ConfigError, match="no such version"):
        rt.load_model("m")
    assert which(rt.infer("m", {"x": X})["y"], [1]) == 1


def test_a_refitted_stats_file_is_reloaded(repo, runtime):
    """A contract that scales its input with the stats file: refitting it changes the
    answers after a reload, on the same model file and version."""
    from steadyserve.features.fit import fit_model

    write_config(repo, "m", {"inputs": [{"name": "x", "contract": {"scaling": "standard"}}]})
    rng = np.random.default_rng(3)
    fit_model(repo / "m", {"x": rng.standard_normal((500, 4)).astype(np.float32)})
    rt = runtime(repo)
    before = rt.infer("m", {"x": X})["y"]
    fit_model(repo / "m", {"x": 5 + 3 * rng.standard_normal((500, 4)).astype(np.float32)})
    rt.load_model("m")
    after = rt.infer("m", {"x": X})
    assert after.model_version == "1"
    assert not np.allclose(before, after["y"])
    rt.rollback("m")  # back to the scaling it had
    np.testing.assert_allclose(rt.infer("m", {"x": X})["y"], before, rtol=1e-6)
