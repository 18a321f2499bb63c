"""The model every server answers with: trained once per run, and logged to a throwaway MLflow.

``mlflow models serve`` needs the model inside an MLflow store, so the same fitted estimator
is logged with ``mlflow.sklearn.log_model`` (signature and input example) to a SQLite store in
the run's temporary folder, and served from there with ``--env-manager local``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BATCH_SEED = 20_250_501


@dataclass(frozen=True)
class TrainedModel:
    """An artifacts folder calapi can serve, and what training it cost."""

    artifacts: Path
    seconds: float
    rows: int
    metrics: dict[str, Any]


@dataclass(frozen=True)
class LoggedModel:
    """Where ``mlflow models serve`` finds the same model."""

    tracking_uri: str
    model_uri: str


def train(config_path: Path, artifacts: Path) -> TrainedModel:
    """Train with ``config_path`` (outputs redirected to ``artifacts``) and time the whole run."""
    from calapi.model.config import load_config
    from calapi.model.train import run

    config = load_config(config_path)
    outputs = config.outputs.model_copy(update={"dir": artifacts})
    config = config.model_copy(update={"outputs": outputs})
    started = time.perf_counter()
    result = run(config)
    seconds = time.perf_counter() - started
    return TrainedModel(artifacts, seconds, config.data.synthetic_rows, dict(result.metrics))


def reuse(artifacts: Path) -> TrainedModel:
    """An artifacts folder trained earlier (training time not measured)."""
    import json

    if not (artifacts / "model.skops").is_file():
        raise FileNotFoundError(f"{artifacts} holds no model.skops; train one first.")
    metrics = json.loads((artifacts / "metrics.json").read_text())
    rows = int(metrics.get("n_train", 0)) + int(metrics.get("n_holdout", 0))
    return TrainedModel(artifacts.resolve(), float("nan"), rows, metrics)


def log_to_mlflow(trained: TrainedModel, store: Path) -> LoggedModel:
    """Log the fitted estimator to a fresh SQLite store under ``store``; return its URIs."""
    import logging

    import mlflow
    from mlflow.models import infer_signature

    from calapi.model.artifact import load_model
    from calapi.model.safeformat import TRUSTED_TYPES

    # mlflow sets its own logger up on import; its store-migration chatter is not results.
    logging.getLogger("mlflow").setLevel(logging.ERROR)

    store.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.create_experiment("bench", artifact_location=(store / "artifacts").as_uri())
    estimator = load_model(trained.artifacts / "model.skops")
    example = feature_frame(sample_rows(5, seed=1))
    signature = infer_signature(example, estimator.predict(example))
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.sklearn.log_model(
            estimator,
            name="model",
            signature=signature,
            input_example=example,
            # As `calops train` logs it: skops, trusting calops's own list of types only.
            serialization_format="skops",
            skops_trusted_types=list(TRUSTED_TYPES),
        )
    return LoggedModel(tracking_uri, str(info.model_uri))


def sample_rows(n: int, seed: int = BATCH_SEED) -> list[dict[str, Any]]:
    """``n`` plausible request rows (id, Sex and the measures) from the synthetic generator."""
    from calapi.model.features import FEATURES
    from calapi.model.synthetic import generate

    frame = generate(n, seed)[["id", *FEATURES]]
    rows: list[dict[str, Any]] = frame.to_dict(orient="records")
    return [{key: _plain(value) for key, value in row.items()} for row in rows]


def feature_frame(rows: list[dict[str, Any]]) -> Any:
    """The model's input frame for ``rows``: the ``FEATURES`` columns, measures as float64."""
    import pandas as pd

    from calapi.model.features import FEATURES, NUMERIC_FEATURES

    frame = pd.DataFrame(rows)[list(FEATURES)]
    return frame.astype(dict.fromkeys(NUMERIC_FEATURES, "float64"))


def _plain(value: Any) -> Any:
    # numpy scalars are not JSON; their .item() is the matching Python number.
    return value.item() if hasattr(value, "item") else value
