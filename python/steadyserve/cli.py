"""The ``steadyserve`` command: ``serve`` and ``version`` (bench, fit, evaluate, ... come later).

Exit codes: 0 success, 1 failure while running, 2 bad usage or missing dependency.
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
}


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

    from .server.settings import MIB, ServerSettings

    if args.demo and args.repo:
        raise UsageError("give either REPO or --demo, not both")
    if args.demo_dir and not args.demo:
        raise UsageError("--demo-dir only makes sense with --demo")
    if not args.demo and not args.repo:
        raise UsageError(
            "serve needs a model repository: `steadyserve serve REPO` "
            "(REPO/<model>/<version>/model.onnx), or `steadyserve serve --demo` to try it out"
        )
    if not 0 < args.max_message_mb < 2048:
        raise UsageError(
            f"--max-message-mb must be > 0 and < 2048 (MiB); got {args.max_message_mb}"
        )
    try:
        settings = ServerSettings(
            host=args.host,
            grpc_port=args.grpc_port,
            http_port=args.http_port,
            grace_s=args.grace_s,
            log_level=args.log_level,
            max_message_bytes=int(args.max_message_mb * MIB),
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{_FLAG_OF.get(str(e['loc'][0]), e['loc'][0])}: {e['msg']}" for e in exc.errors()
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

        from .server.app import run

        return run(repo, settings, early_signals=early_signals)


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

    try:
        return _cmd_serve(args)
    except UsageError as exc:
        print(f"{PROG} serve: error: {exc}", file=sys.stderr)
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
