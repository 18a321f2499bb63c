"""Fixtures shared by the model tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import pytest


@pytest.fixture(scope="session")
def estimator(trained_model_dir: Path) -> Any:
    """The trainer's fitted estimator, loaded once."""
    return joblib.load(trained_model_dir / "model.joblib")
