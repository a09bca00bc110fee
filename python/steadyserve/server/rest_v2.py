"""KServe V2 REST on the HTTP side port: server and model metadata, model config and
statistics (Triton's extensions), and inference with Triton's binary tensor data
extension, so that ``tritonclient.http`` and KServe's REST client work unchanged.

The transport is thin; nothing here decides what gRPC would decide differently:

- metadata, config and statistics are the gRPC handlers' own messages
  (``InferenceServicer``) written as JSON the way Triton's REST writes them: field
  names as in the proto, every field present, 64-bit integers as JSON numbers;
- an inference request is decoded (``rest_codec``) into arrays and goes through the same
  data plane as in-process callers (``Runtime.infer_async``): the core checks names,
  datatypes, shapes and values, routes, fails over and answers;
- errors map to a status once: the gRPC code of the error (``status.status_of``), then
  ``http_api._HTTP_STATUS``; the body is ``{"error": message}``.

Request ids: the answer's ``id`` is the request's V2 ``id``, else its ``x-request-id``
header, else a new one (uuid4 hex); its ``x-request-id`` header (errors included) is the
request's header, else that id. Each place echoes what the client sent there, as on the
gRPC path (the metadata header wins there, the response ``id`` echoes the V2 ``id``).
Deadlines: the ``timeout`` request parameter (µs), counted from the request's arrival,
as on the gRPC path; ``priority`` likewise.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable

from aiohttp import web
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToDict

from .._proto import grpc_predict_v2_pb2 as pb
from ..errors import UnavailableError
from . import request_log
from . import rest_codec as codec
from .grpc_service import EXTENSIONS, WORKERS_METADATA, InferenceServicer
from .http_api import _HTTP_STATUS
from .settings import ServerSettings
from .status import status_of

log = logging.getLogger("steadyserve.server")

REQUEST_ID_HEADER = "x-request-id"
# Extensions of the REST protocol only (gRPC has raw_input_contents instead).
REST_EXTENSIONS = ("binary_tensor_data",)

_INT64_TYPES = (
    FieldDescriptor.CPPTYPE_INT64,
    FieldDescriptor.CPPTYPE_UINT64,
)


def message_json(message) -> dict:
    """A protobuf message as Triton's REST writes it: proto field names, every field
    (defaults too), and 64-bit integers as JSON numbers (protobuf's JSON mapping makes
    them strings)."""
    value = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _int64_as_numbers(value, message.DESCRIPTOR)
    return value


def _int64_as_numbers(value: dict, descriptor) -> None:
    for key, item in value.items():
        field = descriptor.fields_by_name.get(key)
        if field is None:
            continue
        sub = field.message_type
        if sub is not None and sub.GetOptions().map_entry:
            target = sub.fields_by_name["value"]
            if target.message_type is not None:
                for v in item.values():
                    _int64_as_numbers(v, target.message_type)
            elif target.cpp_type in _INT64_TYPES:
                value[key] = {k: int(v) for k, v in item.items()}
        elif sub is not None:
            for v in item if isinstance(item, list) else (item,):
                _int64_as_numbers(v, sub)
        elif field.cpp_type in _INT64_TYPES:
            value[key] = [int(v) for v in item] if isinstance(item, list) else int(item)


def _response(
    body: bytes, status: int = 200, headers: dict | None = None, content_type=codec.JSON_TYPE
) -> web.Response:
    # "application/json" without a charset: KServe's client reads the error message of an
    # answer only when the content type is exactly that.
    return web.Response(body=body, status=status, headers=headers, content_type=content_type)


def _failure(exc: BaseException, what: str, headers: dict | None = None) -> web.Response:
    """The error answer for ``exc``: its gRPC code's HTTP status and ``{"error": ...}``
    (unexpected exceptions are logged and answered 500 without internals)."""
    code, message = status_of(exc, method=what)
    return _response(codec.error_body(message), _HTTP_STATUS.get(code.name, 500), headers)


class _BodyTooLarge(Exception):
    pass


class _Context:
    """What the gRPC handlers called here use of a servicer context: no metadata in,
    trailing metadata kept (the workers' figures say who answered there)."""

    def __init__(self) -> None:
        self.trailing: dict[str, str] = {}

    def invocation_metadata(self) -> tuple:
        return ()

    def set_trailing_metadata(self, metadata) -> None:
        self.trailing.update(metadata)


class RestV2:
    """The V2 REST routes over one runtime; ``stopping()`` says the server drains."""

    def __init__(
        self,
        runtime,
        settings: ServerSettings,
        stopping: Callable[[], bool],
        servicer: InferenceServicer | None = None,
    ):
        self.runtime = runtime
        self.max_body_bytes = settings.max_message_bytes
        self._stopping = stopping
        # The gRPC handlers of the low-volume methods: one source for both transports
        # (the server's own, so a --workers worker's statistics are the whole server's).
        self._grpc = servicer if servicer is not None else InferenceServicer(runtime)

    def add_routes(self, app: web.Application) -> None:
        router = app.router
        router.add_get("/v2", self._server_metadata)
        router.add_get("/v2/models/stats", self._statistics)  # before /v2/models/{name}
        for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            router.add_get(base, self._model_metadata)
            router.add_get(base + "/config", self._model_config)
            router.add_get(base + "/stats", self._statistics)
            router.add_post(base + "/infer", self._infer)

    # -- metadata, config, statistics -----------------------------------------------------

    async def _as_json(self, method: str, message, pick=None) -> web.Response:
        """Run the gRPC handler ``method`` on ``message``; its answer (or ``pick`` of it)
        as JSON, or the error it raised."""
        context = _Context()
        try:
            response = await getattr(self._grpc, method)(message, context)
        except Exception as exc:
            return _failure(exc, f"REST {method}")
        body = pick(response) if pick is not None else message_json(response)
        workers = context.trailing.get(WORKERS_METADATA)
        if workers is not None:  # merged across --workers: who answered
            body["workers"] = json.loads(workers)
        return _response(codec.json_body(body))

    async def _server_metadata(self, request: web.Request) -> web.Response:
        def with_rest_extensions(response) -> dict:
            body = message_json(response)
            body["extensions"] = [*EXTENSIONS, *REST_EXTENSIONS]
            return body

        message = pb.ServerMetadataRequest()
        return await self._as_json("ServerMetadata", message, with_rest_extensions)

    async def _model_metadata(self, request: web.Request) -> web.Response:
        return await self._as_json("ModelMetadata", pb.ModelMetadataRequest(**_model_of(request)))

    async def _model_config(self, request: web.Request) -> web.Response:
        """The model's config as Triton's REST returns it: the ModelConfig itself."""
        message = pb.ModelConfigRequest(**_model_of(request))
        return await self._as_json("ModelConfig", message, lambda r: message_json(r.config))

    async def _statistics(self, request: web.Request) -> web.Response:
        message = pb.ModelStatisticsRequest(**_model_of(request))
        return await self._as_json("ModelStatistics", message)

    # -- inference -----------------------------------------------------------------------

    async def _infer(self, request: web.Request) -> web.Response:
        arrival_ns = time.monotonic_ns()
        given = request.headers.get(REQUEST_ID_HEADER) or ""
        request_id = given
        try:
            if self._stopping():
                raise UnavailableError("the server is shutting down; send the request elsewhere")
            body = await self._read_body(request)
            infer = codec.decode_request(body, request.headers.get(codec.HEADER_LENGTH))
            request_id = infer.id or given or uuid.uuid4().hex
            deadline_ns = None
            if infer.timeout_us > 0:
                deadline_ns = arrival_ns + min(infer.timeout_us, codec.MAX_TIMEOUT_US) * 1000
            requested = infer.outputs or None
            result = await self.runtime.infer_async(
                request.match_info["name"],
                infer.inputs,
                version=request.match_info.get("version"),
                outputs=None if requested is None else [o.name for o in requested],
                priority=infer.priority,
                deadline_ns=deadline_ns,
                request_id=given or request_id,
            )
            answer, json_length = codec.encode_response(
                model_name=result.model_name,
                model_version=str(result.model_version),
                request_id=request_id,
                parameters=result.parameters,
                outputs=result.outputs,
                requested=requested,
                binary_output=infer.binary_output,
            )
        except _BodyTooLarge as exc:
            headers = {REQUEST_ID_HEADER: given or uuid.uuid4().hex}
            return _response(codec.error_body(str(exc)), 413, headers)
        except Exception as exc:
            headers = {REQUEST_ID_HEADER: given or request_id or uuid.uuid4().hex}
            if self._grpc.sampler.take():
                code, message = status_of(exc, method="REST ModelInfer")
                request_log.write(
                    {
                        "request_id": headers[REQUEST_ID_HEADER],
                        "model": request.match_info["name"],
                        "grpc_status": code.value[0],
                        "error": message,
                        "latency_ms": (time.monotonic_ns() - arrival_ns) / 1e6,
                        "protocol": "rest",
                    }
                )
            return _failure(exc, "REST ModelInfer", headers)
        headers = {REQUEST_ID_HEADER: given or request_id}
        if self._grpc.sampler.take():
            request_log.write(
                {
                    "request_id": request_id,
                    "model": request.match_info["name"],
                    "answered_by": result.model_name,
                    "version": str(result.model_version),
                    "grpc_status": 0,
                    "latency_ms": (time.monotonic_ns() - arrival_ns) / 1e6,
                    "protocol": "rest",
                }
            )
        if json_length is None:
            return _response(answer, headers=headers)
        headers[codec.HEADER_LENGTH] = str(json_length)
        return _response(answer, headers=headers, content_type=codec.BINARY_TYPE)

    async def _read_body(self, request: web.Request) -> bytes | bytearray:
        """The request body, at most ``max_body_bytes`` (the gRPC message limit, so both
        transports take the same requests)."""
        limit = self.max_body_bytes
        too_large = (
            f"the request body is larger than {limit} bytes, the server's limit "
            f"(steadyserve serve --max-message-mb)"
        )
        length = request.content_length
        if length is not None and length > limit:
            raise _BodyTooLarge(f"{too_large}: Content-Length is {length}")
        body = bytearray()
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > limit:
                raise _BodyTooLarge(too_large)
        return body


def _model_of(request: web.Request) -> dict:
    """The name and version of the model a route names (both empty: every model)."""
    return {
        "name": request.match_info.get("name", ""),
        "version": request.match_info.get("version", ""),
    }


def add_v2_routes(
    app: web.Application,
    runtime,
    settings: ServerSettings,
    stopping: Callable[[], bool],
    servicer: InferenceServicer | None = None,
) -> RestV2:
    """Register the V2 REST routes on ``app``; returns their handler object."""
    rest = RestV2(runtime, settings, stopping, servicer)
    rest.add_routes(app)
    return rest


__all__ = ["RestV2", "add_v2_routes", "message_json"]
