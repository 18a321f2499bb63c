"""GET /healthz, /readyz and /info, and POST /reload."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

import calapi
from calapi.model.predictor import probe_rows
from calapi.serving.drift import DriftMonitor
from calapi.serving.environment import describe_environment
from calapi.serving.holder import ModelHolder
from calapi.serving.responses import documented_errors, json_response
from calapi.serving.routes.deps import DriftDep, HolderDep, LogDep, SettingsDep
from calapi.serving.schemas import Health, ReloadAnswer
from calapi.serving.settings import ApiSettings

router = APIRouter(tags=["status"])
READY_PROBE = probe_rows(None, 1)
SERVING_SETTINGS_SHOWN = {
    "reload_interval_seconds", "max_batch_rows", "rolling_window_seconds", "workers",
    "log_flush_ms",
}  # fmt: skip


@router.get("/healthz", summary="Liveness and model status", response_model=Health,
            responses=documented_errors(503))  # fmt: skip
async def healthz(holder: HolderDep) -> Response:
    """200 while a model is serving (status "stale", with the reason, when a newer one failed
    to load); 503 with the reason while none is loaded."""
    return _health(holder)


@router.get("/readyz", summary="Readiness", response_model=Health,
            responses=documented_errors(503))  # fmt: skip
async def readyz(holder: HolderDep) -> Response:
    """200 only when a model is loaded and answers a probe row."""
    model = holder.current
    if model is None:
        return _health(holder)
    try:
        # Straight to the model, not through the batcher: a probe is not traffic to count.
        await asyncio.to_thread(model.predict, READY_PROBE)
    except Exception as exc:
        body = Health(status="unavailable", model_loaded=True, reason=f"Probe failed: {exc}")
        return json_response(body.model_dump(exclude_none=True), 503)
    return _health(holder)


@router.get("/info", summary="App, model and environment")
async def info(
    holder: HolderDep, drift: DriftDep, settings: SettingsDep, log: LogDep
) -> dict[str, Any]:
    """Which model answers (source, version, alias, run, card), its live drift, where it runs,
    and where predictions await their ground truth (the prediction log and its bounds)."""
    return {
        "app": {"name": "calapi", "version": calapi.__version__},
        "model": describe_model(holder),
        "serving": describe_serving(settings),
        "prediction_log": log.describe(),
        "drift": describe_drift(drift),
        "environment": describe_environment(),
    }


@router.post("/reload", summary="Load the model from its source now",
             response_model=ReloadAnswer,
             responses={**documented_errors(413, 415, 422), 409: {"model": ReloadAnswer},
                        503: {"model": ReloadAnswer}})  # fmt: skip
async def reload(
    holder: HolderDep,
    force: Annotated[
        bool, Query(description="Load even when the source holds the model serving now.")
    ] = False,
) -> Response:
    """Load the model when its source changed (the watcher also does this): 200 loaded or
    unchanged; 409 with the reason when it failed and the previous model still serves, 503
    when none does. Concurrent requests share one load; a source already tried is loaded
    again at most once a second."""
    outcome = await holder.refresh(force=force)
    health = _health_body(holder)
    body = ReloadAnswer(**health.model_dump(), result=outcome.result)
    if not outcome.ok and outcome.reason is not None:
        body.reason = outcome.reason
    status = 200 if outcome.ok else 409 if holder.current is not None else 503
    return json_response(body.model_dump(exclude_none=True), status)


def describe_model(holder: ModelHolder) -> dict[str, Any]:
    """The /info model section: exactly which model answers, and its card's summary."""
    model = holder.current
    if model is None:
        return {"loaded": False, "source": holder.source.description, "reason": holder.problem}
    card = model.card or {}
    stale = holder.stale
    return {
        "loaded": True,
        "stale": None if stale is None else asdict(stale),
        "source": model.source,
        "version": model.version,
        "alias": model.alias,
        "run_id": model.run_id,
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


def describe_serving(settings: ApiSettings) -> dict[str, Any]:
    """The /info serving section: the limits and windows this API runs with."""
    return settings.model_dump(include=SERVING_SETTINGS_SHOWN)


def describe_drift(drift: DriftMonitor) -> dict[str, Any] | None:
    """PSI per feature and for the prediction in the drift window; None without a reference."""
    snapshot = drift.snapshot()
    return None if snapshot is None else snapshot.as_dict()


def _health(holder: ModelHolder) -> Response:
    body = _health_body(holder)
    return json_response(body.model_dump(exclude_none=True), 200 if body.model_loaded else 503)


def _health_body(holder: ModelHolder) -> Health:
    model, stale = holder.current, holder.stale
    if model is None:
        return Health(status="unavailable", model_loaded=False, reason=holder.problem)
    if stale is None:
        return Health(status="ok", model_loaded=True, model_version=model.version)
    return Health(status="stale", model_loaded=True, model_version=model.version,
                  reason=stale.reason, stale_since=stale.since)  # fmt: skip
