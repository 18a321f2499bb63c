"""Reading /predict answers: one predicted value per row sent, matched by id."""

from __future__ import annotations

import math
from typing import Any

import orjson

from calapi.model.features import TARGET

VERSION_KEYS = ("model_version", "version")


def predictions(body: bytes, ids: tuple[str, ...]) -> tuple[list[float], str | None]:
    """Predicted kcal per id (NaN where missing) and the model version, from an answer body.

    Accepts a single object with ``Calories``, a list of such objects, or an object holding
    such a list (e.g. ``predictions``); rows are matched by ``id`` when echoed, else by order.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return [math.nan] * len(ids), None
    rows = _rows(document)
    by_id = {str(row.get("id")): row for row in rows if isinstance(row, dict) and "id" in row}
    if len(by_id) == len(rows) and rows:
        values = [_value(by_id.get(row_id)) for row_id in ids]
    else:
        values = [_value(rows[i] if i < len(rows) else None) for i in range(len(ids))]
    return values, _version(document)


def _rows(document: Any) -> list[Any]:
    if isinstance(document, list):
        return document
    if not isinstance(document, dict):
        return []
    if TARGET in document and not isinstance(document[TARGET], list):
        return [document]
    for value in document.values():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            return value
    return []


def _value(row: Any) -> float:
    if not isinstance(row, dict):
        return math.nan
    value = row.get(TARGET)
    return float(value) if isinstance(value, int | float) else math.nan


def _version(document: Any) -> str | None:
    if not isinstance(document, dict):
        return None
    for key in VERSION_KEYS:
        if document.get(key) is not None:
            return str(document[key])
    model = document.get("model")
    if isinstance(model, dict) and model.get("version") is not None:
        return str(model["version"])
    return None
