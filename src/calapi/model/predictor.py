"""Fast prediction: the trained model's exact arithmetic without pandas or per-call validation.

The trainer's estimator is TransformedTargetRegressor(log1p/expm1) over
Pipeline([features: CalorieFeatures, gbm: HistGradientBoostingRegressor]). For it,
``predict(raw)`` = expm1(trees(engineer(raw))), computed here two ways:

* small batches (what micro-batching produces): every tree's nodes are packed into flat
  arrays, walked by compiled code that releases the GIL (``calapi.model.compiled``, ~20 us)
  or, without numba, all trees one level per numpy step (a few hundred microseconds),
  where scikit-learn pays a Python call per tree (~2.5 ms for 300);
* bigger batches: the fitted HistGradientBoostingRegressor's own compiled trees, walked
  on the binned matrix (what the trees were fitted on: the same leaves as the raw
  thresholds, ~25% faster), in two halves on two threads for the biggest.

Any other estimator (a user's own script) goes through ``model.predict(DataFrame)``.
At load time the fast path is checked against that plain call and dropped if it differs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from calapi.model.compiled import compiled_walk
from calapi.model.features import FEATURES, FloatArray, engineer

SMALL_BATCH_ROWS: Final = 64
SPLIT_ROWS: Final = 2048
SPLIT_WAYS: Final = 2
TOLERANCE_KCAL: Final = 1e-9
IntArray = npt.NDArray[np.intp]


class Predictor(Protocol):
    """Maps raw rows laid out as ``FEATURES`` (Sex 1.0/0.0) to kcal."""

    kind: str

    def __call__(self, raw: FloatArray) -> FloatArray: ...


@dataclass(frozen=True, slots=True)
class PackedForest:
    """All trees of a fitted HistGradientBoostingRegressor in flat arrays.

    Trees are ordered deepest first and leaves point at themselves: at level k only the
    first ``walking[k]`` trees still move, so each tree costs its own depth, not the
    deepest tree's.
    """

    roots: IntArray
    walking: tuple[int, ...]
    feature: IntArray
    threshold: FloatArray
    children: IntArray  # 2*node -> left child, 2*node + 1 -> right child
    value: FloatArray
    baseline: float

    def raw_predict(self, engineered: FloatArray) -> FloatArray:
        """Sum of leaf values plus the baseline, for finite inputs."""
        rows, columns = engineered.shape
        flat = np.ascontiguousarray(engineered).ravel()
        offsets = np.arange(rows, dtype=np.intp) * columns
        node = np.repeat(self.roots[:, None], rows, axis=1)
        for active in self.walking:
            moving = node[:active]
            values = flat[offsets + self.feature[moving]]
            node[:active] = self.children[2 * moving + (values > self.threshold[moving])]
        result: FloatArray = self.value[node].sum(axis=0) + self.baseline
        return result


def pack_forest(gbm: Any) -> PackedForest | None:
    """Pack a fitted single-output, numeric-only HistGradientBoostingRegressor; else None."""
    trees = [tree.nodes for iteration in gbm._predictors for tree in iteration]
    if gbm.n_trees_per_iteration_ != 1 or not trees:
        return None
    if any(table["is_categorical"].any() for table in trees):
        return None
    depths = np.array([int(table["depth"].max()) for table in trees])
    trees = [trees[i] for i in np.argsort(-depths, kind="stable")]
    depths = np.sort(depths)[::-1]
    sizes = np.array([len(table) for table in trees], dtype=np.intp)
    roots = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.intp)
    nodes = np.concatenate(trees)
    shift = np.repeat(roots, sizes)
    own = np.arange(len(nodes), dtype=np.intp)
    leaf = nodes["is_leaf"].astype(bool)
    left = np.where(leaf, own, nodes["left"].astype(np.intp) + shift)
    right = np.where(leaf, own, nodes["right"].astype(np.intp) + shift)
    return PackedForest(
        roots=roots,
        walking=tuple(int((depths > level).sum()) for level in range(int(depths[0]))),
        feature=np.where(leaf, 0, nodes["feature_idx"]).astype(np.intp),
        threshold=np.where(leaf, np.inf, nodes["num_threshold"]).astype(np.float64),
        children=np.column_stack((left, right)).ravel(),
        value=np.where(leaf, nodes["value"], 0.0).astype(np.float64),
        baseline=float(np.asarray(gbm._baseline_prediction).ravel()[0]),
    )


class BinnedTrees:
    """The fitted model's compiled trees over binned features, one OpenMP thread per call.

    A value goes left at a node exactly when its bin does (the bins' edges are the
    thresholds), and the trees are summed in the model's order from its baseline, so the
    result equals ``gbm.predict``; the load-time check confirms it.
    """

    def __init__(self, gbm: Any) -> None:
        self._bin = gbm._bin_mapper.transform
        self._missing_bin = gbm._bin_mapper.missing_values_bin_idx_
        self._trees = [tree.predict_binned for iteration in gbm._predictors for tree in iteration]
        self._baseline = float(np.asarray(gbm._baseline_prediction).ravel()[0])

    def __call__(self, engineered: FloatArray) -> FloatArray:
        binned = self._bin(engineered)
        total = np.full(len(engineered), self._baseline)
        for predict_binned in self._trees:
            total += predict_binned(binned, self._missing_bin, 1)
        return total


def binned_trees(gbm: Any) -> Callable[[FloatArray], FloatArray]:
    """``BinnedTrees`` for a single-output model, else the model's own predict."""
    try:
        if gbm.n_trees_per_iteration_ == 1:
            return BinnedTrees(gbm)
    except AttributeError:  # another scikit-learn layout: the public predict still works
        pass
    predict: Callable[[FloatArray], FloatArray] = gbm.predict
    return predict


class FastPredictor:
    """expm1(trees(engineer(raw))) for the trainer's estimator."""

    kind = "fast"

    def __init__(self, gbm: Any, forest: PackedForest | None) -> None:
        self._trees = binned_trees(gbm)
        self._walk: Callable[[FloatArray], FloatArray] | None = None
        if forest is not None:
            self._walk = compiled_walk(forest) or forest.raw_predict

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
    frame["Sex"] = np.where(raw[:, 0] == 1.0, "male", "female")
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
    steps = model.regressor_.steps
    if len(steps) != 2 or type(steps[0][1]) is not CalorieFeatures:
        return None
    gbm = steps[1][1]
    good = isinstance(gbm, HistGradientBoostingRegressor) and gbm.loss == "squared_error"
    return gbm if good and not hasattr(gbm, "feature_names_in_") else None


def build_predictor(model: Any, probe: FloatArray) -> Predictor:
    """The fastest predictor equal to ``model.predict`` on ``probe`` rows, else the plain one."""
    plain = PlainPredictor(model)
    gbm = trainer_gbm(model)
    if gbm is None:
        return plain
    fast = FastPredictor(gbm, pack_forest(gbm))
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
    """Deterministic rows spread over the training ranges (or plausible defaults)."""
    defaults = {
        "Age": (20.0, 79.0), "Height": (123.0, 222.0), "Weight": (36.0, 132.0),
        "Duration": (1.0, 30.0), "Heart_Rate": (67.0, 128.0), "Body_Temp": (37.1, 41.5),
    }  # fmt: skip
    rng = np.random.default_rng(0)
    columns = [rng.integers(0, 2, count).astype(np.float64)]
    for name in FEATURES[1:]:
        low, high = (ranges or {}).get(name, defaults[name])
        columns.append(rng.uniform(low, high, count))
    return np.column_stack(columns)
