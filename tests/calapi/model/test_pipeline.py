"""The model pipeline: one feature path for DataFrames and matrices, and a portable pickle."""

from __future__ import annotations

import io

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import TransformedTargetRegressor
from threadpoolctl import threadpool_limits

from calapi.errors import DataError
from calapi.model.config import ModelConfig
from calapi.model.data import raw_matrix
from calapi.model.features import ENGINEERED_FEATURES, FEATURES, TARGET
from calapi.model.pipeline import CalorieFeatures, build_model
from calapi.model.synthetic import generate


@pytest.fixture(scope="module")
def fitted() -> TransformedTargetRegressor:
    """A small model fitted on generated rows (one OpenMP thread: faster on a busy machine)."""
    rows = generate(1500, seed=3)
    model = build_model(ModelConfig(params={"max_iter": 40, "learning_rate": 0.2}))
    with threadpool_limits(limits=1, user_api="openmp"):
        return model.fit(rows[list(FEATURES)], rows[TARGET])


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """Rows the model has not seen."""
    return generate(200, seed=4)[list(FEATURES)]


def test_dataframe_and_matrix_predictions_are_identical(
    fitted: TransformedTargetRegressor, rows: pd.DataFrame
) -> None:
    """predict(DataFrame with Sex strings) equals predict(FEATURES matrix with Sex 1/0)."""
    np.testing.assert_array_equal(fitted.predict(rows), fitted.predict(raw_matrix(rows)))


def test_gender_alias_and_any_case_give_the_same_predictions(
    fitted: TransformedTargetRegressor, rows: pd.DataFrame
) -> None:
    """A Gender column with upper-case values predicts exactly like Sex."""
    renamed = rows.rename(columns={"Sex": "Gender"})
    renamed["Gender"] = renamed["Gender"].str.upper()
    np.testing.assert_array_equal(fitted.predict(rows), fitted.predict(renamed))


def test_predictions_are_kcal(fitted: TransformedTargetRegressor, rows: pd.DataFrame) -> None:
    """The log1p target is undone: predictions are positive kcal on the data's scale."""
    predictions = fitted.predict(rows)
    assert predictions.min() > 0
    assert 20 < float(np.median(predictions)) < 200


def test_pickle_round_trip_predicts_the_same(
    fitted: TransformedTargetRegressor, rows: pd.DataFrame
) -> None:
    """A joblib round trip keeps predictions, referencing calapi.model.pipeline by name."""
    buffer = io.BytesIO()
    joblib.dump(fitted, buffer)
    assert b"calapi.model.pipeline" in buffer.getvalue()
    buffer.seek(0)
    np.testing.assert_array_equal(joblib.load(buffer).predict(rows), fitted.predict(rows))


def test_transform_rejects_a_matrix_of_the_wrong_width() -> None:
    """A matrix that is not laid out as FEATURES is refused."""
    with pytest.raises(ValueError, match="7 columns"):
        CalorieFeatures().transform(np.zeros((2, 5)))


def test_transform_rejects_unknown_sex(rows: pd.DataFrame) -> None:
    """An unknown Sex value in a DataFrame raises DataError naming the row."""
    bad = rows.head(3).copy()
    bad.loc[bad.index[1], "Sex"] = "x"
    with pytest.raises(DataError, match="column Sex, row 2"):
        CalorieFeatures().transform(bad)


def test_transform_outputs_the_engineered_columns(rows: pd.DataFrame) -> None:
    """The transform yields one column per engineered feature name."""
    features = CalorieFeatures()
    assert features.transform(rows).shape == (len(rows), len(ENGINEERED_FEATURES))
    assert list(features.get_feature_names_out()) == list(ENGINEERED_FEATURES)


def test_build_model_passes_params_and_random_state() -> None:
    """Config params reach the gradient boosting step; random_state comes from the config."""
    model = build_model(ModelConfig(params={"max_iter": 7, "random_state": 1}, random_state=9))
    gbm = model.regressor.named_steps["gbm"]
    assert gbm.max_iter == 7
    assert gbm.random_state == 9
    assert model.func is np.log1p
    assert model.inverse_func is np.expm1
