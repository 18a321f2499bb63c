"""Model files: hashing, atomic sets, and loading (old module names included) with checks."""

from __future__ import annotations

import hashlib
import pickle
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from calapi.errors import ModelError
from calapi.model.artifact import (
    checked_predictor,
    file_sha256,
    load_model,
    read_model,
    staged_files,
)
from calapi.model.predictor import PlainPredictor, probe_rows


def test_file_sha256_is_the_hash_of_the_bytes(tmp_path: Path) -> None:
    """file_sha256 equals hashlib's digest of the whole file, across read blocks."""
    path = tmp_path / "blob"
    data = bytes(range(256)) * 5000
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_staged_files_move_every_file_into_place(tmp_path: Path) -> None:
    """On success each final file holds what was written to its temp, readable by others."""
    finals = (tmp_path / "a.bin", tmp_path / "b.json")
    with staged_files(tmp_path, finals) as temps:
        for temp, text in zip(temps, ("one", "two"), strict=True):
            temp.write_text(text, encoding="utf-8")
    assert [p.read_text(encoding="utf-8") for p in finals] == ["one", "two"]
    assert {p.name for p in tmp_path.iterdir()} == {"a.bin", "b.json"}
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in finals)


def test_a_failed_stage_moves_nothing_and_leaves_no_temp(tmp_path: Path) -> None:
    """An error before the end keeps the previous files and removes every temp."""
    final = tmp_path / "a.bin"
    final.write_text("previous", encoding="utf-8")

    def write_then_fail() -> None:
        with staged_files(tmp_path, (final, tmp_path / "b")) as temps:
            temps[0].write_text("new", encoding="utf-8")
            raise RuntimeError("fit failed")

    with pytest.raises(RuntimeError, match="fit failed"):
        write_then_fail()
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    assert final.read_text(encoding="utf-8") == "previous"


def test_an_unreadable_file_is_a_model_error(tmp_path: Path) -> None:
    """Bytes that are not a pickle give one sentence naming the file (pickles allowed)."""
    path = tmp_path / "model.joblib"
    path.write_bytes(b"this is not a pickle")
    with pytest.raises(ModelError, match=r"model\.joblib is not a loadable model"):
        read_model(path, allow_pickle=True)


def test_an_object_without_predict_is_refused(tmp_path: Path) -> None:
    """A pickled object that cannot predict is named by its type."""
    path = tmp_path / "model.joblib"
    joblib.dump({"not": "a model"}, path)
    with pytest.raises(ModelError, match="holds a dict, which cannot predict"):
        load_model(path, allow_pickle=True)


def test_a_model_that_fails_on_valid_rows_is_refused(tmp_path: Path) -> None:
    """An estimator whose predict raises on the FEATURES rows is refused in one sentence."""
    path = tmp_path / "model.joblib"
    joblib.dump(LinearRegression().fit(np.zeros((3, 2)), np.zeros(3)), path)
    with pytest.raises(ModelError, match="fails to predict a valid row"):
        load_model(path, allow_pickle=True)


def test_the_checked_predictor_is_the_fast_one_for_the_trainers_model(estimator: Any) -> None:
    """checked_predictor picks the fast path for the trainer's estimator."""
    assert checked_predictor(estimator, "test").kind == "fast"


def test_a_model_pickled_before_the_move_still_loads(
    v1_estimator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pickle naming calapi.pipeline (pre-move, first layout) loads, predicts alike and
    gets the fast path."""
    estimator = v1_estimator
    modern = pickle.dumps(estimator, protocol=0)
    assert b"ccalapi.model.pipeline\nCalorieFeatures\n" in modern
    old = modern.replace(b"ccalapi.model.pipeline\n", b"ccalapi.pipeline\n")
    path = tmp_path / "model.joblib"
    path.write_bytes(old)
    monkeypatch.delitem(sys.modules, "calapi.pipeline", raising=False)
    with pytest.raises(ModuleNotFoundError, match=r"calapi\.pipeline"):
        pickle.loads(old)  # our own bytes: proves the old name is really in them
    loaded = load_model(path, allow_pickle=True)
    rows = probe_rows(None, 8)
    np.testing.assert_array_equal(PlainPredictor(loaded)(rows), PlainPredictor(estimator)(rows))
    assert checked_predictor(loaded, str(path)).kind == "fast"
