"""What route handlers depend on, each part by itself (create_app puts them on app.state)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry

from calapi.serving.drift import DriftMonitor
from calapi.serving.handlers import PredictHandler
from calapi.serving.holder import ModelHolder
from calapi.serving.predlog import PredictionLog
from calapi.serving.service import Feedback
from calapi.serving.settings import ApiSettings


def _state(name: str) -> Any:
    """A dependency on ``app.state.<name>``, one of the parts create_app built."""

    def part(request: Request) -> Any:
        return getattr(request.app.state, name)

    part.__name__ = f"get_{name}"
    return Depends(part)


SettingsDep = Annotated[ApiSettings, _state("settings")]
RegistryDep = Annotated[CollectorRegistry, _state("registry")]
ExposedDep = Annotated[CollectorRegistry, _state("exposed")]
HolderDep = Annotated[ModelHolder, _state("holder")]
DriftDep = Annotated[DriftMonitor, _state("drift")]
PredictHandlerDep = Annotated[PredictHandler, _state("predict_handler")]
FeedbackDep = Annotated[Feedback, _state("feedback")]
LogDep = Annotated[PredictionLog, _state("log")]
