"""Where the simulated rows come from: a CSV in any layout the trainer reads, or the generator.

Everything is prepared up front and vectorised (a shuffled pool, cycled through), so the
sending loop only takes the next ready-made request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np

from calapi.errors import DataError
from calapi.model.features import NUMERIC_FEATURES, TARGET
from calopsctl.simulator.drift import RowBlock

if TYPE_CHECKING:
    import pandas as pd

# Enough distinct synthetic rows for variety; longer runs cycle through them.
MAX_SYNTHETIC_POOL: Final = 100_000


@dataclass(frozen=True)
class RowPool:
    """A shuffled pool of rows, read in order and cycled; ``source`` says where from."""

    rows: RowBlock
    source: str

    @property
    def has_truth(self) -> bool:
        return not bool(np.isnan(self.rows.truth).any())

    def take(self, first: int, n: int) -> RowBlock:
        """Rows ``first .. first + n - 1`` of the endless cycle over the pool."""
        index = np.arange(first, first + n) % len(self.rows)
        return self.rows.take(index)


def load_pool(data: Path | None, *, rows_needed: int, seed: int, need_truth: bool) -> RowPool:
    """The rows of ``data`` (truth required when ``need_truth``) or synthetic ones, shuffled."""
    if data is None:
        from calapi.model.synthetic import columns

        # numpy columns, not a DataFrame: the simulator never imports pandas for them.
        block = _block(columns(min(rows_needed, MAX_SYNTHETIC_POOL), seed))
        source = f"synthetic (seed {seed})"
    else:
        from calapi.model.data import read_rows

        block = _block(read_rows(data, require_target=need_truth))
        source = str(data)
    if len(block) == 0:
        raise DataError(f"{data} has no data rows; pass a CSV with at least one row.")
    order = np.random.default_rng(seed).permutation(len(block))
    return RowPool(rows=block.take(order), source=source)


def _block(table: pd.DataFrame | Mapping[str, np.ndarray]) -> RowBlock:
    """A DataFrame's or the generator's columns as a RowBlock (truth NaN without Calories)."""
    numeric = np.column_stack([np.asarray(table[name], np.float64) for name in NUMERIC_FEATURES])
    truth = (
        np.asarray(table[TARGET], np.float64) if TARGET in table else np.full(len(numeric), np.nan)
    )
    return RowBlock(sex=np.asarray(table["Sex"], object), numeric=numeric, truth=truth)
