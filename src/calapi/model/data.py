"""Loading exercise data from CSV files or the synthetic generator, with named errors.

Supported layouts (column names are matched case-insensitively, ``Gender`` is an alias
of ``Sex``):

- Kaggle Playground S5E5: ``id,Sex,Age,Height,Weight,Duration,Heart_Rate,Body_Temp,Calories``
  (``Calories`` absent in its ``test.csv``);
- the original Kaggle "calories burnt" pair: ``exercise.csv``
  (``User_ID,Gender,Age,...,Body_Temp``) joined on ``User_ID`` with the ``calories.csv``
  (``User_ID,Calories``) found beside it; either file of the pair may be given;
- the two already merged into one file.

Every rejected file raises DataError naming the file, the column and the first bad row
(rows count data rows from 1; the line number adds the header).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd

from calapi.errors import DataError
from calapi.model.features import (
    FEATURES,
    NUMERIC_FEATURES,
    PLAUSIBLE,
    SEX_CODES,
    TARGET,
    UNITS,
    FloatArray,
    sex_labels,
)
from calapi.model.synthetic import DEFAULT_NOISE, generate

SYNTHETIC: Final = "synthetic"
EXERCISE_FILE: Final = "exercise.csv"
CALORIES_FILE: Final = "calories.csv"
USER_ID: Final = "User_ID"
# How rows that do not come from a file are named in errors.
INPUT: Final = "input"

# Far above any human effort (a full day of ultra-endurance racing stays under this).
CALORIES_BOUNDS: Final = (0.0, 20_000.0)

_CANONICAL: Final = {name.lower(): name for name in ("id", USER_ID, "Gender", *FEATURES, TARGET)}


@dataclass(frozen=True)
class LoadedData:
    """Training rows (``FEATURES`` + ``Calories``, Sex as "male"/"female") and where from."""

    frame: pd.DataFrame
    source: str
    synthetic: bool


def load_training_data(
    source: str | Path,
    *,
    synthetic_rows: int = 100_000,
    synthetic_seed: int = 42,
    synthetic_noise: str | float = DEFAULT_NOISE,
) -> LoadedData:
    """Load training rows from ``"synthetic"`` or a CSV path in any supported layout."""
    if str(source).strip().lower() == SYNTHETIC:
        frame = generate(synthetic_rows, synthetic_seed, noise=synthetic_noise)
        frame = frame[[*FEATURES, TARGET]]
        description = (
            f"synthetic (Keytel et al. 2005; rows={synthetic_rows}, seed={synthetic_seed}, "
            f"noise={synthetic_noise})"
        )
        return LoadedData(frame, description, synthetic=True)
    path = Path(source)
    rows = _read(path, needs_target="training needs the Calories target")
    return LoadedData(rows[[*FEATURES, TARGET]], str(path), synthetic=False)


def read_rows(path: str | Path, *, require_target: bool = False) -> pd.DataFrame:
    """Rows of any supported CSV: ``id`` (kept, ``User_ID``, or 0..n-1), FEATURES[, Calories]."""
    reason = "the simulator needs Calories to send feedback" if require_target else None
    return _read(Path(path), needs_target=reason)


def sex_codes(frame: pd.DataFrame, *, where: str = INPUT) -> FloatArray:
    """The ``Sex`` (or ``Gender``) column as 1.0 male / 0.0 female; DataError on any other value."""
    column = _sex_column(frame, where)
    text = frame[column].astype(str).str.strip().str.lower()
    codes: FloatArray = text.map(SEX_CODES).to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(np.isnan(codes))
    if bad.size:
        row = int(bad[0])
        raise DataError(
            f"{_at(where, column, row)}: {str(frame[column].iloc[row])!r} is neither male "
            "nor female; use 'male' or 'female'."
        )
    return codes


def raw_matrix(frame: pd.DataFrame, *, where: str = INPUT) -> FloatArray:
    """Rows laid out as ``FEATURES`` (Sex 1.0/0.0), float64, checked finite and plausible."""
    columns = [sex_codes(frame, where=where)]
    for name in NUMERIC_FEATURES:
        _require(frame, name, where)
        columns.append(_numeric(frame, name, where, PLAUSIBLE[name]))
    return np.column_stack(columns)


def _read(path: Path, *, needs_target: str | None) -> pd.DataFrame:
    table = _read_csv(path)
    if set(table.columns) >= {USER_ID, TARGET} and "Age" not in table.columns:
        # calories.csv given: the features live in exercise.csv beside it.
        path, table = path.with_name(EXERCISE_FILE), _join(path.with_name(EXERCISE_FILE), path)
    elif TARGET not in table.columns and USER_ID in table.columns:
        calories = path.with_name(CALORIES_FILE)
        if calories.is_file():
            table = _join(path, calories)
        elif needs_target:
            raise DataError(
                f"{path} has no Calories column and no {CALORIES_FILE} beside it, but "
                f"{needs_target}; put {CALORIES_FILE} (User_ID,Calories) in the same folder "
                "or pass a merged file."
            )
    if needs_target and TARGET not in table.columns:
        raise DataError(
            f"{path} has no Calories column, but {needs_target}; "
            "pass a file with a Calories column."
        )
    return _normalise(table, str(path))


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"Data file {path} does not exist; pass an existing CSV or 'synthetic'.")
    try:
        table = pd.read_csv(path, skipinitialspace=True)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path} is not a readable CSV ({reason}); check the file.") from None
    table.columns = [_CANONICAL.get(str(c).strip().lower(), str(c).strip()) for c in table.columns]
    return table


def _join(exercise_path: Path, calories_path: Path) -> pd.DataFrame:
    exercise = _read_csv(exercise_path)
    calories = _read_csv(calories_path)
    for frame, path, column in (
        (exercise, exercise_path, USER_ID),
        (calories, calories_path, TARGET),
    ):
        _require(frame, USER_ID, str(path))
        _require(frame, column, str(path))
    _numeric(calories, TARGET, str(calories_path), CALORIES_BOUNDS)
    keys = calories[USER_ID].astype(str).str.strip()
    duplicated = np.flatnonzero(keys.duplicated().to_numpy())
    if duplicated.size:
        row = int(duplicated[0])
        raise DataError(f"{_at(str(calories_path), USER_ID, row)}: {keys.iloc[row]} is repeated.")
    by_id = pd.Series(calories[TARGET].to_numpy(), index=keys.to_numpy())
    wanted = exercise[USER_ID].astype(str).str.strip()
    missing = np.flatnonzero(~wanted.isin(by_id.index).to_numpy())
    if missing.size:
        row = int(missing[0])
        raise DataError(
            f"{_at(str(exercise_path), USER_ID, row)}: {wanted.iloc[row]} has no row in "
            f"{calories_path}; add it or remove the exercise row."
        )
    joined = exercise.drop(columns=[TARGET], errors="ignore")
    joined[TARGET] = by_id.loc[wanted.to_numpy()].to_numpy()
    return joined


def _normalise(table: pd.DataFrame, where: str) -> pd.DataFrame:
    raw = raw_matrix(table, where=where)
    frame = pd.DataFrame({"id": _ids(table)})
    frame["Sex"] = sex_labels(raw[:, 0])
    for index, name in enumerate(NUMERIC_FEATURES, start=1):
        frame[name] = raw[:, index]
    if TARGET in table.columns:
        frame[TARGET] = _numeric(table, TARGET, where, CALORIES_BOUNDS)
    return frame


def _ids(table: pd.DataFrame) -> pd.Series | np.ndarray:
    for column in ("id", USER_ID):
        if column in table.columns:
            return table[column].reset_index(drop=True)
    return np.arange(len(table), dtype=np.int64)


def _numeric(
    frame: pd.DataFrame, column: str, where: str, bounds: tuple[float, float]
) -> FloatArray:
    cells = frame[column]
    values: FloatArray = pd.to_numeric(cells, errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan
    )
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        row = int(bad[0])
        raise DataError(f"{_at(where, column, row)}: {_describe(cells.iloc[row], values[row])}.")
    low, high = bounds
    outside = np.flatnonzero((values < low) | (values > high))
    if outside.size:
        row = int(outside[0])
        unit = UNITS.get(column, "")
        raise DataError(
            f"{_at(where, column, row)}: {values[row]:g} is outside what a body can be "
            f"({low:g} to {high:g} {unit}); fix or remove the row."
        )
    return values


def _describe(cell: object, value: float) -> str:
    if np.isinf(value):
        return f"{str(cell)!r} is infinite; fix or remove the row"
    if cell is None or (isinstance(cell, float) and np.isnan(cell)) or str(cell).strip() == "":
        return "the value is empty or NaN; fill it in or remove the row"
    if str(cell).strip().lower() == "nan":
        return "the value is NaN; fill it in or remove the row"
    return f"{cell!r} is not a number; fix or remove the row"


def _sex_column(frame: pd.DataFrame, where: str) -> str:
    for column in ("Sex", "Gender"):
        if column in frame.columns:
            return column
    raise DataError(f"{where} has no Sex (or Gender) column; add one with 'male'/'female'.")


def _require(frame: pd.DataFrame, column: str, where: str) -> None:
    if column not in frame.columns:
        found = ", ".join(str(c) for c in frame.columns)
        raise DataError(f"{where} has no {column} column (found: {found}); add it.")


def _at(where: str, column: str, row: int) -> str:
    if where == INPUT:
        return f"{where}, column {column}, row {row + 1}"
    return f"{where}, column {column}, row {row + 1} (line {row + 2})"
