"""Predictions awaiting ground truth, and the exact rolling RMSLE of the feedback received.

Both live on the event loop's thread (the API's only writer), so they need no locks.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Clock = Callable[[], float]
EvictionReason = Literal["capacity", "age"]


@dataclass(slots=True)
class Pending:
    """One prediction that may still receive its true value."""

    predicted: float
    at: float
    model_version: str
    answered: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of matching feedback with its prediction."""

    predicted: float
    actual: float
    lag_seconds: float
    squared_log_error: float
    model_version: str


class UnknownIdError(LookupError):
    """No prediction with this id is pending (never made, evicted or expired)."""


class AlreadyAnsweredError(LookupError):
    """Feedback for this id was already received."""


def squared_log_error(predicted: float, actual: float) -> float:
    """(log1p(predicted) - log1p(actual))^2, the term RMSLE averages."""
    diff = math.log1p(max(predicted, 0.0)) - math.log1p(actual)
    return diff * diff


class PendingStore:
    """Predictions by id, bounded by count and by age; the oldest go first.

    Answered entries stay until they age out or are pushed out, so a repeated
    answer is told apart (409) from an unknown id (404).
    """

    def __init__(
        self,
        max_items: int,
        max_age_seconds: float,
        *,
        clock: Clock = time.monotonic,
        on_evict: Callable[[EvictionReason, int], None] | None = None,
    ) -> None:
        self._items: OrderedDict[str, Pending] = OrderedDict()
        self._max_items = max_items
        self._max_age = max_age_seconds
        self._clock = clock
        self._on_evict = on_evict
        self.awaiting = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, key: str, predicted: float, model_version: str) -> None:
        """Remember a prediction; a reused id starts over as a new prediction."""
        self.add_many([key], [predicted], model_version)

    def add_many(self, keys: list[str], predicted: list[float], model_version: str) -> None:
        """Remember the predictions of one request, made now; evicts once for all of them."""
        now = self._clock()
        items = self._items
        replaced = 0
        for key, value in zip(keys, predicted, strict=True):
            old = items.pop(key, None)
            if old is not None and not old.answered:
                replaced += 1
            items[key] = Pending(value, now, model_version)
        self.awaiting += len(keys) - replaced
        self._evict(now)

    def answer(self, key: str, actual: float) -> Outcome:
        """Match the true value with its prediction (UnknownIdError, AlreadyAnsweredError)."""
        now = self._clock()
        self._evict(now)
        entry = self._items.get(key)
        if entry is None:
            raise UnknownIdError(key)
        if entry.answered:
            raise AlreadyAnsweredError(key)
        entry.answered = True
        self.awaiting -= 1
        return Outcome(
            predicted=entry.predicted,
            actual=actual,
            lag_seconds=now - entry.at,
            squared_log_error=squared_log_error(entry.predicted, actual),
            model_version=entry.model_version,
        )

    def expire(self) -> None:
        """Drop what has aged out, without waiting for the next request."""
        self._evict(self._clock())

    def awaiting_now(self) -> float:
        """Predictions still awaiting their answer, after dropping what aged out (a gauge)."""
        self.expire()
        return float(self.awaiting)

    def _evict(self, now: float) -> None:
        items = self._items
        oldest_allowed = now - self._max_age
        aged = 0
        while items:
            key, entry = next(iter(items.items()))
            if entry.at >= oldest_allowed:
                break
            aged += self._drop(key, entry)
        pushed = 0
        while len(items) > self._max_items:
            key, entry = next(iter(items.items()))
            pushed += self._drop(key, entry)
        # One count per reason and pass: a big batch may push out thousands at once.
        self._count_evictions("age", aged)
        self._count_evictions("capacity", pushed)

    def _drop(self, key: str, entry: Pending) -> int:
        """Forget one entry; 1 when it was still awaiting its answer, else 0."""
        del self._items[key]
        if entry.answered:
            return 0
        self.awaiting -= 1
        return 1

    def _count_evictions(self, reason: EvictionReason, count: int) -> None:
        if count and self._on_evict is not None:
            self._on_evict(reason, count)


class RollingRmsle:
    """The exact RMSLE of the feedback received in the last ``window_seconds``."""

    def __init__(self, window_seconds: float = 300.0, *, clock: Clock = time.monotonic) -> None:
        self._window = window_seconds
        self._clock = clock
        self._terms: deque[tuple[float, float]] = deque()

    def add(self, squared_log_error: float) -> None:
        """Record one feedback's squared log error, received now."""
        self._terms.append((self._clock(), squared_log_error))

    def __len__(self) -> int:
        self._age_out()
        return len(self._terms)

    def value(self) -> float:
        """RMSLE over the window, NaN when it holds no feedback."""
        self._age_out()
        if not self._terms:
            return math.nan
        # fsum keeps the mean exact however many terms the window holds.
        return math.sqrt(math.fsum(term for _, term in self._terms) / len(self._terms))

    def _age_out(self) -> None:
        start = self._clock() - self._window
        terms = self._terms
        while terms and terms[0][0] <= start:
            terms.popleft()
