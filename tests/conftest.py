"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from calapi.model.config import TrainConfig
from support import api_argv, free_port, running


def small_config(output_dir: Path, *, rows: int = 3000, max_iter: int = 60) -> TrainConfig:
    """A training config that fits in about a second: small synthetic data, few trees."""
    return TrainConfig.model_validate(
        {
            "data": {"source": "synthetic", "synthetic_rows": rows, "synthetic_seed": 7},
            "model": {"params": {"max_iter": max_iter, "learning_rate": 0.2}},
            "outputs": {"dir": str(output_dir)},
        }
    )


@pytest.fixture(autouse=True)
def _restore_environment() -> Iterator[None]:
    """Undo environment changes a test makes in-process (MLflow's set_tracking_uri and
    set_registry_uri export MLFLOW_* variables that later subprocesses would inherit)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
    if "mlflow" in sys.modules:
        # ... and keep the URIs and the active experiment in globals, which win over the
        # environment: a later test in the same worker would otherwise log to this one's store.
        from mlflow.tracking import fluent
        from mlflow.tracking._model_registry import utils as registry
        from mlflow.tracking._tracking_service import utils as tracking

        tracking._tracking_uri = None
        registry._registry_uri = None
        fluent._active_experiment_id = None


@pytest.fixture(scope="session", autouse=True)
def _session_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """XDG_STATE_HOME for session and module fixtures, which run `calops` before any test's own
    folder is set: no test may write the user's index of running stacks."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("xdg-state-session")))
        patch.setenv(
            "CALOPS_PREDICTION_LOG", str(tmp_path_factory.mktemp("predlog") / "predictions.db")
        )
        yield


@pytest.fixture(autouse=True)
def _private_state_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A fresh XDG_STATE_HOME per test, so stacks one test records never show in another's."""
    state = tmp_path_factory.mktemp("xdg-state")
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    # Every API a test starts keeps its predictions in its own log.
    monkeypatch.setenv("CALOPS_PREDICTION_LOG", str(state / "predictions.db"))
    return state


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a real trained model, metrics.json and model card (trained once)."""
    from calapi.model.train import run

    output = tmp_path_factory.mktemp("artifacts")
    run(small_config(output))
    return output


@pytest.fixture
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty working folder with its own CALOPS_HOME and no tracking URI set."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CALOPS_HOME", str(tmp_path / ".calops"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def live_api(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real API under uvicorn on a free loopback port, serving the trained model."""
    port = free_port()
    log = tmp_path_factory.mktemp("api-log") / "api.log"
    env = {"CALOPS_MODEL": str(trained_model_dir)}
    url = f"http://127.0.0.1:{port}"
    with running(api_argv(port), ready_url=f"{url}/readyz", env=env, log=log):
        yield url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests with real servers first: run in parallel (`nox -s tests` uses pytest-xdist, a
    file per worker at a time), the slow files start at once and the quick ones fill the gaps."""
    items.sort(key=lambda item: item.get_closest_marker("integration") is None)
