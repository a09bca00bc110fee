"""Alerts: the rules on a real Runtime with a clock the tests advance, the receivers'
queues and back-off, and end to end: a real `steadyserve serve` sending to a real
Alertmanager (Debian's prometheus-alertmanager), to a webhook, and to receivers that are
down, while it keeps serving.

The in-process tests call ``AlertEvaluator.evaluate()`` themselves (no thread): each
evaluation reads the core's counters, and rates come from the deltas between them, so a
test sends its requests between two evaluations and moves the clock.
"""

from __future__ import annotations

import functools
import http.server
import json
import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import onnx_models
import steadyserve
from conftest import N_FEATURES, N_OUTPUTS, am_alerts, only_frontend, wait_for
from steadyserve.config import AlertsConfig, model_config_from_mapping
from steadyserve.errors import ConfigError, InvalidArgumentError, UnavailableError
from steadyserve.features.stats import fit_stats, write_stats
from steadyserve.monitoring.alerts import ALERTNAMES, AlertEvaluator
from steadyserve.monitoring.notify import AlertmanagerSender, WebhookSender, rfc3339

X = np.arange(8, dtype=np.float32).reshape(2, 4) / 8.0
T = 10.0  # seconds: a timeout no call should come near
WAIT_S = 30.0  # the bound of every wait for something asynchronous
EPOCH = 1_700_000_000.0  # the fake wall clock starts here
NO_TRIP = {"consecutive_failures": 10_000, "min_requests": 10_000}  # circuit stays closed
RATE = {"window_s": 60.0, "min_requests": 5}  # small windows for the rate rules


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return EPOCH + self.now


def linear(seed: int, n_in: int = 4, n_out: int = 3):
    return functools.partial(onnx_models.write_linear, n_in=n_in, n_out=n_out, seed=seed)


@pytest.fixture
def setup(tmp_path):
    """``setup(configs, models=None, **evaluator_kwargs)`` -> (runtime, evaluator, clock):
    a Runtime over the models (default: each named in ``configs``, a linear 4 -> 3, and
    ``lite``), its circuits and the evaluator on one fake clock; closed at the end."""
    opened = []

    def _setup(configs, models=None, prepare=None, interval_s=1.0, **kwargs):
        root = tmp_path / f"repo{len(opened)}"
        if models is None:
            models = {name: linear(1) for name in configs} | {"lite": linear(2)}
        onnx_models.make_repo(root, models, configs=configs)
        if prepare is not None:
            prepare(root)
        clock = FakeClock()
        rt = steadyserve.Runtime(root, allow_fault_injection=True, warmup=False, clock=clock)
        opened.append(rt)
        ev = AlertEvaluator(rt, interval_s=interval_s, clock=clock, wall=clock.wall, **kwargs)
        return rt, ev, clock

    yield _setup
    for rt in opened:
        rt.close()


def alerts_of(ev, model: str) -> dict[str, dict]:
    """The evaluator's alerts of ``model``, by alert name (as GET /v2/alerts lists them)."""
    return {a["alertname"]: a for a in ev.report()["alerts"] if a["model"] == model}


def call(rt, model: str, n: int, x=X) -> list[str]:
    """``n`` requests; the names of the models that answered (or the error class)."""
    out = []
    for _ in range(n):
        try:
            out.append(rt.infer(model, {"x": x}, timeout=T).model_name)
        except (InvalidArgumentError, UnavailableError) as exc:
            out.append(type(exc).__name__)
    return out


# -- config -----------------------------------------------------------------------------


def test_every_rule_has_defaults_and_a_model_overrides_them_rule_by_rule():
    d = AlertsConfig()
    assert (d.slo_attainment.threshold, d.slo_attainment.window_s) == (0.99, 300.0)
    assert (d.error_rate.threshold, d.error_rate.min_requests) == (0.05, 20)
    assert d.error_rate.severity == "critical" and d.circuit_open.severity == "critical"
    assert (d.failover_active.threshold, d.failover_active.window_s) == (0, 60.0)
    assert d.input_rejection_rate.threshold == 0.05 and d.model_not_ready.for_s == 0
    config = model_config_from_mapping(
        {"alerts": {"error_rate": {"threshold": 0.2, "for_s": 30}, "drift": None}}
    )
    assert config.alerts.error_rate.threshold == 0.2 and config.alerts.error_rate.for_s == 30
    assert config.alerts.error_rate.window_s == 300.0 and config.alerts.drift.enabled
    assert set(ALERTNAMES.values()) >= {"SteadyServeCircuitOpen", "SteadyServeErrorRate"}


@pytest.mark.parametrize(
    ("alerts", "message"),
    [
        ({"error_rate": {"threshold": 2}}, r"alerts\.error_rate\.threshold: 2: input should be"),
        ({"eror_rate": {}}, r"alerts\.eror_rate: unknown key; did you mean 'error_rate'\?"),
        ({"circuit_open": {"window_s": 5}}, r"alerts\.circuit_open\.window_s: unknown key"),
        ({"drift": {"severity": "page"}}, r"'page': input should be 'warning' or 'critical'"),
        ({"error_rate": {"window_s": 0}}, r"window_s: 0: input should be greater than 0"),
        ({"slo_attainment": {"min_requests": "5"}}, r"min_requests: '5': input should be"),
    ],
)
def test_a_bad_alerts_section_is_refused_with_the_key_and_the_rule(alerts, message):
    with pytest.raises(ConfigError, match=message):
        model_config_from_mapping({"alerts": alerts})


# -- the rules, one evaluation at a time -------------------------------------------------


def test_error_rate_and_failover_fire_then_resolve(setup, caplog):
    caplog.set_level(logging.INFO, logger="steadyserve.alerts")
    config = {"backup": "lite", "failover": {"circuit": NO_TRIP}}
    config["alerts"] = {"error_rate": RATE, "failover_active": {"window_s": 60.0}}
    rt, ev, clock = setup({"main": config})
    ev.evaluate()  # the baseline: rates are deltas from here
    rt.inject_fault("main", "error")
    assert call(rt, "main", 10) == ["lite"] * 10  # the clients see no error
    clock.now += 5
    ev.evaluate()
    alerts = alerts_of(ev, "main")
    err = alerts["SteadyServeErrorRate"]
    assert err["state"] == "firing" and err["value"] == 1.0 and err["threshold"] == 0.05
    assert err["severity"] == "critical" and err["labels"]["version"] == "1"
    assert "100% of 10 requests failed over the last 5 s (of a 60 s window)" in err["description"]
    assert "threshold: above 5%" in err["description"]
    failover = alerts["SteadyServeFailoverActive"]
    assert failover["state"] == "firing" and failover["value"] == 10
    assert (
        "answered by another model" in failover["description"]
        and "lite (10)" in (failover["description"])
    )
    assert err["fired_at"] == rfc3339(clock.wall())

    rt.clear_fault("main")
    assert call(rt, "main", 10) == ["main"] * 10
    clock.now += 61  # the failures leave the window
    ev.evaluate()
    assert alerts_of(ev, "main") == {}
    fired = [r for r in caplog.records if r.getMessage() == "alert fired"]
    resolved = [r for r in caplog.records if r.getMessage() == "alert resolved"]
    assert {(r.alertname, r.model) for r in fired} == {
        ("SteadyServeErrorRate", "main"),
        ("SteadyServeFailoverActive", "main"),
    }
    assert {r.alertname for r in resolved} == {"SteadyServeErrorRate", "SteadyServeFailoverActive"}
    by_name = {r.alertname: r for r in resolved}
    assert by_name["SteadyServeErrorRate"].value == 0.0  # 0 of 10 failed in the window
    assert by_name["SteadyServeErrorRate"].threshold == 0.05
    assert fired[0].levelname == "WARNING" and resolved[0].levelname == "INFO"


def test_rate_rules_need_a_baseline_and_min_requests(setup):
    config = {"backup": "lite", "failover": {"circuit": NO_TRIP}, "alerts": {"error_rate": RATE}}
    rt, ev, clock = setup({"main": config})
    rt.inject_fault("main", "error")
    call(rt, "main", 10)
    ev.evaluate()  # lifetime counts are not a window: nothing to compare with yet
    assert "SteadyServeErrorRate" not in alerts_of(ev, "main")
    call(rt, "main", 4)  # fewer than min_requests (5)
    clock.now += 1
    ev.evaluate()
    assert "SteadyServeErrorRate" not in alerts_of(ev, "main")
    call(rt, "main", 1)
    clock.now += 1
    ev.evaluate()  # the window reaches back to the first evaluation: 5 failures of 5
    assert alerts_of(ev, "main")["SteadyServeErrorRate"]["state"] == "firing"


def test_for_s_keeps_an_alert_pending_until_the_condition_held_that_long(setup):
    config = {"backup": "lite", "failover": {"circuit": NO_TRIP}}
    config["alerts"] = {"error_rate": {**RATE, "for_s": 10.0}, "failover_active": {"for_s": 5}}
    rt, ev, clock = setup({"main": config})
    ev.evaluate()
    rt.inject_fault("main", "error")
    for step in range(3):
        call(rt, "main", 5)
        clock.now += 4
        ev.evaluate()
        alerts = alerts_of(ev, "main")
        err, failover = alerts["SteadyServeErrorRate"], alerts["SteadyServeFailoverActive"]
        # true since the evaluation at +4: pending for 0, 4, 8 s
        assert err["state"] == "pending" and err["fired_at"] is None, step
        assert failover["state"] == ("pending" if step < 2 else "firing"), step
        assert err["active_since"] == rfc3339(EPOCH + 1004)
    report = ev.report()
    assert report["pending"] == 1 and report["firing"] == 1
    assert [a["state"] for a in report["alerts"]] == ["firing", "pending"]  # firing first
    call(rt, "main", 5)
    clock.now += 4
    ev.evaluate()  # held 12 s >= for_s 10
    assert alerts_of(ev, "main")["SteadyServeErrorRate"]["state"] == "firing"


def test_a_pending_alert_whose_condition_clears_never_fires(setup, caplog):
    caplog.set_level(logging.INFO, logger="steadyserve.alerts")
    config = {"backup": "lite", "failover": {"circuit": NO_TRIP}}
    config["alerts"] = {"error_rate": {**RATE, "for_s": 30.0}, "failover_active": {"for_s": 30}}
    rt, ev, clock = setup({"main": config})
    ev.evaluate()
    rt.inject_fault("main", "error")
    call(rt, "main", 5)
    clock.now += 1
    ev.evaluate()
    assert alerts_of(ev, "main")["SteadyServeErrorRate"]["state"] == "pending"
    rt.clear_fault("main")
    call(rt, "main", 5)
    clock.now += 120
    ev.evaluate()
    assert alerts_of(ev, "main") == {}
    assert not [r for r in caplog.records if r.getMessage() in ("alert fired", "alert resolved")]


def test_circuit_open_fires_and_stays_until_the_circuit_closes(setup):
    circuit = {"consecutive_failures": 3, "min_requests": 1000, "open_s": 5, "half_open_probes": 1}
    rt, ev, clock = setup({"main": {"backup": "lite", "failover": {"circuit": circuit}}})
    ev.evaluate()
    assert "SteadyServeCircuitOpen" not in alerts_of(ev, "main")
    rt.inject_fault("main", "error")
    call(rt, "main", 4)
    assert rt.failover_report()["circuits"]["main"]["state"] == "open"
    clock.now += 1
    ev.evaluate()
    alert = alerts_of(ev, "main")["SteadyServeCircuitOpen"]
    assert alert["state"] == "firing" and alert["severity"] == "critical"
    assert "circuit breaker open" in alert["description"]
    assert "3 failures in a row" in alert["description"]

    rt.clear_fault("main")
    clock.now += 5.05  # the cool-down passes
    rt.router.tick()
    assert rt.failover_report()["circuits"]["main"]["state"] == "half_open"
    ev.evaluate()  # half-open: still probing, the alert stays
    assert alerts_of(ev, "main")["SteadyServeCircuitOpen"]["state"] == "firing"
    assert call(rt, "main", 1) == ["main"]  # the probe succeeds: closed
    assert rt.failover_report()["circuits"]["main"]["state"] == "closed"
    ev.evaluate()
    assert "SteadyServeCircuitOpen" not in alerts_of(ev, "main")


def test_slo_attainment_only_for_models_with_an_slo(setup):
    slo = {"latency_ms": 0.001, "default_deadline_ms": 10_000, "admission_control": False}
    configs = {
        "fast": {"slo": slo, "alerts": {"slo_attainment": RATE}},  # 1 µs: every answer is late
        "plain": {"alerts": {"slo_attainment": RATE}},
    }
    rt, ev, clock = setup(configs)
    ev.evaluate()
    assert call(rt, "fast", 10) == ["fast"] * 10
    call(rt, "plain", 10)
    clock.now += 10
    ev.evaluate()
    alert = alerts_of(ev, "fast")["SteadyServeSloAttainment"]
    assert alert["value"] == 0.0 and alert["threshold"] == 0.99 and alert["state"] == "firing"
    assert "0% of 10 requests answered met the 0.001 ms SLO" in alert["description"]
    assert "threshold: below 99%" in alert["description"]
    assert alerts_of(ev, "plain") == {}


def test_input_rejection_rate_counts_refused_invalid_inputs(setup):
    contract = {"missing": "reject"}
    config = {"inputs": [{"name": "x", "contract": contract}]}
    config["alerts"] = {"input_rejection_rate": {**RATE, "threshold": 0.4}}
    rt, ev, clock = setup({"strict": config})
    bad = X.copy()
    bad[1, 2] = np.nan
    ev.evaluate()
    assert call(rt, "strict", 6, bad) == ["InvalidArgumentError"] * 6
    call(rt, "strict", 4)
    clock.now += 10
    ev.evaluate()
    alert = alerts_of(ev, "strict")["SteadyServeInputRejectionRate"]
    assert alert["value"] == 0.6 and alert["threshold"] == 0.4
    assert "60% of 10 requests were refused as invalid input" in alert["description"]
    assert "SteadyServeErrorRate" not in alerts_of(ev, "strict")  # a refusal is no failure
    call(rt, "strict", 20)
    clock.now += 61
    ev.evaluate()
    assert alerts_of(ev, "strict") == {}


def test_drift_fires_and_logs_each_feature_flagged_and_cleared(setup, caplog):
    caplog.set_level(logging.INFO, logger="steadyserve.alerts")
    names = [f"x{i}" for i in range(4)]
    config = {
        "max_batch_size": 64,
        "inputs": [{"name": "x", "contract": {"feature_names": names}}],
        "drift": {"window_rows": 400, "sub_windows": 4, "min_rows": 100},
    }
    ref = np.random.default_rng(10).standard_normal((3000, 4)).astype(np.float32)

    def stats(root):
        write_stats(root / "lin" / "1" / "stats.json", fit_stats({"x": ref}))

    rt, ev, clock = setup({"lin": config}, models={"lin": linear(3)}, prepare=stats)
    rng = np.random.default_rng(11)
    shifted = rng.standard_normal((400, 4)).astype(np.float32)
    shifted[:, 2] += 2.0
    for start in range(0, 400, 50):
        rt.infer("lin", {"x": shifted[start : start + 50]})
    ev.evaluate()
    alert = alerts_of(ev, "lin")["SteadyServeDrift"]
    assert alert["state"] == "firing" and alert["threshold"] == 0.2 and alert["value"] > 0.5
    assert "input x: x2 (" in alert["description"]
    flagged = [r for r in caplog.records if r.getMessage() == "drift flagged"]
    assert [(r.model, r.input, r.feature) for r in flagged] == [("lin", "x", "x2")]
    assert flagged[0].psi > 0.5 and flagged[0].psi_threshold == 0.2
    ev.evaluate()  # still flagged: no second line
    assert len([r for r in caplog.records if r.getMessage() == "drift flagged"]) == 1

    normal = rng.standard_normal((800, 4)).astype(np.float32)  # two windows of normal rows
    for start in range(0, 800, 50):
        rt.infer("lin", {"x": normal[start : start + 50]})
    clock.now += 1
    ev.evaluate()
    assert "SteadyServeDrift" not in alerts_of(ev, "lin")
    cleared = [r for r in caplog.records if r.getMessage() == "drift cleared"]
    assert [(r.model, r.input, r.feature) for r in cleared] == [("lin", "x", "x2")]


def test_model_not_ready_with_for_s_from_the_broken_models_own_config(setup):
    def broken(path):
        Path(path).write_bytes(b"not an onnx file")

    configs = {"broken": {"alerts": {"model_not_ready": {"for_s": 30}}}, "ok": {}}
    rt, ev, clock = setup(configs, models={"broken": broken, "ok": linear(1)})
    assert "broken" in rt.not_ready()
    ev.evaluate()
    alert = alerts_of(ev, "broken")["SteadyServeModelNotReady"]
    assert alert["state"] == "pending" and alert["for_s"] == 30
    assert alert["description"].startswith("model 'broken' is not ready: ")
    assert "version" not in alert["labels"]
    clock.now += 31
    ev.evaluate()
    assert alerts_of(ev, "broken")["SteadyServeModelNotReady"]["state"] == "firing"
    assert alerts_of(ev, "ok") == {}


def test_a_disabled_rule_never_fires(setup):
    config = {"backup": "lite", "failover": {"circuit": NO_TRIP}}
    config["alerts"] = {
        "error_rate": {**RATE, "enabled": False},
        "failover_active": {"enabled": False},
    }
    rt, ev, clock = setup({"main": config})
    ev.evaluate()
    rt.inject_fault("main", "error")
    call(rt, "main", 10)
    clock.now += 5
    ev.evaluate()
    assert alerts_of(ev, "main") == {}


def test_the_window_slides_over_the_kept_samples(setup):
    config = {"backup": "lite", "failover": {"circuit": NO_TRIP}}
    config["alerts"] = {"error_rate": {"window_s": 10.0, "min_requests": 5, "threshold": 0.1}}
    rt, ev, clock = setup({"main": config})
    ev.evaluate()
    rt.inject_fault("main", "error")
    call(rt, "main", 5)  # 5 failures between t=0 and t=2
    clock.now += 2
    ev.evaluate()
    rt.clear_fault("main")
    values = []
    for _ in range(5):  # then 6 good requests every 2 s
        values.append(alerts_of(ev, "main").get("SteadyServeErrorRate", {}).get("value"))
        call(rt, "main", 6)
        clock.now += 2
        ev.evaluate()
    # the window (10 s) reaches back to t=0 until t=12, when it starts at the t=2 sample
    assert values == [1.0, round(5 / 11, 6), round(5 / 17, 6), round(5 / 23, 6), round(5 / 29, 6)]
    assert "SteadyServeErrorRate" not in alerts_of(ev, "main")
    report = ev.report()
    assert report["evaluations"] == 7 and report["evaluation_failures"] == 0


# -- notifications, in process -----------------------------------------------------------


def test_alertmanager_gets_every_firing_alert_each_evaluation_the_webhook_only_changes(setup):
    am_posts, hook_posts = [], []
    am = AlertmanagerSender("http://am.example:9093", post=lambda b: am_posts.append(json.loads(b)))
    hook = WebhookSender("http://hook.example/x", post=lambda b: hook_posts.append(json.loads(b)))
    config = {"backup": "lite", "failover": {"circuit": NO_TRIP}, "alerts": {"error_rate": RATE}}
    config["alerts"]["failover_active"] = {"enabled": False}
    rt, ev, clock = setup(
        {"main": config}, alertmanager=am, webhook=hook, generator_url="http://h:1/v2/alerts"
    )
    am.start()
    hook.start()
    try:
        ev.evaluate()
        rt.inject_fault("main", "error")
        call(rt, "main", 10)
        for k in range(3):
            clock.now += 1
            ev.evaluate()
            wait_for(lambda k=k: len(am_posts) == k + 1, f"POST {k + 1} to Alertmanager")
        wait_for(lambda: hook_posts, "the webhook's POST")
        fired_at = EPOCH + 1001
        (alert,) = am_posts[0]
        assert alert["labels"] == {
            "alertname": "SteadyServeErrorRate",
            "model": "main",
            "version": "1",
            "severity": "critical",
            "service": "steadyserve",
        }
        assert alert["annotations"]["summary"] == "SteadyServeErrorRate: model 'main'"
        assert "100% of 10 requests failed" in alert["annotations"]["description"]
        assert alert["startsAt"] == rfc3339(fired_at) and alert["generatorURL"].endswith(
            "/v2/alerts"
        )
        # while firing, endsAt runs ahead of each evaluation by the resolve timeout
        ends = [p[0]["endsAt"] for p in am_posts]
        assert ends == [rfc3339(fired_at + k + ev.resolve_timeout_s) for k in range(3)]
        assert all(p[0]["startsAt"] == rfc3339(fired_at) for p in am_posts)

        rt.clear_fault("main")
        call(rt, "main", 10)
        clock.now += 120
        ev.evaluate()
        wait_for(lambda: len(am_posts) == 4, "the resolved alert to Alertmanager")
        (resolved,) = am_posts[3]
        assert resolved["endsAt"] == rfc3339(clock.wall())  # resolved: ends now
        assert resolved["labels"] == alert["labels"]
        ev.evaluate()  # nothing fires: nothing more to send
        wait_for(lambda: len(hook_posts) == 2, "the webhook's resolved POST")
        assert [p["status"] for p in hook_posts] == ["firing", "resolved"]
        assert hook_posts[0]["alerts"][0]["labels"] == alert["labels"]
        assert hook_posts[1]["alerts"][0]["endsAt"] == rfc3339(clock.wall())
        time.sleep(0.1)
        assert len(am_posts) == 4 and len(hook_posts) == 2
        assert am.stats()["sent"] == 4 and hook.stats()["sent"] == 2
    finally:
        am.stop()
        hook.stop()


def failing(body: bytes) -> None:
    raise ConnectionRefusedError("nobody listens")


def test_webhook_retries_with_back_off_then_drops_and_a_full_queue_drops_the_oldest():
    hook = WebhookSender(
        "http://127.0.0.1:9/x", post=failing, backoff_s=(0.01, 0.02), capacity=2, max_attempts=3
    )
    one = {"labels": {"alertname": "A"}}
    for _ in range(4):
        hook.submit("firing", [one, one])  # queued before the thread runs: 2 messages fit
    assert hook.stats()["dropped"] == 4 and hook.stats()["waiting"] == 2
    hook.start()
    try:
        wait_for(lambda: hook.stats()["waiting"] == 0, "the retries to run out")
        stats = hook.stats()
        assert stats["failed"] == 2 * 3 * 2  # 2 messages x 3 attempts x 2 alerts
        assert stats["dropped"] == 4 + 4 and stats["sent"] == 0
        assert stats["last_error"] == "ConnectionRefusedError: nobody listens"
    finally:
        hook.stop()


def test_alertmanager_keeps_the_latest_copy_of_each_alert_and_is_bounded():
    am = AlertmanagerSender("http://127.0.0.1:9", post=failing, capacity=2)
    for name in ("A", "B", "A", "C"):
        am.submit([{"labels": {"alertname": name}, "endsAt": name}])
    stats = am.stats()
    assert stats["waiting"] == 2 and stats["dropped"] == 1  # A was replaced, then dropped for C


def test_receivers_log_failures_at_most_once_a_minute(caplog):
    caplog.set_level(logging.INFO, logger="steadyserve.alerts")
    am = AlertmanagerSender("http://127.0.0.1:9", post=failing, backoff_s=(0.001, 0.001))
    am.start()
    try:
        for _ in range(5):
            am.submit([{"labels": {"alertname": "A"}}])
        wait_for(lambda: am.stats()["failed"] >= 5, "five failed POSTs")
    finally:
        am.stop()
    lines = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(lines) == 1 and lines[0].receiver == "alertmanager"
    assert lines[0].url == "http://127.0.0.1:9/api/v2/alerts"


FIRING = "steadyserve_alerts_firing"
ERROR_RATE_MAIN = {"alertname": "SteadyServeErrorRate", "model": "main"}


def test_metrics_families(setup):
    am = AlertmanagerSender("http://127.0.0.1:9", post=lambda b: None)
    config = {"backup": "lite", "failover": {"circuit": NO_TRIP}, "alerts": {"error_rate": RATE}}
    rt, ev, clock = setup({"main": config}, alertmanager=am, interval_s=3600.0)
    ev.start()  # registers the collector; its thread evaluates once, then waits an hour
    try:
        rt.inject_fault("main", "error")
        ev.evaluate()
        call(rt, "main", 10)
        clock.now += 1
        ev.evaluate()
        wait_for(lambda: am.stats()["sent"] >= 1, "a POST")
        get = rt.metrics.registry.get_sample_value
        assert get(FIRING, ERROR_RATE_MAIN) == 1
        assert (
            get(
                "steadyserve_alert_notifications_total",
                {"receiver": "alertmanager", "outcome": "sent"},
            )
            >= 1
        )
        assert get("steadyserve_alert_evaluations_total", {"outcome": "ok"}) >= 2
        rt.clear_fault("main")
        call(rt, "main", 10)
        clock.now += 120
        ev.evaluate()
        assert get(FIRING, ERROR_RATE_MAIN) == 0  # resolved: 0, not gone
    finally:
        ev.stop()
    assert rt.metrics.registry.get_sample_value(FIRING, ERROR_RATE_MAIN) is None  # stopped


# -- end to end: real servers and real receivers ------------------------------------------

CIRCUIT = {"consecutive_failures": 2, "min_requests": 1000, "open_s": 1.0, "half_open_probes": 1}
E2E_ALERTS = {
    "error_rate": {"window_s": 2.0, "min_requests": 3},
    "failover_active": {"window_s": 2.0},
    "input_rejection_rate": {"for_s": 3600.0, "threshold": 0.0, "min_requests": 1},
}


@pytest.fixture(scope="module")
def alert_repo(tmp_path_factory) -> Path:
    """``prim`` (x FP32 [-1, 32] -> y FP32 [-1, 4]) with ``lite`` as its backup, a circuit
    that opens after 2 failures and cools down for 1 s, and 2 s alert windows."""
    root = tmp_path_factory.mktemp("alerts_repo")
    model = functools.partial(onnx_models.write_linear, n_in=N_FEATURES, n_out=N_OUTPUTS)
    onnx_models.make_repo(
        root,
        {"prim": model, "lite": model},
        configs={
            "prim": {
                "backup": "lite",
                "inputs": [{"name": "x", "contract": {"missing": "reject"}}],
                "failover": {"circuit": CIRCUIT},
                "alerts": E2E_ALERTS,
            },
        },
    )
    return root


def http_json(url: str, body=None, timeout: float = 10.0):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def fault(server, model: str, kind: str) -> None:
    http_json(f"{server.http}/v2/models/{model}/fault", {"kind": kind})


class Traffic:
    """Requests to ``model`` on a thread until stopped; counts answers and errors."""

    def __init__(self, grpc_url: str, model: str = "prim"):
        import tritonclient.grpc as grpcclient

        self._client = grpcclient.InferenceServerClient(grpc_url)
        x = np.linspace(-1, 1, 2 * N_FEATURES, dtype=np.float32).reshape(2, N_FEATURES)
        self._inputs = [grpcclient.InferInput("x", list(x.shape), "FP32")]
        self._inputs[0].set_data_from_numpy(x)
        self.model = model
        self.answered_by: dict[str, int] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                result = self._client.infer(self.model, self._inputs, client_timeout=T)
                name = result.get_response().model_name
                self.answered_by[name] = self.answered_by.get(name, 0) + 1
            except Exception as exc:  # counted, and the test fails on it
                self.errors.append(str(exc))
            self._stop.wait(0.01)

    def total(self) -> int:
        return sum(self.answered_by.values())

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT_S)
        self._client.close()


def server_alerts(server) -> dict[str, dict]:
    return {
        (a["alertname"], a["model"]): a for a in http_json(f"{server.http}/v2/alerts")["alerts"]
    }


def metric_samples(server) -> dict[tuple, float]:
    with urllib.request.urlopen(f"{server.http}/metrics", timeout=10) as response:
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def notifications(server, receiver: str, outcome: str) -> float:
    key = (
        "steadyserve_alert_notifications_total",
        (("outcome", outcome), ("receiver", receiver)),
    )
    return metric_samples(server).get(key, 0.0)


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


@only_frontend("native")
def test_a_real_alertmanager_gets_the_circuit_alert_and_its_resolution(
    alertmanager, alert_repo, launch
):
    server = launch(
        alert_repo,
        "--allow-fault-injection",
        "--alertmanager-url",
        alertmanager,
        "--alert-interval-s",
        "0.5",
    )
    with Traffic(server.grpc) as traffic:
        wait_for(lambda: traffic.total() >= 5, "the first answers")
        fault(server, "prim", "error")
        active = wait_for(
            lambda: am_alerts(alertmanager, "SteadyServeCircuitOpen", "prim"),
            "Alertmanager to show SteadyServeCircuitOpen for prim",
        )
        (alert,) = active
        assert alert["labels"] == {
            "alertname": "SteadyServeCircuitOpen",
            "model": "prim",
            "version": "1",
            "severity": "critical",
            "service": "steadyserve",
        }
        assert alert["status"]["state"] == "active"
        assert "circuit breaker open" in alert["annotations"]["description"]
        http_port = server.http.rsplit(":", 1)[1]
        assert alert["generatorURL"].endswith(f":{http_port}/v2/alerts")
        for name in ("SteadyServeErrorRate", "SteadyServeFailoverActive"):
            wait_for(lambda n=name: am_alerts(alertmanager, n, "prim"), f"{name} in Alertmanager")

        fault(server, "prim", "clear")
        wait_for(
            lambda: not am_alerts(alertmanager, "SteadyServeCircuitOpen", "prim"),
            "the circuit alert to resolve in Alertmanager",
        )
        for name in ("SteadyServeErrorRate", "SteadyServeFailoverActive"):
            wait_for(lambda n=name: not am_alerts(alertmanager, n, "prim"), f"{name} to resolve")
        wait_for(lambda: traffic.answered_by.get("prim", 0) > 0, "prim to answer again")
    assert traffic.errors == [] and traffic.answered_by.get("lite", 0) > 0
    assert ("SteadyServeCircuitOpen", "prim") not in server_alerts(server)
    assert notifications(server, "alertmanager", "sent") > 0
    assert notifications(server, "alertmanager", "failed") == 0
    assert server.stop() == 0
    events = json_lines(server.stderr())
    fired = [e for e in events if e.get("msg") == "alert fired"]
    resolved = [e for e in events if e.get("msg") == "alert resolved"]
    assert {"SteadyServeCircuitOpen", "SteadyServeErrorRate"} <= {e["alertname"] for e in fired}
    assert {"SteadyServeCircuitOpen", "SteadyServeErrorRate"} <= {e["alertname"] for e in resolved}
    rate = next(e for e in fired if e["alertname"] == "SteadyServeErrorRate")
    assert rate["model"] == "prim" and rate["threshold"] == 0.05 and rate["value"] > 0.05


class Webhook:
    """A JSON webhook receiver on 127.0.0.1: every POST body, in order."""

    def __init__(self):
        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Webhook:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def statuses(self, alertname: str) -> list[str]:
        return [
            post["status"]
            for post in list(self.received)
            for a in post["alerts"]
            if a["labels"]["alertname"] == alertname
        ]


@only_frontend("native")
def test_webhook_gets_firing_then_resolved_and_v2_alerts_lists_firing_and_pending(
    alert_repo, launch
):
    with Webhook() as hook:
        server = launch(
            alert_repo,
            "--allow-fault-injection",
            "--alert-webhook",
            hook.url,
            "--alert-interval-s",
            "0.5",
        )
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(server.grpc)
        wait_for(
            lambda: http_json(f"{server.http}/v2/alerts")["evaluations"] >= 1,
            "the first evaluation (the windows' baseline)",
        )
        bad = np.zeros((1, N_FEATURES), np.float32)
        bad[0, 3] = np.nan
        nan_input = grpcclient.InferInput("x", [1, N_FEATURES], "FP32")
        nan_input.set_data_from_numpy(bad)
        with pytest.raises(InferenceServerException, match="not allowed"):
            client.infer("prim", [nan_input], client_timeout=T)  # a pending rejection alert
        client.close()
        with Traffic(server.grpc) as traffic:
            wait_for(lambda: traffic.total() >= 5, "the first answers")
            fault(server, "prim", "error")
            wait_for(
                lambda: "firing" in hook.statuses("SteadyServeCircuitOpen"),
                "the webhook's firing POST",
            )
            alerts = wait_for(
                lambda: (a := server_alerts(server)).get(("SteadyServeErrorRate", "prim")) and a,
                "/v2/alerts to list the error rate alert",
            )
            circuit = alerts[("SteadyServeCircuitOpen", "prim")]
            assert circuit["state"] == "firing" and circuit["severity"] == "critical"
            assert circuit["labels"]["service"] == "steadyserve" and circuit["version"] == "1"
            assert circuit["fired_at"] and circuit["active_since"].endswith("Z")
            rate = alerts[("SteadyServeErrorRate", "prim")]
            assert rate["state"] == "firing" and rate["threshold"] == 0.05
            assert rate["window_s"] == 2.0 and 0.05 < rate["value"] <= 1
            assert "requests failed over the last" in rate["description"]
            pending = alerts[("SteadyServeInputRejectionRate", "prim")]
            assert pending["state"] == "pending" and pending["for_s"] == 3600.0
            assert pending["fired_at"] is None and pending["value"] > 0
            report = http_json(f"{server.http}/v2/alerts")
            assert report["interval_s"] == 0.5 and report["evaluations"] >= 1
            assert report["pending"] >= 1 and report["firing"] >= 2
            assert report["receivers"][0]["receiver"] == "webhook"
            assert report["receivers"][0]["url"] == hook.url

            fault(server, "prim", "clear")
            wait_for(
                lambda: "resolved" in hook.statuses("SteadyServeCircuitOpen"),
                "the webhook's resolved POST",
            )
        assert traffic.errors == []
        statuses = hook.statuses("SteadyServeCircuitOpen")
        assert statuses == ["firing", "resolved"]  # changes only, each once
        for post in hook.received:
            assert post["status"] in ("firing", "resolved") and post["alerts"]
            for a in post["alerts"]:
                assert set(a) == {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
        assert notifications(server, "webhook", "sent") >= 4  # circuit, rate, failover x 2
        assert server.stop() == 0


@only_frontend("native")
def test_receivers_that_are_down_do_not_stop_serving_or_evaluating(alert_repo, launch):
    refused = socket.socket()  # bound, never listening: connections are refused
    refused.bind(("127.0.0.1", 0))
    silent = socket.socket()  # listening, never accepting: a POST gets no answer
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        server = launch(
            alert_repo,
            "--allow-fault-injection",
            "--alertmanager-url",
            f"http://127.0.0.1:{refused.getsockname()[1]}",
            "--alert-webhook",
            f"http://127.0.0.1:{silent.getsockname()[1]}/hook",
            "--alert-interval-s",
            "0.5",
        )
        with Traffic(server.grpc) as traffic:
            wait_for(lambda: traffic.total() >= 5, "the first answers")
            fault(server, "prim", "error")
            wait_for(
                lambda: (
                    notifications(server, "alertmanager", "failed") > 0
                    and notifications(server, "webhook", "failed") > 0
                ),
                "failed notifications to both receivers in the metrics",
            )
            before = http_json(f"{server.http}/v2/alerts")
            served = traffic.total()
            wait_for(
                lambda: (
                    http_json(f"{server.http}/v2/alerts")["evaluations"] > before["evaluations"] + 2
                ),
                "the evaluation to go on",
            )
            wait_for(lambda: traffic.total() > served + 20, "requests to keep being answered")
            alerts = server_alerts(server)
            assert alerts[("SteadyServeCircuitOpen", "prim")]["state"] == "firing"
            receivers = {r["receiver"]: r for r in before["receivers"]}
            assert receivers["alertmanager"]["failed"] > 0
            assert "ConnectionRefusedError" in receivers["alertmanager"]["last_error"]
            fault(server, "prim", "clear")
        assert traffic.errors == [] and traffic.answered_by.get("lite", 0) > 0
        assert notifications(server, "alertmanager", "sent") == 0
        assert server.stop() == 0  # the sender blocked on the silent one does not hold it
    finally:
        refused.close()
        silent.close()
    lines = [
        e for e in json_lines(server.stderr()) if e.get("msg", "").startswith("alert receiver")
    ]
    down = {e["receiver"] for e in lines if "unreachable" in e["msg"]}
    assert down == {"alertmanager", "webhook"}
    # rate-limited: one line per receiver in the first minute, however many failures
    assert len([e for e in lines if e["receiver"] == "alertmanager"]) == 1


def test_bad_alert_flags_are_refused_with_the_flag_named(tmp_path):
    for flags, message in [
        (["--alertmanager-url", "ftp://x"], "--alertmanager-url"),
        (["--alert-webhook", "not a url"], "--alert-webhook"),
        (["--alert-interval-s", "0"], "--alert-interval-s"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "steadyserve", "serve", str(tmp_path), *flags],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, (flags, done.stderr)
        assert message in done.stderr, (flags, done.stderr)
