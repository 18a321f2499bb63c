"""What /predict and /feedback do, independent of HTTP; create_app hands each its parts."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from prometheus_client import Histogram, Summary

from calapi.serving.batching import MicroBatcher
from calapi.serving.parsing import ParsedRows
from calapi.serving.predlog import Outcome, PredictionLog, UnknownIdError
from calapi.serving.schemas import RowId

# How long /feedback keeps asking for an id no process has written yet: the log's settle time
# plus this many times the first lookup's own trip through the log, at most the maximum.
PATIENCE_TRIPS: Final = 8
MAX_PATIENCE_SECONDS: Final = 2.0


@dataclass(frozen=True, slots=True)
class Served:
    """Predictions for one request, with the ids they were stored under."""

    ids: list[RowId]
    calories: list[float]
    model_version: str


def log_key(row_id: RowId) -> str:
    """The prediction log's key of an id: ``1`` and ``"1"`` are different ids, so integers
    are keyed ``#1``; a string is its own key, with one more ``#`` when it starts with one
    (``"#1"`` is keyed ``##1``), so no string meets an integer's key."""
    if isinstance(row_id, str):
        return f"#{row_id}" if row_id.startswith("#") else row_id
    return f"#{row_id}"


def id_factory() -> Callable[[], str]:
    """Ids for rows sent without one: unique to this process, short, never reused."""
    prefix = secrets.token_hex(4)
    counter = itertools.count(1)
    return lambda: f"{prefix}-{next(counter)}"


class Predictions:
    """Predicts rows (micro-batched) and records each prediction in the log for its feedback."""

    def __init__(
        self, batcher: MicroBatcher, log: PredictionLog, new_id: Callable[[], str]
    ) -> None:
        self._batcher = batcher
        self._log = log
        self._new_id = new_id

    async def predict(self, rows: ParsedRows) -> Served:
        """Predict; raises ModelUnavailableError when no model is loaded."""
        calories, model = await self._batcher.predict(rows.raw)
        ids = [self._new_id() if row_id is None else row_id for row_id in rows.ids]
        values = calories.tolist()
        self._log.record(list(map(log_key, ids)), values, rows.raw, model.version)
        return Served(ids, values, model.version)


class Feedback:
    """Matches ground truth with its prediction, made by this process or any other."""

    def __init__(self, log: PredictionLog, lag: Histogram, errors: Summary) -> None:
        self._log = log
        self._lag = lag
        self._errors = errors

    async def answer(self, row_id: RowId, actual: float) -> Outcome:
        """Raises UnknownIdError (unknown or expired id), AlreadyAnsweredError or
        LogUnavailableError.

        An id unknown at first is asked for again: another process may have made the
        prediction a moment ago and not written it yet. It asks once the log has settled,
        then at doubling intervals for as long as a write can take now, judged by this
        lookup's own trip through the log (on an idle machine about one settle time; on a busy
        one, where the other process's writer waits for a core too, up to
        MAX_PATIENCE_SECONDS).
        """
        key = log_key(row_id)
        started = time.monotonic()
        try:
            outcome = await self._log.answer(key, actual)
        except UnknownIdError:
            outcome = await self._ask_again(key, actual, time.monotonic() - started)
        self._lag.observe(outcome.lag_seconds)
        self._errors.observe(outcome.squared_log_error)
        return outcome

    async def _ask_again(self, key: str, actual: float, trip: float) -> Outcome:
        *retries, last = ask_delays(self._log.settle_seconds, trip)
        for delay in retries:
            await asyncio.sleep(delay)
            with contextlib.suppress(UnknownIdError):
                return await self._log.answer(key, actual)
        await asyncio.sleep(last)
        return await self._log.answer(key, actual)


def ask_delays(settle: float, trip: float) -> list[float]:
    """The waits before each further ask for an unknown id, given the log's settle time and
    the first lookup's trip: the settle time, then doubling, until the patience is spent
    (the settle time plus PATIENCE_TRIPS trips, at most MAX_PATIENCE_SECONDS)."""
    patience = max(settle, min(settle + PATIENCE_TRIPS * trip, MAX_PATIENCE_SECONDS))
    delays: list[float] = []
    waited, delay = 0.0, settle
    while delay > 0 and waited < patience - 1e-9:
        delays.append(delay)
        waited += delay
        delay = min(2 * delay, patience - waited)
    return delays or [0.0]  # a log that settles at once: ask once more, now
