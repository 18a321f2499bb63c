"""Hundreds of parallel predict and feedback calls: every metric equals what the test counts."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import httpx
import pytest

from api_support import api_client, row, sample

pytestmark = pytest.mark.anyio


def _body(i: int) -> Any:
    if i % 3 == 0:
        return [row(id=None, Duration=1 + (i + k) % 30) for k in range(1 + i % 4)]
    return row(id=f"r{i}", Age=20 + i % 60)


async def _predict_all(client: httpx.AsyncClient, bodies: list[Any]) -> list[dict[str, Any]]:
    answers = await asyncio.gather(*(client.post("/predict", json=body) for body in bodies))
    assert all(a.status_code == 200 for a in answers)
    predictions: list[dict[str, Any]] = []
    for answer in answers:
        data = answer.json()
        predictions.extend(data.get("predictions", [data]))
    return predictions


async def test_counters_histograms_and_rmsle_match_the_test_own_count(
    trained_model_dir: Path,
) -> None:
    """After concurrent traffic, requests, histograms and the rolling RMSLE are exact."""
    async with api_client(trained_model_dir) as client:
        registry = client.registry  # type: ignore[attr-defined]
        first = await _predict_all(client, [_body(i) for i in range(300)])
        truths = {p["id"]: 20.0 + (hash(str(p["id"])) % 200) for p in first[::2]}
        feedback = [
            client.post("/feedback", json={"id": i, "Calories": c}) for i, c in truths.items()
        ]
        repeats = [
            client.post("/feedback", json={"id": i, "Calories": 1.0}) for i in list(truths)[:20]
        ]
        unknown = [
            client.post("/feedback", json={"id": f"nope{i}", "Calories": 1.0}) for i in range(10)
        ]
        more = [client.post("/predict", json=row(id=f"late{i}")) for i in range(100)]
        answers = await asyncio.gather(*feedback, *more)
        # Repeats are sent after the first answers landed, so every one of them is a 409.
        second = await asyncio.gather(*repeats, *unknown)
        rmsle_now = sample(registry, "app_rolling_rmsle_5m")
        pending = sample(registry, "app_feedback_pending_predictions")
        errors = sample(registry, "app_feedback_squared_log_error_sum")

    by_id = {p["id"]: p["Calories"] for p in first}
    statuses = [a.status_code for a in answers] + [a.status_code for a in second]
    assert statuses.count(200) == len(truths) + 100
    assert statuses.count(409) == 20
    assert statuses.count(404) == 10

    def requests(route: str, status: str) -> float:
        return sample(registry, "app_requests_total", route=route, method="POST", status=status)

    assert requests("/predict", "200") == 400
    assert requests("/feedback", "200") == len(truths)
    assert requests("/feedback", "409") == 20
    assert requests("/feedback", "404") == 10
    assert sample(registry, "app_request_latency_seconds_count", route="/predict") == 400
    assert sample(registry, "app_pred_calories_count") == len(first) + 100
    assert sample(registry, "app_feedback_lag_seconds_count") == len(truths)
    assert pending == len(first) + 100 - len(truths)
    assert sample(registry, "app_feedback_squared_log_error_count") == len(truths)
    squared = math.fsum((math.log1p(by_id[i]) - math.log1p(c)) ** 2 for i, c in truths.items())
    assert errors == pytest.approx(squared, rel=1e-12)
    assert rmsle_now == pytest.approx(math.sqrt(squared / len(truths)), rel=1e-12)
