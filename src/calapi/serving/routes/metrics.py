"""GET /metrics: Prometheus exposition of the app's registry."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from calapi.serving.routes.deps import RegistryDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(registry: RegistryDep) -> Response:
    """Every app_* metric; gauges backed by the feedback window are computed now."""
    # Async on purpose: the feedback store and window live on the event loop's thread.
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
