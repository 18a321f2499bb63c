"""The data contract: feature names, units, plausibility limits and feature engineering.

Pure numpy, no I/O: the trainer, the API's hot path and the simulator all share it.
Raw rows are encoded as a float matrix with the columns of ``FEATURES`` in order,
``Sex`` as 1.0 for male and 0.0 for female.

The model's physics is Keytel et al. (2005), "Prediction of energy expenditure from heart
rate monitoring during submaximal exercise", J Sports Sci 23(3):289-297, the equations
without VO2max (kJ/min):

    male:   EE = -55.0969 + 0.6309 HR + 0.1988 W + 0.2017 A
    female: EE = -20.4022 + 0.4472 HR - 0.1263 W + 0.0740 A

converted to kcal (1 kcal = 4.184 kJ), floored at a resting rate and multiplied by the
duration in minutes. ``keytel_terms`` is the one place it is computed: for the model's
features, the baseline ``calops train`` reports, the synthetic generator, and (compiled by
numba) the API's small-batch predict.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

FEATURES: Final = ("Sex", "Age", "Height", "Weight", "Duration", "Heart_Rate", "Body_Temp")
NUMERIC_FEATURES: Final = FEATURES[1:]
TARGET: Final = "Calories"
# Optional column of training rows: how much each row counts in the fit (default 1).
SAMPLE_WEIGHT: Final = "sample_weight"
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

KJ_PER_KCAL: Final = 4.184
# (intercept, heart rate, weight, age) coefficients of EE in kJ/min.
KEYTEL_MALE: Final = (-55.0969, 0.6309, 0.1988, 0.2017)
KEYTEL_FEMALE: Final = (-20.4022, 0.4472, -0.1263, 0.0740)
# Keytel's equations were fitted on exercise heart rates; near rest they can go
# negative, so expenditure is floored at roughly a resting metabolic rate.
RESTING_KCAL_PER_MIN: Final = 1.0

# The model's input: the raw measures and the Keytel terms. The trees learn a correction to
# ``Keytel_log1p_kcal`` (``BASELINE_COLUMN``), which the model adds back in log space.
MODEL_FEATURES: Final = (*FEATURES, "Keytel_log_kcal_per_min", "Keytel_log1p_kcal")
BASELINE_COLUMN: Final = len(MODEL_FEATURES) - 1

# The first model's features (calapi.model.pipeline.CalorieFeatures): models trained before
# the Keytel baseline still load and serve with them.
V1_FEATURES: Final = (
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


def keytel_terms(
    sex: Any, age: Any, weight: Any, duration: Any, heart_rate: Any
) -> tuple[Any, Any]:
    """Keytel's log kcal/min and log1p(kcal) for a session (sex 1.0 male, 0.0 female).

    Elementwise on floats or numpy arrays alike, and plain enough for numba to compile.
    """
    female = KEYTEL_FEMALE[0] + KEYTEL_FEMALE[1] * heart_rate
    female = female + KEYTEL_FEMALE[2] * weight + KEYTEL_FEMALE[3] * age
    male = KEYTEL_MALE[0] + KEYTEL_MALE[1] * heart_rate
    male = male + KEYTEL_MALE[2] * weight + KEYTEL_MALE[3] * age
    per_min = np.maximum((female + sex * (male - female)) / KJ_PER_KCAL, RESTING_KCAL_PER_MIN)
    return np.log(per_min), np.log1p(per_min * duration)


def model_features(raw: FloatArray) -> FloatArray:
    """The model's input matrix (``MODEL_FEATURES``) for raw rows laid out as ``FEATURES``."""
    raw = np.asarray(raw, dtype=np.float64)
    log_rate, log_kcal = keytel_terms(raw[:, 0], raw[:, 1], raw[:, 3], raw[:, 4], raw[:, 5])
    return np.column_stack((raw, log_rate, log_kcal))


def keytel_kcal(raw: FloatArray) -> FloatArray:
    """Keytel's equations alone, in kcal per raw row: the baseline a model must beat."""
    raw = np.asarray(raw, dtype=np.float64)
    _, log_kcal = keytel_terms(raw[:, 0], raw[:, 1], raw[:, 3], raw[:, 4], raw[:, 5])
    result: FloatArray = np.expm1(log_kcal)
    return result


def engineer_v1(raw: FloatArray) -> FloatArray:
    """The first model's input matrix (``V1_FEATURES``) for raw rows laid out as ``FEATURES``.

    Energy expenditure during exercise scales with duration times heart rate, body mass
    and age (Keytel et al. 2005); these products were its approximation of that.
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
