"""Helpers for API tests (import as ``api_support``): in-process clients and tiny models."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import httpx
from prometheus_client import CollectorRegistry

from calapi.model.artifact import file_sha256
from calapi.model.config import TrainConfig
from calapi.serving.app import create_app
from calapi.serving.settings import ApiSettings

SEED_ROW: Final[dict[str, Any]] = {
    "id": 1, "Gender": "male", "Age": 25, "Height": 180, "Weight": 75, "Duration": 30,
    "Heart_Rate": 120, "Body_Temp": 37.0,
}  # fmt: skip


# What every POST to the API must declare (the guard answers 415 otherwise).
JSON_HEADERS: Final = {"content-type": "application/json"}


def row(**changes: Any) -> dict[str, Any]:
    """The seed's curl row with ``changes`` applied (a value of None removes the key)."""
    data = {**SEED_ROW, **changes}
    return {key: value for key, value in data.items() if value is not None}


def train_tiny(output: Path, *, max_iter: int = 30, seed: int = 7) -> Path:
    """Train a small real model into ``output`` with calapi.model.train.run; return the folder."""
    from calapi.model.train import run

    config = TrainConfig.model_validate(
        {
            "data": {"source": "synthetic", "synthetic_rows": 2000, "synthetic_seed": seed},
            "model": {"params": {"max_iter": max_iter, "learning_rate": 0.2}},
            "outputs": {"dir": str(output)},
        }
    )
    run(config)
    return output


@asynccontextmanager
async def api_client(
    model: str | Path, registry: CollectorRegistry | None = None, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """The app (lifespan included) behind an in-process httpx client, with a fresh registry."""
    registry = registry if registry is not None else CollectorRegistry()
    options = {"reload_interval_seconds": 0.0, **settings}
    app = create_app(ApiSettings(model=str(model), **options), registry)
    async with app.app.router.lifespan_context(app.app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            client.app = app  # type: ignore[attr-defined]
            client.registry = registry  # type: ignore[attr-defined]
            yield client


def routed_client(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """A client of the same app without the fast path: FastAPI routes every request."""
    app = client.app  # type: ignore[attr-defined]
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app.app), base_url="http://localhost"
    )


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value, 0.0 when it does not exist yet."""
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


RUN_FILES: Final = ("model.skops", "metrics.json", "model_card.json")


def make_run(
    root: Path, trained: Path, run_id: str, version: str | None = None, *,
    files: Sequence[str] = RUN_FILES, **record: Any,
) -> Path:  # fmt: skip
    """A finished run folder ``root/runs/<run_id>``: ``files`` copied from ``trained`` and a
    run.json naming model.skops (``version`` defaults to the run id; ``record`` overrides)."""
    folder = root / "runs" / run_id
    folder.mkdir(parents=True)
    for name in files:
        shutil.copy(trained / name, folder / name)
    run = {
        "schema": 1, "run_id": run_id, "model_name": "calories", "version": version or run_id,
        "model_file": "model.skops", "sha256": file_sha256(folder / "model.skops"), **record,
    }  # fmt: skip
    (folder / "run.json").write_text(json.dumps(run), encoding="utf-8")
    return folder


def point(root: Path, run_id: str) -> None:
    """Switch ``root/current`` to ``runs/<run_id>`` atomically, as `calops promote` does."""
    temp = root / ".current.tmp"
    os.symlink(Path("runs") / run_id, temp)
    os.replace(temp, root / "current")
