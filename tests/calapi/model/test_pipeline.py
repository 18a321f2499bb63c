"""The model: Keytel's baseline plus trees, one feature path for DataFrames and matrices,
and portable files."""

from __future__ import annotations

import io

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor
from threadpoolctl import threadpool_limits

from calapi.errors import DataError
from calapi.model.config import ModelConfig
from calapi.model.data import raw_matrix
from calapi.model.features import (
    BASELINE_COLUMN,
    FEATURES,
    MODEL_FEATURES,
    TARGET,
    V1_FEATURES,
    keytel_kcal,
    model_features,
)
from calapi.model.pipeline import CalorieFeatures, CalorieModel, build_model
from calapi.model.safeformat import dump_safe, load_safe
from calapi.model.synthetic import generate


@pytest.fixture(scope="module")
def fitted() -> CalorieModel:
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
    fitted: CalorieModel, rows: pd.DataFrame
) -> None:
    """predict(DataFrame with Sex strings) equals predict(FEATURES matrix with Sex 1/0)."""
    np.testing.assert_array_equal(fitted.predict(rows), fitted.predict(raw_matrix(rows)))


def test_gender_alias_and_any_case_give_the_same_predictions(
    fitted: CalorieModel, rows: pd.DataFrame
) -> None:
    """A Gender column with upper-case values predicts exactly like Sex."""
    renamed = rows.rename(columns={"Sex": "Gender"})
    renamed["Gender"] = renamed["Gender"].str.upper()
    np.testing.assert_array_equal(fitted.predict(rows), fitted.predict(renamed))


def test_predictions_are_kcal(fitted: CalorieModel, rows: pd.DataFrame) -> None:
    """The log1p target is undone: predictions are positive kcal on the data's scale."""
    predictions = fitted.predict(rows)
    assert predictions.min() > 0
    assert 20 < float(np.median(predictions)) < 200


def test_pickle_round_trip_predicts_the_same(fitted: CalorieModel, rows: pd.DataFrame) -> None:
    """A joblib round trip keeps predictions, referencing calapi.model.pipeline by name."""
    buffer = io.BytesIO()
    joblib.dump(fitted, buffer)
    assert b"calapi.model.pipeline" in buffer.getvalue()
    buffer.seek(0)
    np.testing.assert_array_equal(joblib.load(buffer).predict(rows), fitted.predict(rows))


def test_predict_is_keytel_plus_the_trees_correction(
    fitted: CalorieModel, rows: pd.DataFrame
) -> None:
    """predict = expm1(Keytel's log1p(kcal) + the trees' output on MODEL_FEATURES)."""
    features = model_features(raw_matrix(rows))
    expected = np.expm1(features[:, BASELINE_COLUMN] + fitted.gbm_.predict(features))
    np.testing.assert_allclose(fitted.predict(rows), expected, rtol=1e-12)
    assert list(fitted.get_feature_names_out()) == list(MODEL_FEATURES)
    assert MODEL_FEATURES[BASELINE_COLUMN] == "Keytel_log1p_kcal"


def test_a_model_fitted_to_keytel_predicts_keytel(rows: pd.DataFrame) -> None:
    """With nothing left to correct, the trees add nothing: the baseline really is Keytel's."""
    train = generate(2000, seed=5)[list(FEATURES)]
    model = CalorieModel(HistGradientBoostingRegressor(max_iter=20))
    with threadpool_limits(limits=1, user_api="openmp"):
        model.fit(train, keytel_kcal(raw_matrix(train)))
    expected = keytel_kcal(raw_matrix(rows))
    np.testing.assert_allclose(model.predict(rows), expected, rtol=1e-9)


def test_the_model_beats_keytel_alone(fitted: CalorieModel) -> None:
    """On rows it has not seen, the fitted model is closer to the truth than the baseline."""
    held_out = generate(2000, seed=21)
    truth = np.log1p(held_out[TARGET].to_numpy())
    model_error = np.sqrt(np.mean((np.log1p(fitted.predict(held_out)) - truth) ** 2))
    keytel = keytel_kcal(raw_matrix(held_out))
    baseline_error = np.sqrt(np.mean((np.log1p(keytel) - truth) ** 2))
    assert model_error < 0.6 * baseline_error


def test_skops_round_trip_predicts_the_same(fitted: CalorieModel, rows: pd.DataFrame) -> None:
    """The served format rebuilds CalorieModel from calops's trusted types alone."""
    loaded = load_safe(dump_safe(fitted), "model.skops")
    assert type(loaded) is CalorieModel
    np.testing.assert_array_equal(loaded.predict(rows), fitted.predict(rows))


@pytest.mark.parametrize("transform", [CalorieFeatures().transform, CalorieModel().predict])
def test_a_matrix_of_the_wrong_width_is_refused(transform: object) -> None:
    """A matrix that is not laid out as FEATURES is refused by both layouts."""
    assert callable(transform)
    with pytest.raises(ValueError, match="7 columns"):
        transform(np.zeros((2, 5)))


def test_transform_rejects_unknown_sex(rows: pd.DataFrame) -> None:
    """An unknown Sex value in a DataFrame raises DataError naming the row."""
    bad = rows.head(3).copy()
    bad.loc[bad.index[1], "Sex"] = "x"
    with pytest.raises(DataError, match="column Sex, row 2"):
        CalorieFeatures().transform(bad)


def test_first_layout_transform_outputs_its_columns(rows: pd.DataFrame) -> None:
    """The first model's transformer still yields one column per V1 feature name."""
    features = CalorieFeatures()
    assert features.transform(rows).shape == (len(rows), len(V1_FEATURES))
    assert list(features.get_feature_names_out()) == list(V1_FEATURES)


def test_build_model_passes_params_and_random_state() -> None:
    """Config params reach the gradient boosting step; random_state comes from the config."""
    model = build_model(ModelConfig(params={"max_iter": 7, "random_state": 1}, random_state=9))
    assert isinstance(model, CalorieModel)
    assert model.gbm.max_iter == 7
    assert model.gbm.random_state == 9


def test_sample_weights_decide_where_rows_disagree() -> None:
    """The same rows twice with kcal 30% apart: the fit follows the heavier copy."""
    frame = generate(2000, seed=5)
    rows = pd.concat([frame, frame], ignore_index=True)
    kcal = frame[TARGET].to_numpy()
    target = np.concatenate([kcal, kcal * 1.3])
    params = {"max_iter": 50, "random_state": 0}
    weighted = CalorieModel(HistGradientBoostingRegressor(**params)).fit(
        rows[list(FEATURES)], target, sample_weight=np.repeat([1.0, 0.1], len(frame))
    )
    even = CalorieModel(HistGradientBoostingRegressor(**params)).fit(rows[list(FEATURES)], target)
    shift = np.median(np.log(weighted.predict(frame[list(FEATURES)]) / kcal))
    assert abs(shift - np.log1p(0.3) / 11) < 0.01
    assert np.median(np.log(even.predict(frame[list(FEATURES)]) / kcal)) > 0.1
