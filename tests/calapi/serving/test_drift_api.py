"""Drift through the API: /predict traffic moves app_feature_drift_psi and /info's drift."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api_support import api_client, sample
from calapi.model.synthetic import generate
from support import api_argv, free_port, running

SHIFT = {"Weight": 1.20, "Duration": 1.50, "Heart_Rate": 1.12}
ROWS = 2000


def instances(seed: int, shift: dict[str, float] | None = None) -> dict[str, Any]:
    """A /predict batch of synthetic rows (no Calories), optionally shifted like the simulator."""
    frame = generate(ROWS, seed).drop(columns=["Calories"])
    for name, factor in (shift or {}).items():
        frame[name] = (frame[name] * factor).round(1)
    return {"instances": frame.to_dict(orient="records")}


def psi_by_feature(text: str) -> dict[str, float]:
    """app_feature_drift_psi per feature, parsed from a /metrics page."""
    return {
        s.labels["feature"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "app_feature_drift_psi"
    }


@pytest.mark.anyio
async def test_training_like_traffic_gives_small_psi(trained_model_dir: Path) -> None:
    """Rows from the training generator keep every PSI, the prediction's too, below 0.1."""
    async with api_client(trained_model_dir) as client:
        assert (await client.post("/predict", json=instances(seed=11))).status_code == 200
        info = (await client.get("/info")).json()
        registry = client.registry  # type: ignore[attr-defined]
    assert sample(registry, "app_drift_window_rows") == ROWS
    for name in ("Sex", "Age", "Height", "Weight", "Duration", "Heart_Rate", "Body_Temp"):
        assert sample(registry, "app_feature_drift_psi", feature=name) < 0.1, name
    assert sample(registry, "app_feature_drift_psi", feature="prediction") < 0.1
    assert info["drift"]["rows"] == ROWS
    assert info["drift"]["psi"]["Weight"] < 0.1


@pytest.mark.anyio
async def test_covariate_shift_gives_large_psi_on_those_features(trained_model_dir: Path) -> None:
    """The same rows with Weight x1.2, Duration x1.5, Heart_Rate x1.12 push those PSIs over 0.2."""
    async with api_client(trained_model_dir) as client:
        assert (await client.post("/predict", json=instances(11, SHIFT))).status_code == 200
        text = (await client.get("/metrics")).text
        info = (await client.get("/info")).json()
    psi = psi_by_feature(text)
    for name in SHIFT:
        assert psi[name] > 0.2, name
        assert info["drift"]["psi"][name] == pytest.approx(psi[name])
    assert psi["Age"] < 0.1
    assert psi["prediction"] > 0.2


@pytest.mark.anyio
async def test_psi_is_null_until_the_window_has_enough_rows(trained_model_dir: Path) -> None:
    """Below drift_min_rows the gauges say NaN and /info says null, never a noisy number."""
    async with api_client(trained_model_dir, drift_min_rows=5000) as client:
        await client.post("/predict", json=instances(seed=12))
        info = (await client.get("/info")).json()
        registry = client.registry  # type: ignore[attr-defined]
    assert math.isnan(sample(registry, "app_feature_drift_psi", feature="Weight"))
    assert info["drift"]["psi"]["Weight"] is None
    assert info["drift"]["min_rows"] == 5000


@pytest.mark.anyio
async def test_reloading_the_model_starts_a_fresh_window(
    trained_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model swap (POST /reload?force=true) resets the drift window to the new model's
    reference."""
    monkeypatch.setattr("calapi.serving.holder.RELOAD_MIN_SECONDS", 0.0)
    async with api_client(trained_model_dir) as client:
        await client.post("/predict", json=instances(seed=13))
        registry = client.registry  # type: ignore[attr-defined]
        assert sample(registry, "app_drift_window_rows") == ROWS
        reload = await client.post(
            "/reload", params={"force": "true"}, headers={"Content-Type": "application/json"}
        )
        assert (reload.status_code, reload.json()["result"]) == (200, "loaded")
        assert sample(registry, "app_drift_window_rows") == 0


@pytest.mark.anyio
async def test_a_model_without_a_card_has_no_drift(trained_model_dir: Path, tmp_path: Path) -> None:
    """Without a model card there is nothing to compare with: no drift series, /info null."""
    shutil.copy(trained_model_dir / "model.skops", tmp_path / "model.skops")
    async with api_client(tmp_path) as client:
        assert (await client.post("/predict", json=instances(seed=14))).status_code == 200
        text = (await client.get("/metrics")).text
        info = (await client.get("/info")).json()
    assert psi_by_feature(text) == {}
    assert "app_drift_window_rows " not in text
    assert info["drift"] is None


@pytest.mark.integration
def test_real_uvicorn_exports_drift_over_http(trained_model_dir: Path, tmp_path: Path) -> None:
    """Under uvicorn, shifted single rows and batches move the PSI in /metrics and /info."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"CALOPS_MODEL": str(trained_model_dir), "CALOPS_DRIFT_MIN_ROWS": "300"}
    shifted = instances(15, SHIFT)["instances"]
    log = tmp_path / "api.log"
    with (
        running(api_argv(port), ready_url=f"{url}/readyz", env=env, log=log),
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        before = psi_by_feature(client.get("/metrics").text)
        for row in shifted[:50]:
            assert client.post("/predict", json=row).status_code == 200
        assert client.post("/predict", json=shifted[50:]).status_code == 200
        psi = psi_by_feature(client.get("/metrics").text)
        info = client.get("/info").json()
    assert all(math.isnan(value) for value in before.values())
    assert info["drift"]["rows"] == ROWS
    for name in SHIFT:
        assert psi[name] > 0.2, name
    assert psi["Age"] < 0.1
