"""Model loading: missing and corrupt models keep the process up; swaps never fail a request."""

from __future__ import annotations

import asyncio
import pickle
import shutil
from pathlib import Path

import pytest

from api_support import api_client, row, sample, train_tiny
from calapi.model.artifact import load_model
from calapi.model.safeformat import TRUSTED_TYPES

pytestmark = pytest.mark.anyio


async def test_missing_model_answers_503_with_the_reason(tmp_path: Path) -> None:
    """No model: /healthz, /readyz and /predict say 503 and why; /metrics still works."""
    async with api_client(tmp_path / "nothing-here") as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
        predict = await client.post("/predict", json=row())
        info = (await client.get("/info")).json()
        assert (await client.get("/metrics")).status_code == 200
    assert health.status_code == ready.status_code == predict.status_code == 503
    assert "No model at" in health.json()["reason"]
    assert "current" in health.json()["reason"]
    assert "calops train" in predict.json()["detail"]
    assert info["model"]["loaded"] is False


async def test_corrupt_model_answers_503_with_the_reason(tmp_path: Path) -> None:
    """A model file that is not a model: 503 naming the file, the process stays up."""
    (tmp_path / "model.skops").write_bytes(b"this is not a skops file")
    async with api_client(tmp_path) as client:
        health = await client.get("/healthz")
        predict = await client.post("/predict", json=row())
    assert health.status_code == predict.status_code == 503
    assert "is not a loadable skops model" in health.json()["reason"]


async def test_model_without_card_is_served_and_info_says_so(
    trained_model_dir: Path, tmp_path: Path
) -> None:
    """Without model_card.json the model still serves; /info names the missing card."""
    shutil.copy(trained_model_dir / "model.skops", tmp_path / "model.skops")
    async with api_client(tmp_path) as client:
        predict = await client.post("/predict", json=row())
        model = (await client.get("/info")).json()["model"]
    assert predict.status_code == 200
    assert "No model card" in model["card"]
    assert len(model["sha256"]) == 64


async def test_model_pickled_under_the_old_module_name_is_served_fast(
    trained_model_dir: Path, tmp_path: Path
) -> None:
    """With pickles allowed, a model.joblib naming calapi.pipeline (before the move) serves fast."""
    import joblib

    estimator = joblib.load(trained_model_dir / "model.joblib")
    modern = pickle.dumps(estimator, protocol=0)
    (tmp_path / "model.joblib").write_bytes(
        modern.replace(b"ccalapi.model.pipeline\n", b"ccalapi.pipeline\n")
    )
    assert b"ccalapi.pipeline\n" in (tmp_path / "model.joblib").read_bytes()
    async with api_client(tmp_path, allow_pickle=True) as client:
        predict = await client.post("/predict", json=row())
        model = (await client.get("/info")).json()["model"]
    assert predict.status_code == 200
    assert model["predictor"] == "fast"


async def test_model_appearing_later_is_picked_up(trained_model_dir: Path, tmp_path: Path) -> None:
    """Start with no model, then train one into the folder: the watcher loads it."""
    async with api_client(tmp_path, reload_interval_seconds=0.05) as client:
        assert (await client.get("/readyz")).status_code == 503
        for name in ("model.skops", "metrics.json", "model_card.json"):
            shutil.copy(trained_model_dir / name, tmp_path / name)
        for _ in range(200):
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        assert (await client.post("/predict", json=row())).status_code == 200


async def test_hot_swap_under_load_fails_no_request(
    trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Replacing the model files during traffic: all 200, each batch from exactly one model."""
    serving = tmp_path_factory.mktemp("serving")
    for name in ("model.skops", "metrics.json", "model_card.json"):
        shutil.copy(trained_model_dir / name, serving / name)
    newer = train_tiny(tmp_path_factory.mktemp("newer"), max_iter=12, seed=11)
    batch = [row(id=None, Duration=d) for d in range(1, 31)]
    async with api_client(serving, reload_interval_seconds=0.02) as client:
        old = (await client.get("/info")).json()["model"]["version"]
        stop = asyncio.Event()

        async def traffic() -> list[tuple[int, str]]:
            seen = []
            while not stop.is_set():
                answer = await client.post("/predict", json=batch)
                seen.append((answer.status_code, answer.json().get("model_version", "")))
            return seen

        workers = [asyncio.create_task(traffic()) for _ in range(8)]
        await asyncio.sleep(0.3)
        for name in ("model.skops", "metrics.json", "model_card.json"):  # the card goes last
            shutil.copy(newer / name, serving / f".{name}.tmp")
            (serving / f".{name}.tmp").replace(serving / name)
        new = ""
        for _ in range(200):
            new = (await client.get("/info")).json()["model"]["version"]
            if new != old:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        stop.set()
        seen = [item for worker in workers for item in await worker]
        registry = client.registry  # type: ignore[attr-defined]
    assert new != old
    assert {status for status, _ in seen} == {200}
    assert {version for _, version in seen} == {old, new}
    assert sample(registry, "app_model_reloads_total", result="loaded") >= 1
    assert sample(registry, "app_model_info", version=new, alias="", sha256=new,
                  source=str(serving / "model.skops")) == 1  # fmt: skip


async def test_explicit_reload_and_a_bad_replacement_keep_the_old_model(
    trained_model_dir: Path, tmp_path: Path
) -> None:
    """POST /reload with a corrupt file on disk: 409, and the model already loaded serves."""
    for name in ("model.skops", "model_card.json"):
        shutil.copy(trained_model_dir / name, tmp_path / name)
    async with api_client(tmp_path) as client:
        before = (await client.get("/info")).json()["model"]["version"]
        (tmp_path / "model.skops").write_bytes(b"garbage")
        reload = await client.post("/reload", headers={"Content-Type": "application/json"})
        after = (await client.get("/info")).json()["model"]["version"]
        predict = await client.post("/predict", json=row())
        registry = client.registry  # type: ignore[attr-defined]
    assert reload.status_code == 409
    assert before == after
    assert predict.status_code == 200
    assert (
        sample(registry, "app_model_reloads_total", result="failed")
        + sample(registry, "app_model_reloads_total", result="refused")
        == 1
    )


@pytest.mark.integration
async def test_mlflow_alias_uri_serves_the_registered_model(
    trained_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """models:/calories@champion in a real MLflow store loads, predicts and reports name/version."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    estimator = load_model(trained_model_dir / "model.skops")
    mlflow.set_experiment("calapi-test")
    with mlflow.start_run() as run:
        mlflow.sklearn.log_model(
            estimator, name="model", registered_model_name="calories",
            serialization_format="skops", skops_trusted_types=list(TRUSTED_TYPES),
        )  # fmt: skip
        mlflow.log_artifact(str(trained_model_dir / "model_card.json"))
    client = mlflow.MlflowClient()
    client.set_registered_model_alias("calories", "champion", "1")
    async with api_client("models:/calories@champion") as api:
        predict = await api.post("/predict", json=row())
        model = (await api.get("/info")).json()["model"]
    assert predict.status_code == 200
    assert predict.json()["model_version"] == "calories/1"
    assert model["predictor"] == "fast"
    assert model["card"] == "present"
    assert model["alias"] == "champion"
    assert model["run_id"] == run.info.run_id
