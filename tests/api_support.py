"""Helpers for API tests (import as ``api_support``): in-process clients and tiny models."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import httpx
from prometheus_client import CollectorRegistry

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
