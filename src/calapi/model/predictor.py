"""Fast prediction: the trained model's exact arithmetic without pandas or per-call validation.

The trainer's estimator is TransformedTargetRegressor(log1p/expm1) over
Pipeline([features: CalorieFeatures, gbm: HistGradientBoostingRegressor]). For it,
``predict(raw)`` = expm1(trees(engineer(raw))), computed here two ways:

* small batches (what micro-batching produces): every tree's nodes are packed into flat
  arrays, walked by compiled code that releases the GIL (``calapi.model.compiled``, ~20 us),
  where scikit-learn pays a Python call per tree (~2.5 ms for 300);
* bigger batches: the fitted HistGradientBoostingRegressor's own compiled trees, walked
  on the binned matrix (what the trees were fitted on: the same leaves as the raw
  thresholds, ~25% faster), in two halves on two threads for the biggest.

Both read scikit-learn internals, only through ``calapi.model.sklearn_compat``; outside the
releases it supports, and for any other estimator (a user's own script), the model serves
through ``model.predict(DataFrame)``. At load time the fast path is checked against that
plain call and dropped if it differs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, Protocol

import numpy as np

from calapi.model import sklearn_compat
from calapi.model.compiled import PackedForest, compiled_walk, pack_forest
from calapi.model.features import FEATURES, OBSERVED_RANGES, FloatArray, engineer, sex_labels

SMALL_BATCH_ROWS: Final = 64
SPLIT_ROWS: Final = 2048
SPLIT_WAYS: Final = 2
TOLERANCE_KCAL: Final = 1e-9


class Predictor(Protocol):
    """Maps raw rows laid out as ``FEATURES`` (Sex 1.0/0.0) to kcal."""

    kind: str

    def __call__(self, raw: FloatArray) -> FloatArray: ...


class FastPredictor:
    """expm1(trees(engineer(raw))) for the trainer's estimator."""

    kind = "fast"

    def __init__(self, gbm: Any, forest: PackedForest | None) -> None:
        self._trees = sklearn_compat.BinnedTrees(gbm)
        self._walk = None if forest is None else compiled_walk(forest)

    def __call__(self, raw: FloatArray) -> FloatArray:
        engineered = engineer(raw)
        walk = self._walk
        if walk is not None and len(raw) <= SMALL_BATCH_ROWS and np.isfinite(engineered).all():
            log_kcal = walk(engineered)
        elif len(raw) >= SPLIT_ROWS:
            log_kcal = np.concatenate(list(_splitter().map(self._trees, _halves(engineered))))
        else:
            log_kcal = self._trees(engineered)
        result: FloatArray = np.expm1(log_kcal)
        return result


def limit_threads(threads: int) -> None:
    """Cap the OpenMP/BLAS threads the calling thread's model calls may use.

    The model's compiled predict opens an OpenMP region per tree; on a busy 2-core box
    the barrier waits cost more than a second thread gains (10,000 rows x 300 trees:
    ~0.2 s with 1 thread, ~0.9-1.8 s with 2 while other processes compete). Concurrency
    comes from batching instead. OpenMP's limit is per thread, so this runs in the worker.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)


def _halves(rows: FloatArray) -> list[FloatArray]:
    return np.array_split(rows, SPLIT_WAYS)


@functools.cache
def _splitter() -> ThreadPoolExecutor:
    """Threads for the halves of a big batch: one OpenMP region per half, not one per tree.

    The compiled predict releases the GIL, so the halves run truly in parallel.
    """
    return ThreadPoolExecutor(
        SPLIT_WAYS, thread_name_prefix="calapi-split", initializer=limit_threads, initargs=(1,)
    )


class PlainPredictor:
    """``model.predict(DataFrame)``: works for any estimator that takes the FEATURES columns."""

    kind = "plain"

    def __init__(self, model: Any) -> None:
        self._model = model

    def __call__(self, raw: FloatArray) -> FloatArray:
        return np.asarray(self._model.predict(to_frame(raw)), dtype=np.float64).reshape(-1)


def to_frame(raw: FloatArray) -> Any:
    """Raw rows as the DataFrame a plain estimator expects (Sex as "male"/"female")."""
    import pandas as pd

    frame = pd.DataFrame(raw, columns=list(FEATURES))
    frame["Sex"] = sex_labels(raw[:, 0])
    return frame


def trainer_gbm(model: Any) -> Any | None:
    """The HistGradientBoostingRegressor inside the trainer's estimator layout, else None."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.pipeline import Pipeline

    from calapi.model.pipeline import CalorieFeatures

    if not isinstance(model, TransformedTargetRegressor):
        return None
    if model.inverse_func is not np.expm1 or not isinstance(model.regressor_, Pipeline):
        return None
    match model.regressor_.steps:
        case [(_, features), (_, HistGradientBoostingRegressor() as gbm)] if (
            type(features) is CalorieFeatures
        ):
            good = gbm.loss == "squared_error" and gbm.n_trees_per_iteration_ == 1
            return gbm if good and not hasattr(gbm, "feature_names_in_") else None
    return None


def build_predictor(model: Any, probe: FloatArray) -> Predictor:
    """The fastest predictor equal to ``model.predict`` on ``probe`` rows, else the plain one."""
    plain = PlainPredictor(model)
    gbm = trainer_gbm(model)
    if gbm is None or not sklearn_compat.internals_usable():
        return plain
    forest = pack_forest(sklearn_compat.forest_nodes(gbm), sklearn_compat.baseline(gbm))
    fast = FastPredictor(gbm, forest)
    expected = plain(probe)
    checks: list[Callable[[FloatArray], FloatArray]] = [fast, lambda rows: _big_path(fast, rows)]
    for check in checks:
        if not np.allclose(check(probe), expected, rtol=0.0, atol=TOLERANCE_KCAL):
            return plain
    return fast


def _big_path(fast: FastPredictor, rows: FloatArray) -> FloatArray:
    repeats = SMALL_BATCH_ROWS // len(rows) + 1
    return fast(np.tile(rows, (repeats, 1)))[: len(rows)]


def probe_rows(ranges: dict[str, tuple[float, float]] | None, count: int = 32) -> FloatArray:
    """Deterministic rows spread over the training ranges (else the real data's ranges)."""
    rng = np.random.default_rng(0)
    columns = [rng.integers(0, 2, count).astype(np.float64)]
    for name in FEATURES[1:]:
        low, high = (ranges or {}).get(name, OBSERVED_RANGES[name])
        columns.append(rng.uniform(low, high, count))
    return np.column_stack(columns)
