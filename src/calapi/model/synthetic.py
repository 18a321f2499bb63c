"""A seeded generator of physiologically plausible exercise sessions.

It stands in for the Kaggle "calories burnt" data so that everything runs on a fresh
machine with no download. Rows carry the same columns, value ranges and rounding as the
real data (whole years, centimetres, kilograms, minutes, beats and kcal; 0.1 °C), and the
target follows a published heart-rate based energy expenditure equation with
multiplicative noise on top.

Energy expenditure: Keytel et al. (2005), "Prediction of energy expenditure from heart
rate monitoring during submaximal exercise", J Sports Sci 23(3):289-297, the equations
without VO2max (kJ/min):

    male:   EE = -55.0969 + 0.6309 HR + 0.1988 W + 0.2017 A
    female: EE = -20.4022 + 0.4472 HR - 0.1263 W + 0.0740 A

converted to kcal (1 kcal = 4.184 kJ) and multiplied by the duration in minutes.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from calapi.model.features import FEATURES, OBSERVED_RANGES, TARGET, FloatArray, sex_labels

KJ_PER_KCAL: Final = 4.184

# (intercept, heart rate, weight, age) coefficients of EE in kJ/min.
KEYTEL_MALE: Final = (-55.0969, 0.6309, 0.1988, 0.2017)
KEYTEL_FEMALE: Final = (-20.4022, 0.4472, -0.1263, 0.0740)

# About half the sessions of the real data are men's.
MALE_SHARE: Final = 0.5

# Keytel's equations were fitted on exercise heart rates; near rest they can go
# negative, so expenditure is floored at roughly a resting metabolic rate.
RESTING_KCAL_PER_MIN: Final = 1.0

# Person-to-person spread around the equation (fitness, efficiency, measurement), as a
# log-normal factor: about 4 % for one standard deviation.
NOISE_SIGMA: Final = 0.04


def generate(n: int, seed: int = 42, *, first_id: int = 0) -> pd.DataFrame:
    """Return ``n`` sessions: ``id``, the ``FEATURES`` columns and ``Calories``; deterministic."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    male = rng.random(n) < MALE_SHARE
    frame = pd.DataFrame({"id": np.arange(first_id, first_id + n, dtype=np.int64)})
    frame["Sex"] = sex_labels(male)
    frame["Age"] = _ages(rng, n)
    frame["Height"], frame["Weight"] = _bodies(rng, male)
    duration = rng.integers(1, 31, size=n).astype(np.float64)
    frame["Duration"] = duration
    frame["Heart_Rate"] = _heart_rates(rng, duration)
    frame["Body_Temp"] = _body_temps(rng, duration)
    noise = np.exp(rng.normal(0.0, NOISE_SIGMA, size=n))
    truth = true_calories(
        male=male,
        heart_rate=frame["Heart_Rate"].to_numpy(),
        weight=frame["Weight"].to_numpy(),
        age=frame["Age"].to_numpy(),
        duration=duration,
    )
    frame[TARGET] = _clip(np.round(truth * noise), TARGET)
    return frame[["id", *FEATURES, TARGET]]


def true_calories(
    *,
    male: npt.NDArray[np.bool_],
    heart_rate: npt.ArrayLike,
    weight: npt.ArrayLike,
    age: npt.ArrayLike,
    duration: npt.ArrayLike,
) -> FloatArray:
    """Noise-free expected kcal per row from sex (True = male), bpm, kg, years and minutes."""
    male = np.asarray(male)
    if male.dtype != np.bool_:
        # Strings or codes would silently pick one equation for every row.
        raise TypeError(f"male must be a boolean array, got dtype {male.dtype}")
    coef = np.where(male[:, None], KEYTEL_MALE, KEYTEL_FEMALE)
    rate, mass, years, minutes = (
        np.asarray(values, dtype=np.float64) for values in (heart_rate, weight, age, duration)
    )
    kj_per_min = coef[:, 0] + coef[:, 1] * rate + coef[:, 2] * mass + coef[:, 3] * years
    kcal_per_min = np.maximum(kj_per_min / KJ_PER_KCAL, RESTING_KCAL_PER_MIN)
    result: FloatArray = kcal_per_min * minutes
    return result


def _clip(values: FloatArray, column: str) -> FloatArray:
    low, high = OBSERVED_RANGES[column]
    return np.clip(values, low, high)


def _ages(rng: np.random.Generator, n: int) -> FloatArray:
    # The real data skews young: a triangular density falling from 20 to 79 years.
    ages = 20.0 + np.floor(rng.triangular(0.0, 0.0, 1.0, size=n) * 45.0 + rng.random(n) * 15.0)
    return _clip(ages, "Age")


def _bodies(rng: np.random.Generator, male: np.ndarray) -> tuple[FloatArray, FloatArray]:
    # Height by sex; weight from a plausible BMI so that the two stay correlated.
    n = male.shape[0]
    drawn = np.where(male, rng.normal(185.0, 9.0, n), rng.normal(164.0, 8.5, n))
    height = _clip(np.round(drawn).astype(np.float64), "Height")
    mean_bmi = np.where(male, 25.0, 23.5).astype(np.float64)
    bmi = np.clip(rng.normal(mean_bmi, 1.6, n), 18.0, 31.0)
    height_m = height / 100.0
    weight = _clip(np.round(bmi * height_m * height_m), "Weight")
    return height, weight


def _heart_rates(rng: np.random.Generator, duration: FloatArray) -> FloatArray:
    # Heart rate climbs roughly a beat per minute of sustained exercise.
    rate = 79.0 + 1.0 * duration + rng.normal(0.0, 4.5, duration.shape[0])
    return _clip(np.round(rate), "Heart_Rate")


def _body_temps(rng: np.random.Generator, duration: FloatArray) -> FloatArray:
    # Core temperature rises quickly, then levels off towards ~41 °C.
    temp = 37.0 + 4.2 * (1.0 - np.exp(-duration / 9.0)) + rng.normal(0.0, 0.2, duration.shape[0])
    return _clip(np.round(temp, 1), "Body_Temp")
