"""`steadyserve serve` takes every flag from a STEADYSERVE_* environment variable too
(containers are configured that way); a flag on the command line wins."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from steadyserve.cli import build_parser, env_defaults, env_name

T = 10.0


def _serve(*args: str, env: dict) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "steadyserve", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_every_visible_serve_flag_has_a_variable():
    serve = build_parser().serve_parser
    names = {
        env_name(a)
        for a in serve._actions
        if a.option_strings and a.help != "==SUPPRESS==" and "--help" not in a.option_strings
    }
    assert {"STEADYSERVE_GRPC_PORT", "STEADYSERVE_MODEL_CONTROL_MODE"} <= names
    assert {"STEADYSERVE_MANAGEMENT_TOKEN", "STEADYSERVE_ALERTMANAGER_URL"} <= names
    assert "STEADYSERVE_GRPC_FD" not in names  # hidden flags are the supervisor's own


def test_values_are_converted_and_checked_like_flags():
    serve = build_parser().serve_parser
    used = env_defaults(
        serve,
        {
            "STEADYSERVE_GRPC_PORT": "9001",
            "STEADYSERVE_ALLOW_FAULT_INJECTION": "yes",
            "STEADYSERVE_LOAD_MODEL": "a, b",
            "STEADYSERVE_MODEL_CONTROL_MODE": "explicit",
        },
    )
    assert len(used) == 4
    args = serve.parse_args(["repo"])
    assert (args.grpc_port, args.allow_fault_injection) == (9001, True)
    assert (args.load_model, args.model_control_mode) == (["a", "b"], "explicit")
    assert serve.parse_args(["repo", "--grpc-port", "7001"]).grpc_port == 7001  # the flag wins


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("STEADYSERVE_GRPC_PORT", "lots", "not a valid int"),
        ("STEADYSERVE_ALLOW_FAULT_INJECTION", "maybe", "expected one of 1, true"),
        ("STEADYSERVE_MODEL_CONTROL_MODE", "sometimes", "expected one of none, explicit, poll"),
    ],
)
def test_a_bad_value_is_a_usage_error_naming_the_variable(tmp_path, name, value, says):
    done = _serve(str(tmp_path), env={name: value})
    assert done.returncode == 2
    assert f"{name}={value!r}" in done.stderr and says in done.stderr


def test_a_server_configured_by_the_environment(model_repo, tmp_path, monkeypatch):
    from conftest import start_server

    monkeypatch.setenv("STEADYSERVE_MODEL_CONTROL_MODE", "explicit")
    monkeypatch.setenv("STEADYSERVE_LOAD_MODEL", "linear")
    monkeypatch.setenv("STEADYSERVE_ALLOW_FAULT_INJECTION", "true")
    proc = start_server(model_repo, log_dir=tmp_path)  # the child inherits the variables
    try:
        request = urllib.request.Request(proc.http + "/v2/repository/index", data=b"{}")
        with urllib.request.urlopen(request, timeout=T) as answer:
            index = json.loads(answer.read())
        loaded = {e["name"] for e in index if e["state"] == "READY"}
        assert loaded == {"linear"}  # explicit mode, only what the variable named
        body = json.dumps({"kind": "clear"}).encode()
        fault = urllib.request.Request(proc.http + "/v2/models/linear/fault", data=body)
        with urllib.request.urlopen(fault, timeout=T) as answer:
            assert answer.status == 200  # fault injection allowed by the variable
    finally:
        assert proc.stop() == 0
