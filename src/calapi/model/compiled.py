"""The fitted trees packed into flat arrays and walked by compiled code that releases the GIL.

Small batches are what micro-batching produces under load. scikit-learn pays a Python
call per tree (~2.5 ms for 300 trees); the compiled walk takes a few microseconds for all
of them and, having released the GIL, lets the event loop's thread run meanwhile. For
``CalorieModel`` the features and the Keytel baseline are computed in the same compiled
loop, so one row costs a single call. numba is a dependency of serving, so this is the one
small-batch path.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from calapi.model.features import FloatArray
from calapi.model.sklearn_compat import ForestNodes, IntArray

Walk = Callable[[FloatArray], FloatArray]


@dataclass(frozen=True, slots=True)
class PackedForest:
    """All trees in flat arrays; a leaf is its own left and right child."""

    roots: IntArray
    feature: IntArray
    threshold: FloatArray
    children: IntArray  # 2*node -> left child, 2*node + 1 -> right child
    value: FloatArray
    baseline: float


def pack_forest(nodes: ForestNodes, baseline: float) -> PackedForest | None:
    """Pack numeric-only trees; None when a split is categorical (the walk cannot take it)."""
    if nodes.categorical or not len(nodes.sizes):
        return None
    roots = np.concatenate(([0], np.cumsum(nodes.sizes)[:-1])).astype(np.intp)
    shift = np.repeat(roots, nodes.sizes)
    own = np.arange(len(nodes.leaf), dtype=np.intp)
    left = np.where(nodes.leaf, own, nodes.left + shift)
    right = np.where(nodes.leaf, own, nodes.right + shift)
    return PackedForest(
        roots=roots,
        feature=nodes.feature,
        threshold=nodes.threshold,
        children=np.column_stack((left, right)).ravel(),
        value=nodes.value,
        baseline=baseline,
    )


def _tree_sum(  # noqa: PLR0917 - a compiled kernel takes plain arrays
    row: Any, roots: Any, feature: Any, threshold: Any, children: Any, value: Any
) -> float:
    """The sum of every tree's leaf value for one feature row; a leaf is its own left child."""
    total = 0.0
    for root in roots:
        node = root
        left = children[2 * node]
        while left != node:
            node = children[2 * node + 1] if row[feature[node]] > threshold[node] else left
            left = children[2 * node]
        total += value[node]
    return total


@functools.cache
def _compiled_tree_sum() -> Callable[..., float]:
    import numba

    compiled: Callable[..., float] = numba.njit(nogil=True, cache=False)(_tree_sum)
    return compiled


@functools.cache
def _walk_kernel() -> Callable[..., None]:
    """out[row] = baseline + the trees' sum for each row of an engineered matrix."""
    import numba

    tree_sum = _compiled_tree_sum()

    def walk_rows(  # noqa: PLR0917 - a compiled kernel takes plain arrays
        engineered: Any,
        roots: Any,
        feature: Any,
        threshold: Any,
        children: Any,
        value: Any,
        baseline: float,
        out: Any,
    ) -> None:
        for row in range(engineered.shape[0]):
            out[row] = baseline + tree_sum(
                engineered[row], roots, feature, threshold, children, value
            )

    kernel: Callable[..., None] = numba.njit(nogil=True, cache=False)(walk_rows)
    return kernel


@functools.cache
def _model_kernel() -> Callable[..., bool]:
    """CalorieModel's whole predict for raw rows: features, trees, Keytel baseline, expm1.

    The feature row is ``features.model_features`` (the raw columns, then ``keytel_terms``),
    built here row by row; the predictor checks both give the same kcal before serving.
    False when a row's features are not all finite (the trees' missing-value sides apply).
    """
    import numba

    from calapi.model.features import keytel_terms

    tree_sum = _compiled_tree_sum()
    terms = numba.njit(nogil=True, cache=False)(keytel_terms)

    def model_rows(  # noqa: PLR0917 - a compiled kernel takes plain arrays
        raw: Any,
        roots: Any,
        feature: Any,
        threshold: Any,
        children: Any,
        value: Any,
        baseline: float,
        out: Any,
    ) -> bool:
        # Scalar loops only: numba compiles a slice assignment or np.isfinite(...).all() in
        # seconds, and every process that loads a model pays the compile.
        width = raw.shape[1]
        features = np.empty(width + 2)
        for row in range(raw.shape[0]):
            finite = True
            for column in range(width):
                features[column] = raw[row, column]
                finite = finite and math.isfinite(raw[row, column])
            log_rate, log_kcal = terms(
                raw[row, 0], raw[row, 1], raw[row, 3], raw[row, 4], raw[row, 5]
            )
            if not (finite and math.isfinite(log_rate) and math.isfinite(log_kcal)):
                return False
            features[width] = log_rate
            features[width + 1] = log_kcal
            trees = tree_sum(features, roots, feature, threshold, children, value)
            out[row] = math.expm1(log_kcal + baseline + trees)
        return True

    kernel: Callable[..., bool] = numba.njit(nogil=True, cache=False)(model_rows)
    return kernel


def _arrays(forest: PackedForest) -> tuple[IntArray, IntArray, FloatArray, IntArray, FloatArray]:
    return forest.roots, forest.feature, forest.threshold, forest.children, forest.value


def compiled_walk(forest: PackedForest) -> Walk:
    """Baseline plus the sum of leaf values for finite engineered rows, compiled."""
    kernel = _walk_kernel()
    arrays = _arrays(forest)

    def walk(engineered: FloatArray) -> FloatArray:
        out = np.empty(len(engineered))
        kernel(np.ascontiguousarray(engineered), *arrays, forest.baseline, out)
        return out

    return walk


def compiled_model(forest: PackedForest) -> Callable[[FloatArray], FloatArray | None]:
    """CalorieModel's kcal for raw rows, compiled; None when a row's features are not finite."""
    kernel = _model_kernel()
    arrays = _arrays(forest)

    def predict(raw: FloatArray) -> FloatArray | None:
        out = np.empty(len(raw))
        if kernel(np.ascontiguousarray(raw, dtype=np.float64), *arrays, forest.baseline, out):
            return out
        return None

    return predict
