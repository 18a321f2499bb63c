"""The data contract: feature names, units, plausibility limits and feature engineering.

Pure numpy, no I/O: the trainer, the API's hot path and the simulator all share it.
Raw rows are encoded as a float matrix with the columns of ``FEATURES`` in order,
``Sex`` as 1.0 for male and 0.0 for female.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

FEATURES: Final = ("Sex", "Age", "Height", "Weight", "Duration", "Heart_Rate", "Body_Temp")
NUMERIC_FEATURES: Final = FEATURES[1:]
TARGET: Final = "Calories"
SEX_ALIASES: Final = ("Sex", "Gender")

UNITS: Final = {
    "Age": "years",
    "Height": "cm",
    "Weight": "kg",
    "Duration": "min",
    "Heart_Rate": "beats/min",
    "Body_Temp": "°C",
    "Calories": "kcal",
}

# What a human body can be. Outside these bounds a row is rejected (HTTP 422, or a
# named error while loading a file); inside them but outside the training range it is
# served and counted as out of range. Bounds are inclusive.
PLAUSIBLE: Final[dict[str, tuple[float, float]]] = {
    "Age": (1.0, 120.0),
    "Height": (50.0, 260.0),
    "Weight": (10.0, 400.0),
    "Duration": (0.0, 1440.0),
    "Heart_Rate": (20.0, 250.0),
    "Body_Temp": (30.0, 45.0),
}

# Inclusive ranges of the Kaggle "calories burnt" data: synthetic rows are clipped to them,
# and a model without a card is probed inside them.
OBSERVED_RANGES: Final[dict[str, tuple[float, float]]] = {
    "Age": (20.0, 79.0),
    "Height": (123.0, 222.0),
    "Weight": (36.0, 132.0),
    "Duration": (1.0, 30.0),
    "Heart_Rate": (67.0, 128.0),
    "Body_Temp": (37.1, 41.5),
    TARGET: (1.0, 314.0),
}

# The one Sex encoding: every layer (files, the API, the model, the simulator) goes through
# ``encode_sex`` / ``sex_labels`` or, for a whole pandas column, this mapping.
MALE: Final = "male"
FEMALE: Final = "female"
MALE_CODE: Final = 1.0
FEMALE_CODE: Final = 0.0
SEX_CODES: Final = {MALE: MALE_CODE, FEMALE: FEMALE_CODE, "m": MALE_CODE, "f": FEMALE_CODE}

ENGINEERED_FEATURES: Final = (
    *FEATURES,
    "BMI",
    "Duration_x_Heart_Rate",
    "Duration_x_Body_Temp",
    "Duration_x_Weight",
    "Duration_x_Age",
    "Heart_Rate_per_Age",
)


def encode_sex(value: object) -> float:
    """Map "male"/"female" (any case, or m/f) to 1.0/0.0; raise ValueError otherwise."""
    code = SEX_CODES.get(str(value).strip().lower())
    if code is None:
        raise ValueError(f"Sex must be 'male' or 'female', got {value!r}")
    return code


def sex_labels(codes: npt.ArrayLike) -> npt.NDArray[np.str_]:
    """The reverse of ``encode_sex`` for many rows: "male" where the code is 1.0, else "female"."""
    labels: npt.NDArray[np.str_] = np.where(np.asarray(codes) == MALE_CODE, MALE, FEMALE)
    return labels


def engineer(raw: FloatArray) -> FloatArray:
    """Return the model's input matrix for raw rows laid out as ``FEATURES``.

    Energy expenditure during exercise scales with duration times heart rate, body mass
    and age (Keytel et al. 2005), so the products carry most of the signal.
    """
    raw = np.asarray(raw, dtype=np.float64)
    age, height, weight = raw[:, 1], raw[:, 2], raw[:, 3]
    duration, heart_rate, body_temp = raw[:, 4], raw[:, 5], raw[:, 6]
    height_m = height / 100.0
    extra = np.column_stack(
        (
            weight / (height_m * height_m),
            duration * heart_rate,
            duration * body_temp,
            duration * weight,
            duration * age,
            heart_rate / age,
        )
    )
    return np.hstack((raw, extra))
