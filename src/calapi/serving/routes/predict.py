"""POST /predict: one row or a batch, micro-batched with concurrent requests.

``answer`` is the one implementation. The FastAPI route below documents it (OpenAPI) and
calls it; in the running app, ``calapi.serving.fastpath`` calls it before the framework's routing.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope

from calapi.serving.batching import ModelUnavailableError
from calapi.serving.parsing import BadRequestError, parse_predict_body
from calapi.serving.routes.deps import responses
from calapi.serving.schemas import BatchPrediction, SinglePrediction, predict_body_schema
from calapi.serving.service import Service

PATH: Final = "/predict"
router = APIRouter(tags=["predict"])
BODY_SCHEMA, BODY_DEFINITIONS = predict_body_schema()


class BodyTooLargeError(Exception):
    """The body exceeds the configured limit."""


@router.post(
    PATH,
    summary="Predict calories for one row or a batch",
    response_model=SinglePrediction | BatchPrediction,
    responses={
        **responses(413, 503),
        422: {"description": "A field is missing or impossible (one message per field)."},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": BODY_SCHEMA}},
        }
    },
)
async def predict(request: Request) -> Response:
    """Predict ``Calories`` [kcal]; ids are echoed, or assigned when missing, for /feedback."""
    status, body = await answer(request.app.state.service, request.scope, request.receive)
    return Response(body, status_code=status, media_type="application/json")


async def answer(service: Service, scope: Scope, receive: Receive) -> tuple[int, bytes]:
    """The status and JSON body answering one /predict request."""
    limit = service.settings.max_body_bytes
    try:
        body = await read_limited(scope, receive, limit)
        rows = parse_predict_body(body, service.settings.max_batch_rows)
    except BodyTooLargeError:
        return _problem(413, f"The body exceeds {limit} bytes; send smaller batches.")
    except BadRequestError as exc:
        return exc.status, _json({"detail": exc.errors})
    if service.holder.current is None:
        return _problem(503, f"No model is loaded: {service.holder.problem}")
    try:
        served = await service.predict(rows)
    except ModelUnavailableError:
        return _problem(503, f"No model is loaded: {service.holder.problem}")
    return 200, _json(_shape(served.ids, served.calories, served.model_version, rows.single))


def _shape(ids: list[Any], calories: list[float], version: str, single: bool) -> Any:
    if single:
        return {"id": ids[0], "Calories": calories[0], "model_version": version}
    predictions = [{"id": i, "Calories": c} for i, c in zip(ids, calories, strict=True)]
    return {"predictions": predictions, "model_version": version}


def _json(content: Any) -> bytes:
    # orjson writes NaN as null, never as invalid JSON.
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def _problem(status: int, detail: str) -> tuple[int, bytes]:
    return status, _json({"detail": detail})


async def read_limited(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes before and while reading."""
    declared = _content_length(scope)
    if declared is not None and declared > limit:
        raise BodyTooLargeError
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None
