"""The application factory: builds every part once and wires them (``uvicorn --factory``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from prometheus_client import CollectorRegistry
from starlette.requests import ClientDisconnect

import calapi
from calapi.model.features import FloatArray
from calapi.serving.batching import BatchCallback, MicroBatcher
from calapi.serving.drift import DriftMonitor
from calapi.serving.fastpath import FastPathApp
from calapi.serving.guard import RequestGuard
from calapi.serving.handlers import (
    BATCH_ADVICE,
    CLIENT_CLOSED_REQUEST,
    PREDICT_PATH,
    SMALL_BODY_ADVICE,
    SMALL_BODY_BYTES,
    PredictHandler,
)
from calapi.serving.holder import ModelHolder
from calapi.serving.metrics import ApiMetrics, MetricsMiddleware, RequestRecorder
from calapi.serving.predlog import PredictionLog, open_log
from calapi.serving.responses import documented_errors, problem
from calapi.serving.routes import feedback, metrics, predict, status
from calapi.serving.schemas import FeedbackIn, component_schema, predict_body_schema
from calapi.serving.service import Feedback, Predictions, id_factory
from calapi.serving.settings import ApiSettings
from calapi.serving.sources import LoadedModel, source_for

DESCRIPTION = (
    "Predicts the energy expenditure [kcal] of an exercise session, takes the true value "
    "later through /feedback, and exports Prometheus metrics at /metrics."
)
ROUTE_MODULES: Final = (predict, feedback, status, metrics)
ROUTES: Final = [route for module in ROUTE_MODULES for route in module.router.routes]
ROUTE_PATHS: Final = frozenset(getattr(route, "path", "") for route in ROUTES)
POST_PATHS: Final = frozenset(
    getattr(route, "path", "") for route in ROUTES if "POST" in getattr(route, "methods", ())
)

IGNORED_BODY: Final = {
    "description": "Ignored, and may be empty; the Content-Type must still be application/json "
    "so that no web page can make a browser send this request."
}


def create_app(
    settings: ApiSettings | None = None, registry: CollectorRegistry | None = None
) -> FastPathApp:
    """Build the API: settings default to ``CALOPS_*`` env vars, metrics to a fresh registry."""
    settings = settings or ApiSettings()
    registry = registry if registry is not None else CollectorRegistry()
    api_metrics = ApiMetrics(registry)
    parts = _Parts.build(settings, api_metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        served.check_nothing_skipped()
        parts.log.start()
        await parts.holder.start(settings.reload_interval_seconds)
        yield
        await parts.holder.stop()
        await asyncio.to_thread(parts.batcher.close)
        await asyncio.to_thread(parts.log.close)  # writes the predictions still queued

    app = _fastapi_app(lifespan, settings)
    app.state.settings = settings
    app.state.registry = registry
    app.state.holder = parts.holder
    app.state.drift = parts.drift
    app.state.predict_handler = parts.predict_handler
    app.state.feedback = parts.feedback
    app.state.log = parts.log
    app.state.exposed = api_metrics.exposed
    app.add_middleware(MetricsMiddleware, metrics=api_metrics)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    small = (SMALL_BODY_BYTES, SMALL_BODY_ADVICE)
    limits = dict.fromkeys(POST_PATHS, small)
    guard = RequestGuard(
        settings.allowed_hosts, {**limits, PREDICT_PATH: (settings.max_body_bytes, BATCH_ADVICE)}
    )
    served = FastPathApp(app, parts.predict_handler, RequestRecorder(api_metrics), guard,
                         route_paths=ROUTE_PATHS)  # fmt: skip
    return served


async def _invalid_request(_: Request, exc: Exception) -> Response:
    """FastAPI's 422, without the input it would echo (unbounded, maybe not even JSON)."""
    found = exc.errors() if isinstance(exc, RequestValidationError) else []
    errors = [
        {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]} for error in found
    ]
    return problem(422, errors)


async def _client_gone(_: Request, __: Exception) -> Response:
    """The client left mid-body: no one reads this, but the metrics count it as 499."""
    return Response(status_code=CLIENT_CLOSED_REQUEST)


@dataclass(frozen=True)
class _Parts:
    """The API's state and behaviour, each built once and handed what it needs."""

    holder: ModelHolder
    drift: DriftMonitor
    batcher: MicroBatcher
    predict_handler: PredictHandler
    feedback: Feedback
    log: PredictionLog

    @classmethod
    def build(cls, settings: ApiSettings, api_metrics: ApiMetrics) -> _Parts:
        drift = DriftMonitor(settings.drift_window_seconds, min_rows=settings.drift_min_rows)
        # A new model brings its own reference, so its drift window starts empty.
        source = source_for(settings.model, allow_pickle=settings.allow_pickle)
        holder = ModelHolder(source, api_metrics,
                             on_swap=lambda model: drift.reset(model, model.card))  # fmt: skip
        log = open_log(
            settings.prediction_log, settings.retention(),
            flush_seconds=settings.log_flush_ms / 1000.0,
            on_evict=lambda reason, count: api_metrics.evictions.labels(reason).inc(count),
        )  # fmt: skip
        batcher = MicroBatcher(
            lambda: holder.current,
            max_rows=settings.microbatch_max_rows,
            max_wait_seconds=settings.microbatch_max_wait_ms / 1000.0,
            threads=settings.predict_threads,
            on_batch=_batch_recorder(api_metrics, drift),
        )
        api_metrics.bind_state(
            drift=drift.snapshot, log=log, window_seconds=settings.rolling_window_seconds
        )
        handler = PredictHandler(
            Predictions(batcher, log, id_factory()), holder,
            max_body_bytes=settings.max_body_bytes, max_batch_rows=settings.max_batch_rows,
        )  # fmt: skip
        feedback = Feedback(log, api_metrics.feedback_lag, api_metrics.squared_log_error)
        return cls(holder, drift, batcher, handler, feedback, log)


def _fastapi_app(lifespan: Any, settings: ApiSettings) -> FastAPI:
    app = FastAPI(
        title="calapi",
        version=calapi.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # /metrics is the telemetry; FastAPI's own OpenTelemetry hooks would cost every
        # request an environment and provider check (~30 us) for nothing.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    for module in ROUTE_MODULES:
        # Any request may meet the Host guard (calapi.serving.guard).
        app.include_router(module.router, responses=documented_errors(400))
    app.openapi = lambda: _openapi(app, settings)  # type: ignore[method-assign]
    return app


def _batch_recorder(api_metrics: ApiMetrics, drift: DriftMonitor) -> BatchCallback:
    """What each model call records, once per call on the predict worker (off the loop)."""

    def record(raw: FloatArray, calories: FloatArray, model: LoadedModel) -> None:
        api_metrics.record_batch(calories, model.out_of_range(raw))
        drift.observe(model, raw, calories)

    return record


def _openapi(app: FastAPI, settings: ApiSettings) -> dict[str, Any]:
    """FastAPI's schema, plus the bodies of the routes that read raw bytes themselves, and of
    the POSTs that read none (the guard still wants them declared as JSON)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        bodies = {
            PREDICT_PATH: predict_body_schema(settings.max_batch_rows),
            feedback.FEEDBACK_PATH: component_schema(FeedbackIn),
        }
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for path in POST_PATHS:
            body, definitions = bodies.get(path, (IGNORED_BODY, {}))
            schema["paths"][path]["post"]["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": body}},
            }
            components.update(definitions)
        app.openapi_schema = schema
    return app.openapi_schema
