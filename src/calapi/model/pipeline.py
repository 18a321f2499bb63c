"""The model: feature engineering plus gradient boosting on log1p(Calories).

Everything here is importable by reference (``calapi.model.pipeline.CalorieFeatures``), so a
pickled model loads wherever calops is installed. Models pickled before the move name
``calapi.pipeline``; ``calapi.model.artifact`` maps that name here when loading.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import TransformedTargetRegressor
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.pipeline import Pipeline

from calapi.errors import ConfigError
from calapi.model.config import ModelConfig
from calapi.model.data import raw_matrix
from calapi.model.features import ENGINEERED_FEATURES, FEATURES, FloatArray, engineer


class CalorieFeatures(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Turns raw rows (DataFrame with Sex strings, or a FEATURES-ordered matrix) into model input.

    Stateless: ``fit`` learns nothing, so the same transform serves training and inference.
    """

    def fit(self, X: Any, y: Any = None) -> Self:  # noqa: N803 - scikit-learn's signature
        """Nothing to learn; present for the scikit-learn API."""
        return self

    def transform(self, X: Any) -> FloatArray:  # noqa: N803 - scikit-learn's signature
        """Return ``features.engineer`` of the raw rows."""
        if isinstance(X, pd.DataFrame):
            return engineer(raw_matrix(X))
        raw = np.asarray(X, dtype=np.float64)
        if raw.shape[1:] != (len(FEATURES),):
            raise ValueError(
                f"expected a matrix with {len(FEATURES)} columns laid out as {FEATURES}, "
                f"got shape {raw.shape}"
            )
        return engineer(raw)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names of the engineered columns."""
        return np.asarray(ENGINEERED_FEATURES, dtype=object)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags


def build_model(model_config: ModelConfig) -> TransformedTargetRegressor:
    """An unfitted estimator: CalorieFeatures -> HistGradientBoosting, fitted on log1p(kcal).

    The log target makes squared error on it the RMSLE the model is scored by.
    """
    params = {**model_config.params, "random_state": model_config.random_state}
    gbm = HistGradientBoostingRegressor(**params)
    pipeline = Pipeline([("features", CalorieFeatures()), ("gbm", gbm)])
    return TransformedTargetRegressor(
        regressor=pipeline, func=np.log1p, inverse_func=np.expm1, check_inverse=False
    )


def check_model_config(model_config: ModelConfig) -> None:
    """Raise ConfigError, in one sentence, for model.params the estimator would refuse.

    Called before any data is read or any tracking store is created, so a typo costs nothing.
    """
    from calapi.model.sklearn_compat import validate_params

    try:
        model = build_model(model_config)
        validate_params(model.regressor.named_steps["gbm"])
    except (TypeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0].rstrip(".")
        raise ConfigError(f"Config model.params is not valid: {reason}.") from None
