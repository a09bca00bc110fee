"""``steadyserve.v1.Feedback/ModelFeedback``: ground-truth labels over gRPC, the same
call as REST ``POST /v2/models/{m}/feedback`` and ``Runtime.feedback``. Its own
service (protos/feedback.proto): Triton's has no such method, and ours stays
message-for-message Triton's."""

from __future__ import annotations

import asyncio

import grpc

from .._proto import feedback_pb2 as fb
from .grpc_service import unary_handler

SERVICE_NAME = "steadyserve.v1.Feedback"
assert fb.DESCRIPTOR.services_by_name["Feedback"].full_name == SERVICE_NAME


def _items(request: fb.ModelFeedbackRequest) -> list[dict]:
    """The labels as the monitor takes them; one with no label is passed on without one,
    so that it is rejected by its index like any other invalid item."""
    items = []
    for label in request.labels:
        kind = label.WhichOneof("label")
        item: dict = {"id": label.id}
        if kind == "values":
            item["label"] = list(label.values.values)
        elif kind is not None:
            item["label"] = getattr(label, kind)
        items.append(item)
    return items


def add_feedback_service(runtime, server: grpc.aio.Server) -> None:
    async def model_feedback(request: fb.ModelFeedbackRequest, context) -> fb.ModelFeedbackResponse:
        # On a thread: the labels are on disk (fsync) before the answer.
        result = await asyncio.to_thread(runtime.feedback, request.model_name, _items(request))
        return fb.ModelFeedbackResponse(
            accepted=result["accepted"],
            joined=result["joined"],
            pending=result["pending"],
            rejected=[
                fb.FeedbackRejection(index=r["index"], id=str(r["id"]), error=r["error"])
                for r in result["rejected"]
            ],
        )

    handlers = {
        "ModelFeedback": unary_handler(
            "ModelFeedback", model_feedback, fb.ModelFeedbackRequest, fb.ModelFeedbackResponse
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    if hasattr(server, "add_registered_method_handlers"):
        server.add_registered_method_handlers(SERVICE_NAME, handlers)
