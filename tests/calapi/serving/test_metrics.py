"""Metric names, labels and the bulk histogram update, on a fresh registry per test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from api_support import api_client, row, sample
from calapi.serving.metrics import CALORIE_BUCKETS, ApiMetrics, BulkHistogram
from calapi.serving.predlog import Retention, open_log


def test_bulk_histogram_exports_what_one_observe_per_value_would() -> None:
    """Bulk observation gives the same bucket, count and sum samples as a loop of observe()."""
    values = np.random.default_rng(3).uniform(-5, 450, 1000)
    values[:5] = [5.0, 10.0, 400.0, 0.0, 1e6]  # exactly on bounds and beyond the last
    bulk_registry, loop_registry = CollectorRegistry(), CollectorRegistry()
    bulk = BulkHistogram("h", "h", buckets=CALORIE_BUCKETS, registry=bulk_registry)
    bulk.observe_many(values[:600])
    bulk.observe_many(values[600:])
    one_by_one = Histogram("h", "h", buckets=CALORIE_BUCKETS, registry=loop_registry)
    for value in values:
        one_by_one.observe(value)
    for bound in (*CALORIE_BUCKETS, float("inf")):
        le = str(float(bound)) if bound != float("inf") else "+Inf"
        expected = loop_registry.get_sample_value("h_bucket", {"le": le})
        assert bulk_registry.get_sample_value("h_bucket", {"le": le}) == expected
    assert bulk_registry.get_sample_value("h_count") == 1000
    assert bulk_registry.get_sample_value("h_sum") == pytest.approx(
        loop_registry.get_sample_value("h_sum")
    )


def test_bulk_histogram_is_exposed_as_a_histogram() -> None:
    """The exposition types the family as a histogram, so PromQL's histogram_quantile works."""
    registry = CollectorRegistry()
    BulkHistogram("h", "h", buckets=(1.0, 2.0), registry=registry).observe_many(np.array([1.5]))
    text = generate_latest(registry).decode()
    assert "# TYPE h histogram" in text
    assert 'h_bucket{le="2.0"} 1.0' in text


def test_model_info_points_at_one_model(tmp_path: Path) -> None:
    """Swapping models leaves exactly one app_model_info series, for the current model."""
    registry = CollectorRegistry()
    metrics = ApiMetrics(registry)
    log = open_log(str(tmp_path / "predictions.db"), Retention())
    metrics.bind_state(drift=lambda: None, log=log, window_seconds=300.0)
    metrics.show_model("v1", "a" * 64, "artifacts")
    metrics.show_model("calories/2", "b" * 64, "artifacts", alias="current")
    assert sample(registry, "app_model_info", version="v1", alias="", sha256="a" * 12,
                  source="artifacts") == 0  # fmt: skip
    assert sample(registry, "app_model_info", version="calories/2", alias="current",
                  sha256="b" * 12, source="artifacts") == 1  # fmt: skip
    metrics.show_model(None)
    assert sample(registry, "app_model_loaded") == 0
    assert "app_model_info{" not in generate_latest(registry).decode()


@pytest.mark.anyio
async def test_routes_are_labelled_by_template(trained_model_dir: object) -> None:
    """Known routes keep their template; unknown paths share one 'unmatched' label."""
    async with api_client(str(trained_model_dir)) as client:
        await client.post("/predict", json=row())
        await client.get("/no/such/path/123")
        await client.get("/another-missing")
        text = (await client.get("/metrics")).text
        registry = client.registry  # type: ignore[attr-defined]
    assert sample(registry, "app_requests_total", route="unmatched", method="GET",
                  status="404") == 2  # fmt: skip
    assert sample(registry, "app_request_latency_seconds_count", route="/predict") == 1
    for name in (
        "app_requests_total", "app_request_latency_seconds_bucket", "app_pred_calories_bucket",
        "app_feedback_lag_seconds_bucket", "app_rolling_rmsle_5m NaN", "app_model_info{",
        "app_feedback_pending_predictions", "app_feedback_evictions_total",
        "app_out_of_range_rows_total",
    ):  # fmt: skip
        assert name in text


@pytest.mark.anyio
async def test_probes_are_not_counted_as_predictions(trained_model_dir: object) -> None:
    """/readyz predicts a probe row, but app_pred_calories only counts /predict rows."""
    async with api_client(str(trained_model_dir)) as client:
        assert (await client.get("/readyz")).status_code == 200
        await client.post("/predict", json=[row(), row(Age=110)])
        registry = client.registry  # type: ignore[attr-defined]
    assert sample(registry, "app_pred_calories_count") == 2
    assert sample(registry, "app_predict_batch_rows_sum") == 2
    assert sample(registry, "app_out_of_range_rows_total", feature="Age") == 1
