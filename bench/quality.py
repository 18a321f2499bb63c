"""``nox -s quality``: the default model's holdout RMSLE next to a reference booster.

For each synthetic noise regime (``low``: near-deterministic like the original Kaggle data;
``high``: noisy like Playground S5E5) the trainer's own split of the default config's rows
is scored by Keytel's equations alone, the default model (``calops train``), the first
calops model (engineered products, no baseline) and LightGBM with a fixed, generous config
(2,000 trees at learning rate 0.02 on the raw features and log1p target). The cost of one
single-row predict is timed for each as served: calops's through its fast predictor,
LightGBM's through ``Booster.predict`` on one thread. Prints a Markdown table and exits 1
when the default misses its target (within 3 % of the reference on the low regime).

    python bench/quality.py [--rows N] [--repeats N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REGIMES = ("low", "high")
TARGET_RATIO = 1.03
REFERENCE: dict[str, Any] = {
    "n_estimators": 2000,
    "learning_rate": 0.02,
    "num_leaves": 31,
    "min_child_samples": 20,
    "random_state": 42,
    "verbose": -1,
}


@dataclass(frozen=True)
class Score:
    """One model on one regime."""

    model: str
    rmsle: float
    fit_seconds: float | None
    predict_us: float | None


def main(argv: Sequence[str] | None = None) -> int:
    """Score every model on both regimes, print the table; 1 when the target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="default: the config's rows")
    parser.add_argument("--repeats", type=int, default=20_000, help="single-row predicts timed")
    args = parser.parse_args(argv)
    try:
        import lightgbm  # noqa: F401 - the reference; `nox -s quality` installs it
    except ImportError:
        print("LightGBM is not installed; run `nox -s quality` (or pip install lightgbm).")
        return 1
    results = {noise: score_regime(noise, args.rows, args.repeats) for noise in REGIMES}
    print(table(results))
    low = {score.model: score.rmsle for score in results["low"]}
    ratio = low["calops default"] / low["LightGBM reference"]
    met = ratio <= TARGET_RATIO
    verdict = "met" if met else "MISSED"
    print(
        f"\nTarget (default within {TARGET_RATIO - 1:.0%} of the reference on low noise): "
        f"{verdict}, ratio {ratio:.3f}."
    )
    return 0 if met else 1


def score_regime(noise: str, rows: int | None, repeats: int) -> list[Score]:
    """Every model's holdout RMSLE on the trainer's split of one regime's rows."""
    from threadpoolctl import threadpool_limits

    from calapi.model.config import load_config
    from calapi.model.data import load_training_data, raw_matrix
    from calapi.model.features import FEATURES, TARGET, keytel_kcal
    from calapi.model.train import regression_metrics, run

    config = load_config(ROOT / "config.yaml")
    data = config.data.model_copy(
        update={"synthetic_noise": noise, "synthetic_rows": rows or config.data.synthetic_rows}
    )
    with tempfile.TemporaryDirectory(prefix="calops-quality-") as folder:
        outputs = config.outputs.model_copy(update={"dir": Path(folder)})
        config = config.model_copy(update={"data": data, "outputs": outputs})
        loaded = load_training_data(
            "synthetic",
            synthetic_rows=data.synthetic_rows,
            synthetic_seed=data.synthetic_seed,
            synthetic_noise=noise,
        )
        result = run(config, data=loaded)
        model = _load(result.model_path)
    evaluation = result.evaluation
    if evaluation is None:
        raise SystemExit("The config disables the holdout; quality needs held-out rows.")
    frame = loaded.frame.reset_index(drop=True)
    train = frame.drop(index=evaluation.index)
    truth = evaluation[TARGET].to_numpy(dtype=np.float64)
    held_out = raw_matrix(evaluation)
    sample = held_out[:1]

    def rmsle(predicted: Any) -> float:
        return regression_metrics(truth, predicted)["rmsle"]

    metrics = result.metrics
    scores = [
        Score("Keytel equations alone", rmsle(keytel_kcal(held_out)), None, None),
        Score(
            "calops default",
            metrics["rmsle"],
            metrics["fit_seconds"],
            _served_cost(model, sample, repeats),
        ),
    ]
    with threadpool_limits(limits=1, user_api="openmp"):
        first, first_seconds = _fit_first_model(config, train[list(FEATURES)], train[TARGET])
    first_cost = _served_cost(first, sample, repeats)
    scores.append(
        Score("first calops model", rmsle(first.predict(held_out)), first_seconds, first_cost)
    )
    reference, seconds = _fit_reference(raw_matrix(train), train[TARGET].to_numpy())
    reference_cost = _cost(lambda: reference.predict(sample, num_threads=1), repeats)
    scores.append(
        Score(
            "LightGBM reference",
            rmsle(np.expm1(reference.predict(held_out))),
            seconds,
            reference_cost,
        )
    )
    return scores


def _load(path: Path) -> Any:
    from calapi.model.artifact import load_model

    return load_model(path)


def _fit_first_model(config: Any, features: Any, target: Any) -> tuple[Any, float]:
    """calops's model before the Keytel baseline: engineered products, trees on log1p(kcal)."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.pipeline import Pipeline

    from calapi.model.pipeline import CalorieFeatures

    params = {**config.model.params, "random_state": config.model.random_state}
    pipeline = Pipeline(
        [("features", CalorieFeatures()), ("gbm", HistGradientBoostingRegressor(**params))]
    )
    model = TransformedTargetRegressor(
        regressor=pipeline, func=np.log1p, inverse_func=np.expm1, check_inverse=False
    )
    started = time.perf_counter()
    model.fit(features, target)
    return model, time.perf_counter() - started


def _fit_reference(raw: Any, kcal: Any) -> tuple[Any, float]:
    import lightgbm

    started = time.perf_counter()
    booster = lightgbm.LGBMRegressor(**REFERENCE, n_jobs=1).fit(raw, np.log1p(kcal))
    return booster.booster_, time.perf_counter() - started


def _served_cost(model: Any, sample: Any, repeats: int) -> float:
    """Microseconds per single-row call of the predictor the API would build for ``model``."""
    from calapi.model.predictor import build_predictor, probe_rows

    predictor = build_predictor(model, probe_rows(None))
    return _cost(lambda: predictor(sample), repeats)


def _cost(call: Callable[[], object], repeats: int) -> float:
    """The best of five timings of ``repeats`` calls, in microseconds per call."""
    for _ in range(min(repeats, 2000)):
        call()
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeats):
            call()
        best = min(best, (time.perf_counter() - started) / repeats)
    return best * 1e6


def table(results: dict[str, list[Score]]) -> str:
    """The Markdown table README shows."""
    lines = [
        "| noise | model | holdout RMSLE | vs reference | fit s | predict 1 row |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for noise, scores in results.items():
        reference = next(s.rmsle for s in scores if s.model == "LightGBM reference")
        for score in scores:
            fit = "" if score.fit_seconds is None else f"{score.fit_seconds:.1f}"
            cost = "" if score.predict_us is None else f"{score.predict_us:.1f} µs"
            lines.append(
                f"| {noise} | {score.model} | {score.rmsle:.4f} | "
                f"{score.rmsle / reference:.3f} | {fit} | {cost} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
