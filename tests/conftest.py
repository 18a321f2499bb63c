"""Fixtures shared by the whole suite."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from calapi.config import TrainConfig


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def small_config(output_dir: Path, *, rows: int = 3000, max_iter: int = 60) -> TrainConfig:
    """A training config that fits in about a second: small synthetic data, few trees."""
    return TrainConfig.model_validate(
        {
            "data": {"source": "synthetic", "synthetic_rows": rows, "synthetic_seed": 7},
            "model": {"params": {"max_iter": max_iter, "learning_rate": 0.2}},
            "outputs": {"dir": str(output_dir)},
        }
    )


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a real trained model, metrics.json and model card (trained once)."""
    from calapi.train import run

    output = tmp_path_factory.mktemp("artifacts")
    run(small_config(output))
    return output


@pytest.fixture
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run in an empty working folder with its own CALOPS_HOME and no tracking URI set."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CALOPS_HOME", str(tmp_path / ".calops"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield tmp_path
