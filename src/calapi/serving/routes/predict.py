"""POST /predict: one row or a batch, micro-batched with concurrent requests.

The running app answers it before FastAPI's routing (``calapi.serving.fastpath``); this
route documents it (OpenAPI; create_app adds its body schema) and calls the same handler
when FastAPI does route it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from calapi.serving.handlers import PREDICT_PATH
from calapi.serving.responses import JSON_MEDIA_TYPE, documented_errors
from calapi.serving.routes.deps import PredictHandlerDep
from calapi.serving.schemas import BatchPrediction, SinglePrediction

router = APIRouter(tags=["predict"])


@router.post(
    PREDICT_PATH,
    summary="Predict calories for one row or a batch",
    response_model=SinglePrediction | BatchPrediction,
    responses=documented_errors(413, 415, 422, 503),
)
async def predict(request: Request, handler: PredictHandlerDep) -> Response:
    """Predict ``Calories`` [kcal]; ids are echoed, or assigned when missing, for /feedback."""
    status, body = await handler(request.scope, request.receive)
    return Response(body, status_code=status, media_type=JSON_MEDIA_TYPE)
