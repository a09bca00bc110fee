"""The ``steadyserve`` command: ``serve``, ``fit``, ``drift`` and ``version``.

Exit codes: 0 success, 1 failure while running, 2 bad usage or missing dependency;
``drift`` exits 3 when it flags a feature (see its help).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

PROG = "steadyserve"
# The answer did not parse as HTTP/1.1: on this server that means the gRPC port (HTTP/2 only).
NOT_HTTP_PORT = (
    "the answer is not HTTP/1.1 - is --url the gRPC port? These commands talk to the HTTP "
    "port (--http-port, default 8000)"
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

    fit = sub.add_parser(
        "fit",
        help="fit a model's stats file (scaling, imputation, drift reference) from data",
        description="Fit the feature statistics (mean, std, min, max, quantiles) and the drift "
        "reference histograms of a model's input from reference data, run the model on the "
        "data (through the input's contract, scaled with the new stats) to fit its outputs "
        "too, and write MODEL_DIR/<version>/stats.json. Restart the server to use it.",
    )
    fit.add_argument("model_dir", metavar="MODEL_DIR", help="the model's directory, REPO/<model>")
    fit.add_argument(
        "--data",
        required=True,
        metavar="FILE",
        help=".npy ([rows, features]), .npz (one array per input, by input name, or a single "
        "array) or .csv (numbers; an optional first line of column names = feature names; "
        "empty cells are missing values)",
    )
    fit.add_argument("--input", metavar="NAME", help="the input the data is for (default: the "
                     "input with a contract, or the only input)")  # fmt: skip
    fit.add_argument(
        "--bins", type=int, default=10, help="drift histogram bins per feature, 2..1024 "
        "(default %(default)s; edges at the reference's quantiles)"
    )  # fmt: skip
    fit.add_argument("--version", type=int, metavar="N", help="model version (default: latest)")

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

    sub.add_parser("version", help="print the steadyserve version")
    return parser


# ServerSettings field -> the flag that sets it (for error messages).
_FLAG_OF = {
    "host": "--host",
    "grpc_port": "--grpc-port",
    "http_port": "--http-port",
    "grace_s": "--grace-s",
    "log_level": "--log-level",
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

    configure_logging(settings.log_level)

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

        if args.workers > 1:
            return _serve_workers(args, repo, settings)

        from .server.app import run

        return run(repo, settings, early_signals=early_signals)


def _serve_workers(args: argparse.Namespace, repo: Path, settings) -> int:
    """--workers N: N plain `serve` processes on the same ports (see server/workers.py)."""
    from .server.workers import run_workers

    def worker_argv(grpc_port: int, http_port: int, fds: tuple[int, int] | None) -> list[str]:
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
        if settings.allow_fault_injection:
            argv.append("--allow-fault-injection")
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
    print(f"\nwrote {result.path} (restart the server to use it)")
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
    except http.client.HTTPException:
        raise _FetchError(f"cannot get {base}{path}/drift: {NOT_HTTP_PORT}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        why = getattr(exc, "reason", exc)
        raise _FetchError(
            f"cannot get {base}{path}/drift: {why} (is the server up, and is --url its HTTP port?)"
        ) from None


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


def _cmd_fault(args: argparse.Namespace) -> int:
    import http.client
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    if not args.timeout > 0:
        raise UsageError(f"--timeout must be > 0 seconds; got {args.timeout}")
    if args.kind == "slow" and not args.delay_ms > 0:
        raise UsageError("fault 'slow' needs --delay-ms N (N > 0 ms added to each execution)")
    if args.kind != "slow" and args.delay_ms:
        raise UsageError("--delay-ms only makes sense with the fault 'slow'")
    base = (args.url if "://" in args.url else f"http://{args.url}").rstrip("/")
    path = f"/v2/models/{urllib.parse.quote(args.model, safe='')}"
    if args.version:
        path += f"/versions/{urllib.parse.quote(str(args.version), safe='')}"
    url = f"{base}{path}/fault"
    body = json.dumps({"kind": args.kind, "delay_ms": args.delay_ms}).encode()
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read()).get("error") or exc.reason
        except ValueError:
            reason = exc.reason
        print(f"{PROG} fault: refused (HTTP {exc.code}): {reason}", file=sys.stderr)
        return 1
    except http.client.HTTPException:
        print(f"{PROG} fault: error: cannot reach {url}: {NOT_HTTP_PORT}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        why = getattr(exc, "reason", exc)
        print(
            f"{PROG} fault: error: cannot reach {url}: {why} "
            "(is the server up, and is --url its HTTP port?)",
            file=sys.stderr,
        )
        return 1
    print(answer.get("message", answer))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "version":
        print(f"{PROG} {_version()}")
        return 0
    from .errors import BackendUnavailableError, SteadyServeError

    commands = {"serve": _cmd_serve, "fit": _cmd_fit, "drift": _cmd_drift, "fault": _cmd_fault}
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
