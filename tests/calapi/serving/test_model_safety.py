"""Models load without running code: a planted pickle never runs, in a file or in MLflow.

Real files, a real API under uvicorn and a real `mlflow server`; the planted pickle would
create a marker file the moment anything unpickled it.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest

from api_support import JSON_HEADERS, make_run, point, row, train_tiny
from calapi.errors import ModelError, ModelRefusedError, PickleRefusedError
from calapi.model.artifact import file_sha256, load_model, read_model
from calapi.model.safeformat import TRUSTED_TYPES, dump_safe, load_safe
from calapi.serving.sources import LocalSource, MlflowSource
from support import api_argv, free_port, running
from support import mlflow_server as start_mlflow_server

BIN = Path(sys.executable).parent
RUN_FILES = ("model.skops", "model.joblib", "metrics.json", "model_card.json")


class Planted:
    """Unpickled, it runs ``touch marker``: what an attacker writes into a model folder."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def planted(marker: Path) -> bytes:
    """The bytes of a pickle that creates ``marker`` when loaded."""
    return pickle.dumps(Planted(marker))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real model from the built-in trainer (model.skops, model.joblib, card)."""
    return train_tiny(tmp_path_factory.mktemp("trained"), max_iter=8)


def plant_run(root: Path, marker: Path, run_id: str, model_file: str) -> None:
    """A run whose every model file is the planted pickle; run.json names ``model_file``."""
    folder = root / "runs" / run_id
    folder.mkdir(parents=True)
    for name in ("model.skops", "model.joblib"):
        (folder / name).write_bytes(planted(marker))
    run = {"schema": 1, "run_id": run_id, "model_name": "calories", "version": run_id,
           "model_file": model_file, "sha256": file_sha256(folder / model_file)}  # fmt: skip
    (folder / "run.json").write_text(json.dumps(run), encoding="utf-8")


# -- the reader, on real files ---------------------------------------------------------------


def test_a_planted_pickle_is_refused_unopened(tmp_path: Path) -> None:
    """model.joblib that would run code: refused in one sentence, and nothing ran."""
    marker = tmp_path / "ran"
    (tmp_path / "model.joblib").write_bytes(planted(marker))
    with pytest.raises(PickleRefusedError) as refused:
        LocalSource(tmp_path).load()
    assert not marker.exists()
    message = str(refused.value)
    assert "is a pickle, which runs any code" in message
    assert "calops train" in message
    assert "--allow-pickle" in message


def test_a_pickle_named_skops_is_not_unpickled(tmp_path: Path) -> None:
    """The planted pickle as model.skops: read as skops only, so it fails to load and never runs."""
    marker = tmp_path / "ran"
    (tmp_path / "model.skops").write_bytes(planted(marker))
    with pytest.raises(ModelError, match="is not a loadable skops model"):
        LocalSource(tmp_path).load()
    assert not marker.exists()


def test_allow_pickle_loads_a_legit_pickle_and_says_so_loudly(
    trained: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With allow_pickle a pickle of older calops serves, and a WARNING says what that risks."""
    for name in ("model.joblib", "model_card.json"):
        shutil.copy(trained / name, tmp_path / name)
    with caplog.at_level(logging.WARNING, logger="calapi"):
        model = LocalSource(tmp_path, allow_pickle=True).load()
    assert model.sha256 == file_sha256(tmp_path / "model.joblib")
    assert model.card is not None
    assert "loading a pickle can run any code" in caplog.text
    with pytest.raises(PickleRefusedError):
        LocalSource(tmp_path).load()


def test_a_pickle_its_card_does_not_name_is_refused_before_unpickling(
    trained: Path, tmp_path: Path
) -> None:
    """Even with allow_pickle, a model.joblib whose sha256 differs from the card's never loads."""
    shutil.copy(trained / "model_card.json", tmp_path / "model_card.json")
    marker = tmp_path / "ran"
    (tmp_path / "model.joblib").write_bytes(planted(marker))
    with pytest.raises(ModelRefusedError, match="is not the file the model card") as refused:
        LocalSource(tmp_path, allow_pickle=True).load()
    assert not isinstance(refused.value, PickleRefusedError)
    assert not marker.exists()


def test_a_run_json_sha256_mismatch_is_refused(trained: Path, tmp_path: Path) -> None:
    """A model.skops that is not the one run.json records is not loaded."""
    make_run(tmp_path, trained, "a", files=RUN_FILES, sha256="0" * 64)
    point(tmp_path, "a")
    with pytest.raises(ModelRefusedError, match=r"is not the file its run\.json names"):
        LocalSource(tmp_path).load()


def test_skops_with_an_untrusted_function_is_refused_naming_it(tmp_path: Path) -> None:
    """A FunctionTransformer calling os.system is a trusted estimator around an untrusted call."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.dummy import DummyRegressor

    model = TransformedTargetRegressor(
        regressor=DummyRegressor(), func=os.system, inverse_func=os.system, check_inverse=False
    )
    path = tmp_path / "model.skops"
    path.write_bytes(dump_safe(model))
    with pytest.raises(ModelRefusedError, match=r"does not trust \(posix\.system\)"):
        read_model(path)


def test_a_tree_pointing_outside_itself_is_refused(trained: Path) -> None:
    """Trusted tree types with indices out of bounds: refused before scikit-learn follows them."""
    model = load_model(trained / "model.skops")
    gbm = model.gbm_
    nodes = gbm._predictors[0][0].nodes
    inner = int(np.flatnonzero(nodes["is_leaf"] == 0)[0])
    for field, value, reason in (
        ("left", 10**6, "points outside it"),
        ("left", inner, "back up"),
        ("feature_idx", 99, "feature the model does not have"),
    ):
        saved = nodes[field][inner]
        nodes[field][inner] = value
        data = dump_safe(model)
        nodes[field][inner] = saved
        with pytest.raises(ModelRefusedError, match=reason):
            load_safe(data, "tampered.skops")


def test_a_forest_tree_with_a_bad_feature_is_refused(tmp_path: Path) -> None:
    """sklearn.tree._tree.Tree (the hand-out's forests) is checked the same way."""
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(0)
    forest = RandomForestRegressor(n_estimators=2, max_depth=3, random_state=0)
    forest.fit(rng.random((50, 3)), rng.random(50))
    assert isinstance(load_safe(dump_safe(forest), "forest.skops"), RandomForestRegressor)
    tree = forest.estimators_[0].tree_
    state = tree.__getstate__()
    state["nodes"]["feature"][0] = 7
    tree.__setstate__(state)
    with pytest.raises(ModelRefusedError, match="feature the model does not have"):
        load_safe(dump_safe(forest), "forest.skops")


def test_every_extra_trusted_type_is_named_exactly() -> None:
    """No module prefixes: each entry is one class, and nothing beyond what calops needs."""
    assert TRUSTED_TYPES == (
        "calapi.model.pipeline.CalorieModel",
        "calapi.model.pipeline.CalorieFeatures",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.tree._tree.Tree",
    )


# -- a real API serving a folder --------------------------------------------------------------


def version_of(url: str) -> str:
    """The model_version a real /predict answers with."""
    answer = httpx.post(f"{url}/predict", json=row(), headers=JSON_HEADERS, timeout=10)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["model_version"])


def wait_for_log(log: Path, text: str, timeout: float = 20.0) -> str:
    """The API's log once ``text`` is in it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = log.read_text(errors="replace")
        if text in found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in {log}:\n{found[-3000:]}")


@pytest.mark.integration
@pytest.mark.parametrize("model_file", ["model.joblib", "model.skops"])
def test_the_running_api_refuses_a_planted_run_and_keeps_serving(
    trained: Path, tmp_path: Path, model_file: str
) -> None:
    """The pointer moved to a run of planted pickles: nothing runs, the old version serves."""
    root = tmp_path / "artifacts"
    make_run(root, trained, "a", files=RUN_FILES)
    point(root, "a")
    marker = tmp_path / "ran"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"CALOPS_MODEL": str(root), "CALOPS_RELOAD_INTERVAL_SECONDS": "0.1"}
    log = tmp_path / "api.log"
    with running(api_argv(port), ready_url=f"{url}/readyz", env=env, log=log):
        assert version_of(url) == "calories/a"
        plant_run(root, marker, "evil", model_file)
        point(root, "evil")
        reason = (
            "is a pickle, which runs any code"
            if model_file == "model.joblib"
            else ("is not a loadable skops model")
        )
        said = wait_for_log(log, reason)
        time.sleep(0.5)  # several more polls: still nothing may run
        assert version_of(url) == "calories/a"
        assert "Still serving calories/a" in said
    assert not marker.exists()


@pytest.mark.integration
def test_allow_pickle_serves_a_legacy_folder_and_still_checks_the_card(
    trained: Path, tmp_path: Path
) -> None:
    """A real API with CALOPS_ALLOW_PICKLE=true serves model.joblib; a tampered one never loads."""
    folder = tmp_path / "legacy"
    folder.mkdir()
    for name in ("model.joblib", "model_card.json"):
        shutil.copy(trained / name, folder / name)
    marker = tmp_path / "ran"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"CALOPS_MODEL": str(folder), "CALOPS_RELOAD_INTERVAL_SECONDS": "0.1",
           "CALOPS_ALLOW_PICKLE": "true"}  # fmt: skip
    log = tmp_path / "api.log"
    with running(api_argv(port), ready_url=f"{url}/readyz", env=env, log=log):
        served = version_of(url)
        assert served == file_sha256(folder / "model.joblib")[:12]
        assert "loading a pickle can run any code" in log.read_text()
        (folder / ".planted").write_bytes(planted(marker))
        (folder / ".planted").replace(folder / "model.joblib")
        wait_for_log(log, "is not the file the model card")
        assert version_of(url) == served
    assert not marker.exists()


# -- a real MLflow server ---------------------------------------------------------------------


@dataclass(frozen=True)
class Registry:
    url: str
    root: Path


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A real `mlflow server --serve-artifacts` on a free loopback port for this module."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with start_mlflow_server(root) as url:
        yield Registry(url, root)


def register(url: str, model: Any, **formats: Any) -> str:
    """Log ``model`` as a new version of "calories" on the server; its version number.

    pip_requirements is given so MLflow does not load the model to infer them.
    """
    import mlflow

    mlflow.set_tracking_uri(url)
    mlflow.set_experiment("safety")
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model, name="model", registered_model_name="calories",
            pip_requirements=["scikit-learn"], **formats,
        )  # fmt: skip
    return str(info.registered_model_version)


@pytest.mark.integration
def test_an_alias_moved_to_unsafe_versions_is_refused_by_the_running_api(
    mlflow_server: Registry, trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """@champion moved to a pickle that runs code, then to skops naming os.system: both refused,
    nothing runs, and the version registered the safe way keeps serving."""
    from mlflow import MlflowClient
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.dummy import DummyRegressor

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    marker = tmp_path / "ran"
    good = register(
        mlflow_server.url, load_model(trained / "model.skops"),
        serialization_format="skops", skops_trusted_types=list(TRUSTED_TYPES),
    )  # fmt: skip
    evil = register(mlflow_server.url, Planted(marker), serialization_format="cloudpickle")
    untrusted = TransformedTargetRegressor(
        regressor=DummyRegressor(), func=os.system, inverse_func=os.system, check_inverse=False
    )  # unfitted: fitting would call os.system
    # The registering side may list whatever it likes as trusted; the API never reads it.
    sneaky = register(
        mlflow_server.url, untrusted,
        serialization_format="skops", skops_trusted_types=["posix.system"],
    )  # fmt: skip
    assert not marker.exists()
    client = MlflowClient(tracking_uri=mlflow_server.url)
    client.set_registered_model_alias("calories", "champion", good)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"CALOPS_MODEL": "models:/calories@champion", "MLFLOW_TRACKING_URI": mlflow_server.url,
           "CALOPS_RELOAD_INTERVAL_SECONDS": "0.2"}  # fmt: skip
    log = tmp_path / "api.log"
    with running(api_argv(port), ready_url=f"{url}/readyz", env=env, log=log, timeout=120):
        assert version_of(url) == f"calories/{good}"
        client.set_registered_model_alias("calories", "champion", evil)
        wait_for_log(log, "is a pickle, which runs any code")
        assert version_of(url) == f"calories/{good}"
        client.set_registered_model_alias("calories", "champion", sneaky)
        wait_for_log(log, "does not trust (posix.system)")
        assert version_of(url) == f"calories/{good}"
    assert not marker.exists()
    with pytest.raises(PickleRefusedError):
        MlflowSource(f"models:/calories/{evil}").load()
    assert not marker.exists()


@pytest.mark.integration
def test_allow_pickle_loads_a_pickled_mlflow_version(
    mlflow_server: Registry, trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version logged as a pickle by older calops serves only with allow_pickle."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    version = register(
        mlflow_server.url, joblib.load(trained / "model.joblib"), serialization_format="cloudpickle"
    )
    with pytest.raises(PickleRefusedError):
        MlflowSource(f"models:/calories/{version}").load()
    loaded = MlflowSource(f"models:/calories/{version}", allow_pickle=True).load()
    assert loaded.version == f"calories/{version}"
