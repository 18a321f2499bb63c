"""The synthetic generator: ranges of the real data, determinism, and the Keytel physiology."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from calapi.model.features import FEATURES, TARGET
from calapi.model.synthetic import RANGES, generate, true_calories


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    """Twenty thousand generated sessions."""
    return generate(20_000, seed=11)


def test_columns_and_ids(sample: pd.DataFrame) -> None:
    """Rows carry id 0..n-1, the FEATURES columns and Calories."""
    assert list(sample.columns) == ["id", *FEATURES, TARGET]
    assert sample["id"].tolist() == list(range(len(sample)))
    assert set(sample["Sex"]) == {"male", "female"}


def test_first_id_offsets_the_ids() -> None:
    """first_id shifts the id column."""
    assert generate(3, seed=1, first_id=100)["id"].tolist() == [100, 101, 102]


@pytest.mark.parametrize("column", list(RANGES))
def test_values_stay_in_the_real_data_ranges(sample: pd.DataFrame, column: str) -> None:
    """Every numeric column stays inside the range seen in the Kaggle data."""
    low, high = RANGES[column]
    assert sample[column].between(low, high).all()
    assert sample[column].isna().sum() == 0


def test_same_seed_same_frame_different_seed_different() -> None:
    """The generator is deterministic per seed and varies across seeds."""
    pd.testing.assert_frame_equal(generate(500, seed=5), generate(500, seed=5))
    assert not generate(500, seed=5).equals(generate(500, seed=6))


def test_joint_distributions_are_physiological(sample: pd.DataFrame) -> None:
    """Men are taller and heavier; heart rate, body temperature and kcal rise with duration."""
    by_sex = sample.groupby("Sex")[["Height", "Weight"]].mean()
    assert (by_sex.loc["male"] > by_sex.loc["female"]).all()
    bmi = sample["Weight"] / (sample["Height"] / 100.0) ** 2
    assert bmi.between(15.0, 35.0).all()
    correlations = sample[["Duration", "Heart_Rate", "Body_Temp", TARGET]].corr()["Duration"]
    assert (correlations[["Heart_Rate", "Body_Temp", TARGET]] > 0.7).all()


def test_true_calories_follows_keytel() -> None:
    """true_calories is Keytel et al. 2005 (kJ/min, per sex) in kcal times duration."""
    rows = pd.DataFrame(
        {
            "Gender": ["Male", "female"],
            "Age": [40, 40],
            "Height": [180, 165],
            "Weight": [80, 60],
            "Duration": [20, 20],
            "Heart_Rate": [120, 120],
            "Body_Temp": [40.0, 40.0],
        }
    )
    male_kj = -55.0969 + 0.6309 * 120 + 0.1988 * 80 + 0.2017 * 40
    female_kj = -20.4022 + 0.4472 * 120 - 0.1263 * 60 + 0.0740 * 40
    expected = np.array([male_kj, female_kj]) / 4.184 * 20
    np.testing.assert_allclose(true_calories(rows), expected)


def test_noise_is_multiplicative_and_centred(sample: pd.DataFrame) -> None:
    """Observed kcal scatter a few percent around the noise-free physiology."""
    truth = true_calories(sample)
    unclipped = (truth > 20) & (truth < 280)
    log_ratio = np.log(sample[TARGET].to_numpy()[unclipped] / truth[unclipped])
    assert abs(float(np.median(log_ratio))) < 0.01
    assert 0.02 < float(np.std(log_ratio)) < 0.08
