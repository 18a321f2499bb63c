"""The compiled loops of ``calapi.model.compiled``, cached on disk by numba.

Imported only where numba is installed (the ``serve`` extra), and only when a model is packed.
Each process that loads a model would otherwise compile these loops again (about a second);
numba keeps the machine code beside this file (or in ``NUMBA_CACHE_DIR``) and compiles only when
this file changes. Where it can write nowhere (a read-only install without a cache folder) the
loops are compiled in each process, as before. ``keytel_terms`` lives in ``features``, which a
cache keyed on this file does not see change: the predictor checks the compiled loop against
the estimator on probe rows and falls back to the estimator, so a stale loop never answers.

Scalar loops only: numba takes seconds to compile a slice copy or ``np.isfinite(...).all()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

from calapi.model.features import keytel_terms


def jit(function: Callable[..., Any]) -> Callable[..., Any]:
    """``numba.njit(nogil=True)``, cached on disk when numba has somewhere to write."""
    try:
        compiled: Callable[..., Any] = numba.njit(nogil=True, cache=True)(function)
    except RuntimeError:  # numba found no writable cache folder
        compiled = numba.njit(nogil=True)(function)
    return compiled


@jit
def tree_sum(  # noqa: PLR0917 - a compiled kernel takes plain arrays
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


terms = jit(keytel_terms)


@jit
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
    """out[row] = baseline + the trees' sum for each row of an engineered matrix."""
    for row in range(engineered.shape[0]):
        out[row] = baseline + tree_sum(engineered[row], roots, feature, threshold, children, value)


@jit
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
    """CalorieModel's whole predict for raw rows: features, trees, Keytel baseline, expm1.

    The feature row is ``features.model_features`` (the raw columns, then ``keytel_terms``),
    built here row by row; the predictor checks both give the same kcal before serving.
    False when a row's features are not all finite (the trees' missing-value sides apply).
    """
    width = raw.shape[1]
    features = np.empty(width + 2)
    for row in range(raw.shape[0]):
        finite = True
        for column in range(width):
            features[column] = raw[row, column]
            finite = finite and math.isfinite(raw[row, column])
        log_rate, log_kcal = terms(raw[row, 0], raw[row, 1], raw[row, 3], raw[row, 4], raw[row, 5])
        if not (finite and math.isfinite(log_rate) and math.isfinite(log_kcal)):
            return False
        features[width] = log_rate
        features[width + 1] = log_kcal
        trees = tree_sum(features, roots, feature, threshold, children, value)
        out[row] = math.expm1(log_kcal + baseline + trees)
    return True
