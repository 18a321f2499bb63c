"""The trainer: load data, fit, evaluate, and write model, metrics and model card atomically.

Run it as ``python -m calapi.model.train --config config.yaml [--no-holdout] [--data PATH]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import joblib
import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from calapi.errors import CalopsError, ConfigError, DataError
from calapi.model.artifact import file_sha256, staged_files, sync, write_json
from calapi.model.card import CardFacts, build_card
from calapi.model.config import HoldoutConfig, TrainConfig, default_config_path, load_config
from calapi.model.data import LoadedData, load_training_data, raw_matrix
from calapi.model.features import (
    FEATURES,
    FEMALE,
    MALE,
    NUMERIC_FEATURES,
    SAMPLE_WEIGHT,
    TARGET,
    FloatArray,
    keytel_kcal,
)
from calapi.model.pipeline import build_model, check_model_config
from calapi.model.safeformat import SAFE_FILE, dump_safe

Progress = Callable[[str], None]

THREADS_ENV: Final = "CALOPS_TRAIN_THREADS"
# One row to fit on and one to hold out.
MIN_ROWS: Final = 2
DECILES: Final = np.linspace(0.1, 0.9, 9)
BINNING: Final = (
    "Each reference entry holds the inner bin edges (training-data deciles, duplicates "
    "dropped) and the fraction of training rows per bin; the first and last bins are "
    "open-ended, so fractions has len(edges) + 1 entries: (-inf, e0), [e0, e1), ..., [e_last, inf)."
)
ESTIMATOR_TYPE: Final = (
    "CalorieModel: expm1(Keytel log1p(kcal) + HistGradientBoostingRegressor on MODEL_FEATURES)"
)


@dataclass(frozen=True)
class TrainResult:
    """Where the artifacts went and what they say."""

    output_dir: Path
    model_path: Path
    metrics_path: Path
    card_path: Path
    metrics: dict[str, Any]
    card: dict[str, Any]
    # The held-out rows (features and Calories), None without a holdout: what another model
    # must be scored on to be compared with this one.
    evaluation: pd.DataFrame | None = field(default=None, repr=False)
    pickle_path: Path | None = None  # the same model as joblib, for the user's own code


@dataclass(frozen=True)
class _Split:
    train: pd.DataFrame
    evaluation: pd.DataFrame
    holdout: bool


@dataclass(frozen=True)
class _Fitted:
    model: Any
    metrics: dict[str, Any]
    loaded: LoadedData
    split: _Split
    train_predictions: FloatArray


def run(
    config: TrainConfig,
    *,
    data: LoadedData | str | Path | None = None,
    holdout: bool | None = None,
    progress: Progress | None = None,
    threads: int | None = None,
) -> TrainResult:
    """Train per ``config`` and write model, metrics and card; ``data``/``holdout`` override it.

    ``threads`` caps the OpenMP threads of the fit (default: ``CALOPS_TRAIN_THREADS``, else
    half the cores).
    """
    say = progress or _quiet
    check_model_config(config.model)
    say("Loading data")
    loaded = _load(config, data)
    split = _split(
        loaded.frame, config.holdout, config.holdout.enabled if holdout is None else holdout
    )
    with threadpool_limits(limits=threads or fit_threads(), user_api="openmp"):
        fitted = _fit(config, loaded, split, say)
    say("Writing artifacts")
    return _write_artifacts(config, fitted)


def _fit(config: TrainConfig, loaded: LoadedData, split: _Split, say: Progress) -> _Fitted:
    say(f"Fitting on {len(split.train)} rows")
    model = build_model(config.model)
    started = time.perf_counter()
    model.fit(
        split.train[list(FEATURES)],
        split.train[TARGET].to_numpy(dtype=np.float64),
        sample_weight=_weights(split.train),
    )
    fit_seconds = time.perf_counter() - started
    say("Evaluating")
    train_predictions = model.predict(split.train[list(FEATURES)])
    predictions = (
        model.predict(split.evaluation[list(FEATURES)]) if split.holdout else train_predictions
    )
    metrics = _metrics(split, predictions, fit_seconds)
    return _Fitted(model, metrics, loaded, split, train_predictions)


def regression_metrics(truth: FloatArray, predicted: FloatArray) -> dict[str, float]:
    """RMSLE (negative predictions count as 0), RMSE, MAE and R² in kcal."""
    truth = np.asarray(truth, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    error = predicted - truth
    log_error = np.log1p(np.clip(predicted, 0.0, None)) - np.log1p(np.clip(truth, 0.0, None))
    spread = float(np.sum((truth - truth.mean()) ** 2))
    return {
        "rmsle": float(np.sqrt(np.mean(log_error**2))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mae": float(np.mean(np.abs(error))),
        "r2": 1.0 - float(np.sum(error**2)) / spread if spread > 0 else float("nan"),
    }


def fit_threads() -> int:
    """OpenMP threads for fitting: ``CALOPS_TRAIN_THREADS``, else half the cores (at least 1).

    The stack (API, MLflow, Prometheus, the simulator) shares the machine, and OpenMP
    threads that spin-wait for a busy core make gradient boosting many times slower: on
    two loaded cores one thread fitted the default model in 6 s where two took 67 s.
    """
    configured = os.environ.get(THREADS_ENV, "").strip()
    if configured:
        try:
            return max(1, int(configured))
        except ValueError:
            raise ConfigError(
                f"{THREADS_ENV}={configured!r} is not a whole number; set it to e.g. 2."
            ) from None
    return max(1, (os.cpu_count() or 2) // 2)


def _quiet(_message: str) -> None:
    return None


def _weights(frame: pd.DataFrame) -> FloatArray | None:
    """The rows' ``SAMPLE_WEIGHT`` column (``calops retrain`` weighs its base rows), if any."""
    if SAMPLE_WEIGHT not in frame.columns:
        return None
    weights: FloatArray = frame[SAMPLE_WEIGHT].to_numpy(dtype=np.float64)
    return weights


def _load(config: TrainConfig, data: LoadedData | str | Path | None) -> LoadedData:
    if isinstance(data, LoadedData):
        return data
    return load_training_data(
        config.data.source if data is None else data,
        synthetic_rows=config.data.synthetic_rows,
        synthetic_seed=config.data.synthetic_seed,
        synthetic_noise=config.data.synthetic_noise,
    )


def _split(frame: pd.DataFrame, settings: HoldoutConfig, enabled: bool) -> _Split:
    frame = frame.reset_index(drop=True)
    if len(frame) < MIN_ROWS:
        raise DataError(
            f"Training needs at least {MIN_ROWS} rows, got {len(frame)}; pass more data."
        )
    if not enabled:
        return _Split(frame, frame, holdout=False)
    order = np.random.default_rng(settings.seed).permutation(len(frame))
    n_holdout = min(max(1, round(settings.fraction * len(frame))), len(frame) - 1)
    evaluation, train = order[:n_holdout], order[n_holdout:]
    return _Split(frame.iloc[train], frame.iloc[evaluation], holdout=True)


def _metrics(split: _Split, predicted: FloatArray, fit_seconds: float) -> dict[str, Any]:
    truth = split.evaluation[TARGET].to_numpy(dtype=np.float64)
    baseline = regression_metrics(truth, keytel_kcal(raw_matrix(split.evaluation)))
    return {
        **regression_metrics(truth, predicted),
        # Keytel's equations alone on the same rows: what the model must beat to have learned.
        "baseline_rmsle": baseline["rmsle"],
        "n_train": len(split.train),
        "n_holdout": len(split.evaluation) if split.holdout else 0,
        "fit_seconds": round(fit_seconds, 3),
        "evaluated_on": "holdout" if split.holdout else "train",
    }


# ---------------------------------------------------------------------------- the card


def _card_facts(config: TrainConfig, fitted: _Fitted, sha256: dict[str, str]) -> CardFacts:
    """What the model card says about a fitted model, including what only the fit knows.

    ``sha256`` holds each model file written, the served skops file first.
    """
    metrics, loaded = fitted.metrics, fitted.loaded
    return CardFacts(
        name=config.model.name,
        model_file=SAFE_FILE,
        sha256=sha256[SAFE_FILE],
        model_files=sha256 if len(sha256) > 1 else {},
        created=datetime.now(UTC),
        metrics=metrics,
        data={"source": loaded.source, "synthetic": loaded.synthetic, "rows": len(loaded.frame)},
        holdout={
            "enabled": fitted.split.holdout,
            "fraction": config.holdout.fraction if fitted.split.holdout else 0.0,
            "seed": config.holdout.seed,
            "n_holdout": metrics["n_holdout"],
            "evaluated_on": metrics["evaluated_on"],
        },
        training=_training_facts(fitted),
    )


def _training_facts(fitted: _Fitted) -> dict[str, Any]:
    train = fitted.split.train
    return {
        "training_ranges": {
            name: {"min": float(train[name].min()), "max": float(train[name].max())}
            for name in NUMERIC_FEATURES
        },
        "categories": {"Sex": [FEMALE, MALE]},
        "reference": _reference(train, fitted.train_predictions),
        "reference_binning": BINNING,
        "estimator": _estimator(fitted.model),
    }


def distribution(values: FloatArray) -> dict[str, list[float]]:
    """Decile inner edges of ``values`` and the fraction of values in each open-ended bin."""
    values = np.asarray(values, dtype=np.float64)
    edges = np.unique(np.quantile(values, DECILES))
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    fractions = counts / max(len(values), 1)
    return {"edges": [float(e) for e in edges], "fractions": [float(f) for f in fractions]}


def _reference(train: pd.DataFrame, predictions: FloatArray) -> dict[str, Any]:
    reference: dict[str, Any] = {
        name: distribution(train[name].to_numpy(dtype=np.float64)) for name in NUMERIC_FEATURES
    }
    reference["prediction"] = distribution(predictions)
    male = float((train["Sex"] == MALE).mean())
    reference["Sex"] = {MALE: male, FEMALE: 1.0 - male}
    return reference


def _estimator(model: Any) -> dict[str, Any]:
    gbm = model.gbm_
    params = {k: v for k, v in gbm.get_params().items() if _is_json_scalar(v)}
    return {"type": ESTIMATOR_TYPE, "params": params, "n_iter": int(gbm.n_iter_)}


def _is_json_scalar(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


# ---------------------------------------------------------------------------- writing


def output_dir(config: TrainConfig) -> Path:
    """The artifacts folder; a relative ``outputs.dir`` is taken from the working directory."""
    return (Path.cwd() / config.outputs.dir).resolve()


def _write_artifacts(config: TrainConfig, fitted: _Fitted) -> TrainResult:
    folder = output_dir(config)
    model_path = folder / SAFE_FILE
    pickle_path = None if config.outputs.model == SAFE_FILE else folder / config.outputs.model
    metrics_path = folder / config.outputs.metrics
    card_path = folder / config.outputs.card
    models = (model_path,) if pickle_path is None else (model_path, pickle_path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # The card goes last: the API reloads when it changes and finds the set complete.
        with staged_files(folder, (*models, metrics_path, card_path)) as temps:
            hashes = _write_models(fitted.model, temps[: len(models)])
            sha256 = dict(zip((path.name for path in models), hashes, strict=True))
            card = build_card(_card_facts(config, fitted, sha256))
            write_json(temps[-2], fitted.metrics)
            write_json(temps[-1], card)
    except OSError as exc:
        raise CalopsError(
            f"Could not write the model to {folder} ({exc.strerror or exc}); "
            "choose a writable outputs.dir."
        ) from None
    evaluation = fitted.split.evaluation if fitted.split.holdout else None
    return TrainResult(
        folder, model_path, metrics_path, card_path, fitted.metrics, card, evaluation, pickle_path
    )


def _write_models(model: Any, paths: Sequence[Path]) -> list[str]:
    """The model as skops in ``paths[0]`` (what serves) and, if asked, joblib in ``paths[1]``."""
    safe = dump_safe(model)
    with paths[0].open("wb") as handle:
        handle.write(safe)
        sync(handle)
    for path in paths[1:]:
        with path.open("wb") as handle:
            joblib.dump(model, handle)
            sync(handle)
    return [file_sha256(path) for path in paths]


# ---------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m calapi.model.train",
        description="Train the calorie model and write artifacts.",
    )
    parser.add_argument("--config", type=Path, default=None, help="config.yaml to read")
    parser.add_argument(
        "--no-holdout", action="store_true", help="fit on every row; report training metrics"
    )
    parser.add_argument(
        "--data", default=None, help="CSV path or 'synthetic'; overrides data.source"
    )
    return parser


def summary(result: TrainResult) -> str:
    """A few plain lines describing a finished training run."""
    metrics, data = result.metrics, result.card["data"]
    files = (result.model_path, result.pickle_path, result.metrics_path, result.card_path)
    written = ", ".join(str(path) for path in files if path is not None)
    return "\n".join(
        (
            f"data: {data['source']} ({data['rows']} rows)",
            f"{metrics['evaluated_on']} RMSLE {metrics['rmsle']:.4f}  RMSE {metrics['rmse']:.2f}"
            f"  MAE {metrics['mae']:.2f}  R2 {metrics['r2']:.4f}",
            f"baseline: Keytel's equations alone, RMSLE {metrics['baseline_rmsle']:.4f} on the "
            "same rows",
            f"fit: {metrics['n_train']} rows in {metrics['fit_seconds']:.1f} s",
            f"wrote: {written}",
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m calapi.model.train``; 0 on success, 1 on an expected failure."""
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config or default_config_path())
        result = run(config, data=args.data, holdout=False if args.no_holdout else None)
    except CalopsError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(summary(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
