"""GET /metrics: Prometheus exposition of the app's registry."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from calapi.serving.routes.deps import ExposedDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(registry: ExposedDep) -> Response:
    """Every app_* metric (of every worker of this API); gauges from the log are read now."""
    # Async on purpose: the model and drift state live on the event loop's thread.
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
