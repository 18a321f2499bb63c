"""GET /healthz, /readyz and /info, and POST /reload."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

import calapi
from calapi.model.predictor import probe_rows
from calapi.serving.environment import describe_environment
from calapi.serving.routes.deps import ServiceDep, json_response, responses
from calapi.serving.schemas import Health
from calapi.serving.service import Service

router = APIRouter(tags=["status"])
READY_PROBE = probe_rows(None, 1)


@router.get("/healthz", summary="Liveness and model status", response_model=Health,
            responses=responses(503))  # fmt: skip
async def healthz(service: ServiceDep) -> Response:
    """200 while a model is serving; 503 with the reason while none is loaded."""
    return _health(service)


@router.get("/readyz", summary="Readiness", response_model=Health, responses=responses(503))
async def readyz(service: ServiceDep) -> Response:
    """200 only when a model is loaded and answers a probe row."""
    model = service.holder.current
    if model is None:
        return _health(service)
    try:
        # Straight to the model, not through the batcher: a probe is not traffic to count.
        await asyncio.to_thread(model.predict, READY_PROBE)
    except Exception as exc:
        return json_response(
            {"status": "unavailable", "model_loaded": True, "reason": f"Probe failed: {exc}"}, 503
        )
    return _health(service)


@router.get("/info", summary="App, model and environment")
async def info(service: ServiceDep) -> dict[str, Any]:
    """Which model answers (source, version, sha256, card), its live drift, where it runs."""
    return {
        "app": {"name": "calapi", "version": calapi.__version__},
        "model": describe_model(service),
        "serving": {
            "reload_interval_seconds": service.settings.reload_interval_seconds,
            "max_batch_rows": service.settings.max_batch_rows,
            "feedback_max_pending": service.settings.feedback_max_pending,
            "feedback_max_age_seconds": service.settings.feedback_max_age_seconds,
            "rolling_window_seconds": service.settings.rolling_window_seconds,
        },
        "drift": describe_drift(service),
        "environment": describe_environment(),
    }


@router.post("/reload", summary="Load the model from its source now", response_model=Health,
             responses=responses(503))  # fmt: skip
async def reload(service: ServiceDep) -> Response:
    """Reload the configured model now (the watcher also does this when files change)."""
    await service.holder.refresh(force=True)
    return _health(service)


def describe_model(service: Service) -> dict[str, Any]:
    """The /info model section: exactly which model answers, and its card's summary."""
    model = service.holder.current
    if model is None:
        return {"loaded": False, "source": service.holder.source.description,
                "reason": service.holder.problem}  # fmt: skip
    card = model.card or {}
    return {
        "loaded": True,
        "source": model.source,
        "version": model.version,
        "sha256": model.sha256,
        "loaded_at": model.loaded_at,
        "predictor": model.predict.kind,
        "estimator": type(model.estimator).__name__,
        "card": "present" if model.card else model.card_note,
        "name": card.get("name"),
        "created": card.get("created"),
        "metrics": card.get("metrics"),
        "features": card.get("features"),
        "training_ranges": card.get("training_ranges"),
        "data": card.get("data"),
        "holdout": card.get("holdout"),
    }


def describe_drift(service: Service) -> dict[str, Any] | None:
    """PSI per feature and for the prediction in the drift window; None without a reference."""
    snapshot = service.drift.snapshot()
    return None if snapshot is None else snapshot.as_dict()


def _health(service: Service) -> Response:
    model = service.holder.current
    if model is None:
        body = {"status": "unavailable", "model_loaded": False, "reason": service.holder.problem}
        return json_response(body, 503)
    return json_response({"status": "ok", "model_loaded": True, "model_version": model.version})
