"""The fitted trees packed into flat arrays and walked by compiled code that releases the GIL.

Small batches are what micro-batching produces under load. scikit-learn pays a Python
call per tree (~2.5 ms for 300 trees); the compiled walk takes a few microseconds for all
of them and, having released the GIL, lets the event loop's thread run meanwhile. For
``CalorieModel`` the features and the Keytel baseline are computed in the same compiled
loop, so one row costs a single call. numba is a dependency of serving, so this is the one
small-batch path; the loops themselves are in ``calapi.model.kernels``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


def _arrays(forest: PackedForest) -> tuple[IntArray, IntArray, FloatArray, IntArray, FloatArray]:
    return forest.roots, forest.feature, forest.threshold, forest.children, forest.value


def compiled_walk(forest: PackedForest) -> Walk:
    """Baseline plus the sum of leaf values for finite engineered rows, compiled."""
    from calapi.model.kernels import walk_rows as kernel

    arrays = _arrays(forest)

    def walk(engineered: FloatArray) -> FloatArray:
        out = np.empty(len(engineered))
        kernel(np.ascontiguousarray(engineered), *arrays, forest.baseline, out)
        return out

    return walk


def compiled_model(forest: PackedForest) -> Callable[[FloatArray], FloatArray | None]:
    """CalorieModel's kcal for raw rows, compiled; None when a row's features are not finite."""
    from calapi.model.kernels import model_rows as kernel

    arrays = _arrays(forest)

    def predict(raw: FloatArray) -> FloatArray | None:
        out = np.empty(len(raw))
        if kernel(np.ascontiguousarray(raw, dtype=np.float64), *arrays, forest.baseline, out):
            return out
        return None

    return predict
