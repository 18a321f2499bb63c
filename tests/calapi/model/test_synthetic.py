"""The synthetic generator: ranges of the real data, determinism, and the Keytel physiology."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from calapi.model.features import FEATURES, MALE, OBSERVED_RANGES, TARGET
from calapi.model.synthetic import generate, true_calories


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


@pytest.mark.parametrize("column", list(OBSERVED_RANGES))
def test_values_stay_in_the_real_data_ranges(sample: pd.DataFrame, column: str) -> None:
    """Every numeric column stays inside the range seen in the Kaggle data."""
    low, high = OBSERVED_RANGES[column]
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


def frame_calories(frame: pd.DataFrame) -> np.ndarray:
    """true_calories of generated rows (Sex as "male"/"female")."""
    return true_calories(
        male=(frame["Sex"] == MALE).to_numpy(),
        heart_rate=frame["Heart_Rate"],
        weight=frame["Weight"],
        age=frame["Age"],
        duration=frame["Duration"],
    )


def test_true_calories_follows_keytel() -> None:
    """true_calories is Keytel et al. 2005 (kJ/min, per sex) in kcal times duration."""
    kcal = true_calories(
        male=np.array([True, False]),
        heart_rate=[120, 120],
        weight=[80, 60],
        age=[40, 40],
        duration=[20, 20],
    )
    male_kj = -55.0969 + 0.6309 * 120 + 0.1988 * 80 + 0.2017 * 40
    female_kj = -20.4022 + 0.4472 * 120 - 0.1263 * 60 + 0.0740 * 40
    expected = np.array([male_kj, female_kj]) / 4.184 * 20
    np.testing.assert_allclose(kcal, expected)


def test_true_calories_floors_at_resting_expenditure() -> None:
    """Near rest, where Keytel's equation goes negative, a minute still costs 1 kcal."""
    kcal = true_calories(
        male=np.array([False]), heart_rate=[40], weight=[130], age=[20], duration=[10]
    )
    assert kcal.tolist() == [10.0]


def test_true_calories_refuses_sex_that_is_not_boolean() -> None:
    """Sex strings or 1.0/0.0 codes are refused rather than silently read as all male."""
    with pytest.raises(TypeError, match="boolean"):
        true_calories(male=np.array(["male", "female"]), heart_rate=[1, 1], weight=[1, 1],
                      age=[1, 1], duration=[1, 1])  # fmt: skip


def test_noise_is_multiplicative_and_centred(sample: pd.DataFrame) -> None:
    """Observed kcal scatter a few percent around the noise-free physiology."""
    truth = frame_calories(sample)
    unclipped = (truth > 20) & (truth < 280)
    log_ratio = np.log(sample[TARGET].to_numpy()[unclipped] / truth[unclipped])
    assert abs(float(np.median(log_ratio))) < 0.01
    assert 0.02 < float(np.std(log_ratio)) < 0.08


def test_generator_does_not_import_the_data_loader() -> None:
    """Importing synthetic leaves data.py unimported: the two modules form no cycle."""
    check = "import sys, calapi.model.synthetic; print('calapi.model.data' in sys.modules)"
    found = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "False"
