"""The network server: gRPC (V2 inference, health, reflection) and an HTTP side port.

Both run on one asyncio loop over one ``Runtime``. The gRPC side is one of two
frontends (``ServerSettings.frontend``):

- ``native`` (the default): ``_core.GrpcFrontend``, C++ HTTP/2 on its own I/O
  threads. ModelInfer and ModelStreamInfer go socket to socket through the core
  with no Python per request; the other methods are bridged to the same grpc.aio
  handlers on this loop (``bridge.py``).
- ``grpcio``: a ``grpc.aio`` server running those handlers, the fallback and the
  reference the native frontend is compared against.

Start-up prints one line, ``steadyserve ready grpc=HOST:PORT http=HOST:PORT``
(``not-ready`` when a required model does not serve: ``announce.py``), once both
ports are bound (tests and scripts read the ports from it), then a short how-to
naming any model that is not ready and why. A port in use is an error naming it (``ports.py``).

Shutdown (SIGTERM or SIGINT): health turns NOT_SERVING, the gRPC side stops
accepting (native: GOAWAY to every connection) and gives in-flight RPCs ``grace_s``
to finish, the runtime drains and closes, the HTTP port closes last (probes see 503
while draining), exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
import time
from os import PathLike
from pathlib import Path

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..datatypes import numpy_dtype
from ..errors import SteadyServeError, UnavailableError
from ..monitoring.alerts import AlertEvaluator
from ..monitoring.metrics import FrontendCollector
from .announce import start_line
from .feedback_service import SERVICE_NAME as FEEDBACK_SERVICE
from .feedback_service import add_feedback_service
from .grpc_service import (
    RESPONSE_ALLOWANCE_NS,
    SERVICE_NAME,
    InferenceServicer,
    add_inference_service,
    server_version,
)
from .http_api import HttpApi, json_errors
from .management import Management
from .ports import StartupError, check_free, hostport, listen_socket
from .request_log import NativeRequestLog
from .settings import ServerSettings

log = logging.getLogger("steadyserve.server")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LAG_PROBE_S = 0.05  # how often the event loop's lag is sampled

__all__ = ["Server", "StartupError", "run", "serve"]  # StartupError lives in ports.py


# Error code (errors.*.grpc_code) -> HTTP status on the side port.
def _client_host(host: str) -> str:
    """Where a client on this machine should connect for a server bound to ``host``."""
    return "localhost" if host in ("0.0.0.0", "::", "") else host


class Server:
    """One gRPC frontend and one HTTP site over ``runtime``, sharing the running loop."""

    def __init__(self, runtime, settings: ServerSettings):
        self.runtime = runtime
        self.settings = settings
        self.grpc_port: int | None = None
        self.http_port: int | None = None
        self.management = Management(runtime, settings.management_token, settings.workers)
        self.siblings = None  # a --workers worker's siblings.Siblings: figures of all workers
        if settings.worker_dir is not None:
            from .siblings import Siblings

            self.siblings = Siblings.of(runtime, settings)
        self._servicer = InferenceServicer(
            runtime,
            self.management,
            log_sample_rate=settings.log_sample_rate,
            siblings=self.siblings,
        )
        self.http_api = HttpApi(
            runtime,
            settings,
            self.management,
            lambda: self._stopping,
            siblings=self.siblings,
            servicer=self._servicer,
        )
        self._health = health.aio.HealthServicer()
        self._grpc: grpc.aio.Server | None = None
        self._native = None  # _core.GrpcFrontend
        self._bridge = None  # bridge.GrpcBridge
        self._request_log = None  # request_log.NativeRequestLog, with --log-sample-rate
        self._http: web.AppRunner | None = None
        self._health_task: asyncio.Task | None = None
        self._lag_task: asyncio.Task | None = None
        self._alerts: AlertEvaluator | None = None
        self._stopping = False

    # -- start ---------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        await self._refresh_health()
        if s.frontend == "native":
            self._start_native()
        else:
            await self._start_grpcio()
        await self._start_http()
        # Its own thread (monitoring/alerts.py); after the HTTP site: generatorURL names it.
        self._alerts = AlertEvaluator.for_server(self.runtime, s, self.http_port)
        self._alerts.start()
        self.http_api.alerts = self._alerts
        if self.siblings is not None:
            await self.siblings.start()  # its worker socket, before the ready line
        self._health_task = asyncio.create_task(self._health_loop(), name="health-refresh")
        self._lag_task = asyncio.create_task(self._lag_loop(), name="loop-lag")
        log.info(
            "server started",
            extra={
                "frontend": s.frontend,
                "grpc": hostport(s.host, self.grpc_port),
                "http": hostport(s.host, self.http_port),
                "models": self.runtime.model_names(),
                "version": server_version(),
            },
        )

    def _register(self, server) -> None:
        """The handlers both frontends serve (the native one bridges them), on ``server``."""
        add_inference_service(self._servicer, server)
        add_feedback_service(self.runtime, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, FEEDBACK_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME),
            server,
        )

    def _start_native(self) -> None:
        from .. import _core
        from .bridge import GrpcBridge
        from .handlers import HandlerRecorder

        handlers = HandlerRecorder()
        self._register(handlers)
        s = self.settings
        if s.grpc_fd is None:
            check_free(s.host, s.grpc_port, "gRPC")  # the same words as with grpcio
        try:
            frontend = _core.GrpcFrontend(
                self.runtime.core,
                **s.native_options(),
                response_allowance_s=RESPONSE_ALLOWANCE_NS / 1e9,
            )
        except UnavailableError as exc:  # taken since the check: the native side's words
            raise StartupError(f"cannot bind the gRPC port: {exc}") from None
        self._native = frontend
        FrontendCollector.register(self.runtime.metrics.registry, frontend.stats)
        frontend.start()
        self._bridge = GrpcBridge(frontend, handlers)
        self._bridge.start()
        if s.log_sample_rate > 0:
            self._request_log = NativeRequestLog(frontend)
            self._request_log.start()
        self.grpc_port = frontend.port

    async def _start_grpcio(self) -> None:
        s = self.settings
        options = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.so_reuseport", 1 if s.reuse_port else 0),
        ]
        if s.max_pending_rpcs is not None:
            # gRPC core's own backlog of calls not yet taken by the server (random early
            # drop from the soft limit, refuse all at the hard one): refusals that cost no
            # Python, so overload is shed before it reaches the event loop.
            options += [
                ("grpc.server.max_pending_requests", max(0, s.max_pending_rpcs // 2)),
                ("grpc.server.max_pending_requests_hard_limit", s.max_pending_rpcs),
            ]
        if not s.reuse_port:
            # grpc's own bind error does not say why; this one names the port and the
            # reason. (With reuse_port the --workers supervisor checked it.)
            check_free(s.host, s.grpc_port, "gRPC")
        server = grpc.aio.server(options=options, maximum_concurrent_rpcs=s.max_concurrent_rpcs)
        self._register(server)
        address = hostport(s.host, s.grpc_port)
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise StartupError(f"cannot bind the gRPC port {address}: {exc}") from None
        if not port:
            raise StartupError(f"cannot bind the gRPC port {address} (in use, or bad host?)")
        await server.start()
        self._grpc, self.grpc_port = server, port

    async def _start_http(self) -> None:
        s = self.settings
        # Bodies up to the message limit (a REST inference, a load with its config).
        app = web.Application(middlewares=[json_errors], client_max_size=s.max_message_bytes)
        self.http_api.add_routes(app)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        if s.http_fd is not None:  # the --workers supervisor's listening socket
            site = web.SockSite(runner, socket.socket(fileno=s.http_fd))
        elif s.reuse_port:  # grpcio workers: each binds the port itself
            site = web.TCPSite(runner, s.host, s.http_port, reuse_port=True)
        else:
            try:
                sock = listen_socket(s.host, s.http_port, "HTTP")
            except StartupError:
                await runner.cleanup()
                raise
            site = web.SockSite(runner, sock)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise StartupError(
                f"cannot bind the HTTP port {hostport(s.host, s.http_port)}: {exc.strerror or exc}"
            ) from None
        self._http = runner
        self.http_port = int(runner.addresses[0][1])

    # -- health --------------------------------------------------------------------------

    async def _refresh_health(self) -> None:
        if self._stopping:
            return
        ready_names = {e.name for e in self.runtime.model_index() if e.state == "READY"}
        for entry in self.runtime.model_index():
            await self._health.set(
                entry.name, SERVING if entry.name in ready_names else NOT_SERVING
            )
        await self._health.set(
            health.OVERALL_HEALTH, SERVING if self.runtime.ready() else NOT_SERVING
        )

    async def _lag_loop(self) -> None:
        """Event-loop lag: how late a timer runs is how long ready work waits for the
        server's one Python thread (steadyserve_event_loop_lag_seconds)."""
        histogram = self.runtime.metrics.event_loop_lag
        loop = asyncio.get_running_loop()
        while not self._stopping:
            t = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            histogram.observe(max(0.0, loop.time() - t - LAG_PROBE_S))

    async def _health_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.settings.health_poll_s)
            try:
                await self._refresh_health()
            except Exception:
                log.exception("could not refresh health status")

    # -- stop ----------------------------------------------------------------------------

    async def stop(self) -> None:
        """Drain and close everything; safe to call once the server started (or failed to)."""
        if self._stopping:
            return
        self._stopping = True
        if self._alerts is not None:
            # First, and without waiting: a model draining on shutdown is no alert, and an
            # evaluation under way must not hold back the drain (joined before the close).
            self._alerts.request_stop()
        t0 = time.monotonic()
        log.info("shutting down", extra={"grace_s": self.settings.grace_s})
        self._servicer.begin_shutdown()
        await self._health.enter_graceful_shutdown()
        for task in (self._health_task, self._lag_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._grpc is not None:
            # Stops accepting at once; in-flight RPCs get up to grace_s to finish.
            await self._grpc.stop(self.settings.grace_s)
        if self._native is not None:
            # GOAWAY to every connection and no more accepting; open calls go on, native
            # ones on the I/O threads and bridged ones on this loop, which keeps running
            # while a thread waits for them (up to grace_s).
            self._native.shutdown()
            if not await asyncio.to_thread(self._native.wait_idle, self.settings.grace_s):
                log.warning(
                    "calls still open after the grace period; ending them",
                    extra={"grace_s": self.settings.grace_s, "stats": self._native.stats()},
                )
        if self._bridge is not None:
            await self._bridge.close()  # what is left (health watchers) gets UNAVAILABLE
        if self._alerts is not None:
            await asyncio.to_thread(self._alerts.stop)  # before the models it reads close
        await asyncio.to_thread(self.runtime.close)  # drains what the runtime accepted
        if self._request_log is not None:
            await self._request_log.stop()  # every answered request's line is out
        if self._native is not None:
            stats = self._native.stats()
            await asyncio.to_thread(self._native.stop)
            log.info("native frontend stopped", extra={"stats": stats})
        if self._http is not None:
            await self._http.cleanup()
        if self.siblings is not None:  # last: siblings' scrapes see this worker's figures
            await self.siblings.close()
        log.info("shutdown complete", extra={"seconds": round(time.monotonic() - t0, 3)})

    # -- banner --------------------------------------------------------------------------

    def ready_line(self) -> str:
        h = self.settings.host
        ready = not self.runtime.not_ready()
        return start_line(ready, hostport(h, self.grpc_port), hostport(h, self.http_port))

    def banner(self) -> str:
        host = _client_host(self.settings.host)
        grpc_url = hostport(host, self.grpc_port)
        http_url = f"http://{hostport(host, self.http_port)}"
        index = self.runtime.model_index()
        lines = [""]
        listing = ", ".join(f"{e.name} v{e.version} {e.state}" for e in index) or "(none)"
        lines.append(f"  models:  {listing}")
        for name, why in self.runtime.not_ready().items():
            lines.append(f"  NOT READY: {name or 'server'}: {why}")
        lines.append(f"  probes:  {http_url}/v2/health/ready   metrics: {http_url}/metrics")
        example = self._example(grpc_url, index)
        if example:
            lines.append("")
            lines.append("  try it (pip install 'tritonclient[grpc]'):")
            lines.append("")
            lines.extend(("    " + line) if line else "" for line in example)
        lines.append("")
        return "\n".join(lines)

    def _example(self, grpc_url: str, index) -> list[str]:
        for entry in index:
            if entry.state != "READY":
                continue
            try:
                model = self.runtime.get_model(entry.name, str(entry.version))
            except SteadyServeError:
                continue
            if not model.inputs or not model.outputs:
                continue
            lines = ["import numpy as np", "import tritonclient.grpc as grpcclient", ""]
            lines.append(f'client = grpcclient.InferenceServerClient("{grpc_url}")')
            names = []
            for i, spec in enumerate(model.inputs):
                shape = [1 if d < 0 else d for d in spec.shape]
                np_name = numpy_dtype(spec.datatype).name
                if spec.datatype == "BYTES":
                    make = f"np.full({shape}, 'text', dtype=object)"
                elif spec.datatype.startswith("FP"):
                    dims = ", ".join(str(d) for d in shape)
                    make = f"np.random.rand({dims}).astype(np.{np_name})"
                else:
                    make = f"np.ones({shape}, dtype=np.{np_name})"
                lines += [
                    f"x{i} = {make}",
                    f'in{i} = grpcclient.InferInput("{spec.name}", {shape}, "{spec.datatype}")',
                    f"in{i}.set_data_from_numpy(x{i})",
                ]
                names.append(f"in{i}")
            lines += [
                f'result = client.infer("{model.name}", [{", ".join(names)}])',
                f'print(result.as_numpy("{model.outputs[0].name}"))',
            ]
            return lines
        return []


async def serve(
    repository: str | PathLike,
    settings: ServerSettings,
    *,
    ready_stream=None,
    early_signals: list[int] | None = None,
) -> int:
    """Load the repository, serve until SIGTERM/SIGINT, drain, return the exit code (0).

    ``early_signals`` lists signals caught before the loop ran (see the CLI): the
    server then stops as soon as the repository is loaded, without starting.
    """
    from ..runtime import Runtime  # the heavy part: ONNX Runtime and the native core

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals_seen: list[int] = []

    def on_signal(signum: int) -> None:
        signals_seen.append(signum)
        if len(signals_seen) == 1:
            log.info("signal received", extra={"signal": signal.Signals(signum).name})
        else:
            log.warning(
                "already shutting down; waiting for in-flight requests",
                extra={"signal": signal.Signals(signum).name},
            )
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    if early_signals:
        on_signal(early_signals[0])

    # Built on the loop's thread: the runtime may bind to the running loop.
    # The native frontend runs no Python per request, so nothing would drive inline
    # execution: every model runs on executor threads.
    runtime = Runtime(
        repository,
        models=settings.load_models if settings.model_control_mode == "explicit" else None,
        allow_fault_injection=settings.allow_fault_injection,
        allow_inline=settings.frontend != "native",
        model_control=settings.model_control_mode,
        poll_s=settings.repository_poll_s,
        prediction_log=_prediction_log(settings),
    )
    # What the start loaded (modules, sessions, configs) lives as long as the server: out
    # of the collector's way, so that a full collection scans only what came after. The
    # prediction log's per-batch objects make full collections regular; without this
    # each one paused the process for 50-90 ms (measured at full sampling), with it ~10.
    gc.freeze()
    if settings.allow_fault_injection:
        log.warning(
            "fault injection is allowed: POST /v2/models/{name}/fault (steadyserve fault) "
            "can make models fail on purpose; never use --allow-fault-injection in production"
        )
    await asyncio.sleep(0)  # run the handlers of signals that came during the load
    if stop.is_set():
        await asyncio.to_thread(runtime.close)
        log.info("stopped before serving: a signal came while loading")
        return 0
    if not runtime.model_index():
        log.warning(
            "the repository has no models; expected REPO/<model>/<version>/model.onnx",
            extra={"repository": str(repository)},
        )
    server = Server(runtime, settings)
    try:
        await server.start()
    except BaseException:
        await server.stop()
        raise
    out = ready_stream if ready_stream is not None else sys.stdout
    print(server.ready_line(), file=out, flush=True)
    print(server.banner(), file=out, flush=True)

    await stop.wait()
    await server.stop()
    return 0


def run(
    repository: str | PathLike, settings: ServerSettings, *, early_signals: list[int] | None = None
) -> int:
    return asyncio.run(serve(repository, settings, early_signals=early_signals))


def _prediction_log(settings: ServerSettings):
    """The PredictionLog of --prediction-log, or None."""
    if settings.prediction_log is None:
        return None
    from ..predictions.writer import PredictionLog

    return PredictionLog(
        Path(settings.prediction_log),
        format=settings.prediction_log_format,
        rotate_bytes=settings.prediction_log_rotate_bytes,
        rotate_s=settings.prediction_log_rotate_s,
        queue_bytes=settings.prediction_log_queue_bytes,
    )
