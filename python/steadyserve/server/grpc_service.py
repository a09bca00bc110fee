"""The KServe V2 / Triton-compatible gRPC service (``inference.GRPCInferenceService``).

A thin transport over a ``Runtime``: each handler decodes the request, calls the
runtime, and encodes the answer. Errors become gRPC statuses in exactly one place
(``status.py``).

Requests arrive as bytes and are parsed here, not by gRPC's deserializer, so that
a malformed message is answered INVALID_ARGUMENT (gRPC itself would say INTERNAL).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from importlib import metadata as _metadata

import grpc
from google.protobuf import message as _pb_message
from google.protobuf import message_factory

from .._proto import grpc_predict_v2_pb2 as pb
from ..errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    SteadyServeError,
    UnavailableError,
)
from . import request_log
from .management import TOKEN_HEADER, parameter_value
from .status import abort_with, status_of

log = logging.getLogger("steadyserve.server")

SERVICE_NAME = "inference.GRPCInferenceService"
SERVER_NAME = "steadyserve"
# Triton's names for the protocol extensions this server implements.
EXTENSIONS = (
    "model_configuration",
    "model_repository",
    "statistics",
    "parameters",
    "schedule_policy",
)
BACKEND = "onnxruntime"

_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
assert _SERVICE.full_name == SERVICE_NAME


def server_version() -> str:
    try:
        return _metadata.version("steadyserve")
    except _metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


# Of a gRPC deadline, the part kept for the answer's way back: the server aims to answer
# (or refuse) before the client gives up, and a client cancelling at its deadline then
# finds the request already expired here rather than merely cancelled.
RESPONSE_ALLOWANCE_NS = 1_000_000
# A --workers worker's ModelStatistics: which workers' figures it sums (JSON, {"answered":
# [...], "missing": [...]}), as trailing metadata (grpcio; the native bridge sends none).
WORKERS_METADATA = "steadyserve-workers"
# Metadata the request id comes in and goes back in (the native frontend's too).
REQUEST_ID_HEADER = "x-request-id"


def _version_key(version: str):
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def _enum_number(message, field: str, value_name: str) -> int:
    """Number of enum value ``value_name`` of ``message.field`` (wherever the enum is defined)."""
    enum = message.DESCRIPTOR.fields_by_name[field].enum_type
    return enum.values_by_name[value_name].number


def _config_type(datatype: str) -> str:
    """The model_config.DataType name of a V2 datatype (Triton calls BYTES TYPE_STRING)."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _has_field(message, field: str) -> bool:
    return field in message.DESCRIPTOR.fields_by_name


class InferenceServicer:
    """Handlers of ``inference.GRPCInferenceService`` over a ``Runtime``."""

    def __init__(self, runtime, management=None, log_sample_rate: float = 0.0, siblings=None):
        self._runtime = runtime
        self.sampler = request_log.Sampler(log_sample_rate)  # grpcio's ModelInfer
        self._management = management  # server.management.Management (None: refused)
        self._siblings = siblings  # server.siblings.Siblings of a --workers worker, else None
        self._stopping = False

    def begin_shutdown(self) -> None:
        """ServerReady answers false from now on (the health service says NOT_SERVING too)."""
        self._stopping = True

    # -- health and metadata -------------------------------------------------------------

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=not self._stopping and bool(self._runtime.ready()))

    async def ModelReady(self, request, context):
        try:
            model = self._runtime.get_model(request.name, request.version or None)
        except (NotFoundError, UnavailableError, InvalidArgumentError):
            # A readiness probe gets an answer, not an error: no such (valid) model is ready.
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=not self._stopping and bool(model.ready))

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=server_version(), extensions=list(EXTENSIONS)
        )

    def _versions_of(self, name: str, fallback: str) -> list[str]:
        versions = {
            str(e.version)
            for e in self._runtime.model_index()
            if e.name == name and e.state == "READY"
        }
        return sorted(versions or {fallback}, key=_version_key)

    async def ModelMetadata(self, request, context):
        model = self._runtime.get_model(request.name, request.version or None)
        response = pb.ModelMetadataResponse(
            name=model.name,
            versions=self._versions_of(model.name, str(model.version)),
            platform=model.platform,
        )
        for specs, target in ((model.inputs, response.inputs), (model.outputs, response.outputs)):
            for spec in specs:
                target.add(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))
        return response

    async def ModelConfig(self, request, context):
        model = self._runtime.get_model(request.name, request.version or None)
        response = pb.ModelConfigResponse()
        fill_model_config(response.config, model)
        return response

    # -- inference -----------------------------------------------------------------------

    # -- statistics and repository -------------------------------------------------------

    async def ModelStatistics(self, request, context):
        reported = model_statistics(self._runtime, request.name, request.version)
        if self._siblings is not None:  # a --workers worker: the whole server's figures
            reported, workers = await self._siblings.statistics(
                request.name, request.version, reported
            )
            context.set_trailing_metadata(((WORKERS_METADATA, json.dumps(workers)),))
        response = pb.ModelStatisticsResponse()
        for name, version, stats in reported:
            fill_model_statistics(response.model_stats.add(), name, version, stats)
        return response

    async def RepositoryIndex(self, request, context):
        response = pb.RepositoryIndexResponse()
        for entry in self._runtime.model_index():
            if request.ready and entry.state != "READY":
                continue
            response.models.add(
                name=entry.name,
                version=str(entry.version),
                state=entry.state,
                reason=entry.reason or "",
            )
        return response

    async def RepositoryModelLoad(self, request, context):
        management = self._manager()
        params = {k: parameter_value(v) for k, v in request.parameters.items()}
        await management.load(request.model_name, params, _credential(context))
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        management = self._manager()
        params = {k: parameter_value(v) for k, v in request.parameters.items()}
        await management.unload(request.model_name, params, _credential(context))
        return pb.RepositoryModelUnloadResponse()

    def _manager(self):
        if self._management is None:
            raise FailedPreconditionError("model management is not served here")
        return self._management


def _credential(context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == TOKEN_HEADER:
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


def fill_model_config(config, model) -> None:
    """Fill the Triton ``ModelConfig`` subset that describes ``model``."""
    cfg = model.config
    batching = model.max_batch_size > 0
    config.name = model.name
    config.platform = model.platform
    config.backend = BACKEND
    config.max_batch_size = model.max_batch_size
    for specs, field in ((model.inputs, config.input), (model.outputs, config.output)):
        for spec in specs:
            entry = field.add(name=spec.name)
            entry.data_type = _enum_number(entry, "data_type", _config_type(spec.datatype))
            entry.dims.extend(spec.shape[1:] if batching else spec.shape)
    if _has_field(config, "version_policy"):
        policy = config.version_policy
        if cfg.versions == "latest":
            policy.latest.num_versions = 1
        elif cfg.versions == "all":
            policy.all.SetInParent()
        else:
            policy.specific.versions.extend(int(v) for v in cfg.versions)
    if batching:
        config.dynamic_batching.SetInParent()
        config.dynamic_batching.preferred_batch_size.extend(cfg.batching.preferred_batch_sizes)
        config.dynamic_batching.max_queue_delay_microseconds = cfg.batching.max_queue_delay_us
    group = config.instance_group.add(name=f"{model.name}_0", count=cfg.instances)
    gpu = cfg.onnxruntime.device == "cuda"
    group.kind = _enum_number(group, "kind", "KIND_GPU" if gpu else "KIND_CPU")
    if gpu:
        group.gpus.append(cfg.onnxruntime.device_id)


def _fill_duration(target, duration) -> None:
    target.count = int(duration.count)
    target.ns = int(duration.ns)


def model_statistics(runtime, name: str = "", version: str = "") -> list:
    """(name, version, ModelStatistics) of every ready model version that ``name`` and
    ``version`` select ('' = any), as ModelStatistics reports them. A name that selects
    nothing raises the runtime's error naming what is missing (model or version)."""
    wanted = [
        e
        for e in runtime.model_index()
        if (not name or e.name == name) and (not version or str(e.version) == version)
    ]
    if name and not wanted:
        runtime.get_model(name, version or None)
    reported = []
    for entry in wanted:
        if entry.state != "READY":
            continue
        try:
            model = runtime.get_model(entry.name, str(entry.version))
        except (NotFoundError, UnavailableError):
            continue  # unloaded between the index and now
        reported.append((model.name, str(model.version), model.statistics()))
    return reported


def fill_model_statistics(target, name: str, version: str, stats) -> None:
    target.name = name
    target.version = version
    target.last_inference = int(stats.last_inference_ms)
    target.inference_count = int(stats.inference_count)
    target.execution_count = int(stats.execution_count)
    infer = target.inference_stats
    for name in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        _fill_duration(getattr(infer, name), getattr(stats, name))
    for batch_size in sorted(stats.batch_stats):
        b = stats.batch_stats[batch_size]
        entry = target.batch_stats.add(batch_size=int(batch_size))
        for name in ("compute_input", "compute_infer", "compute_output"):
            d = getattr(entry, name)
            d.count = int(b.count)
            d.ns = int(getattr(b, f"{name}_ns"))


# -- registration ------------------------------------------------------------------------


def _message_class(descriptor):
    return message_factory.GetMessageClass(descriptor)


def unary_handler(name: str, impl: Callable[..., Awaitable], request_cls, response_cls):
    """A unary method of ours: parse ``request_cls``, await ``impl``, errors mapped once
    (``abort_with``); for any service this server registers."""
    what = request_cls.DESCRIPTOR.name

    async def handler(data: bytes, context):
        try:
            request = request_cls.FromString(data)
        except _pb_message.DecodeError as exc:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"malformed {what}: cannot parse it ({exc})"
            )
        try:
            return await impl(request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            if isinstance(exc, SteadyServeError) and context.time_remaining() == 0:
                # The gRPC deadline has passed: gRPC answers DEADLINE_EXCEEDED itself, and an
                # abort now would fail (and be logged as an error, costly under overload).
                raise asyncio.CancelledError() from None
            await abort_with(context, exc, method=name)

    return grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=None, response_serializer=response_cls.SerializeToString
    )


def _unimplemented_handler(method) -> grpc.RpcMethodHandler:
    message = f"steadyserve does not implement {SERVICE_NAME}/{method.name}"

    if method.client_streaming or method.server_streaming:

        async def stream(request_iterator, context):
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

        factory = {
            (True, True): grpc.stream_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
        }[(method.client_streaming, method.server_streaming)]
        return factory(stream)

    async def unary(data, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    return grpc.unary_unary_rpc_method_handler(unary)


def _model_infer_handler(servicer: InferenceServicer) -> grpc.RpcMethodHandler:
    """ModelInfer, bytes in and bytes out: the native core parses, checks, routes, queues
    and answers the request (a serialized ModelInferResponse); this coroutine only
    hands the bytes over and awaits the answer — a handful of Python operations."""
    runtime = servicer._runtime
    core = runtime.core
    dispatcher = runtime.dispatcher
    sampler = servicer.sampler

    async def handler(data: bytes, context):
        started = time.monotonic_ns()
        given = None
        for key, value in context.invocation_metadata() or ():
            if key == "x-request-id":
                given = value
                break
        # Made up before the core sees the request, so that a prediction log record
        # carries the id this answer will.
        made_up = None if given else _generated_id()
        try:
            answer = await answer_of(data, context, given or made_up, given is not None)
        except grpc.aio.AbortError:
            raise
        except SteadyServeError as failure:
            request_id = given or made_up
            context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
            if sampler.take():
                code, message = status_of(failure)
                request_log.write(
                    {
                        "request_id": request_id,
                        "grpc_status": code.value[0],
                        "error": message,
                        "latency_ms": (time.monotonic_ns() - started) / 1e6,
                    }
                )
            await abort_with(context, failure, method="ModelInfer")
        head = _response_head(answer)
        request_id = given or head[2] or made_up
        await context.send_initial_metadata(((REQUEST_ID_HEADER, request_id),))
        if sampler.take():
            request_log.write(
                {
                    "request_id": request_id,
                    "answered_by": head[0],
                    "version": head[1],
                    "grpc_status": 0,
                    "latency_ms": (time.monotonic_ns() - started) / 1e6,
                }
            )
        return answer

    async def answer_of(data: bytes, context, call_id: str, call_id_wins: bool) -> bytes:
        """The answer's bytes; a SteadyServeError for a refusal or failure."""
        remaining = context.time_remaining()
        deadline = 0
        if remaining is not None:
            deadline = time.monotonic_ns() + max(0, int(remaining * 1e9) - RESPONSE_ALLOWANCE_NS)
        loop = asyncio.get_running_loop()
        completions = dispatcher.completions(loop)
        tag = next(completions.tags)
        submitted = core.submit_wire(data, deadline, completions.queue, tag, call_id, call_id_wins)
        if type(submitted) is int:
            future = loop.create_future()
            completions.futures[tag] = future
            try:
                if dispatcher.inline:
                    # Inline models run the ready batch right here and the answer is
                    # returned without suspending the handler: over grpc.aio an await
                    # costs more than running a fast model's batch (measured: ~0.55x ->
                    # ~0.7x of the no-op server at c=64), and RPCs reach the loop one at a
                    # time, so waiting for company would not form batches anyway.
                    dispatcher.run_inline()
                    completions.drain()
                    if future.done():
                        return future.result()
                return await future
            except asyncio.CancelledError:
                completions.futures.pop(tag, None)
                core.cancel(submitted)
                raise
            except SteadyServeError as error:
                failure = error
        else:
            value, failed, model_name = submitted
            if not failed:
                return value
            failure = value
        if context.time_remaining() == 0:
            # The gRPC deadline has passed: gRPC answers DEADLINE_EXCEEDED itself.
            raise asyncio.CancelledError() from None
        raise failure

    return grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=None, response_serializer=None
    )


def _generated_id() -> str:
    return uuid.uuid4().hex


def _response_head(raw: bytes) -> tuple[str, str, str]:
    """(model_name, model_version, id) of a serialized ModelInferResponse: the core
    writes them first, as fields 1, 2 and 3; "" for one that is absent."""
    found = ["", "", ""]
    pos = 0
    while pos < len(raw):
        key = raw[pos]
        number, wire = key >> 3, key & 7
        if wire != 2 or not 1 <= number <= 3:
            break
        length, shift, pos = 0, 0, pos + 1
        while pos < len(raw):
            byte = raw[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        found[number - 1] = raw[pos : pos + length].decode("utf-8", "replace")
        pos += length
    return found[0], found[1], found[2]


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _stream_answer(field_tag: int, payload: bytes) -> bytes:
    """A ModelStreamInferResponse holding one field (1: error_message, 2: infer_response),
    written on the wire directly: the core's answer is already a serialized
    ModelInferResponse, and parsing it only to nest it would cost a copy per request."""
    return bytes((field_tag << 3 | 2,)) + _varint(len(payload)) + payload


def _model_stream_infer_handler(servicer: InferenceServicer) -> grpc.RpcMethodHandler:
    """ModelStreamInfer, Triton's semantics: each request message is submitted to the
    core like a ModelInfer, and each answer is sent as it completes (completion order,
    not request order): ``infer_response`` on success, ``error_message`` on failure —
    one request's error does not end the stream. The stream ends OK once the client
    half-closed and every answer is out. The stream's deadline bounds every request."""
    runtime = servicer._runtime
    core = runtime.core
    dispatcher = runtime.dispatcher

    def failure_answer(failure: BaseException) -> bytes:
        _, message = status_of(failure, method="ModelStreamInfer")
        return _stream_answer(1, message.encode())

    async def handler(request_iterator, context):
        remaining = context.time_remaining()
        deadline = 0
        if remaining is not None:
            deadline = time.monotonic_ns() + max(0, int(remaining * 1e9) - RESPONSE_ALLOWANCE_NS)
        loop = asyncio.get_running_loop()
        completions = dispatcher.completions(loop)
        answers: asyncio.Queue = asyncio.Queue()  # bytes, or _END / an exception from reading
        pending: dict[int, int] = {}  # tag -> the core's handle, while the core holds it

        def answered(tag: int, future: asyncio.Future) -> None:
            if pending.pop(tag, None) is None or future.cancelled():
                return
            error = future.exception()
            answers.put_nowait(
                failure_answer(error) if error is not None else _stream_answer(2, future.result())
            )

        async def read() -> None:
            try:
                async for data in request_iterator:
                    tag = next(completions.tags)
                    submitted = core.submit_wire(data, deadline, completions.queue, tag)
                    if type(submitted) is int:
                        future = loop.create_future()
                        completions.futures[tag] = future
                        pending[tag] = submitted
                        future.add_done_callback(functools.partial(answered, tag))
                        dispatcher.schedule_inline(loop, completions)
                    else:  # answered at once (refused, or a cached answer)
                        value, failed, _ = submitted
                        answers.put_nowait(
                            failure_answer(value) if failed else _stream_answer(2, value)
                        )
            except Exception as exc:  # the client's side broke: end the stream with it
                answers.put_nowait(exc)
            else:
                answers.put_nowait(_END)

        reader = asyncio.ensure_future(read())
        try:
            reading = True
            while reading or pending:
                item = await answers.get()
                if item is _END:
                    reading = False
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            reader.cancel()
            for tag, handle in pending.items():  # cancelled or failed: the core lets go
                completions.futures.pop(tag, None)
                core.cancel(handle)
            pending.clear()

    return grpc.stream_stream_rpc_method_handler(
        handler, request_deserializer=None, response_serializer=None
    )


_END = object()  # ModelStreamInfer: the client half-closed


def add_inference_service(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Register ``servicer`` as ``inference.GRPCInferenceService`` on ``server``."""
    handlers = {}
    for method in _SERVICE.methods:
        impl = getattr(servicer, method.name, None)
        if method.name == "ModelInfer":
            handlers[method.name] = _model_infer_handler(servicer)
        elif method.name == "ModelStreamInfer":
            handlers[method.name] = _model_stream_infer_handler(servicer)
        elif impl is None or method.client_streaming or method.server_streaming:
            handlers[method.name] = _unimplemented_handler(method)
        else:
            handlers[method.name] = unary_handler(
                method.name,
                impl,
                _message_class(method.input_type),
                _message_class(method.output_type),
            )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    if hasattr(server, "add_registered_method_handlers"):
        server.add_registered_method_handlers(SERVICE_NAME, handlers)
