"""What /predict and /feedback do, independent of HTTP; create_app hands each its parts."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Histogram

from calapi.serving.batching import MicroBatcher
from calapi.serving.feedback import Outcome, PendingStore, RollingRmsle
from calapi.serving.parsing import ParsedRows
from calapi.serving.schemas import RowId


@dataclass(frozen=True, slots=True)
class Served:
    """Predictions for one request, with the ids they were stored under."""

    ids: list[RowId]
    calories: list[float]
    model_version: str


def id_factory() -> Callable[[], str]:
    """Ids for rows sent without one: unique to this process, short, never reused."""
    prefix = secrets.token_hex(4)
    counter = itertools.count(1)
    return lambda: f"{prefix}-{next(counter)}"


class Predictions:
    """Predicts rows (micro-batched) and remembers each prediction for its feedback."""

    def __init__(
        self, batcher: MicroBatcher, store: PendingStore, new_id: Callable[[], str]
    ) -> None:
        self._batcher = batcher
        self._store = store
        self._new_id = new_id

    async def predict(self, rows: ParsedRows) -> Served:
        """Predict; raises ModelUnavailableError when no model is loaded."""
        calories, model = await self._batcher.predict(rows.raw)
        ids = [self._new_id() if row_id is None else row_id for row_id in rows.ids]
        values = calories.tolist()
        self._store.add_many(list(map(str, ids)), values, model.version)
        return Served(ids, values, model.version)


class Feedback:
    """Matches ground truth with its prediction and feeds the rolling RMSLE."""

    def __init__(self, store: PendingStore, rolling: RollingRmsle, lag: Histogram) -> None:
        self._store = store
        self._rolling = rolling
        self._lag = lag

    def answer(self, row_id: RowId, actual: float) -> Outcome:
        """Raises UnknownIdError (unknown or expired id) or AlreadyAnsweredError."""
        outcome = self._store.answer(str(row_id), actual)
        self._rolling.add(outcome.squared_log_error)
        self._lag.observe(outcome.lag_seconds)
        return outcome
