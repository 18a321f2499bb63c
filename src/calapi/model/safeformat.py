"""The served model format: skops, which rebuilds only types on an explicit list, never code.

A pickle (joblib, cloudpickle) runs whatever its bytes say when loaded. skops instead
rebuilds the object from data, refusing any type not trusted: scikit-learn's public
estimators, numpy and scipy types and ufuncs (skops's defaults), plus ``TRUSTED_TYPES``.
Two of those hold raw node indices that scikit-learn follows without bounds checks, so a
loaded model's trees are checked to point only inside themselves before it is used.
The list is this module's, never one read from a file or from MLflow's MLmodel.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, NoReturn

import numpy as np

from calapi.errors import ModelError, ModelRefusedError

SAFE_FILE: Final = "model.skops"
SAFE_SUFFIX: Final = ".skops"
PICKLE_FILE: Final = "model.joblib"
PICKLE_SUFFIXES: Final = frozenset({".joblib", ".pkl", ".pickle", ".cloudpickle"})
# calops's model (its state: the fitted trees, checked below, and a column count) and the
# first model's feature transformer (stateless: it has no attributes).
CALOPS_TYPES: Final = (
    "calapi.model.pipeline.CalorieModel",
    "calapi.model.pipeline.CalorieFeatures",
)
HIST_TREE: Final = "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"
TREE: Final = "sklearn.tree._tree.Tree"
# Beyond skops's defaults: exactly what calops's own model and the hand-out's forests need.
TRUSTED_TYPES: Final = (*CALOPS_TYPES, HIST_TREE, TREE)
ALLOW_PICKLE: Final = "--allow-pickle (CALOPS_ALLOW_PICKLE=true)"
MAX_OBJECTS: Final = 1_000_000  # a model's object graph; a bigger one is not checked, so refused


def is_pickle(path: Path) -> bool:
    """Whether ``path`` names a pickle format (joblib, pickle, cloudpickle)."""
    return path.suffix in PICKLE_SUFFIXES


def dump_safe(model: Any) -> bytes:
    """``model`` in the safe format; ModelError when skops cannot save it."""
    import skops.io

    try:
        data: bytes = skops.io.dumps(model)
    except Exception as exc:  # skops raises TypeError, AttributeError... for what it cannot save
        raise ModelError(f"skops cannot save this model ({_reason(exc)})") from None
    return data


def load_safe(data: bytes, source: str) -> Any:
    """The model in skops bytes, built only from trusted types with its trees checked.

    ModelRefusedError when they hold any other type or a tree pointing outside itself;
    ModelError when they are not a readable skops file.
    """
    import skops.io

    untrusted = unsafe_types(data, source)
    if untrusted:
        raise ModelRefusedError(
            f"{source} holds types calops does not trust ({', '.join(untrusted)}), which could "
            "run code when used, so it was not loaded; retrain it with `calops train`."
        )
    try:
        model = skops.io.loads(data, trusted=list(TRUSTED_TYPES))
    except Exception as exc:  # a damaged file can fail anywhere in skops
        raise ModelError(
            f"{source} is not a loadable skops model ({_reason(exc)}); retrain it."
        ) from None
    check_trees(model, source)
    return model


def unsafe_types(data: bytes, source: str) -> list[str]:
    """The types in skops bytes that neither skops's defaults nor ``TRUSTED_TYPES`` cover."""
    import skops.io

    try:
        found = skops.io.get_untrusted_types(data=data)
    except Exception as exc:  # not a zip, no schema, a damaged member...
        raise ModelError(
            f"{source} is not a loadable skops model ({_reason(exc)}); retrain it."
        ) from None
    return [name for name in found if name not in TRUSTED_TYPES]


def check_trees(model: Any, source: str) -> None:
    """ModelRefusedError unless every tree in ``model`` stays inside its own node arrays.

    Every Tree must be the ``tree_`` of a fitted decision tree and every TreePredictor one
    of a fitted histogram gradient boosting model's, so the number of columns scikit-learn
    checks its input against bounds each node's feature index.
    """
    from sklearn.ensemble._hist_gradient_boosting.gradient_boosting import (
        BaseHistGradientBoosting,
    )
    from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
    from sklearn.tree._tree import Tree

    trees = checked = 0
    for item in _objects(model, source):
        if isinstance(item, Tree | TreePredictor):
            trees += 1
        elif isinstance(item, BaseHistGradientBoosting):
            checked += _check_hist(item, source)
        elif isinstance(getattr(item, "__dict__", {}).get("tree_"), Tree):
            _check_tree(item.tree_, _n_features(item, source), source)
            checked += 1
    if trees != checked:
        _refuse(source, "a tree outside the estimator that would bound its feature indices")


def _check_hist(gbm: Any, source: str) -> int:
    predictors = getattr(gbm, "_predictors", None) or []
    mapper = getattr(gbm, "_bin_mapper", None)
    if not predictors and mapper is None:  # unfitted: a template such as a wrapper's regressor
        return 0
    n_features = _n_features(gbm, source)
    if mapper is not None:
        _check_bin_mapper(mapper, n_features, source)
    count = 0
    for iteration in predictors:
        for predictor in iteration:
            _check_nodes(predictor.nodes, n_features, source)
            count += 1
    return count


def _check_bin_mapper(mapper: Any, n_features: int, source: str) -> None:
    shapes = (np.shape(mapper.is_categorical_), np.shape(mapper.n_bins_non_missing_))
    if shapes != ((n_features,), (n_features,)) or len(mapper.bin_thresholds_) != n_features:
        _refuse(source, "a histogram bin mapper whose size differs from its model's inputs")
    if np.any(mapper.is_categorical_):
        _refuse(source, "native categorical splits, whose bitsets cannot be checked")


def _check_nodes(nodes: Any, n_features: int, source: str) -> None:
    from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE

    if not isinstance(nodes, np.ndarray) or nodes.dtype != PREDICTOR_RECORD_DTYPE:
        _refuse(source, "tree nodes of an unexpected layout")
    inner = nodes["is_leaf"] == 0
    if np.any(nodes["is_categorical"][inner]):
        _refuse(source, "native categorical splits, whose bitsets cannot be checked")
    _check_links(nodes["left"], nodes["right"], nodes["feature_idx"], inner, n_features, source)


def _check_tree(tree: Any, n_features: int, source: str) -> None:
    from sklearn.tree._tree import TREE_LEAF

    left = np.asarray(tree.children_left)
    if tree.n_features != n_features or np.shape(tree.value)[0] != len(left):
        _refuse(source, "a decision tree whose size differs from its model's inputs")
    inner = left != TREE_LEAF
    _check_links(
        left, np.asarray(tree.children_right), np.asarray(tree.feature), inner, n_features, source
    )


def _check_links(  # noqa: PLR0917 - the arrays of one tree
    left: Any, right: Any, feature: Any, inner: Any, n_features: int, source: str
) -> None:
    """Each split's children come after it and inside the tree (so every walk ends at a
    leaf), and its feature is one of the model's input columns."""
    own = np.arange(len(left))[inner]
    size = len(left)
    for child in (left[inner].astype(np.int64), right[inner].astype(np.int64)):
        if np.any(child <= own) or np.any(child >= size):
            _refuse(source, "a tree whose split points outside it or back up")
    used = feature[inner].astype(np.int64)
    if np.any(used < 0) or np.any(used >= n_features):
        _refuse(source, "a tree split on a feature the model does not have")


def _n_features(estimator: Any, source: str) -> int:
    """The columns scikit-learn checks a fitted estimator's input against (it must state it)."""
    n_features = getattr(estimator, "n_features_in_", None)
    if (
        isinstance(n_features, bool)
        or not isinstance(n_features, int | np.integer)
        or n_features < 1
    ):
        _refuse(source, "a fitted tree model that does not state its number of inputs")
    return int(n_features)


def _objects(root: Any, source: str) -> Iterator[Any]:
    """Every object reachable from ``root`` through attributes and containers, once each."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, str | bytes | int | float | type):
            continue
        seen.add(id(item))
        if len(seen) > MAX_OBJECTS:
            _refuse(source, f"more than {MAX_OBJECTS} objects")
        yield item
        stack.extend(_children(item))


def _children(item: Any) -> list[Any]:
    if isinstance(item, dict):
        return [*item.keys(), *item.values()]
    if isinstance(item, list | tuple | set | frozenset):
        return list(item)
    if isinstance(item, np.ndarray):
        return list(item.ravel()) if item.dtype == object else []
    state = getattr(item, "__dict__", None)
    return list(state.values()) if isinstance(state, dict) else []


def _refuse(source: str, what: str) -> NoReturn:
    raise ModelRefusedError(
        f"{source} holds {what}, so it was not loaded (scikit-learn follows tree indices "
        "without bounds checks); retrain it with `calops train`."
    )


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
