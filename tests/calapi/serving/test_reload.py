"""Reloads: a failed load says so everywhere while the old model serves; bursts cost one load."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import threading
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from api_support import api_client, row, sample
from calapi.errors import ModelError, ModelRefusedError
from calapi.serving.holder import RELOAD_MIN_SECONDS, ModelHolder
from calapi.serving.metrics import ApiMetrics
from calapi.serving.sources import LoadedModel
from support import api_argv, free_port, running

JSON = {"Content-Type": "application/json"}


def serve_copy(trained: Path, folder: Path) -> Path:
    """Every file of the trained model (model, card, metrics) copied into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in trained.iterdir():
        if path.is_file():
            shutil.copy(path, folder / path.name)
    return folder


def corrupt(folder: Path) -> None:
    """Overwrite the model file(s) in ``folder`` with bytes that are no model."""
    for path in folder.glob("model.*"):
        path.write_bytes(b"garbage, not a model")


def point(root: Path, run: str) -> None:
    """Switch ``root/current`` to ``runs/<run>`` atomically."""
    temporary = root / ".current.tmp"
    os.symlink(Path("runs") / run, temporary)
    os.replace(temporary, root / "current")


def reloads(registry: CollectorRegistry, result: str) -> float:
    return sample(registry, "app_model_reloads_total", result=result)


def not_loaded(registry: CollectorRegistry) -> float:
    """Loads that failed or were refused (a corrupt file no longer matches its card's sha256)."""
    return reloads(registry, "failed") + reloads(registry, "refused")


# -- through the app -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_failed_reload_is_a_409_and_stale_everywhere_until_a_good_file(
    trained_model_dir: Path, tmp_path: Path
) -> None:
    """Corrupt file: /reload 409 with the reason, /healthz and /readyz 200 "stale", /info says
    why and since when, counted as failed; a good file again: 200 loaded and "ok"."""
    folder = serve_copy(trained_model_dir, tmp_path / "serving")
    async with api_client(folder) as client:
        registry: CollectorRegistry = client.registry  # type: ignore[attr-defined]
        info = await client.get("/info")
        assert info.status_code == 200, info.text
        version = info.json()["model"]["version"]
        corrupt(folder)
        failed = await client.post("/reload", headers=JSON)
        health, ready = await client.get("/healthz"), await client.get("/readyz")
        model = (await client.get("/info")).json()["model"]
        predict = await client.post("/predict", json=row())
        stale_gauge = sample(registry, "app_model_stale")
        serve_copy(trained_model_dir, folder)
        loaded = await client.post("/reload", headers=JSON)
        after = (await client.get("/healthz")).json()
        info_after = (await client.get("/info")).json()["model"]
    assert failed.status_code == 409
    reason = failed.json()["reason"]
    assert str(folder) in reason
    assert failed.json()["result"] in ("failed", "refused")
    assert failed.json()["status"] == "stale"
    assert health.status_code == ready.status_code == 200
    for body in (health.json(), ready.json()):
        assert (body["status"], body["model_version"], body["reason"]) == ("stale", version, reason)
        assert body["stale_since"]
    assert model["version"] == version
    assert model["stale"]["reason"] == reason
    assert model["stale"]["since"] == health.json()["stale_since"]
    assert predict.json()["model_version"] == version
    assert stale_gauge == 1
    assert (loaded.status_code, loaded.json()["result"], loaded.json()["status"]) == (
        200, "loaded", "ok",
    )  # fmt: skip
    assert after["status"] == "ok"
    assert "reason" not in after
    assert info_after["stale"] is None
    assert sample(registry, "app_model_stale") == 0
    assert not_loaded(registry) == 1
    assert reloads(registry, "loaded") == 2  # at start, and the good file


@pytest.mark.anyio
async def test_unchanged_source_is_not_loaded_again_unless_forced(
    trained_model_dir: Path, tmp_path: Path
) -> None:
    """/reload with nothing changed answers 200 "unchanged" without a load; ?force=true loads
    (once the last load is a second old)."""
    folder = serve_copy(trained_model_dir, tmp_path / "serving")
    async with api_client(folder) as client:
        registry: CollectorRegistry = client.registry  # type: ignore[attr-defined]
        unchanged = await client.post("/reload", headers=JSON)
        await asyncio.sleep(RELOAD_MIN_SECONDS)  # a source loaded since is not loaded again
        forced = await client.post("/reload", params={"force": "true"}, headers=JSON)
    assert (unchanged.status_code, unchanged.json()["result"]) == (200, "unchanged")
    assert (forced.status_code, forced.json()["result"]) == (200, "loaded")
    assert (reloads(registry, "unchanged"), reloads(registry, "loaded")) == (1, 2)


@pytest.mark.anyio
async def test_a_burst_of_forced_reloads_loads_once(
    trained_model_dir: Path, tmp_path: Path
) -> None:
    """60 concurrent forced /reload: all 200, and at most two loads between them."""
    folder = serve_copy(trained_model_dir, tmp_path / "serving")
    async with api_client(folder) as client:
        registry: CollectorRegistry = client.registry  # type: ignore[attr-defined]
        before = reloads(registry, "loaded")
        await asyncio.sleep(RELOAD_MIN_SECONDS)
        answers = await asyncio.gather(
            *(client.post("/reload", params={"force": "true"}, headers=JSON) for _ in range(60))
        )
        loads = reloads(registry, "loaded") - before
    assert {answer.status_code for answer in answers} == {200}
    assert 1 <= loads <= 2


@pytest.mark.anyio
async def test_source_back_to_what_serves_is_no_longer_stale(
    trained_model_dir: Path, tmp_path: Path
) -> None:
    """current -> a broken run: stale; current back to the serving run: "ok" with no load."""
    root = tmp_path / "artifacts"
    serve_copy(trained_model_dir, root / "runs" / "good")
    corrupt(serve_copy(trained_model_dir, root / "runs" / "broken"))
    point(root, "good")
    async with api_client(root) as client:
        registry: CollectorRegistry = client.registry  # type: ignore[attr-defined]
        point(root, "broken")
        failed = await client.post("/reload", headers=JSON)
        point(root, "good")
        back = await client.post("/reload", headers=JSON)
        health = (await client.get("/healthz")).json()
    assert failed.status_code == 409
    assert (back.status_code, back.json()["result"]) == (200, "unchanged")
    assert health["status"] == "ok"
    assert (reloads(registry, "loaded"), not_loaded(registry)) == (1, 1)


@pytest.mark.anyio
async def test_watcher_marks_stale_once_per_change(trained_model_dir: Path, tmp_path: Path) -> None:
    """The watcher finds the corrupt file: stale without any /reload, counted once, not per tick."""
    folder = serve_copy(trained_model_dir, tmp_path / "serving")
    async with api_client(folder, reload_interval_seconds=0.02) as client:
        registry: CollectorRegistry = client.registry  # type: ignore[attr-defined]
        corrupt(folder)
        health: dict[str, Any] = {}
        for _ in range(200):
            health = (await client.get("/healthz")).json()
            if health["status"] == "stale":
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # about 15 more ticks of the watcher
    assert health["status"] == "stale"
    assert not_loaded(registry) == 1


# -- the holder on its own: single flight and results -----------------------------------------


class SlowSource:
    """A source whose load takes a while and is counted; ``error`` makes loads fail."""

    description = "slow"

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.loads = 0
        self.version = 1
        self.error: ModelError | None = None
        self._lock = threading.Lock()

    def signature(self) -> Hashable:
        return self.version

    def load(self) -> LoadedModel:
        with self._lock:
            self.loads += 1
        time.sleep(0.05)
        if self.error is not None:
            raise self.error
        return self.model


@pytest.fixture
def loaded_model(trained_model_dir: Path) -> LoadedModel:
    from calapi.serving.sources import source_for

    return source_for(str(trained_model_dir)).load()


@pytest.mark.anyio
async def test_concurrent_refreshes_share_one_load(loaded_model: LoadedModel) -> None:
    """60 concurrent forced refreshes cause one load; 60 unforced ones with no change none."""
    source = SlowSource(loaded_model)
    holder = ModelHolder(source, ApiMetrics(CollectorRegistry()))
    await holder.refresh()
    source.loads = 0
    await asyncio.sleep(RELOAD_MIN_SECONDS)  # past the first load's rate limit
    forced = await asyncio.gather(*(holder.refresh(force=True) for _ in range(60)))
    assert source.loads == 1
    assert {outcome.result for outcome in forced} == {"loaded"}
    plain = await asyncio.gather(*(holder.refresh() for _ in range(60)))
    assert source.loads == 1
    assert {outcome.result for outcome in plain} == {"unchanged"}


@pytest.mark.anyio
async def test_a_refused_model_is_counted_as_refused(loaded_model: LoadedModel) -> None:
    """A load refused for safety: result "refused", stale with the reason, the old model serves."""
    source = SlowSource(loaded_model)
    registry = CollectorRegistry()
    holder = ModelHolder(source, ApiMetrics(registry))
    await holder.refresh()
    source.version, source.error = 2, ModelRefusedError("model.joblib is a pickle; refused.")
    outcome = await holder.refresh()
    assert (outcome.result, outcome.reason) == ("refused", "model.joblib is a pickle; refused.")
    assert holder.current is loaded_model
    assert holder.stale is not None
    assert holder.stale.result == "refused"
    assert sample(registry, "app_model_reloads_total", result="refused") == 1


@pytest.mark.anyio
async def test_a_load_leaves_its_survivors_frozen(loaded_model: LoadedModel) -> None:
    """What a load leaves behind (the numba kernels' many objects) is collected and frozen
    before the model answers, so no full collection scans it under traffic."""
    gc.unfreeze()
    holder = ModelHolder(SlowSource(loaded_model), ApiMetrics(CollectorRegistry()))
    try:
        assert gc.get_freeze_count() == 0
        await holder.refresh()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


# -- the real server --------------------------------------------------------------------------


def metric(url: str, line_start: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5.0).text
    found = [line for line in text.splitlines() if line.startswith(line_start)]
    return float(found[0].split()[-1]) if found else 0.0


@pytest.mark.integration
def test_uvicorn_reports_a_failed_reload_and_recovers(
    trained_model_dir: Path, tmp_path: Path
) -> None:
    """Under uvicorn: corrupt file -> /reload 409 with the reason, /healthz 200 stale, /info and
    /metrics say so; a good file -> /reload 200 loaded, /healthz ok."""
    folder = serve_copy(trained_model_dir, tmp_path / "serving")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"CALOPS_MODEL": str(folder), "CALOPS_RELOAD_INTERVAL_SECONDS": "0",
           "CALOPS_PREDICTION_LOG": str(tmp_path / "predictions.db")}  # fmt: skip
    with running(api_argv(port), ready_url=f"{url}/readyz", env=env, log=tmp_path / "api.log"):
        corrupt(folder)
        failed = httpx.post(f"{url}/reload", headers=JSON, timeout=30)
        health = httpx.get(f"{url}/healthz", timeout=5)
        stale = httpx.get(f"{url}/info", timeout=5).json()["model"]["stale"]
        counted = metric(url, 'app_model_reloads_total{result="failed"}') + metric(
            url, 'app_model_reloads_total{result="refused"}'
        )
        gauge = metric(url, "app_model_stale ")
        serve_copy(trained_model_dir, folder)
        loaded = httpx.post(f"{url}/reload", headers=JSON, timeout=30)
        healthy = httpx.get(f"{url}/healthz", timeout=5).json()
        gauge_after = metric(url, "app_model_stale ")
    assert failed.status_code == 409
    assert str(folder) in failed.json()["reason"]
    assert (health.status_code, health.json()["status"]) == (200, "stale")
    assert stale["reason"] == failed.json()["reason"] == health.json()["reason"]
    assert (counted, gauge) == (1.0, 1.0)
    assert (loaded.status_code, loaded.json()["result"]) == (200, "loaded")
    assert (healthy["status"], gauge_after) == ("ok", 0.0)
