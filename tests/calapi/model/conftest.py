"""Fixtures shared by the model tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.compose import TransformedTargetRegressor
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from calapi.model.features import FEATURES, TARGET
from calapi.model.pipeline import CalorieFeatures
from calapi.model.synthetic import generate


@pytest.fixture(scope="session")
def estimator(trained_model_dir: Path) -> Any:
    """The trainer's fitted estimator, loaded once."""
    return joblib.load(trained_model_dir / "model.joblib")


@pytest.fixture(scope="session")
def v1_estimator() -> Any:
    """A model in the first layout calops trained (log1p target over CalorieFeatures + trees)."""
    rows = generate(3000, seed=8)
    pipeline = Pipeline(
        [
            ("features", CalorieFeatures()),
            ("gbm", HistGradientBoostingRegressor(max_iter=60, random_state=0)),
        ]
    )
    model = TransformedTargetRegressor(
        regressor=pipeline, func=np.log1p, inverse_func=np.expm1, check_inverse=False
    )
    with threadpool_limits(limits=1, user_api="openmp"):
        return model.fit(rows[list(FEATURES)], rows[TARGET])


@pytest.fixture(scope="session", params=["current", "v1"])
def any_estimator(request: pytest.FixtureRequest, estimator: Any) -> Any:
    """Each estimator layout the fast predictor serves: the trainer's now, and the first one."""
    if request.param == "v1":
        return request.getfixturevalue("v1_estimator")
    return estimator
