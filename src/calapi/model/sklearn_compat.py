"""Every use of scikit-learn internals, fenced by the releases it was checked against.

The fast predictor reads what a fitted HistGradientBoostingRegressor keeps private: its
trees (``_predictors``, each TreePredictor's ``nodes`` record array and ``predict_binned``),
its bin mapper (``_bin_mapper``, ``missing_values_bin_idx_``) and its starting value
(``_baseline_prediction``). None of it is API, so any release may change it. Outside
``SUPPORTED`` the fast path is not built and ``model.predict`` serves (one log line says
why). To support a new release: read this module against that release's
``sklearn/ensemble/_hist_gradient_boosting`` (``predictor.py``, ``common.pyx``), run
``tests/calapi/model/test_predictor.py`` (it compares with ``gbm.predict``), then widen
``SUPPORTED``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from calapi.model.features import FloatArray

# Inclusive lowest and exclusive highest (major, minor) release the internals were read in.
SUPPORTED: Final = ((1, 5), (1, 10))

IntArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]

log = logging.getLogger(__name__)


def installed_version() -> str:
    """The installed scikit-learn's version string."""
    import sklearn

    return str(sklearn.__version__)


def unsupported_reason(version: str) -> str | None:
    """None when ``version`` is inside ``SUPPORTED``, else one sentence saying so."""
    (low_major, low_minor), (high_major, high_minor) = SUPPORTED
    found = re.match(r"(\d+)\.(\d+)", version)
    if found and SUPPORTED[0] <= (int(found[1]), int(found[2])) < SUPPORTED[1]:
        return None
    return (
        f"scikit-learn {version} is outside {low_major}.{low_minor} to before "
        f"{high_major}.{high_minor}, the releases calapi.model.sklearn_compat was checked "
        "against; check that module against it and widen SUPPORTED."
    )


def internals_usable() -> bool:
    """Whether the installed scikit-learn's internals may be read; logs why not when not."""
    reason = unsupported_reason(installed_version())
    if reason is not None:
        log.warning("Fast predictor off, model.predict serves: %s", reason)
    return reason is None


@dataclass(frozen=True, slots=True)
class ForestNodes:
    """Every node of every tree, the trees one after another in the model's order.

    ``left``/``right`` index nodes within their own tree; a finite value goes right at a
    split when it is greater than ``threshold``. A leaf's ``feature``, ``threshold``,
    ``left`` and ``right`` mean nothing.
    """

    sizes: IntArray
    feature: IntArray
    threshold: FloatArray
    left: IntArray
    right: IntArray
    leaf: BoolArray
    value: FloatArray
    categorical: bool


def forest_nodes(gbm: Any) -> ForestNodes:
    """The nodes of a fitted single-output HistGradientBoostingRegressor."""
    tables = [tree.nodes for iteration in gbm._predictors for tree in iteration]
    nodes = np.concatenate(tables)
    return ForestNodes(
        sizes=np.array([len(table) for table in tables], dtype=np.intp),
        feature=nodes["feature_idx"].astype(np.intp),
        threshold=nodes["num_threshold"].astype(np.float64),
        left=nodes["left"].astype(np.intp),
        right=nodes["right"].astype(np.intp),
        leaf=nodes["is_leaf"].astype(bool),
        value=nodes["value"].astype(np.float64),
        categorical=bool(nodes["is_categorical"].any()),
    )


def baseline(gbm: Any) -> float:
    """The value every prediction starts from before the trees are added."""
    return float(np.asarray(gbm._baseline_prediction).ravel()[0])


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
        self._baseline = baseline(gbm)

    def __call__(self, engineered: FloatArray) -> FloatArray:
        binned = self._bin(engineered)
        total = np.full(len(engineered), self._baseline)
        for predict_binned in self._trees:
            total += predict_binned(binned, self._missing_bin, 1)
        return total


def validate_params(estimator: Any) -> None:
    """Check an unfitted estimator's parameters now, as ``fit`` would (types and ranges).

    ``_validate_params`` is private (scikit-learn 1.2+); without it the check happens at fit.
    Raises scikit-learn's InvalidParameterError (a ValueError and TypeError).
    """
    check = getattr(estimator, "_validate_params", None)
    if callable(check):
        check()
