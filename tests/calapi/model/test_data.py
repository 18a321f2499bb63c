"""Loading every supported CSV layout, and the named errors for bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calapi.errors import DataError
from calapi.model.data import load_training_data, raw_matrix, read_rows
from calapi.model.features import FEATURES, TARGET

S5E5_HEADER = "id,Sex,Age,Height,Weight,Duration,Heart_Rate,Body_Temp,Calories"
EXERCISE_HEADER = "User_ID,Gender,Age,Height,Weight,Duration,Heart_Rate,Body_Temp"
GOOD_ROWS = ("1,male,25,180,75,30,120,40.5,200", "2,FEMALE,30,165,60,10,90,39.5,40")


def write(path: Path, header: str, *rows: str) -> Path:
    """Write a small CSV and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join((header, *rows)) + "\n", encoding="utf-8")
    return path


def exercise_pair(folder: Path, *, calories: bool = True) -> Path:
    """The original Kaggle pair (two users, listed in different orders); returns exercise.csv."""
    exercise = write(
        folder / "exercise.csv",
        EXERCISE_HEADER,
        "14733363,male,68,190,94,29,105,40.8",
        "14861698,Female,20,166,60,14,94,40.3",
    )
    if calories:
        write(folder / "calories.csv", "User_ID,Calories", "14861698,66", "14733363,231")
    return exercise


def test_s5e5_layout_loads_with_sex_normalised(tmp_path: Path) -> None:
    """An S5E5 train.csv loads as FEATURES + Calories with Sex as lower-case male/female."""
    path = write(tmp_path / "train.csv", S5E5_HEADER, *GOOD_ROWS)
    loaded = load_training_data(path)
    assert list(loaded.frame.columns) == [*FEATURES, TARGET]
    assert list(loaded.frame["Sex"]) == ["male", "female"]
    assert loaded.frame["Calories"].tolist() == [200.0, 40.0]
    assert loaded.source == str(path)
    assert loaded.synthetic is False


def test_exercise_csv_is_joined_with_calories_csv_beside_it(tmp_path: Path) -> None:
    """Given exercise.csv, calories.csv beside it is joined on User_ID, in exercise order."""
    loaded = load_training_data(exercise_pair(tmp_path))
    assert loaded.frame["Calories"].tolist() == [231.0, 66.0]
    assert list(loaded.frame["Sex"]) == ["male", "female"]


def test_calories_csv_path_finds_exercise_csv_beside_it(tmp_path: Path) -> None:
    """Given calories.csv, the features come from exercise.csv beside it; User_ID becomes id."""
    exercise_pair(tmp_path)
    rows = read_rows(tmp_path / "calories.csv")
    assert rows["id"].tolist() == [14733363, 14861698]
    assert rows["Calories"].tolist() == [231.0, 66.0]


def test_merged_exercise_file_loads(tmp_path: Path) -> None:
    """The exercise and calories columns merged into one file load as training data."""
    path = write(
        tmp_path / "merged.csv",
        f"{EXERCISE_HEADER},Calories",
        "14733363,male,68,190,94,29,105,40.8,231",
    )
    rows = read_rows(path, require_target=True)
    assert rows.columns.tolist() == ["id", *FEATURES, TARGET]
    assert rows.iloc[0]["id"] == 14733363
    assert rows.iloc[0]["Calories"] == 231.0


def test_headers_are_matched_case_insensitively(tmp_path: Path) -> None:
    """Lower-case headers and a gender column are understood."""
    path = write(tmp_path / "lower.csv", S5E5_HEADER.lower().replace("sex", "gender"), GOOD_ROWS[0])
    assert load_training_data(path).frame.iloc[0]["Sex"] == "male"


def test_read_rows_without_calories_creates_ids(tmp_path: Path) -> None:
    """A feature-only CSV without id reads as rows numbered 0..n-1 and no Calories."""
    path = write(tmp_path / "test.csv", "Sex,Age,Height,Weight,Duration,Heart_Rate,Body_Temp")
    path.write_text(path.read_text() + "male,25,180,75,30,120,40.5\nfemale,30,165,60,10,90,39.5\n")
    rows = read_rows(path)
    assert rows["id"].tolist() == [0, 1]
    assert TARGET not in rows.columns


def test_read_rows_requiring_target_explains_the_simulator_needs_it(tmp_path: Path) -> None:
    """A CSV without Calories is refused when feedback needs the truth, naming file and column."""
    path = write(
        tmp_path / "test.csv", S5E5_HEADER.removesuffix(",Calories"), "1,male,25,180,75,30,120,40.5"
    )
    with pytest.raises(DataError, match="simulator needs Calories") as caught:
        read_rows(path, require_target=True)
    assert str(path) in str(caught.value)


def test_exercise_without_calories_reads_for_prediction_only(tmp_path: Path) -> None:
    """exercise.csv alone serves rows to predict on when no truth is needed."""
    rows = read_rows(exercise_pair(tmp_path, calories=False))
    assert len(rows) == 2
    assert TARGET not in rows.columns


def test_synthetic_source_uses_the_generator() -> None:
    """source "synthetic" yields the requested rows, tagged as synthetic."""
    loaded = load_training_data("Synthetic", synthetic_rows=50, synthetic_seed=3)
    assert len(loaded.frame) == 50
    assert loaded.synthetic is True
    assert "synthetic" in loaded.source


@pytest.mark.parametrize(
    ("cell", "column", "says"),
    [
        ("abc", "Weight", "'abc' is not a number"),
        ("", "Weight", "empty or NaN"),
        ("NaN", "Heart_Rate", "empty or NaN"),
        ("inf", "Body_Temp", "'inf' is infinite"),
        ("-5", "Weight", "outside what a body can be"),
        ("500", "Age", "outside what a body can be"),
        ("robot", "Sex", "'robot' is neither male nor female"),
        ("-1", "Calories", "outside what a body can be"),
    ],
)
def test_bad_cell_names_file_column_and_row(
    tmp_path: Path, cell: str, column: str, says: str
) -> None:
    """A bad value raises DataError naming the file, the column and the first bad row."""
    bad = dict(zip(S5E5_HEADER.split(","), GOOD_ROWS[1].split(","), strict=True))
    bad[column] = cell
    path = write(tmp_path / "bad.csv", S5E5_HEADER, GOOD_ROWS[0], ",".join(bad.values()))
    with pytest.raises(DataError) as caught:
        load_training_data(path)
    message = str(caught.value)
    assert f"{path}, column {column}, row 2 (line 3)" in message
    assert says in message


def test_missing_column_names_file_and_column(tmp_path: Path) -> None:
    """A file without the Weight column is refused, naming the file and Weight."""
    header = S5E5_HEADER.replace("Weight,", "")
    path = write(tmp_path / "short.csv", header, "1,male,25,180,30,120,40.5,200")
    with pytest.raises(DataError, match=r"short\.csv has no Weight column"):
        load_training_data(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    """A path that does not exist raises DataError naming it."""
    with pytest.raises(DataError, match=r"nowhere\.csv does not exist"):
        load_training_data(tmp_path / "nowhere.csv")


def test_empty_file_is_refused(tmp_path: Path) -> None:
    """An empty file raises DataError naming it instead of a pandas error."""
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv is not a readable CSV"):
        load_training_data(path)


def test_exercise_without_calories_csv_is_refused_for_training(tmp_path: Path) -> None:
    """Training from exercise.csv with no calories.csv beside it says what to add."""
    with pytest.raises(
        DataError, match=r"exercise\.csv has no Calories column and no calories\.csv"
    ):
        load_training_data(exercise_pair(tmp_path, calories=False))


def test_exercise_row_without_calories_row_is_named(tmp_path: Path) -> None:
    """A User_ID missing from calories.csv is named with its exercise.csv row."""
    exercise = exercise_pair(tmp_path)
    write(tmp_path / "calories.csv", "User_ID,Calories", "14861698,66")
    with pytest.raises(DataError, match=r"column User_ID, row 1 .*14733363 has no row"):
        load_training_data(exercise)


def test_raw_matrix_lays_out_features_with_sex_codes() -> None:
    """raw_matrix encodes Sex as 1/0 (any case, Gender alias) and keeps FEATURES order."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            "Gender": ["Male", "female"],
            "Age": [25, 30],
            "Height": [180, 165],
            "Weight": [75, 60],
            "Duration": [30, 10],
            "Heart_Rate": [120, 90],
            "Body_Temp": [40.5, 39.5],
        }
    )
    matrix = raw_matrix(frame)
    assert matrix.dtype == np.float64
    assert matrix.tolist() == [[1, 25, 180, 75, 30, 120, 40.5], [0, 30, 165, 60, 10, 90, 39.5]]
