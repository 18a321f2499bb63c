"""The run's requests, built ahead of the sending loop in vectorised chunks.

Request ``i`` is due ``i / rps`` seconds after the start. Its rows get drift for that time,
ids unique to the run, and a decision (seeded) on whether their truth is sent back.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np
import orjson

from calapi.model.features import NUMERIC_FEATURES, FloatArray
from calopsctl.simulator.drift import apply_drift, ramp
from calopsctl.simulator.rows import RowPool
from calopsctl.simulator.settings import SimulationSettings

# Requests prepared per chunk: small enough to keep the loop's pauses short.
CHUNK_REQUESTS: Final = 512


@dataclass(frozen=True)
class PlannedRequest:
    """One /predict call: when it is due, its body, and what to do with the answers."""

    index: int
    due: float  # seconds after the start
    body: bytes
    ids: tuple[str, ...]
    truth: FloatArray  # per row; NaN when unknown
    feedback: np.ndarray  # per row: send the truth back?


class RequestPlan:
    """Yields the run's requests in order; chunks are built as the loop reaches them."""

    def __init__(self, settings: SimulationSettings, pool: RowPool, *, run_id: str = "") -> None:
        self.settings = settings
        self.pool = pool
        self.run_id = run_id or f"sim-{secrets.token_hex(4)}"

    def __len__(self) -> int:
        return self.settings.requests

    def __iter__(self) -> Iterator[PlannedRequest]:
        for first in range(0, len(self), CHUNK_REQUESTS):
            yield from self.chunk(first, min(first + CHUNK_REQUESTS, len(self)))

    def chunk(self, first: int, stop: int) -> list[PlannedRequest]:
        """Requests ``first .. stop - 1``."""
        s = self.settings
        batch = s.batch_size
        requests = np.arange(first, stop)
        due = requests / s.rps
        row_due = np.repeat(due, batch)
        block = self.pool.take(first * batch, len(row_due))
        block = apply_drift(block, ramp(row_due, s.drift_start_s, s.drift_full_s), s.drift)
        rng = np.random.default_rng([s.seed, first])
        send_back = (rng.random(len(row_due)) < s.feedback_fraction) & ~np.isnan(block.truth)
        ids = [f"{self.run_id}-{k}" for k in range(first * batch, stop * batch)]
        rows = _row_dicts(ids, block.sex, block.numeric)
        return [
            PlannedRequest(
                index=int(i),
                due=float(due[j]),
                body=_body(rows[j * batch : (j + 1) * batch]),
                ids=tuple(ids[j * batch : (j + 1) * batch]),
                truth=block.truth[j * batch : (j + 1) * batch],
                feedback=send_back[j * batch : (j + 1) * batch],
            )
            for j, i in enumerate(requests)
        ]


def _row_dicts(ids: list[str], sex: np.ndarray, numeric: FloatArray) -> list[dict[str, object]]:
    values = np.round(numeric, 2).tolist()
    return [
        {"id": row_id, "Sex": str(s), **dict(zip(NUMERIC_FEATURES, row, strict=True))}
        for row_id, s, row in zip(ids, sex, values, strict=True)
    ]


def _body(rows: list[dict[str, object]]) -> bytes:
    # One row goes as a bare object (the seed's curl shape); more as {"instances": [...]}.
    return orjson.dumps(rows[0] if len(rows) == 1 else {"instances": rows})
