"""The baseline: a FastAPI endpoint that validates calapi's one-row body and returns a constant.

It does everything a request costs except predicting, so calapi's throughput divided by this
one's says how much of the serving budget the model path uses.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from calapi.model.features import PLAUSIBLE, SEX_CODES

CONSTANT_ANSWER: dict[str, Any] = {"id": 1, "Calories": 0.0, "model_version": "bare"}


def _measure(name: str) -> Any:
    low, high = PLAUSIBLE[name]
    return Field(ge=low, le=high, allow_inf_nan=False)


class Row(BaseModel):
    """The same fields, aliases and bounds as calapi's single-row /predict body."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: int | str | None = None
    Sex: str = Field(validation_alias=AliasChoices("Sex", "Gender"))
    Age: float = _measure("Age")
    Height: float = _measure("Height")
    Weight: float = _measure("Weight")
    Duration: float = _measure("Duration")
    Heart_Rate: float = _measure("Heart_Rate")
    Body_Temp: float = _measure("Body_Temp")

    @field_validator("Sex")
    @classmethod
    def _known_sex(cls, value: str) -> str:
        key = value.strip().lower()
        if key not in SEX_CODES:
            raise ValueError(f"Sex must be 'male' or 'female', got {value!r}")
        return key


def create_app() -> FastAPI:
    """The uvicorn factory: ``uvicorn --factory bench.bare_app:create_app``."""
    app = FastAPI(
        title="bare baseline",
        # The same framework switches as calapi: a baseline that paid for hooks the API
        # turns off would flatter the ratio.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(row: Row) -> dict[str, Any]:
        return {**CONSTANT_ANSWER, "id": row.id if row.id is not None else 0}

    return app
