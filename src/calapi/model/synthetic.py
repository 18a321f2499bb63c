"""A seeded generator of physiologically plausible exercise sessions.

It stands in for the Kaggle "calories burnt" data so that everything runs on a fresh
machine with no download. Rows carry the same columns, value ranges and rounding as the
real data (whole years, centimetres, kilograms, minutes, beats and kcal; 0.1 °C).

The expected expenditure is Keytel et al. (2005) (``calapi.model.features.keytel_terms``)
times what those equations, fitted without VO2max on one group of people, do not capture.
As a factor on kcal, from ``deviation``:

    exp( 0.06 (Body_Temp - 40)                   heat strain above 40 °C
       + 0.15 ln(Height / 175)                   body size beyond weight
       + 0.04 ((Heart_Rate - 100) / 15)^2         the heart rate - VO2 relation is curved
       + 0.05 (Sex - 0.5) tanh((Age - 50) / 15) ) ageing differs by sex

so Keytel's equations alone score an RMSLE of about 0.055 on it, and a model has something
to learn. On top comes person-to-person noise, a log-normal factor whose spread is the
``noise`` setting, and the rounding to whole kcal:

* ``low`` (sigma 0.005): close to deterministic given the features, like the original
  Kaggle data (integer kcal, little noise). Model capacity shows here: more or better
  trees score visibly better.
* ``high`` (sigma 0.06): like the noisier Playground S5E5 data, where good models tie.
* a number: that sigma.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import numpy as np

from calapi.model.features import (
    FEATURES,
    OBSERVED_RANGES,
    TARGET,
    FloatArray,
    keytel_kcal,
    sex_labels,
)

if TYPE_CHECKING:
    import pandas as pd

# About half the sessions of the real data are men's.
MALE_SHARE: Final = 0.5

NOISE_LEVELS: Final = {"low": 0.005, "high": 0.06}
DEFAULT_NOISE: Final = "low"

HEAT_PER_DEGREE: Final = 0.06
SIZE_EXPONENT: Final = 0.15
HEART_RATE_CURVE: Final = 0.04
AGEING_BY_SEX: Final = 0.05


def noise_sigma(noise: str | float) -> float:
    """The log-normal spread of a ``noise`` setting: "low", "high" or a sigma in [0, 1]."""
    if isinstance(noise, str):
        if noise in NOISE_LEVELS:
            return NOISE_LEVELS[noise]
        raise ValueError(f"noise must be 'low', 'high' or a number from 0 to 1, got {noise!r}")
    sigma = -1.0 if isinstance(noise, bool) else float(noise)
    if not 0.0 <= sigma <= 1.0:
        raise ValueError(f"noise must be 'low', 'high' or a number from 0 to 1, got {noise!r}")
    return sigma


def generate(
    n: int, seed: int = 42, *, first_id: int = 0, noise: str | float = DEFAULT_NOISE
) -> pd.DataFrame:
    """Return ``n`` sessions: ``id``, the ``FEATURES`` columns and ``Calories``; deterministic.

    The features depend on ``seed`` only; ``noise`` changes Calories alone.
    """
    import pandas as pd

    return pd.DataFrame(columns(n, seed, first_id=first_id, noise=noise))


def columns(
    n: int, seed: int = 42, *, first_id: int = 0, noise: str | float = DEFAULT_NOISE
) -> dict[str, np.ndarray]:
    """``generate``'s sessions as numpy columns in its order, without pandas (the simulator
    starts faster for it)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    sigma = noise_sigma(noise)
    rng = np.random.default_rng(seed)
    male = rng.random(n) < MALE_SHARE
    data: dict[str, np.ndarray] = {"id": np.arange(first_id, first_id + n, dtype=np.int64)}
    data["Sex"] = sex_labels(male.astype(np.float64)).astype(object)
    data["Age"] = _ages(rng, n)
    data["Height"], data["Weight"] = _bodies(rng, male)
    duration = rng.integers(1, 31, size=n).astype(np.float64)
    data["Duration"] = duration
    data["Heart_Rate"] = _heart_rates(rng, duration)
    data["Body_Temp"] = _body_temps(rng, duration)
    factor = np.exp(rng.normal(0.0, 1.0, size=n) * sigma)
    raw = np.column_stack((male.astype(np.float64), *(data[name] for name in FEATURES[1:])))
    data[TARGET] = _clip(np.round(true_calories(raw) * factor), TARGET)
    return {name: data[name] for name in ("id", *FEATURES, TARGET)}


def true_calories(raw: FloatArray) -> FloatArray:
    """Noise-free expected kcal for raw rows laid out as ``FEATURES`` (Sex 1.0 male, 0.0 female)."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.shape[1:] != (len(FEATURES),):
        raise ValueError(f"expected rows laid out as {FEATURES}, got shape {raw.shape}")
    if not np.isin(raw[:, 0], (0.0, 1.0)).all():
        # Any other code would silently blend the two equations.
        raise ValueError("Sex must be coded 1.0 (male) or 0.0 (female)")
    result: FloatArray = keytel_kcal(raw) * np.exp(deviation(raw))
    return result


def deviation(raw: FloatArray) -> FloatArray:
    """The log factor between the truth and Keytel's equations (see the module docstring)."""
    sex, age, height, heart_rate, body_temp = raw[:, 0], raw[:, 1], raw[:, 2], raw[:, 5], raw[:, 6]
    result: FloatArray = (
        HEAT_PER_DEGREE * (body_temp - 40.0)
        + SIZE_EXPONENT * np.log(height / 175.0)
        + HEART_RATE_CURVE * ((heart_rate - 100.0) / 15.0) ** 2
        + AGEING_BY_SEX * (sex - 0.5) * np.tanh((age - 50.0) / 15.0)
    )
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
