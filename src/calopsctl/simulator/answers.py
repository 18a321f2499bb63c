"""Reading /predict answers with the API's own schemas: one predicted value per row sent."""

from __future__ import annotations

import math

from pydantic import ValidationError

from calapi.serving.schemas import BatchPrediction, Prediction, SinglePrediction


def predictions(body: bytes, ids: tuple[str, ...]) -> tuple[list[float], str | None]:
    """Predicted kcal per id (NaN where missing) and the model version, from an answer body.

    One row goes as a bare object and comes back as ``SinglePrediction``; more go as
    ``{"instances": [...]}`` and come back as ``BatchPrediction``. Rows are matched by the id
    the API echoes; an answer that is not of its schema counts as no prediction.
    """
    rows: list[Prediction]
    try:
        if len(ids) == 1:
            single = SinglePrediction.model_validate_json(body)
            rows, version = [single], single.model_version
        else:
            batch = BatchPrediction.model_validate_json(body)
            rows, version = batch.predictions, batch.model_version
    except ValidationError:
        return [math.nan] * len(ids), None
    by_id = {str(row.id): row.Calories for row in rows}
    return [by_id.get(row_id, math.nan) for row_id in ids], version
