"""The model: Keytel's equations as a baseline, and gradient boosting for what they miss.

``CalorieModel`` fits a HistGradientBoostingRegressor on ``MODEL_FEATURES`` to the gap
between log1p(Calories) and Keytel's log1p(kcal), and predicts expm1(Keytel + trees): the
physics carries the bulk of the signal, which trees would otherwise approximate with
steps, so the same number of trees gets much closer.

``CalorieFeatures`` is the first model's transformer (``TransformedTargetRegressor`` over
``Pipeline([features, gbm])``); models trained with it still load and serve.

Everything here is importable by reference (``calapi.model.pipeline.CalorieModel``), so a
saved model loads wherever calops is installed. Models pickled before the move name
``calapi.pipeline``; ``calapi.model.artifact`` maps that name here when loading.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin, clone
from sklearn.ensemble import HistGradientBoostingRegressor

from calapi.errors import ConfigError
from calapi.model.config import ModelConfig
from calapi.model.data import raw_matrix
from calapi.model.features import (
    BASELINE_COLUMN,
    FEATURES,
    MODEL_FEATURES,
    V1_FEATURES,
    FloatArray,
    engineer_v1,
    model_features,
)


class CalorieModel(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """expm1(Keytel's log1p(kcal) + ``gbm``'s correction), fitted on log1p(Calories).

    Takes raw rows: a DataFrame with the ``FEATURES`` columns (Sex as strings) or a matrix
    laid out as ``FEATURES`` (Sex 1.0/0.0). The squared error of the log target is the RMSLE
    the model is scored by.
    """

    def __init__(self, gbm: Any = None) -> None:
        self.gbm = gbm

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Self:  # noqa: N803
        """Fit ``gbm`` (a clone) to log1p(y) minus Keytel's log1p(kcal), rows weighted if given."""
        features = _model_input(X)
        target = np.log1p(np.asarray(y, dtype=np.float64)) - features[:, BASELINE_COLUMN]
        gbm = HistGradientBoostingRegressor() if self.gbm is None else self.gbm
        self.gbm_ = clone(gbm).fit(features, target, sample_weight=sample_weight)
        self.n_features_in_ = len(FEATURES)
        return self

    def predict(self, X: Any) -> FloatArray:  # noqa: N803 - scikit-learn's signature
        """Calories in kcal for raw rows."""
        features = _model_input(X)
        log_kcal = features[:, BASELINE_COLUMN] + self.gbm_.predict(features)
        result: FloatArray = np.expm1(log_kcal)
        return result

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names of the columns the trees see."""
        return np.asarray(MODEL_FEATURES, dtype=object)


def _model_input(X: Any) -> FloatArray:  # noqa: N803 - scikit-learn's name
    return model_features(_raw(X))


def _raw(X: Any) -> FloatArray:  # noqa: N803 - scikit-learn's name
    if isinstance(X, pd.DataFrame):
        return raw_matrix(X)
    raw = np.asarray(X, dtype=np.float64)
    if raw.shape[1:] != (len(FEATURES),):
        raise ValueError(
            f"expected a matrix with {len(FEATURES)} columns laid out as {FEATURES}, "
            f"got shape {raw.shape}"
        )
    return raw


class CalorieFeatures(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """The first model's transformer: raw rows (DataFrame or matrix) to ``V1_FEATURES``.

    Stateless: ``fit`` learns nothing, so the same transform serves training and inference.
    """

    def fit(self, X: Any, y: Any = None) -> Self:  # noqa: N803 - scikit-learn's signature
        """Nothing to learn; present for the scikit-learn API."""
        return self

    def transform(self, X: Any) -> FloatArray:  # noqa: N803 - scikit-learn's signature
        """Return ``features.engineer_v1`` of the raw rows."""
        return engineer_v1(_raw(X))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names of the engineered columns."""
        return np.asarray(V1_FEATURES, dtype=object)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags


def build_model(model_config: ModelConfig) -> CalorieModel:
    """An unfitted CalorieModel whose trees take ``model.params``."""
    params = {**model_config.params, "random_state": model_config.random_state}
    return CalorieModel(gbm=HistGradientBoostingRegressor(**params))


def check_model_config(model_config: ModelConfig) -> None:
    """Raise ConfigError, in one sentence, for model.params the estimator would refuse.

    Called before any data is read or any tracking store is created, so a typo costs nothing.
    """
    from calapi.model.sklearn_compat import validate_params

    try:
        model = build_model(model_config)
        validate_params(model.gbm)
    except (TypeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0].rstrip(".")
        raise ConfigError(f"Config model.params is not valid: {reason}.") from None
