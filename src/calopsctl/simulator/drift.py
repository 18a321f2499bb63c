"""Drift injected into the traffic, as a pure function of each row's scheduled time.

Covariate drift moves the inputs (heavier people, longer and harder sessions) and
recomputes the truth with the same physiology the synthetic data uses, keeping each
row's own deviation from it, so the shifted rows stay physically consistent. Concept
drift keeps the inputs and scales the truth: the same session now burns more.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

import numpy as np

from calapi.model.features import NUMERIC_FEATURES, PLAUSIBLE, FloatArray
from calopsctl.simulator.settings import DriftKind

# Multiplicative shift of each input at full strength; Duration and Heart_Rate leave the
# training range, so the model's error grows and the out-of-range counters move.
COVARIATE_SHIFT: Final = {"Weight": 1.20, "Duration": 1.50, "Heart_Rate": 1.12}
# At full strength the same inputs burn this much more.
CONCEPT_SCALE: Final = 1.30
# Below this the physiology is too close to zero for a stable ratio.
MIN_PHYSIOLOGY_KCAL: Final = 0.5


@dataclass(frozen=True)
class RowBlock:
    """Rows as arrays: Sex strings, NUMERIC_FEATURES columns, truth (NaN when unknown)."""

    sex: np.ndarray
    numeric: FloatArray
    truth: FloatArray

    def __len__(self) -> int:
        return int(self.numeric.shape[0])

    def take(self, index: np.ndarray) -> RowBlock:
        """The rows at ``index``, in its order."""
        return RowBlock(sex=self.sex[index], numeric=self.numeric[index], truth=self.truth[index])


def ramp(times: FloatArray, start: float, full: float) -> FloatArray:
    """Drift strength in [0, 1]: 0 before ``start``, linear to 1 at ``full``, then 1."""
    span = max(full - start, 1e-9)
    return np.clip((np.asarray(times, dtype=np.float64) - start) / span, 0.0, 1.0)


def apply_drift(block: RowBlock, strength: FloatArray, kind: DriftKind) -> RowBlock:
    """``block`` with drift of ``kind`` applied at per-row ``strength`` (0..1)."""
    if kind.covariate:
        block = _shift_covariates(block, strength)
    if kind.concept:
        block = replace(block, truth=block.truth * (1.0 + (CONCEPT_SCALE - 1.0) * strength))
    return block


def _shift_covariates(block: RowBlock, strength: FloatArray) -> RowBlock:
    numeric = block.numeric.copy()
    for name, factor in COVARIATE_SHIFT.items():
        column = NUMERIC_FEATURES.index(name)
        low, high = PLAUSIBLE[name]
        shifted = numeric[:, column] * (1.0 + (factor - 1.0) * strength)
        numeric[:, column] = np.clip(np.round(shifted, 1), low, high)
    before = np.maximum(physiology(block.sex, block.numeric), MIN_PHYSIOLOGY_KCAL)
    after = physiology(block.sex, numeric)
    return replace(block, numeric=numeric, truth=block.truth * after / before)


def physiology(sex: np.ndarray, numeric: FloatArray) -> FloatArray:
    """Noise-free kcal of the synthetic generator's equation for these rows."""
    from calapi.model.features import encode_sex
    from calapi.model.synthetic import true_calories

    codes = np.array([encode_sex(value) for value in sex], dtype=np.float64)
    return true_calories(np.column_stack((codes, numeric)))
