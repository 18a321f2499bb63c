"""Request and response bodies of the API, with the examples shown in the OpenAPI docs."""

from __future__ import annotations

from typing import Annotated, Any, Final

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    field_validator,
)

from calapi.model.features import PLAUSIBLE, SEX_ALIASES, UNITS, encode_sex
from calapi.serving.predlog.base import MAX_ID_CHARS

# Ids are keys of the prediction log: bounded, so no request can make one row huge.
RowId = int | Annotated[str, StringConstraints(max_length=MAX_ID_CHARS)]

EXAMPLE_ROW: Final[dict[str, Any]] = {
    "id": 1,
    "Sex": "male",
    "Age": 25,
    "Height": 180,
    "Weight": 75,
    "Duration": 30,
    "Heart_Rate": 120,
    "Body_Temp": 37.0,
}


def _measure(name: str) -> Any:
    low, high = PLAUSIBLE[name]
    return Field(
        ge=low,
        le=high,
        allow_inf_nan=False,
        description=f"{name} [{UNITS[name]}], plausible range {low:g}..{high:g}",
    )


class Row(BaseModel):
    """One exercise session to predict; ``Gender`` is accepted for ``Sex``.

    The row contract is ``calapi.model.features`` (FEATURES, PLAUSIBLE, SEX_ALIASES and
    encode_sex): every constraint here comes from it, and so does the fast reader in
    ``calapi.serving.parsing``; tests hold both against it.
    """

    model_config = ConfigDict(
        extra="ignore",
        populate_by_name=True,
        json_schema_extra={"examples": [EXAMPLE_ROW]},
    )

    id: RowId | None = Field(
        None, description="Echoed back; assigned by the API when omitted, for /feedback."
    )
    Sex: str = Field(
        validation_alias=AliasChoices(*SEX_ALIASES),
        description="'male' or 'female' (any case); the key may also be 'Gender'.",
    )
    Age: float = _measure("Age")
    Height: float = _measure("Height")
    Weight: float = _measure("Weight")
    Duration: float = _measure("Duration")
    Heart_Rate: float = _measure("Heart_Rate")
    Body_Temp: float = _measure("Body_Temp")

    @field_validator("Sex")
    @classmethod
    def _known_sex(cls, value: str) -> str:
        encode_sex(value)
        return value.strip().lower()


class Instances(BaseModel):
    """A batch in the ``{"instances": [...]}`` envelope."""

    instances: list[Row] = Field(min_length=1)


PredictBody = Annotated[
    Row | Instances | list[Row],
    Field(
        description="One row (object), a batch as {'instances': [...]} or a JSON list of rows.",
        examples=[EXAMPLE_ROW, {"instances": [EXAMPLE_ROW, {**EXAMPLE_ROW, "id": 2}]}],
    ),
]
ROWS: Final = TypeAdapter(list[Row])


class Prediction(BaseModel):
    """The prediction for one row."""

    id: RowId
    Calories: float = Field(description="Predicted energy expenditure [kcal].")


class SinglePrediction(Prediction):
    """The answer to a one-row request."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"id": 1, "Calories": 190.4, "model_version": "3f2a9c1d04b7"}]
        }
    )
    model_version: str


class BatchPrediction(BaseModel):
    """The answer to a batch request, rows in request order."""

    predictions: list[Prediction]
    model_version: str


class FeedbackIn(BaseModel):
    """The true value for an earlier prediction."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"id": 1, "Calories": 185.0}]})

    id: RowId
    Calories: float = Field(ge=0.0, le=100_000.0, allow_inf_nan=False, description="[kcal]")


class FeedbackOut(BaseModel):
    """What the API learned from one piece of feedback."""

    id: RowId
    Calories: float = Field(description="The true value sent [kcal].")
    predicted: float = Field(description="What the model said [kcal].")
    error: float = Field(description="predicted - true [kcal].")
    squared_log_error: float = Field(description="(log1p(predicted) - log1p(true))^2")
    lag_seconds: float = Field(description="Feedback time minus prediction time [s].")
    model_version: str


class Problem(BaseModel):
    """An error answer."""

    detail: str


class Health(BaseModel):
    """Liveness and model status."""

    status: str
    model_loaded: bool
    model_version: str | None = None
    reason: str | None = None


def predict_body_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """The OpenAPI schema of a /predict body and the component schemas it references."""
    schema = TypeAdapter(PredictBody).json_schema(ref_template="#/components/schemas/{model}")
    definitions = schema.pop("$defs", {})
    return schema, definitions
