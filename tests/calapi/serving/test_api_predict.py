"""POST /predict: shapes, ids, validation, limits and metrics, against a real trained model."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest

from api_support import JSON_HEADERS, api_client, row, sample

pytestmark = pytest.mark.anyio


async def test_seed_curl_loop_answers_200_twenty_times(trained_model_dir: Path) -> None:
    """The seed's own curl body (with "Gender") is accepted twenty times and counted."""
    async with api_client(trained_model_dir) as client:
        for i in range(1, 21):
            response = await client.post("/predict", json=row(id=i))
            assert response.status_code == 200
            assert response.json()["id"] == i
        registry = client.registry  # type: ignore[attr-defined]
        labels = {"route": "/predict", "method": "POST", "status": "200"}
        assert sample(registry, "app_requests_total", **labels) == 20
        assert sample(registry, "app_pred_calories_count") == 20


async def test_single_row_answer_carries_id_calories_and_version(trained_model_dir: Path) -> None:
    """A one-row body gets one object back: the id echoed, positive kcal, the model version."""
    async with api_client(trained_model_dir) as client:
        body = (await client.post("/predict", json=row(id="abc", Gender=None, Sex="FEMALE"))).json()
        info = (await client.get("/info")).json()
    assert body["id"] == "abc"
    assert body["Calories"] > 0
    assert body["model_version"] == info["model"]["version"]


@pytest.mark.parametrize("envelope", ["instances", "list"])
async def test_batches_keep_order_and_assign_missing_ids(
    trained_model_dir: Path, envelope: str
) -> None:
    """Both batch forms answer per row in order; rows without an id get a unique one."""
    rows = [row(id=7, Duration=5), row(id=None, Duration=25), row(id=None, Duration=15)]
    body = {"instances": rows} if envelope == "instances" else rows
    async with api_client(trained_model_dir) as client:
        answer = (await client.post("/predict", json=body)).json()
        ids = [p["id"] for p in answer["predictions"]]
        feedback = await client.post("/feedback", json={"id": ids[1], "Calories": 150.0})
    assert ids[0] == 7
    assert len({str(i) for i in ids}) == 3
    calories = [p["Calories"] for p in answer["predictions"]]
    assert calories[0] < calories[2] < calories[1]  # longer sessions burn more
    assert feedback.status_code == 200


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b'{"Gender":"male","Age":NaN,"Height":180,"Weight":75,"Duration":30,'
         b'"Heart_Rate":120,"Body_Temp":37}', "body"),
        (b'{"Gender":"male","Age":25,"Height":Infinity,"Weight":75,"Duration":30,'
         b'"Heart_Rate":120,"Body_Temp":37}', "body"),
        (orjson.dumps(row(Weight=-1)), "Weight"),
        (orjson.dumps(row(Age=500)), "Age"),
        (orjson.dumps(row(Gender="robot")), "Gender"),
        (orjson.dumps(row(Gender=None, Sex="x")), "Sex"),
        (orjson.dumps(row(Heart_Rate=None)), "Heart_Rate"),
        (orjson.dumps(row(Age="old")), "Age"),
        (b'{"Gender":"male","Age":1e400,"Height":180,"Weight":75,"Duration":30,'
         b'"Heart_Rate":120,"Body_Temp":37}', "body"),
        (b"[]", "body"),
        (b'"just a string"', "body"),
    ],
)  # fmt: skip
async def test_impossible_rows_get_422_naming_the_field(
    trained_model_dir: Path, payload: bytes, field: str
) -> None:
    """NaN, Infinity, negative weight, Age 500, unknown sex, missing or non-numeric -> 422."""
    async with api_client(trained_model_dir) as client:
        response = await client.post("/predict", content=payload, headers=JSON_HEADERS)
    assert response.status_code == 422
    locations = [error["loc"][-1] for error in response.json()["detail"]]
    assert field in locations


async def test_batch_errors_name_the_row_and_field(trained_model_dir: Path) -> None:
    """In a batch, each bad field is reported with its row index."""
    async with api_client(trained_model_dir) as client:
        response = await client.post("/predict", json=[row(), row(Age=500, Weight=-3)])
    assert response.status_code == 422
    locations = {tuple(error["loc"]) for error in response.json()["detail"]}
    assert locations == {("body", 1, "Age"), ("body", 1, "Weight")}


async def test_plausible_but_untrained_values_are_served_and_counted(
    trained_model_dir: Path,
) -> None:
    """Age 110 is a plausible body outside the training range: 200, counted under Age."""
    async with api_client(trained_model_dir) as client:
        response = await client.post("/predict", json=[row(Age=110), row(Age=110), row()])
        registry = client.registry  # type: ignore[attr-defined]
    assert response.status_code == 200
    assert sample(registry, "app_out_of_range_rows_total", feature="Age") == 2


async def test_limits_give_413(trained_model_dir: Path) -> None:
    """More rows than max_batch_rows, or more bytes than max_body_bytes, get a clear 413."""
    async with api_client(trained_model_dir, max_batch_rows=3, max_body_bytes=2000) as client:
        too_many = await client.post("/predict", json=[row()] * 4)
        too_big = await client.post("/predict", json=[row(id="x" * 3000)])
    assert too_many.status_code == 413
    assert "at most 3 rows" in too_many.json()["detail"]
    assert too_big.status_code == 413
    assert "2000 bytes" in too_big.json()["detail"]


async def test_ten_thousand_row_batch_is_accepted(trained_model_dir: Path) -> None:
    """The default limits accept a 10,000-row batch and every row is observed once."""
    rows = [row(id=i, Duration=1 + i % 30) for i in range(10_000)]
    async with api_client(trained_model_dir) as client:
        response = await client.post("/predict", json={"instances": rows})
        registry = client.registry  # type: ignore[attr-defined]
        pending = sample(registry, "app_feedback_pending_predictions")
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert len(predictions) == 10_000
    assert all(math.isfinite(p["Calories"]) for p in predictions)
    assert sample(registry, "app_pred_calories_count") == 10_000
    assert pending == 10_000
