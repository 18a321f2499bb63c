"""The FastAPI application factory; it only assembles the parts (``uvicorn --factory``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import CollectorRegistry
from starlette.routing import BaseRoute

import calapi
from calapi.serving.fastpath import FastPathApi, PredictFastPath
from calapi.serving.metrics import ApiMetrics, MetricsMiddleware, RequestRecorder
from calapi.serving.routes import feedback, metrics, predict, status
from calapi.serving.service import Service
from calapi.serving.settings import ApiSettings
from calapi.serving.sources import source_for

DESCRIPTION = (
    "Predicts the energy expenditure [kcal] of an exercise session, takes the true value "
    "later through /feedback, and exports Prometheus metrics at /metrics."
)


def create_app(
    settings: ApiSettings | None = None, registry: CollectorRegistry | None = None
) -> FastAPI:
    """Build the API: settings default to ``CALOPS_*`` env vars, metrics to a fresh registry."""
    settings = settings or ApiSettings()
    registry = registry if registry is not None else CollectorRegistry()
    api_metrics = ApiMetrics(registry)
    service = Service(settings, api_metrics, source_for(settings.model))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        yield
        await service.stop()

    app = FastPathApi(
        title="calapi",
        version=calapi.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # /metrics is the telemetry; FastAPI's own OpenTelemetry hooks would cost every
        # request an environment and provider check (~30 us) for nothing.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.service = service
    for module in (predict, feedback, status, metrics):
        app.include_router(module.router)
    app.add_middleware(MetricsMiddleware, metrics=api_metrics)
    app.fast_path = PredictFastPath(
        service, _route(predict.router, predict.PATH), RequestRecorder(api_metrics)
    )
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _route(router: APIRouter, path: str) -> BaseRoute:
    return next(route for route in router.routes if getattr(route, "path", None) == path)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, plus the /predict body's components (that route reads raw bytes)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schema.setdefault("components", {}).setdefault("schemas", {}).update(
            predict.BODY_DEFINITIONS
        )
        app.openapi_schema = schema
    return app.openapi_schema
