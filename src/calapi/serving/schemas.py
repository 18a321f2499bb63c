"""Request and response bodies of the API, with the examples shown in the OpenAPI docs."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    field_validator,
    model_validator,
)

from calapi.model.features import PLAUSIBLE, SEX_ALIASES, UNITS, encode_sex
from calapi.serving.predlog.base import MAX_ID_CHARS
from calapi.serving.responses import echo

# Integer ids are exact in every JSON reader (I-JSON, RFC 7493): JavaScript's doubles lose
# digits beyond 2**53, and orjson reads integers beyond 64 bits as floats.
ID_MAX: Final = 2**53 - 1
ID_MIN: Final = -ID_MAX


def _integral(value: Any) -> Any:
    """JSON Schema's integer: ``7.0`` is the integer 7 (a boolean stays no number)."""
    return int(value) if type(value) is float and value.is_integer() else value


# Ids are keys of the prediction log: bounded, so no request can make one row huge.
RowId = (
    Annotated[int, Field(ge=ID_MIN, le=ID_MAX), BeforeValidator(_integral)]
    | Annotated[str, StringConstraints(max_length=MAX_ID_CHARS)]
)
# Exactly what encode_sex accepts: male/female/m/f in any case, surrounding whitespace allowed.
SEX_PATTERN: Final = r"^\s*([Mm]([Aa][Ll][Ee])?|[Ff]([Ee][Mm][Aa][Ll][Ee])?)\s*$"
SEX_TEXT: Final = "'male', 'female', 'm' or 'f', in any case"
REF_TEMPLATE: Final = "#/components/schemas/{model}"

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


def _sex_or_gender(schema: dict[str, Any]) -> None:
    """Row's schema: a row with ``Sex`` or a row with ``Gender``, each a valid spelling;
    two whole object schemas, so each alternative reads (and generates) on its own."""
    sex, gender = SEX_ALIASES
    properties = schema.pop("properties")
    properties[gender] = {
        "type": "string", "pattern": SEX_PATTERN,
        "description": f"Accepted for {sex}: {SEX_TEXT}; {sex} is used when both are sent.",
    }  # fmt: skip
    required = [name for name in schema.pop("required") if name != sex]
    del schema["type"]
    schema["examples"] = [EXAMPLE_ROW]
    schema["anyOf"] = [
        {"type": "object", "properties": properties, "required": [key, *required]}
        for key in (sex, gender)
    ]


def _spelling(value: Any, key: str) -> str:
    """``value`` when it is a sex spelling encode_sex accepts, else a ValueError naming ``key``."""
    try:
        if type(value) is not str:
            raise ValueError
        encode_sex(value)
    except ValueError:
        raise ValueError(f"{key} must be {SEX_TEXT}, got {echo(value)}") from None
    return value


class Row(BaseModel):
    """One exercise session to predict; ``Gender`` is accepted for ``Sex``.

    The row contract is ``calapi.model.features`` (FEATURES, PLAUSIBLE, SEX_ALIASES and
    encode_sex): every constraint here comes from it, and so does the fast reader in
    ``calapi.serving.parsing``; tests hold both against it.
    """

    model_config = ConfigDict(
        strict=True,
        extra="ignore",
        populate_by_name=True,
        json_schema_extra=_sex_or_gender,
    )

    id: RowId | None = Field(
        None, description="Echoed back; assigned by the API when omitted or null, for /feedback."
    )
    Sex: str = Field(
        validation_alias=AliasChoices(*SEX_ALIASES),
        description=f"{SEX_TEXT}; the key may be 'Gender' instead (used when 'Sex' is absent).",
        json_schema_extra={"pattern": SEX_PATTERN},
    )
    Age: float = _measure("Age")
    Height: float = _measure("Height")
    Weight: float = _measure("Weight")
    Duration: float = _measure("Duration")
    Heart_Rate: float = _measure("Heart_Rate")
    Body_Temp: float = _measure("Body_Temp")

    @model_validator(mode="before")
    @classmethod
    def _gender_beside_sex(cls, data: Any) -> Any:
        """``Gender`` sent beside ``Sex`` must be a valid spelling too (``Sex`` is used)."""
        if isinstance(data, dict) and all(key in data for key in SEX_ALIASES):
            _spelling(data[SEX_ALIASES[1]], SEX_ALIASES[1])
        return data

    @field_validator("Sex")
    @classmethod
    def _known_sex(cls, value: str) -> str:
        return _spelling(value, SEX_ALIASES[0]).strip().lower()


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
    """The true value for an earlier prediction; ``id`` 1 and ``"1"`` are different ids."""

    model_config = ConfigDict(
        strict=True, json_schema_extra={"examples": [{"id": 1, "Calories": 185.0}]}
    )

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
    """An error answer: one sentence."""

    detail: str


class FieldError(BaseModel):
    """What is wrong with one part of a body."""

    loc: list[str | int] = Field(description="Where: 'body', then keys and list indexes.")
    msg: str
    type: str


class FieldProblems(BaseModel):
    """A 422 answer: one message per field (FastAPI's shape)."""

    detail: list[FieldError]


class Health(BaseModel):
    """Liveness and model status."""

    status: Literal["ok", "stale", "unavailable"] = Field(
        description="ok; stale: a newer model failed to load and model_version still serves; "
        "unavailable: no model serves (503)."
    )
    model_loaded: bool
    model_version: str | None = Field(default=None, description="The version answering now.")
    reason: str | None = Field(default=None, description="Why stale or unavailable.")
    stale_since: str | None = Field(
        default=None, description="When the source first failed to load."
    )


class ReloadAnswer(Health):
    """The answer to POST /reload: what the load did, and the status after it."""

    result: Literal["loaded", "unchanged", "failed", "refused"] = Field(
        description="loaded: a new model serves; unchanged: the source holds what serves; "
        "failed / refused (unsafe to load): the previous model, if any, still serves."
    )


def predict_body_schema(max_rows: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The OpenAPI schema of a /predict body and the component schemas it references.

    A body is a batch when it is an object with ``instances``, so a single row never has
    that key; a batch holds 1 to ``max_rows`` rows.
    """
    rows = ROWS.json_schema(ref_template=REF_TEMPLATE)
    definitions = rows.pop("$defs", {})
    rows.update(minItems=1, maxItems=max_rows)
    row = {"$ref": REF_TEMPLATE.format(model="Row")}
    schema = {
        "anyOf": [
            {"allOf": [row], "properties": {"instances": False}},
            {"type": "object", "properties": {"instances": rows}, "required": ["instances"]},
            rows,
        ],
        "description": "One row (object), a batch as {'instances': [...]} or a JSON list "
        f"of rows; a batch holds 1 to {max_rows} rows.",
        "examples": [EXAMPLE_ROW, {"instances": [EXAMPLE_ROW, {**EXAMPLE_ROW, "id": 2}]}],
    }
    return schema, definitions


def component_schema(model: type[BaseModel]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A reference to ``model``'s component schema, and that component with those it uses."""
    schema = model.model_json_schema(ref_template=REF_TEMPLATE)
    definitions = schema.pop("$defs", {})
    name = model.__name__
    return {"$ref": REF_TEMPLATE.format(model=name)}, {**definitions, name: schema}
