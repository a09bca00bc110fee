"""The ``steadyserve`` command: ``serve``, ``fit``, ``evaluate``, ``drift``, ``fault`` and
``version``.

Exit codes: 0 success, 1 failure while running, 2 bad usage or missing dependency;
``drift`` exits 3 when it flags a feature (see its help).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

PROG = "steadyserve"
# The answer did not parse as HTTP/1.1, or the connection was reset while the request went
# out: on this server that means the gRPC port (HTTP/2 only; it answers an HTTP/1.1 request
# with a GOAWAY and closes, which a client still sending its body sees as a reset).
NOT_HTTP_PORT = (
    "the answer is not HTTP/1.1 (or the connection was reset) - is --url the gRPC port? "
    "These commands talk to the HTTP port (--http-port, default 8000)"
)
ONNXRUNTIME_HINT = (
    "ONNX Runtime is not installed, and steadyserve needs it to run models. Install it with\n"
    "    pip install 'steadyserve[cpu]'    # CPU\n"
    "or  pip install 'steadyserve[gpu]'    # NVIDIA GPU (onnxruntime-gpu)"
)

log = logging.getLogger("steadyserve.cli")


class UsageError(Exception):
    """Bad command line; the message says what to do instead (exit code 2)."""


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("steadyserve")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve ONNX models over KServe V2 gRPC with dynamic batching and SLOs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="serve a model repository over gRPC (KServe V2) with an HTTP side port",
        description="Serve every model in REPO (REPO/<model>/<version>/model.onnx).",
        epilog="Every flag can also come from the environment: --foo-bar from "
        "STEADYSERVE_FOO_BAR (e.g. STEADYSERVE_GRPC_PORT=8001, STEADYSERVE_MODEL_CONTROL_MODE="
        "poll, STEADYSERVE_ALLOW_FAULT_INJECTION=true, STEADYSERVE_LOAD_MODEL=a,b); a flag on "
        "the command line wins over its variable (--load-model: the names of both load).",
    )
    serve.add_argument("repo", nargs="?", metavar="REPO", help="model repository directory")
    serve.add_argument(
        "--demo",
        action="store_true",
        help="build the demo repository (two tabular models) and serve it",
    )
    serve.add_argument(
        "--demo-dir", metavar="DIR", help="where --demo writes its repository (default: a temp dir)"
    )
    serve.add_argument("--host", default="0.0.0.0", help="address to bind (default %(default)s)")
    serve.add_argument(
        "--grpc-port", type=int, default=8001, help="gRPC port, 0 = any free (default %(default)s)"
    )
    serve.add_argument(
        "--http-port",
        type=int,
        default=8000,
        help="HTTP port for probes and /metrics, 0 = any free (default %(default)s)",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="default %(default)s",
    )
    serve.add_argument(
        "--log-format",
        default="json",
        choices=("json", "text"),
        help="json: one JSON object per line (for log pipelines); text: for people "
        "(default %(default)s)",
    )
    serve.add_argument(
        "--log-sample-rate",
        type=float,
        default=0.0,
        metavar="R",
        help="share of inference requests logged one line each: request id, model, version, "
        "status, latency (0..1; default %(default)s = none)",
    )
    serve.add_argument(
        "--prediction-log",
        default=None,
        metavar="DIR",
        help="log sampled requests (ids, raw and scaled inputs, outputs, the model that "
        "answered) to rotating files under DIR, per model; enables POST "
        "/v2/models/{m}/feedback and the live quality KPIs (config: prediction_log, quality)",
    )
    serve.add_argument(
        "--prediction-log-format",
        choices=("auto", "parquet", "jsonl"),
        default="auto",
        help="file format: parquet (needs pyarrow: pip install 'steadyserve[parquet]'), "
        "jsonl, or auto (parquet when pyarrow is installed; default)",
    )
    serve.add_argument(
        "--prediction-log-rotate-mb",
        type=float,
        default=64.0,
        metavar="MB",
        help="a log file is closed (and readable) after this many MiB (default %(default)s)",
    )
    serve.add_argument(
        "--prediction-log-rotate-s",
        type=float,
        default=300.0,
        metavar="S",
        help="... or after this many seconds (default %(default)s)",
    )
    serve.add_argument(
        "--prediction-log-queue-mb",
        type=float,
        default=64.0,
        metavar="MB",
        help="records waiting for the writer; beyond it they are dropped and counted "
        "(steadyserve_prediction_log_dropped_total), never slowing requests (default "
        "%(default)s)",
    )
    serve.add_argument(
        "--grace-s",
        type=float,
        default=10.0,
        help="seconds in-flight requests may take to finish on shutdown (default %(default)s)",
    )
    serve.add_argument(
        "--max-message-mb",
        type=float,
        default=64.0,
        help="largest gRPC request or response, in MiB (default %(default)s)",
    )
    serve.add_argument(
        "--allow-fault-injection",
        action="store_true",
        help="accept `steadyserve fault` (inject errors, hangs, NaN outputs, slowdowns into a "
        "model, for failover drills); never in production",
    )
    serve.add_argument(
        "--frontend",
        choices=("native", "grpcio"),
        default="native",
        help="the gRPC frontend: native (C++ HTTP/2; inference runs no Python per request) "
        "or grpcio (grpc.aio, the fallback) (default %(default)s)",
    )
    native = serve.add_argument_group("native frontend limits (--frontend native)")
    native.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="open client connections; more are refused at accept (default 10000)",
    )
    native.add_argument(
        "--max-concurrent-streams",
        type=int,
        metavar="N",
        help="calls open at once on one connection (HTTP/2 MAX_CONCURRENT_STREAMS; default 256)",
    )
    native.add_argument(
        "--io-threads",
        type=int,
        metavar="N",
        help="threads reading and writing sockets, 0 = one per CPU core (default 0)",
    )
    native.add_argument(
        "--idle-timeout-s",
        type=float,
        metavar="S",
        help="a connection with no open call for this long is closed (default 300)",
    )
    grpcio = serve.add_argument_group("grpcio frontend limits (--frontend grpcio only)")
    grpcio.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        metavar="N",
        help="RPCs served at once; more are refused RESOURCE_EXHAUSTED (default: no limit). "
        "grpcio only: the native frontend bounds calls per connection (--max-concurrent-"
        "streams) and connections (--max-connections) instead",
    )
    grpcio.add_argument(
        "--max-pending-rpcs",
        type=int,
        metavar="N",
        help="calls that may wait in gRPC's core while the server is busy; more are refused "
        "RESOURCE_EXHAUSTED at once, before the server spends anything on them (default: "
        "gRPC's own limit). For latency SLOs under overload: about the requests the server "
        "answers in half the SLO, e.g. 8 (bursts larger than that are refused too). grpcio "
        "only: the native frontend sheds overload in the core at the door",
    )

    lifecycle = serve.add_argument_group("model lifecycle")
    lifecycle.add_argument(
        "--model-control-mode",
        choices=("none", "explicit", "poll"),
        default="none",
        help="none: read the repository once; explicit: load and unload models by request "
        "(tritonclient load_model/unload_model, POST /v2/repository/models/M/load); poll: "
        "re-read the repository every --repository-poll-secs, loading new, changed and "
        "removed models (default %(default)s)",
    )
    lifecycle.add_argument(
        "--load-model",
        action="append",
        default=[],
        metavar="NAME",
        help="explicit mode: a model to load at start (repeat it; '*' loads all)",
    )
    lifecycle.add_argument(
        "--repository-poll-secs",
        type=float,
        default=15.0,
        metavar="S",
        help="poll mode: seconds between scans of the repository (default %(default)s)",
    )
    lifecycle.add_argument(
        "--management-token",
        metavar="TOKEN",
        help="load, unload and rollback need 'authorization: Bearer TOKEN' "
        "(unset: no token needed; keep it out of the command line: "
        "$STEADYSERVE_MANAGEMENT_TOKEN)",
    )
    alerts = serve.add_argument_group("alerts (rules: each model's config.yaml, alerts:)")
    alerts.add_argument(
        "--alertmanager-url",
        metavar="URL",
        help="send alerts to this Alertmanager (API v2), e.g. http://alertmanager:9093 "
        "(default: none; firing and pending alerts are listed at GET /v2/alerts either way)",
    )
    alerts.add_argument(
        "--alert-webhook",
        metavar="URL",
        help='POST {"status": "firing"|"resolved", "alerts": [...]} as JSON to URL when an '
        "alert fires or resolves",
    )
    alerts.add_argument(
        "--alert-interval-s",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds between evaluations of the alert rules, 0.1..3600 (default %(default)s)",
    )

    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="server processes serving the same ports, each with its own batcher and "
        "metrics; the kernel spreads connections over them (default 1)",
    )
    # Set by the --workers supervisor for its workers, not by hand.
    serve.add_argument("--grpc-fd", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--http-fd", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--worker-dir", help=argparse.SUPPRESS)

    fit = sub.add_parser(
        "fit",
        help="fit a model's stats file (scaling, imputation, drift reference) from data",
        description="Fit the feature statistics (mean, std, min, max, quantiles) and the drift "
        "reference histograms of a model's input from reference data, run the model on the "
        "data (through the input's contract, scaled with the new stats) to fit its outputs "
        "too, and write MODEL_DIR/<version>/stats.json. Give it held-out rows, not the "
        "training rows: a model is more confident on the rows it was trained on, so its "
        "answers there make an output (prediction-drift) reference that healthy traffic "
        "drifts from. A server in poll mode reloads the model by itself; in explicit mode, "
        "load it again.",
    )
    fit.add_argument("model_dir", metavar="MODEL_DIR", help="the model's directory, REPO/<model>")
    fit.add_argument(
        "--data",
        required=True,
        metavar="FILE",
        help="held-out reference rows: .npy ([rows, features]), .npz (one array per input, by "
        "input name, or a single array) or .csv (numbers; an optional first line of column "
        "names = feature names; empty cells are missing values)",
    )
    fit.add_argument("--input", metavar="NAME", help="the input the data is for (default: the "
                     "input with a contract, or the only input)")  # fmt: skip
    fit.add_argument(
        "--bins", type=int, default=10, help="drift histogram bins per feature, 2..1024 "
        "(default %(default)s; edges at the reference's quantiles)"
    )  # fmt: skip
    fit.add_argument("--version", type=int, metavar="N", help="model version (default: latest)")

    evaluate = sub.add_parser(
        "evaluate",
        help="score every version of a model, and its backups, on a holdout set",
        description="Load MODEL from REPO in this process (every version on disk, and the "
        "models of its backup chain), run the holdout set through each version and each "
        "backup's serving version, and print their metrics side by side: accuracy, "
        "precision, recall, F1 and ROC AUC for classification; MAE, RMSE and R² for "
        "regression. The holdout set is .npz (an array per model input and a label array) "
        "or .csv (a header row, the label column and the features, for a model with one "
        "FP32 [batch, features] input).",
        epilog="Exit codes: 0 everything was scored; 1 a version or backup could not be "
        "scored (it failed to load, or failed on the holdout set: the table says why); 2 bad "
        "usage or data (no holdout set, a file that does not fit the model).",
    )
    evaluate.add_argument("repo", metavar="REPO", help="model repository directory")
    evaluate.add_argument("model", metavar="MODEL", help="model name")
    evaluate.add_argument(
        "--data",
        metavar="PATH",
        help="the holdout set, .npz or .csv (default: the model's evaluation.data, relative "
        "to REPO/MODEL)",
    )
    evaluate.add_argument(
        "--label",
        metavar="NAME",
        help="npz array or csv column of the labels (default: evaluation.label, 'label')",
    )
    evaluate.add_argument(
        "--output",
        metavar="NAME",
        help="the output to score (default: evaluation.output, else the model's first output)",
    )
    evaluate.add_argument(
        "--task",
        choices=("auto", "classification", "regression"),
        help="default: evaluation.task ('auto': integer labels with class scores or "
        "classes are classification)",
    )
    evaluate.add_argument("--json", action="store_true", help="print the results as JSON")

    drift = sub.add_parser(
        "drift",
        help="show a served model's live drift report (PSI per feature)",
        description="Fetch GET /v2/models/MODEL/drift from a running server's HTTP port and "
        "print each input and output's features by PSI against the reference.",
        epilog="Exit codes: 0 nothing flagged; 3 at least one feature's PSI is over the "
        "model's drift.psi_threshold (with drift.min_rows rows in the window); 1 the report "
        "could not be fetched (server down, unknown model); 2 bad usage.",
    )
    drift.add_argument("model", metavar="MODEL", help="model name")
    drift.add_argument(
        "--url", required=True, metavar="HOST:PORT", help="the server's HTTP port (not gRPC)"
    )
    drift.add_argument("--version", metavar="N", help="model version (default: latest)")
    drift.add_argument("--json", action="store_true", help="print the raw JSON report")
    drift.add_argument("--timeout", type=float, default=10.0, help="seconds (default %(default)s)")

    fault = sub.add_parser(
        "fault",
        help="inject a fault into a served model, or clear it (failover drills)",
        description="Make MODEL fail on purpose on a server started with "
        "--allow-fault-injection: error (every execution fails), hang (executions block until "
        "the execution timeout terminates them), nan (outputs become NaN), slow (each execution "
        "takes --delay-ms longer); clear removes the fault. Posts to the server's HTTP port.",
        epilog="Exit codes: 0 done; 1 refused (fault injection off, unknown model) or the "
        "server could not be reached; 2 bad usage.",
    )
    fault.add_argument("model", metavar="MODEL", help="model name")
    fault.add_argument("kind", choices=("error", "hang", "nan", "slow", "clear"), help="the fault")
    fault.add_argument(
        "--url", required=True, metavar="HOST:PORT", help="the server's HTTP port (not gRPC)"
    )
    fault.add_argument(
        "--delay-ms", type=float, default=0.0, metavar="N", help="extra ms per execution (slow)"
    )
    fault.add_argument("--version", metavar="N", help="model version (default: latest)")
    fault.add_argument("--timeout", type=float, default=10.0, help="seconds (default %(default)s)")

    rollback = sub.add_parser(
        "rollback",
        help="serve again the versions a served model's last promotion replaced",
        description="Roll MODEL back on a running server to the versions its last reload "
        "replaced (the server keeps them loaded for this). Posts to the server's HTTP port.",
        epilog="Exit codes: 0 rolled back; 1 refused (nothing to roll back to, model control "
        "mode, token) or the server could not be reached; 2 bad usage.",
    )
    rollback.add_argument("model", metavar="MODEL", help="model name")
    rollback.add_argument(
        "--url", required=True, metavar="HOST:PORT", help="the server's HTTP port (not gRPC)"
    )
    rollback.add_argument(
        "--token",
        metavar="TOKEN",
        default=os.environ.get("STEADYSERVE_MANAGEMENT_TOKEN"),
        help="the server's --management-token (default: $STEADYSERVE_MANAGEMENT_TOKEN)",
    )
    rollback.add_argument(
        "--timeout", type=float, default=60.0, help="seconds (default %(default)s)"
    )

    export = sub.add_parser(
        "export",
        help="write a training-ready dataset of MODEL from the prediction log",
        description="Read MODEL's prediction log (the files under --log DIR/MODEL, as the "
        "server's --prediction-log wrote them) and write one row per example: request id, "
        "time, model version, the model that answered, the raw input features, the "
        "outputs, and the label sent to the feedback endpoint.",
        epilog="Exit codes: 0 written; 1 nothing to export or unreadable log; 2 bad usage.",
    )
    export.add_argument("model", metavar="MODEL", help="model name (as the requests asked)")
    export.add_argument(
        "--log", required=True, metavar="DIR", help="the server's --prediction-log directory"
    )
    export.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="the dataset: .parquet, .csv or .jsonl (the suffix says the format)",
    )
    export.add_argument(
        "--since",
        metavar="WHEN",
        help="only requests since WHEN: an ISO 8601 time (UTC unless it says otherwise) or "
        "a span back from now: 90m, 24h, 7d",
    )
    export.add_argument(
        "--labelled", action="store_true", help="only rows with a label (for training)"
    )

    demo = sub.add_parser(
        "demo",
        help="write the demo repository (two tabular models) to DIR",
        description="Write the demo model repository to DIR: `tabular` (an MLP with a "
        "feature contract, stats and a backup) and `tabular-lite`, as `serve --demo` "
        "serves them. For the in-process API: steadyserve.Runtime(DIR).",
    )
    demo.add_argument("dir", metavar="DIR", help="where to write it (created if missing)")

    sub.add_parser("version", help="print the steadyserve version")
    parser.serve_parser = serve  # for env_defaults
    return parser


ENV_PREFIX = "STEADYSERVE_"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def env_name(action: argparse.Action) -> str:
    """The environment variable of a flag: --grpc-port -> STEADYSERVE_GRPC_PORT."""
    flag = max(action.option_strings, key=len)
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


def env_defaults(parser: argparse.ArgumentParser, environ=os.environ) -> list[str]:
    """Set the defaults of ``parser``'s flags from STEADYSERVE_* variables (a flag on
    the command line still wins); returns the variables used. A value the flag would
    refuse is a UsageError naming the variable."""
    used = []
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._HelpAction):
            continue
        name = env_name(action)
        raw = environ.get(name)
        if raw is None:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            if raw.strip().lower() not in (*_TRUE, *_FALSE):
                raise UsageError(f"{name}={raw!r}: expected one of {', '.join(_TRUE + _FALSE)}")
            value = raw.strip().lower() in _TRUE
        elif isinstance(action, argparse._AppendAction):
            value = [part for part in raw.replace(",", " ").split() if part]
        else:
            try:
                value = action.type(raw) if action.type is not None else raw
            except (TypeError, ValueError):
                raise UsageError(f"{name}={raw!r}: not a valid {action.type.__name__}") from None
            if action.choices is not None and value not in action.choices:
                choices = ", ".join(map(str, action.choices))
                raise UsageError(f"{name}={raw!r}: expected one of {choices}")
        action.default = value
        used.append(name)
    return used


# ServerSettings field -> the flag that sets it (for error messages).
_FLAG_OF = {
    "host": "--host",
    "grpc_port": "--grpc-port",
    "http_port": "--http-port",
    "grace_s": "--grace-s",
    "log_level": "--log-level",
    "log_format": "--log-format",
    "log_sample_rate": "--log-sample-rate",
    "prediction_log": "--prediction-log",
    "prediction_log_format": "--prediction-log-format",
    "prediction_log_rotate_bytes": "--prediction-log-rotate-mb",
    "prediction_log_rotate_s": "--prediction-log-rotate-s",
    "prediction_log_queue_bytes": "--prediction-log-queue-mb",
    "max_message_bytes": "--max-message-mb",
    "max_concurrent_rpcs": "--max-concurrent-rpcs",
    "max_pending_rpcs": "--max-pending-rpcs",
    "max_connections": "--max-connections",
    "max_concurrent_streams": "--max-concurrent-streams",
    "io_threads": "--io-threads",
    "idle_timeout_s": "--idle-timeout-s",
    "frontend": "--frontend",
    "grpc_fd": "--grpc-fd",
    "http_fd": "--http-fd",
    "reuse_port": "--reuse-port",
    "model_control_mode": "--model-control-mode",
    "load_models": "--load-model",
    "repository_poll_s": "--repository-poll-secs",
    "management_token": "--management-token",
    "workers": "--workers",
    "alertmanager_url": "--alertmanager-url",
    "alert_webhook": "--alert-webhook",
    "alert_interval_s": "--alert-interval-s",
    "worker_index": "--worker-index",
    "worker_dir": "--worker-dir",
}

# Limits a --workers supervisor passes on to each worker as they were given.
_WORKER_LIMITS = (
    "max_concurrent_rpcs",
    "max_pending_rpcs",
    "max_connections",
    "max_concurrent_streams",
    "io_threads",
    "idle_timeout_s",
)


def _check_onnxruntime() -> None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise UsageError(ONNXRUNTIME_HINT) from None


def _repository_path(value: str) -> Path:
    path = Path(value).expanduser()
    if not path.exists():
        raise UsageError(
            f"model repository '{value}' does not exist "
            f"(expected a directory REPO/<model>/<version>/model.onnx)"
        )
    if not path.is_dir():
        raise UsageError(f"model repository '{value}' is not a directory")
    return path


def _catch_signals_early() -> list[int]:
    """Record SIGTERM/SIGINT that arrive while starting (imports, loading models).

    The server's own handlers replace these once its loop runs, and it stops at
    once if one was recorded: a start interrupted by SIGTERM still exits 0.
    """
    seen: list[int] = []

    def record(signum, frame):
        seen.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, record)
    return seen


def _cmd_serve(args: argparse.Namespace) -> int:
    early_signals = _catch_signals_early()
    from pydantic import ValidationError

    from .server.settings import GRPCIO_ONLY, MIB, NATIVE_ONLY, ServerSettings

    if args.demo and args.repo:
        raise UsageError("give either REPO or --demo, not both")
    if args.demo_dir and not args.demo:
        raise UsageError("--demo-dir only makes sense with --demo")
    if not args.demo and not args.repo:
        raise UsageError(
            "serve needs a model repository: `steadyserve serve REPO` "
            "(REPO/<model>/<version>/model.onnx), or `steadyserve serve --demo` to try it out"
        )
    if not 1 <= args.workers <= 64:
        raise UsageError(f"--workers must be 1..64; got {args.workers}")
    if not 0 < args.max_message_mb < 2048:
        raise UsageError(
            f"--max-message-mb must be > 0 and < 2048 (MiB); got {args.max_message_mb}"
        )
    for frontend, fields in (("grpcio", GRPCIO_ONLY), ("native", NATIVE_ONLY)):
        given = [_FLAG_OF[f] for f in fields if getattr(args, f) not in (None, False)]
        if given and args.frontend != frontend:
            hint = (
                " (the native frontend bounds --max-concurrent-streams per connection and "
                "--max-connections instead)"
                if frontend == "grpcio"
                else ""
            )
            raise UsageError(
                f"{', '.join(given)} only apply to --frontend {frontend}; this server runs "
                f"--frontend {args.frontend}{hint}"
            )
    if (args.grpc_fd is None) != (args.http_fd is None):
        raise UsageError("--grpc-fd and --http-fd go together (set by --workers)")
    try:
        settings = ServerSettings(
            host=args.host,
            grpc_port=args.grpc_port,
            http_port=args.http_port,
            grace_s=args.grace_s,
            log_level=args.log_level,
            log_format=args.log_format,
            log_sample_rate=args.log_sample_rate,
            prediction_log=args.prediction_log,
            prediction_log_format=args.prediction_log_format,
            prediction_log_rotate_bytes=int(args.prediction_log_rotate_mb * MIB),
            prediction_log_rotate_s=args.prediction_log_rotate_s,
            prediction_log_queue_bytes=int(args.prediction_log_queue_mb * MIB),
            max_message_bytes=int(args.max_message_mb * MIB),
            allow_fault_injection=args.allow_fault_injection,
            max_concurrent_rpcs=args.max_concurrent_rpcs,
            max_pending_rpcs=args.max_pending_rpcs,
            frontend=args.frontend,
            max_connections=args.max_connections,
            max_concurrent_streams=args.max_concurrent_streams,
            io_threads=args.io_threads,
            idle_timeout_s=args.idle_timeout_s,
            grpc_fd=args.grpc_fd,
            http_fd=args.http_fd,
            reuse_port=args.reuse_port,
            model_control_mode=args.model_control_mode,
            load_models=tuple(args.load_model),
            repository_poll_s=args.repository_poll_secs,
            management_token=args.management_token,
            alertmanager_url=args.alertmanager_url,
            alert_webhook=args.alert_webhook,
            alert_interval_s=args.alert_interval_s,
            workers=args.workers,
            worker_index=args.worker_index,
            worker_dir=args.worker_dir,
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{_FLAG_OF.get(str(e['loc'][0]), e['loc'][0])}: {e['msg']}" if e["loc"] else e["msg"]
            for e in exc.errors()
        )
        raise UsageError(f"invalid option: {problems}") from None
    repo = None if args.demo else _repository_path(args.repo)
    _check_onnxruntime()

    from .server.logs import configure_logging

    configure_logging(settings.log_level, fmt=settings.log_format)

    with contextlib.ExitStack() as stack:
        if args.demo:
            from .demo import build_demo_repository

            if args.demo_dir:
                root = Path(args.demo_dir).expanduser()
                root.mkdir(parents=True, exist_ok=True)
            else:
                root = Path(
                    stack.enter_context(tempfile.TemporaryDirectory(prefix="steadyserve-demo-"))
                )
            repo = build_demo_repository(root)
            log.info("demo repository built", extra={"path": str(repo)})

        if args.workers > 1 and args.worker_dir is None:  # the supervisor, not a worker
            return _serve_workers(args, repo, settings)

        from .server.app import run

        return run(repo, settings, early_signals=early_signals)


def _serve_workers(args: argparse.Namespace, repo: Path, settings) -> int:
    """--workers N: N plain `serve` processes on the same ports (see server/workers.py)."""
    from .server.workers import run_workers

    def worker_argv(
        index: int, worker_dir: str, grpc_port: int, http_port: int, fds: tuple[int, int] | None
    ) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "steadyserve",
            "serve",
            str(repo),
            "--host",
            settings.host,
            "--grpc-port",
            str(grpc_port),
            "--http-port",
            str(http_port),
            "--log-level",
            settings.log_level,
            "--log-format",
            settings.log_format,
            "--log-sample-rate",
            str(settings.log_sample_rate),
            "--grace-s",
            str(settings.grace_s),
            "--max-message-mb",
            str(args.max_message_mb),
            "--frontend",
            settings.frontend,
        ]
        if fds is not None:  # native: serve the supervisor's listening sockets
            argv += ["--grpc-fd", str(fds[0]), "--http-fd", str(fds[1])]
        else:  # grpcio: each worker binds the ports with SO_REUSEPORT
            argv.append("--reuse-port")
        argv += ["--workers", str(args.workers), "--worker-index", str(index)]
        argv += ["--worker-dir", worker_dir]
        if settings.allow_fault_injection:
            argv.append("--allow-fault-injection")
        argv += ["--model-control-mode", settings.model_control_mode]
        argv += ["--repository-poll-secs", str(settings.repository_poll_s)]
        argv += ["--alert-interval-s", str(settings.alert_interval_s)]
        for field in ("alertmanager_url", "alert_webhook"):
            if getattr(settings, field) is not None:
                argv += [_FLAG_OF[field], getattr(settings, field)]
        for field in _WORKER_LIMITS:
            value = getattr(settings, field)
            if value is not None:
                argv += [_FLAG_OF[field], str(value)]
        return argv

    return run_workers(
        args.workers,
        worker_argv,
        settings.host,
        settings.grpc_port,
        settings.http_port,
        hand_sockets=settings.frontend == "native",
    )


def _cmd_fit(args: argparse.Namespace) -> int:
    if not 2 <= args.bins <= 1024:
        raise UsageError(f"--bins must be an integer 2..1024; got {args.bins}")
    if args.version is not None and args.version < 1:
        raise UsageError(f"--version must be an integer >= 1; got {args.version}")
    _check_onnxruntime()
    from .features.fit import DataError, fit_model, read_reference_data

    try:
        data, header = read_reference_data(args.data)
        result = fit_model(
            args.model_dir,
            data,
            header=header,
            input_name=args.input,
            version=args.version,
            bins=args.bins,
        )
    except DataError as exc:
        raise UsageError(str(exc)) from None
    print(f"model '{result.model}' version {result.version}, reference data {args.data}")
    for name, stats in result.inputs.items():
        names = stats.get("feature_names") or [str(i) for i in range(len(stats["mean"]))]
        missing = round(sum(stats["missing_rate"]) * stats["rows"])
        print(
            f"\ninput '{name}': {stats['rows']} rows x {len(names)} features"
            + (f", {missing} missing values (NaN/inf)" if missing else "")
        )
        print(_stats_table(names, stats))
    for name, stats in result.outputs.items():
        print(f"\noutput '{name}': {stats['rows']} rows x {len(stats['mean'])} values")
        print(_stats_table([str(i) for i in range(len(stats["mean"]))], stats))
    if result.rows_refused:
        print(
            f"\n{result.rows_refused} reference row(s) refused by the contract are left out; "
            f"the first: {result.first_refusal}"
        )
    for note in result.notes:
        print(f"note: {note}")
    print(
        f"\nwrote {result.path} (a server in poll mode reloads the model by itself; in "
        f"explicit mode, load it again: tritonclient load_model or POST "
        f"/v2/repository/models/{result.model}/load)"
    )
    return 0


def _stats_table(names: list[str], stats: dict) -> str:
    width = max(7, *(len(n) for n in names))
    lines = [
        f"  {'feature':<{width}} {'mean':>10} {'std':>10} {'min':>10} {'median':>10} "
        f"{'max':>10} {'missing':>8}"
    ]
    for i, name in enumerate(names):
        lines.append(
            f"  {name:<{width}} {stats['mean'][i]:>10.4g} {stats['std'][i]:>10.4g} "
            f"{stats['min'][i]:>10.4g} {stats['median'][i]:>10.4g} {stats['max'][i]:>10.4g} "
            f"{stats['missing_rate'][i]:>8.2%}"
        )
    return "\n".join(lines)


# Seconds one evaluation request may take. Explicit, so that a model's own default
# deadline (slo) neither refuses a holdout chunk nor sends it to the backup.
EVALUATE_TIMEOUT_S = 600.0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .errors import SteadyServeError

    repo = _repository_path(args.repo)
    _check_onnxruntime()
    logger = logging.getLogger("steadyserve")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # versions that fail to load are rows of the table
    try:
        report = _evaluate_repository(repo, args)
    except SteadyServeError as exc:
        print(f"{PROG} evaluate: error: {exc}", file=sys.stderr)
        return 1
    finally:
        logger.setLevel(level)
    if args.json:
        import json

        print(json.dumps(report, indent=2))
    else:
        from .evaluation import format_table

        def title(r: dict) -> str:
            name = f"{r['model']} v{r['version']}" if r["version"] else r["model"]
            return f"backup {name}" if r["role"] == "backup" else name

        outputs = sorted({r["output"] for r in report["results"] if "output" in r})
        print(
            f"model '{report['model']}', holdout {report['data']}: {report['rows']} rows, "
            f"task {report['task']}" + (f", output '{', '.join(outputs)}'" if outputs else "")
        )
        print(format_table([(title(r), r) for r in report["results"]]))
    return 1 if any("error" in r for r in report["results"]) else 0


def _evaluate_repository(repo: Path, args: argparse.Namespace) -> dict:
    """Evaluate every version of args.model and the serving version of each backup.

    The backups load as they would serve. The model's versions load one at a time
    (newest first), each alone in place of the last, with its config but no gate,
    probation or shadow (this scores, it promotes nothing): a model's versions load
    together or not at all, so one broken version would otherwise take the rest down.
    """
    import json

    from .errors import InvalidArgumentError, SteadyServeError
    from .evaluation import NEEDS_BATCHING, check_holdout_path, evaluate, load_holdout
    from .repository import scan_repository
    from .runtime import Runtime

    sources = scan_repository(repo)
    source = sources.get(args.model)
    if source is None:
        raise UsageError(
            f"repository {repo} has no model '{args.model}' "
            f"(models: {', '.join(sources) or 'none'})"
        )
    if source.config is None:
        raise UsageError(f"model '{args.model}' cannot be evaluated: {source.error}")
    settings = source.config.evaluation
    if args.data:
        data = Path(args.data).expanduser()
    elif settings.data:
        data = source.directory / settings.data
    else:
        config_path = getattr(source, "config_path", None) or source.directory / "config.yaml"
        raise UsageError(
            f"no holdout set: pass --data FILE, or set evaluation.data in {config_path}"
        )
    try:
        check_holdout_path(data)
    except InvalidArgumentError as exc:
        raise UsageError(str(exc)) from None
    label = args.label or settings.label
    output = args.output or settings.output
    task = args.task or settings.task

    chain: list[str] = []  # a broken chain makes the model fail to load: its rows say so
    link = source.config.backup
    while link and link != args.model and link not in chain and link in sources:
        chain.append(link)
        config = sources[link].config
        link = config.backup if config is not None else None

    override = source.config.model_dump(mode="json", exclude_unset=True)
    for key in ("gate", "probation", "shadow"):
        override.pop(key, None)
    # Queue caps per level do not matter here, and JSON cannot give their integer keys.
    override.get("slo", {}).pop("priority_queues", None)
    holdouts: dict[tuple, object] = {}

    def holdout_for(model):
        key = tuple(model.inputs)
        if key not in holdouts:
            try:
                holdouts[key] = load_holdout(data, model.inputs, label)
            except InvalidArgumentError as exc:
                holdouts[key] = exc
        return holdouts[key]

    def scored(rt, name: str, version: str, role: str, reference: bool = False) -> dict:
        row: dict = {"model": name, "version": version, "role": role}
        try:
            model = rt.get_model(name, version)
            if model.max_batch_size < 1:
                raise InvalidArgumentError(NEEDS_BATCHING)
            holdout = holdout_for(model)
            if isinstance(holdout, InvalidArgumentError):
                if reference:  # the data does not fit the model's newest version
                    raise UsageError(str(holdout))
                raise holdout
            infer = _exact_infer(rt, name, version)
            max_rows = model.max_batch_size
            row.update(evaluate(infer, holdout, output=output, task=task, max_rows=max_rows))
        except SteadyServeError as exc:
            row.update(error=str(exc), metrics={})
        return row

    def failed(name: str, version: str, role: str, why: object) -> dict:
        why = f"failed to load: {why}"
        return {"model": name, "version": version, "role": role, "error": why, "metrics": {}}

    own: list[dict] = []
    backups: list[dict] = []
    # Executor threads, not inline execution: a batch that fails over to an inline backup
    # loaded before the model is never drained by the submitting thread (it would hang).
    with Runtime(repo, models=chain, model_control="explicit", allow_inline=False) as rt:
        if not source.versions:
            own.append(failed(args.model, "", "version", source.error))
        reference = True  # until a version loads
        for number in sorted(source.versions, reverse=True):
            version = str(number)
            try:
                rt.load_model(args.model, config=json.dumps({**override, "versions": [number]}))
            except SteadyServeError as exc:
                own.append(failed(args.model, version, "version", exc))
                continue
            own.append(scored(rt, args.model, version, "version", reference))
            reference = False
        index = rt.model_index()
        for backup in chain:
            loaded = rt.model_versions(backup)
            if loaded:
                backups.append(scored(rt, backup, loaded[-1], "backup"))
                continue
            reasons = [e.reason for e in index if e.name == backup and e.reason]
            serving = sources[backup].selected_versions()
            version = str(serving[-1]) if serving else ""
            backups.append(failed(backup, version, "backup", reasons[0] if reasons else "?"))
    results = sorted(own, key=lambda r: int(r["version"] or 0)) + backups
    ok = [r for r in results if "error" not in r]
    loaded_holdouts = [h for h in holdouts.values() if not isinstance(h, Exception)]
    return {
        "model": args.model,
        "data": str(data),
        "task": ok[0]["task"] if ok else task,
        "rows": loaded_holdouts[0].rows if loaded_holdouts else None,
        "results": results,
    }


def _exact_infer(rt, name: str, version: str):
    """infer(inputs) -> outputs of exactly this version: an answer from elsewhere (a
    backup or a default output, after this version failed) is an error."""

    def infer(inputs: dict) -> dict:
        from .errors import ModelFailureError

        result = rt.infer(name, inputs, version=version, timeout=EVALUATE_TIMEOUT_S)
        params = result.parameters
        if params.get("failover") or (result.model_name, result.model_version) != (name, version):
            by = (
                "its default output"
                if params.get("default_output")
                else f"'{result.model_name}' version {result.model_version}"
            )
            why = params.get("failover_reason") or "failover"
            raise ModelFailureError(
                f"model '{name}' version {version} failed on the holdout set; {by} answered "
                f"instead ({why})"
            )
        return result.outputs

    return infer


class _FetchError(Exception):
    """The drift report could not be fetched (exit code 1)."""


def _fetch_drift(url: str, model: str, version: str | None, timeout: float) -> dict:
    import http.client
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    base = url if "://" in url else f"http://{url}"
    base = base.rstrip("/")
    path = f"/v2/models/{urllib.parse.quote(model, safe='')}"
    if version:
        path += f"/versions/{urllib.parse.quote(str(version), safe='')}"
    try:
        with urllib.request.urlopen(f"{base}{path}/drift", timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read()).get("error") or exc.reason
        except ValueError:
            reason = exc.reason
        raise _FetchError(f"{base}{path}/drift: HTTP {exc.code}: {reason}") from None
    except (http.client.HTTPException, urllib.error.URLError, OSError, ValueError) as exc:
        raise _FetchError(f"cannot get {base}{path}/drift: {_why_unreachable(exc)}") from None


def _cmd_drift(args: argparse.Namespace) -> int:
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be > 0 seconds; got {args.timeout}")
    try:
        report = _fetch_drift(args.url, args.model, args.version, args.timeout)
    except _FetchError as exc:
        print(f"{PROG} drift: error: {exc}", file=sys.stderr)
        return 1
    flagged = [
        (section, tensor, feature)
        for section in ("inputs", "outputs")
        for tensor, entry in report.get(section, {}).items()
        for feature in entry.get("flagged", [])
    ]
    if args.json:
        import json

        print(json.dumps(report, indent=2))
    else:
        print(_drift_text(report))
    return 3 if flagged else 0


def _drift_text(report: dict) -> str:
    window = (
        f"{report['window_rows']} rows"
        if report.get("window_rows") is not None
        else f"{report.get('window_seconds')} s"
    )
    threshold = report.get("psi_threshold")
    out = [
        f"model '{report.get('model')}' version {report.get('version')}: live window "
        f"{window}, PSI threshold {threshold}"
    ]
    sections = [("input", report.get("inputs", {})), ("output", report.get("outputs", {}))]
    if not any(entries for _, entries in sections):
        out.append(
            "no feature contract or drift reference: add inputs[].contract to config.yaml and "
            "run `steadyserve fit`"
        )
    for kind, entries in sections:
        for tensor, entry in entries.items():
            worst = entry.get("worst")
            head = f"\n{kind} '{tensor}': {entry['rows']} rows in the window"
            if not entry.get("enough_rows"):
                head += f" (PSI is meaningful from {entry.get('min_rows', '?')} rows)"
            if worst:
                head += f"; worst {worst['feature']} PSI {worst['psi']:.3f}"
            if entry.get("flagged"):
                head += f"; DRIFT: {', '.join(entry['flagged'])}"
            out.append(head)
            features = sorted(
                entry.get("features", []),
                key=lambda f: -1.0 if f["psi"] is None else f["psi"],
                reverse=True,
            )
            width = max(7, *(len(f["feature"]) for f in features)) if features else 7
            out.append(f"  {'feature':<{width}} {'PSI':>8} {'missing':>8} {'out of range':>12}")
            for f in features:
                psi = "-" if f["psi"] is None else f"{f['psi']:.3f}"
                mark = "  <- drift" if f["feature"] in entry.get("flagged", []) else ""
                out.append(
                    f"  {f['feature']:<{width}} {psi:>8} {f['missing_rate']:>8.1%} "
                    f"{f['out_of_range_rate']:>12.1%}{mark}"
                )
    return "\n".join(out)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import build_demo_repository

    root = Path(args.dir).expanduser()
    if root.exists() and not root.is_dir():
        raise UsageError(f"{args.dir} exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)
    repo = build_demo_repository(root)
    print(
        f"wrote the demo repository to {repo}: "
        + ", ".join(sorted(p.name for p in Path(repo).iterdir() if p.is_dir()))
    )
    print(f"serve it: steadyserve serve {repo}   or in-process: steadyserve.Runtime({str(repo)!r})")
    return 0


def _post_json(command: str, url: str, body: dict, timeout: float, token: str | None = None):
    """POST ``body`` to a server's HTTP port: its JSON answer, or None after printing
    why it failed (refused, or unreachable)."""
    import http.client
    import json
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read()).get("error") or exc.reason
        except ValueError:
            reason = exc.reason
        print(f"{PROG} {command}: refused (HTTP {exc.code}): {reason}", file=sys.stderr)
        return None
    except (http.client.HTTPException, urllib.error.URLError, OSError, ValueError) as exc:
        print(
            f"{PROG} {command}: error: cannot reach {url}: {_why_unreachable(exc)}", file=sys.stderr
        )
        return None


def _why_unreachable(exc: BaseException) -> str:
    """Why a request to a server's HTTP port got no HTTP answer, as the commands say it.
    A reset comes bare or wrapped in a URLError, depending on when it hit the request."""
    import http.client

    reason = getattr(exc, "reason", exc)
    if isinstance(exc, http.client.HTTPException) or isinstance(reason, ConnectionResetError):
        return NOT_HTTP_PORT
    return f"{reason} (is the server up, and is --url its HTTP port?)"


def _base_url(url: str) -> str:
    return (url if "://" in url else f"http://{url}").rstrip("/")


def _cmd_rollback(args: argparse.Namespace) -> int:
    import urllib.parse

    if not args.timeout > 0:
        raise UsageError(f"--timeout must be > 0 seconds; got {args.timeout}")
    name = urllib.parse.quote(args.model, safe="")
    url = f"{_base_url(args.url)}/v2/repository/models/{name}/rollback"
    answer = _post_json("rollback", url, {}, args.timeout, args.token)
    if answer is None:
        return 1
    print(f"model '{args.model}' rolled back: serving versions {', '.join(answer['versions'])}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .predictions.export import export, parse_since

    root = Path(args.log).expanduser()
    if not (root / args.model).is_dir():
        raise UsageError(f"--log {root}: no prediction log of model '{args.model}' there")
    try:
        since = None if args.since is None else parse_since(args.since, time.time())
    except ValueError as exc:
        raise UsageError(f"--since: {exc}") from None
    summary = export(root, args.model, Path(args.out), since=since, labelled=args.labelled)
    if summary.rows == 0:
        print(f"{PROG} export: nothing to export for model '{args.model}'", file=sys.stderr)
        return 1
    print(
        f"wrote {summary.rows} rows ({summary.requests} requests, {summary.labelled} "
        f"labelled) to {summary.path}"
    )
    return 0


def _cmd_fault(args: argparse.Namespace) -> int:
    import urllib.parse

    if not args.timeout > 0:
        raise UsageError(f"--timeout must be > 0 seconds; got {args.timeout}")
    if args.kind == "slow" and not args.delay_ms > 0:
        raise UsageError("fault 'slow' needs --delay-ms N (N > 0 ms added to each execution)")
    if args.kind != "slow" and args.delay_ms:
        raise UsageError("--delay-ms only makes sense with the fault 'slow'")
    base = _base_url(args.url)
    path = f"/v2/models/{urllib.parse.quote(args.model, safe='')}"
    if args.version:
        path += f"/versions/{urllib.parse.quote(str(args.version), safe='')}"
    url = f"{base}{path}/fault"
    body = {"kind": args.kind, "delay_ms": args.delay_ms}
    answer = _post_json("fault", url, body, args.timeout)
    if answer is None:
        return 1
    print(answer.get("message", answer))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        try:
            if env_defaults(parser.serve_parser):
                args = parser.parse_args(argv)  # again, with the environment's defaults
        except UsageError as exc:
            print(f"{PROG} serve: error: {exc}", file=sys.stderr)
            return 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "version":
        print(f"{PROG} {_version()}")
        return 0
    from .errors import BackendUnavailableError, SteadyServeError

    commands = {
        "serve": _cmd_serve,
        "fit": _cmd_fit,
        "evaluate": _cmd_evaluate,
        "drift": _cmd_drift,
        "fault": _cmd_fault,
        "rollback": _cmd_rollback,
        "export": _cmd_export,
        "demo": _cmd_demo,
    }
    try:
        return commands[args.command](args)
    except UsageError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BackendUnavailableError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except SteadyServeError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: say so in one line, with the traceback in the log
        log.critical("unexpected failure", exc_info=True)
        print(f"{PROG}: error: unexpected failure: {exc!r} (traceback above)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
