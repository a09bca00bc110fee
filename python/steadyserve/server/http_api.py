"""The HTTP side port's routes: probes, metrics, drift, failover, faults, and the
model repository (Triton's REST forms, and steadyserve's rollback).

Every answer is JSON, errors included (``{"error": ...}`` with the status its gRPC
code maps to, ``_HTTP_STATUS``): V2 clients parse the body of any answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..errors import NotFoundError, SteadyServeError, UnavailableError
from .management import TOKEN_HEADER, Management
from .settings import ServerSettings

log = logging.getLogger("steadyserve.server")

# gRPC code -> HTTP status, as google.rpc.Code documents the pairs (what grpc-gateway and
# Envoy's transcoder use). V2 clients (tritonclient.http, KServe's) read the JSON error
# of any non-200 answer alike; the status is for HTTP infrastructure: 429 and 503 say
# "retry later or elsewhere", 504 "it ran out of time" (Triton's own 400 for these
# would tell a proxy the request itself is bad).
_HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "FAILED_PRECONDITION": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


@web.middleware
async def json_errors(request: web.Request, handler):
    """aiohttp's own refusals (no such path, wrong method) as JSON like every other
    error here: V2 clients parse the body of any answer."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_error(exc.status, f"{exc.reason}: {request.method} {request.path}")


def _http_error(status: int, message: str) -> web.Response:
    # "application/json" without a charset, as the V2 routes answer: KServe's client
    # reads an error's message only under exactly that content type.
    body = json.dumps({"error": message}).encode()
    return web.Response(body=body, status=status, content_type="application/json")


async def _json_body(request: web.Request, default):
    """The request's JSON body (``default`` when empty), or a 400 response saying why."""
    if not request.can_read_body:
        return default
    try:
        return await request.json()
    except ValueError as exc:
        return _http_error(400, f"body is not JSON: {exc}")


async def _answer(function, *args):
    # On a thread: a report waits for the lifecycle lock a load may hold for seconds.
    return await asyncio.to_thread(function, *args)


async def _http_call(call) -> web.Response:
    """Await ``call``; its result as JSON (``{}`` for None), a SteadyServeError as
    ``{"error": ...}`` with the status its gRPC code maps to."""
    try:
        result = await call
    except SteadyServeError as exc:
        return _http_error(_HTTP_STATUS.get(exc.grpc_code, 500), str(exc))
    return web.json_response(result if result is not None else {})


class HttpApi:
    """The route handlers over one runtime; ``stopping()`` says the server drains."""

    def __init__(
        self,
        runtime,
        settings: ServerSettings,
        management: Management,
        stopping: Callable[[], bool],
        siblings=None,
        servicer=None,
    ):
        self.runtime = runtime
        self.settings = settings
        self.management = management
        self._stopping = stopping
        # A --workers worker's siblings.Siblings (None: one server): drift, failover
        # and /metrics then answer for every worker.
        self.siblings = siblings
        self.servicer = servicer  # the gRPC handlers REST shares (None: REST makes its own)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v2/health/live", self._http_live)
        app.router.add_get("/v2/health/ready", self._http_ready)
        app.router.add_get("/v2/models/{name}/ready", self._http_model_ready)
        app.router.add_get("/v2/models/{name}/versions/{version}/ready", self._http_model_ready)
        app.router.add_get("/v2/models/{name}/drift", self._http_model_drift)
        app.router.add_get("/v2/models/{name}/versions/{version}/drift", self._http_model_drift)
        app.router.add_get("/metrics", self._http_metrics)
        app.router.add_post("/v2/repository/index", self._http_repository_index)
        app.router.add_post("/v2/repository/models/{name}/load", self._http_load)
        app.router.add_post("/v2/repository/models/{name}/unload", self._http_unload)
        app.router.add_post("/v2/repository/models/{name}/rollback", self._http_rollback)
        app.router.add_get("/v2/models/{name}/lifecycle", self._http_lifecycle)
        app.router.add_get("/v2/models/{name}/shadow", self._http_shadow)
        app.router.add_post("/v2/models/{name}/feedback", self._http_feedback)
        app.router.add_get("/v2/models/{name}/quality", self._http_quality)
        app.router.add_get("/v2/failover", self._http_failover)
        app.router.add_get("/v2/alerts", self._http_alerts)
        app.router.add_post("/v2/models/{name}/fault", self._http_fault)
        app.router.add_post("/v2/models/{name}/versions/{version}/fault", self._http_fault)
        from .rest_v2 import add_v2_routes  # here: rest_v2 imports this module

        add_v2_routes(app, self.runtime, self.settings, self._stopping, self.servicer)

    async def _http_live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def _http_ready(self, request: web.Request) -> web.Response:
        ready = not self._stopping() and bool(self.runtime.ready())
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def _http_model_ready(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        version = request.match_info.get("version")
        try:
            model = self.runtime.get_model(name, version)
        except NotFoundError as exc:
            return web.json_response({"ready": False, "error": str(exc)}, status=404)
        except UnavailableError as exc:
            return web.json_response({"ready": False, "error": str(exc)}, status=503)
        except SteadyServeError as exc:  # e.g. a malformed name
            return web.json_response({"ready": False, "error": str(exc)}, status=400)
        ready = not self._stopping() and bool(model.ready)
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def _http_model_drift(self, request: web.Request) -> web.Response:
        """The model version's live drift and data-quality report (ServableModel.drift_report)."""
        try:
            model = self.runtime.get_model(
                request.match_info["name"], request.match_info.get("version")
            )
        except NotFoundError as exc:
            return _http_error(404, str(exc))
        except UnavailableError as exc:
            return _http_error(503, str(exc))
        except SteadyServeError as exc:  # e.g. a malformed name
            return _http_error(400, str(exc))
        if self.siblings is not None:
            return web.json_response(await self.siblings.drift_report(model))
        return web.json_response(model.drift_report())

    alerts = None  # the monitoring.alerts.AlertEvaluator; Server.start sets it

    async def _http_alerts(self, request: web.Request) -> web.Response:
        """Alerts firing and pending, and the receivers' counts (AlertEvaluator.report)."""
        if self.alerts is None:
            return _http_error(503, "alert evaluation is not running")
        return web.json_response(self.alerts.report())

    async def _http_failover(self, request: web.Request) -> web.Response:
        """Circuit states, backup chains and failover counts (Runtime.failover_report)."""
        if self.siblings is not None:
            return web.json_response(await self.siblings.failover_report())
        return web.json_response(self.runtime.failover_report())

    async def _http_fault(self, request: web.Request) -> web.Response:
        """Inject a fault into a model, or clear it: {"kind": "error|hang|nan|slow|clear",
        "delay_ms": N}. Refused (403) unless the server runs with --allow-fault-injection."""
        name = request.match_info["name"]
        version = request.match_info.get("version")
        usage = 'expected a JSON object {"kind": "error|hang|nan|slow|clear", "delay_ms": N}'
        try:
            body = await request.json()
        except ValueError:
            return _http_error(400, f"body is not JSON: {usage}")
        kind = body.get("kind") if isinstance(body, dict) else None
        delay_ms = body.get("delay_ms", 0) if isinstance(body, dict) else 0
        if not isinstance(kind, str):
            return _http_error(400, f"no 'kind': {usage}")
        if isinstance(delay_ms, bool) or not isinstance(delay_ms, (int, float)):
            return _http_error(
                400, f"'delay_ms' must be a number of milliseconds; got {delay_ms!r}"
            )
        try:
            if kind == "clear":
                self.runtime.clear_fault(name, version=version)
                fault = None
            else:
                fault = self.runtime.inject_fault(name, kind, delay_ms=delay_ms, version=version)
        except SteadyServeError as exc:
            status = _HTTP_STATUS.get(exc.grpc_code, 500)
            return _http_error(status, str(exc))
        what = "cleared" if fault is None else f"injected: {fault.describe()}"
        log.warning("fault %s", what, extra={"model": name, "fault": kind})
        return web.json_response(
            {
                "model": name,
                "fault": None if fault is None else fault.kind,
                "delay_ms": None if fault is None else fault.delay_ms,
                "message": f"model '{name}': fault {what}",
            }
        )

    # -- model repository (Triton's REST forms, and steadyserve's rollback) ---------------

    async def _http_repository_index(self, request: web.Request) -> web.Response:
        body = await _json_body(request, default={})
        if isinstance(body, web.Response):
            return body
        ready_only = bool(body.get("ready", False)) if isinstance(body, dict) else False
        return web.json_response(
            [
                {"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
                for e in self.runtime.model_index()
                if not ready_only or e.state == "READY"
            ]
        )

    async def _http_load(self, request: web.Request) -> web.Response:
        body = await _json_body(request, default={})
        if isinstance(body, web.Response):
            return body
        parameters = body.get("parameters", {}) if isinstance(body, dict) else None
        if not isinstance(parameters, dict):
            return _http_error(400, 'expected a JSON object {"parameters": {"config": "..."}}')
        name = request.match_info["name"]
        credential = request.headers.get(TOKEN_HEADER)
        return await _http_call(self.management.load(name, parameters, credential))

    async def _http_unload(self, request: web.Request) -> web.Response:
        body = await _json_body(request, default={})
        if isinstance(body, web.Response):
            return body
        parameters = body.get("parameters", {}) if isinstance(body, dict) else None
        if not isinstance(parameters, dict):
            return _http_error(400, 'expected a JSON object {"parameters": {...}}')
        name = request.match_info["name"]
        credential = request.headers.get(TOKEN_HEADER)
        return await _http_call(self.management.unload(name, parameters, credential))

    async def _http_rollback(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        credential = request.headers.get(TOKEN_HEADER)
        return await _http_call(self.management.rollback(name, credential))

    async def _http_lifecycle(self, request: web.Request) -> web.Response:
        """What serves, what is kept for rollback, probation, the gate's last scores."""
        return await _http_call(_answer(self.runtime.lifecycle_report, request.match_info["name"]))

    async def _http_shadow(self, request: web.Request) -> web.Response:
        """The shadow version's agreement with the live one (config: shadow)."""
        return await _http_call(_answer(self.runtime.shadow_report, request.match_info["name"]))

    # -- the feedback loop (predictions/) --------------------------------------------------

    async def _http_feedback(self, request: web.Request) -> web.Response:
        """Ground truth for logged requests: a JSON list of {"id": REQUEST_ID, "label": ...};
        the answer counts accepted, joined, pending and rejected items (and says why each
        rejected one was)."""
        body = await _json_body(request, default=None)
        if isinstance(body, web.Response):
            return body
        if not isinstance(body, list):
            return _http_error(
                400, 'expected a JSON list of {"id": "<x-request-id>", "label": <value>}'
            )
        # On a thread: the labels are on disk (fsync) before the answer.
        return await _http_call(_answer(self.runtime.feedback, request.match_info["name"], body))

    async def _http_quality(self, request: web.Request) -> web.Response:
        """The model's live KPI windows and pending labels (QualityMonitor.report)."""
        name = request.match_info["name"]
        monitor = self.runtime.quality
        if monitor is None:
            from ..predictions.loop import no_log_error

            return _http_error(409, str(no_log_error()))
        return await _http_call(_answer(monitor.report, name))

    async def _http_metrics(self, request: web.Request) -> web.Response:
        if self.siblings is not None:
            body = (await self.siblings.metrics()).encode()
        else:
            body = generate_latest(self.runtime.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


__all__ = ["HttpApi", "json_errors"]
