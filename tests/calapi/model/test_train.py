"""The trainer: artifacts and their contents, no-holdout mode, atomic writes, the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
import yaml

from calapi.errors import CalopsError, ConfigError
from calapi.model import train
from calapi.model.artifact import file_sha256, load_model, write_json
from calapi.model.card import CARD_KEYS
from calapi.model.features import FEATURES, NUMERIC_FEATURES, TARGET
from calapi.model.predictor import PlainPredictor, probe_rows
from calapi.model.synthetic import generate
from conftest import small_config

METRIC_KEYS = {
    "rmsle",
    "rmse",
    "mae",
    "r2",
    "baseline_rmsle",
    "n_train",
    "n_holdout",
    "fit_seconds",
    "evaluated_on",
}
TRAINER_CARD_KEYS = {
    "schema_version",
    "name",
    "created",
    "model_file",
    "sha256",
    "model_files",
    "features",
    "target",
    "units",
    "training_ranges",
    "categories",
    "reference",
    "reference_binning",
    "metrics",
    "data",
    "estimator",
    "versions",
    "holdout",
}


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> train.TrainResult:
    """One small training run with a holdout."""
    return train.run(small_config(tmp_path_factory.mktemp("artifacts"), rows=1000, max_iter=30))


def read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON file."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def test_run_writes_model_metrics_and_card(result: train.TrainResult) -> None:
    """The model (skops and joblib), metrics.json and the card exist with the contract's keys."""
    assert {p.name for p in result.output_dir.iterdir()} == {
        "model.skops",
        "model.joblib",
        "metrics.json",
        "model_card.json",
    }
    assert set(read_json(result.metrics_path)) == METRIC_KEYS
    card = read_json(result.card_path)
    assert set(card) >= TRAINER_CARD_KEYS
    assert list(card) == [key for key in CARD_KEYS if key in card]  # the documented order
    assert read_json(result.metrics_path) == result.metrics


def test_holdout_metrics_describe_the_split(result: train.TrainResult) -> None:
    """With a 20 % holdout, counts add up and the metrics are those of a useful model."""
    metrics = result.metrics
    assert (metrics["n_train"], metrics["n_holdout"]) == (800, 200)
    assert metrics["evaluated_on"] == "holdout"
    assert 0 < metrics["rmsle"] < 0.3
    assert metrics["r2"] > 0.9


def test_card_sha256_matches_the_model_file(result: train.TrainResult) -> None:
    """The card names the served model.skops and its sha256, and the joblib's sha256 too."""
    card = read_json(result.card_path)
    assert result.pickle_path is not None
    assert (card["model_file"], result.model_path.name) == ("model.skops", "model.skops")
    assert card["sha256"] == file_sha256(result.model_path)
    assert card["model_files"] == {
        "model.skops": file_sha256(result.model_path),
        "model.joblib": file_sha256(result.pickle_path),
    }


def test_the_served_file_loads_without_pickle_and_predicts_as_the_joblib(
    result: train.TrainResult,
) -> None:
    """model.skops loads with calops's trusted types alone and predicts what model.joblib does."""
    assert result.pickle_path is not None
    safe = load_model(result.model_path)
    pickled = joblib.load(result.pickle_path)
    rows = probe_rows(None)
    np.testing.assert_array_equal(PlainPredictor(safe)(rows), PlainPredictor(pickled)(rows))


def test_card_describes_data_ranges_and_reference(result: train.TrainResult) -> None:
    """Ranges, decile references (fractions summing to 1) and Sex shares cover the features."""
    card = read_json(result.card_path)
    assert (card["features"], card["target"]) == (list(FEATURES), TARGET)
    assert card["data"] == {"source": card["data"]["source"], "synthetic": True, "rows": 1000}
    assert set(card["training_ranges"]) == set(NUMERIC_FEATURES)
    reference = card["reference"]
    assert set(reference) == {*NUMERIC_FEATURES, "prediction", "Sex"}
    for name in (*NUMERIC_FEATURES, "prediction"):
        bins = reference[name]
        assert len(bins["fractions"]) == len(bins["edges"]) + 1
        assert sum(bins["fractions"]) == pytest.approx(1.0)
        assert bins["edges"] == sorted(bins["edges"])
    assert reference["Sex"]["male"] + reference["Sex"]["female"] == pytest.approx(1.0)
    assert card["versions"]["scikit-learn"]
    assert card["estimator"]["params"]["max_iter"] == 30


def test_saved_model_predicts_kcal_from_a_dataframe(result: train.TrainResult) -> None:
    """The saved model answers a DataFrame of FEATURES with Sex strings in kcal."""
    model = load_model(result.model_path)
    rows = pd.DataFrame(
        [
            {
                "Sex": "male",
                "Age": 25,
                "Height": 180,
                "Weight": 75,
                "Duration": 30,
                "Heart_Rate": 120,
                "Body_Temp": 40.5,
            }
        ]
    )
    assert 100 < float(model.predict(rows)[0]) < 400


def test_no_holdout_fits_every_row(tmp_path: Path) -> None:
    """holdout=False fits all rows and reports training-set metrics."""
    outcome = train.run(small_config(tmp_path, rows=500, max_iter=10), holdout=False)
    assert outcome.metrics["evaluated_on"] == "train"
    assert (outcome.metrics["n_train"], outcome.metrics["n_holdout"]) == (500, 0)
    assert outcome.card["holdout"]["enabled"] is False


def test_relative_output_dir_resolves_against_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """outputs.dir "out" lands in the current working directory."""
    monkeypatch.chdir(tmp_path)
    outcome = train.run(small_config(Path("out"), rows=300, max_iter=5))
    assert outcome.model_path == tmp_path / "out" / "model.skops"
    assert outcome.model_path.is_file()


def test_csv_data_overrides_the_configured_source(tmp_path: Path) -> None:
    """data=PATH trains on that CSV and the card records it as real data."""
    csv = tmp_path / "train.csv"
    generate(400, seed=2).to_csv(csv, index=False)
    messages: list[str] = []
    outcome = train.run(
        small_config(tmp_path / "out", max_iter=5), data=csv, progress=messages.append
    )
    assert outcome.card["data"] == {"source": str(csv), "synthetic": False, "rows": 400}
    assert messages[0] == "Loading data"
    assert messages[-1] == "Writing artifacts"


def test_failure_mid_write_keeps_the_previous_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If writing the card fails, no temp file is left and the earlier artifacts are intact."""
    config = small_config(tmp_path, rows=300, max_iter=5)
    train.run(config)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_write_json = write_json

    def fail_on_card(path: Path, payload: dict[str, Any]) -> None:
        if "sha256" in payload:
            raise OSError(28, "No space left on device")
        real_write_json(path, payload)

    monkeypatch.setattr(train, "write_json", fail_on_card)
    with pytest.raises(CalopsError, match="No space left on device"):
        train.run(config)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_fit_threads_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """CALOPS_TRAIN_THREADS sets the fit's thread count; a non-number is a ConfigError."""
    monkeypatch.setenv("CALOPS_TRAIN_THREADS", "3")
    assert train.fit_threads() == 3
    monkeypatch.setenv("CALOPS_TRAIN_THREADS", "many")
    with pytest.raises(ConfigError, match="CALOPS_TRAIN_THREADS"):
        train.fit_threads()
    monkeypatch.delenv("CALOPS_TRAIN_THREADS")
    assert train.fit_threads() >= 1


def write_config(tmp_path: Path) -> Path:
    """A small config.yaml writing into tmp_path/out."""
    config = small_config(tmp_path / "out", rows=300, max_iter=5)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")), encoding="utf-8")
    return path


def run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m calapi.model.train`` with the given arguments."""
    return subprocess.run(
        [sys.executable, "-m", "calapi.model.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_module_trains_and_prints_a_summary(tmp_path: Path) -> None:
    """python -m calapi.model.train --no-holdout writes the artifacts and summarises the run."""
    completed = run_module("--config", str(write_config(tmp_path)), "--no-holdout", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert "train RMSLE" in completed.stdout
    assert (tmp_path / "out" / "model_card.json").is_file()


def test_module_reports_bad_data_in_one_line(tmp_path: Path) -> None:
    """A missing --data file exits 1 with one error line and no traceback."""
    completed = run_module(
        "--config", str(write_config(tmp_path)), "--data", "missing.csv", cwd=tmp_path
    )
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines() == [
        "Error: Data file missing.csv does not exist; pass an existing CSV or 'synthetic'."
    ]
    assert not (tmp_path / "out").exists()
