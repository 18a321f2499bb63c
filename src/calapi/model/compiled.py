"""A compiled tree walk that releases the GIL, when numba is installed.

Small batches are what micro-batching produces under load. The numpy walk over the
packed forest holds the GIL for ~150-250 us a call (a few dozen small numpy steps per
tree level), and the event loop's thread waits for it; compiled, the same walk takes
~20 us and lets the loop run meanwhile. Without numba the numpy walk serves.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from calapi.model.features import FloatArray

Walk = Callable[[FloatArray], FloatArray]


@functools.cache
def _compiled_kernel() -> Callable[..., None] | None:
    try:
        import numba
    except ImportError:
        return None
    kernel: Callable[..., None] = numba.njit(nogil=True, cache=False)(_walk_rows)
    return kernel


def _walk_rows(  # noqa: PLR0917 - a compiled kernel takes plain arrays
    engineered: Any,
    roots: Any,
    feature: Any,
    threshold: Any,
    children: Any,
    value: Any,
    baseline: float,
    out: Any,
) -> None:
    """out[row] = baseline + the leaf value of every tree; a leaf is its own left child."""
    for row in range(engineered.shape[0]):
        total = 0.0
        for root in roots:
            node = root
            left = children[2 * node]
            while left != node:
                if engineered[row, feature[node]] > threshold[node]:
                    node = children[2 * node + 1]
                else:
                    node = left
                left = children[2 * node]
            total += value[node]
        out[row] = total + baseline


def compiled_walk(forest: Any) -> Walk | None:
    """The packed forest's ``raw_predict`` compiled, or None without numba."""
    kernel = _compiled_kernel()
    if kernel is None:
        return None
    arrays = (forest.roots, forest.feature, forest.threshold, forest.children, forest.value)

    def walk(engineered: FloatArray) -> FloatArray:
        out = np.empty(len(engineered))
        kernel(np.ascontiguousarray(engineered), *arrays, forest.baseline, out)
        return out

    return walk
