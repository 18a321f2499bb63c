"""Request bodies for each server and how to read the predictions out of the answers.

calapi and the bare endpoint take the seed's one-row body (``Gender`` alias included);
``mlflow models serve`` takes its own ``dataframe_records`` envelope of the same values.
"""

from __future__ import annotations

import json
from typing import Any, Final

# The hand-out's curl example, byte for byte: what a user sends first.
SEED_ROW: Final[dict[str, Any]] = {
    "id": 1,
    "Gender": "male",
    "Age": 25,
    "Height": 180,
    "Weight": 75,
    "Duration": 30,
    "Heart_Rate": 120,
    "Body_Temp": 37.0,
}
MEASURES: Final = ("Age", "Height", "Weight", "Duration", "Heart_Rate", "Body_Temp")


def dumps(payload: object) -> str:
    """Compact JSON, as a client library would send it."""
    return json.dumps(payload, separators=(",", ":"))


def single_body() -> str:
    """The one-row body for calapi and the bare endpoint."""
    return dumps(SEED_ROW)


def mlflow_record(row: dict[str, Any]) -> dict[str, Any]:
    """A row as MLflow's signature wants it: ``Sex`` (not ``Gender``), measures as floats, no id."""
    sex = row.get("Sex", row.get("Gender"))
    return {"Sex": sex, **{name: float(row[name]) for name in MEASURES}}


def mlflow_body(rows: list[dict[str, Any]]) -> str:
    """``{"dataframe_records": [...]}`` for ``mlflow models serve``'s /invocations."""
    return dumps({"dataframe_records": [mlflow_record(row) for row in rows]})


def calapi_batch_body(rows: list[dict[str, Any]]) -> str:
    """``{"instances": [...]}`` for calapi's /predict."""
    return dumps({"instances": rows})


def calapi_predictions(answer: Any) -> list[float]:
    """Calories from a calapi answer: one row (``Calories``) or a batch (``predictions``)."""
    if "predictions" in answer:
        return [float(item["Calories"]) for item in answer["predictions"]]
    return [float(answer["Calories"])]


def mlflow_predictions(answer: Any) -> list[float]:
    """Predictions from an /invocations answer: ``{"predictions": [...]}``."""
    return [float(value) for value in answer["predictions"]]


def max_abs_difference(left: list[float], right: list[float]) -> float:
    """Largest absolute difference of two prediction lists of the same length."""
    if len(left) != len(right):
        raise ValueError(f"{len(left)} predictions against {len(right)}")
    return max((abs(a - b) for a, b in zip(left, right, strict=True)), default=0.0)
