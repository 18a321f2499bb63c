"""POST /predict: one row or a batch, micro-batched with concurrent requests."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from calapi.batching import ModelUnavailableError
from calapi.parsing import BadRequestError, parse_predict_body
from calapi.routes.deps import json_response, problem, responses
from calapi.schemas import BatchPrediction, SinglePrediction, predict_body_schema
from calapi.service import Service

router = APIRouter(tags=["predict"])
BODY_SCHEMA, BODY_DEFINITIONS = predict_body_schema()


class BodyTooLargeError(Exception):
    """The body exceeds the configured limit."""


@router.post(
    "/predict",
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
    service: Service = request.app.state.service
    limit = service.settings.max_body_bytes
    try:
        body = await read_limited(request, limit)
        rows = parse_predict_body(body, service.settings.max_batch_rows)
    except BodyTooLargeError:
        return problem(413, f"The body exceeds {limit} bytes; send smaller batches.")
    except BadRequestError as exc:
        return json_response({"detail": exc.errors}, exc.status)
    if service.holder.current is None:
        return problem(503, f"No model is loaded: {service.holder.problem}")
    try:
        served = await service.predict(rows)
    except ModelUnavailableError:
        return problem(503, f"No model is loaded: {service.holder.problem}")
    return json_response(_answer(served.ids, served.calories, served.model_version, rows.single))


def _answer(ids: list[Any], calories: list[float], version: str, single: bool) -> Any:
    if single:
        return {"id": ids[0], "Calories": calories[0], "model_version": version}
    predictions = [{"id": i, "Calories": c} for i, c in zip(ids, calories, strict=True)]
    return {"predictions": predictions, "model_version": version}


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes before and while reading."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError
        chunks.append(chunk)
    return b"".join(chunks)
