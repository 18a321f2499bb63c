"""Fast prediction: the trained model's exact arithmetic without pandas or per-call validation.

The trainer's estimator is ``CalorieModel``: ``predict(raw)`` = expm1(keytel(raw) +
trees(model_features(raw))). Models trained before it are TransformedTargetRegressor
(log1p/expm1) over Pipeline([features: CalorieFeatures, gbm: HistGradientBoostingRegressor]),
``predict(raw)`` = expm1(trees(engineer_v1(raw))). ``fast_layout`` tells which; both are
computed here two ways:

* small batches (what micro-batching produces): every tree's nodes are packed into flat
  arrays, walked by compiled code that releases the GIL (``calapi.model.compiled``; for
  CalorieModel the features and baseline are computed in the same loop, ~4 us a row),
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
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np

from calapi.model import sklearn_compat
from calapi.model.compiled import PackedForest, compiled_model, compiled_walk, pack_forest
from calapi.model.features import (
    BASELINE_COLUMN,
    FEATURES,
    OBSERVED_RANGES,
    FloatArray,
    engineer_v1,
    model_features,
    sex_labels,
)

SMALL_BATCH_ROWS: Final = 64
SPLIT_ROWS: Final = 2048
SPLIT_WAYS: Final = 2
TOLERANCE_KCAL: Final = 1e-9


class Predictor(Protocol):
    """Maps raw rows laid out as ``FEATURES`` (Sex 1.0/0.0) to kcal."""

    kind: str

    def __call__(self, raw: FloatArray) -> FloatArray: ...


@dataclass(frozen=True, slots=True)
class Layout:
    """What the fast path needs of a trainer's estimator."""

    gbm: Any  # the fitted HistGradientBoostingRegressor
    features: Callable[[FloatArray], FloatArray]  # raw rows -> the trees' input
    baseline_column: int | None  # a feature column added to the trees' sum (log kcal)


class FastPredictor:
    """expm1(baseline + trees(features(raw))) for one of the trainer's estimator layouts."""

    kind = "fast"

    def __init__(self, layout: Layout, forest: PackedForest | None) -> None:
        self._layout = layout
        self._trees = sklearn_compat.BinnedTrees(layout.gbm)
        # CalorieModel runs whole in one compiled loop; the first layout walks its trees only.
        self._whole = self._walk = None
        if forest is not None and layout.baseline_column is not None:
            self._whole = compiled_model(forest)
        elif forest is not None:
            self._walk = compiled_walk(forest)

    def __call__(self, raw: FloatArray) -> FloatArray:
        small = len(raw) <= SMALL_BATCH_ROWS
        if small and self._whole is not None:
            kcal = self._whole(raw)
            if kcal is not None:
                return kcal
        features = self._layout.features(raw)
        walk = self._walk
        if walk is not None and small and np.isfinite(features).all():
            log_kcal = walk(features)
        elif len(raw) >= SPLIT_ROWS:
            log_kcal = np.concatenate(list(_splitter().map(self._trees, _halves(features))))
        else:
            log_kcal = self._trees(features)
        if self._layout.baseline_column is not None:
            log_kcal = log_kcal + features[:, self._layout.baseline_column]
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


def fast_layout(model: Any) -> Layout | None:
    """The layout of a trainer's estimator (CalorieModel, or the first model's), else None."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.pipeline import Pipeline

    from calapi.model.pipeline import CalorieFeatures, CalorieModel

    if type(model) is CalorieModel:
        gbm = getattr(model, "gbm_", None)
        layout = Layout(gbm, model_features, BASELINE_COLUMN)
    elif (
        isinstance(model, TransformedTargetRegressor)
        and model.inverse_func is np.expm1
        and isinstance(model.regressor_, Pipeline)
    ):
        match model.regressor_.steps:
            case [(_, features), (_, gbm)] if type(features) is CalorieFeatures:
                layout = Layout(gbm, engineer_v1, None)
            case _:
                return None
    else:
        return None
    gbm = layout.gbm
    if not isinstance(gbm, HistGradientBoostingRegressor) or hasattr(gbm, "feature_names_in_"):
        return None
    good = gbm.loss == "squared_error" and gbm.n_trees_per_iteration_ == 1
    return layout if good else None


def build_predictor(model: Any, probe: FloatArray) -> Predictor:
    """The fastest predictor equal to ``model.predict`` on ``probe`` rows, else the plain one."""
    plain = PlainPredictor(model)
    layout = fast_layout(model)
    if layout is None or not sklearn_compat.internals_usable():
        return plain
    gbm = layout.gbm
    forest = pack_forest(sklearn_compat.forest_nodes(gbm), sklearn_compat.baseline(gbm))
    fast = FastPredictor(layout, forest)
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
