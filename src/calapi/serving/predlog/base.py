"""What every prediction log backend provides, and what it answers with.

A prediction log keeps each prediction (id, model version, features, prediction, time)
until its ground truth arrives or it ages out, and each answered prediction, with its
truth, for a bounded time after. Every API process (workers of one machine, replicas on
many) shares one log, so feedback joins wherever it lands and survives restarts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal, Protocol

from calapi.model.features import FloatArray

EvictionReason = Literal["capacity", "age"]
OnEvict = Callable[[EvictionReason, int], None]

MAX_ID_CHARS: Final = 128
# What a stored row costs beyond its id, version and features: the prediction, its time,
# the key and index entries (measured on SQLite; Redis's per-key overhead is similar).
ROW_OVERHEAD_BYTES: Final = 64
ANSWER_EXTRA_BYTES: Final = 16  # an answered row also keeps the truth and when it came


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of matching feedback with its prediction."""

    predicted: float
    actual: float
    lag_seconds: float
    squared_log_error: float
    model_version: str


@dataclass(frozen=True, slots=True)
class Answered:
    """One answered prediction as stored; ``features`` are ``FEATURES`` as ``<f8`` bytes."""

    key: str
    at: float
    answered_at: float
    version: str
    predicted: float
    actual: float
    features: bytes


class UnknownIdError(LookupError):
    """No prediction with this id awaits feedback (never made, evicted or expired)."""


class AlreadyAnsweredError(LookupError):
    """Feedback for this id was already received (by any API process)."""


class LogUnavailableError(RuntimeError):
    """The prediction log cannot be reached or written now; ``str()`` says why."""


@dataclass(frozen=True, slots=True)
class Retention:
    """How much the log keeps: predictions awaiting truth, and answered ones after."""

    max_age_seconds: float = 3600.0
    max_bytes: int = 256 * 1024 * 1024
    max_rows: int = 1_000_000
    answered_max_age_seconds: float = 86_400.0
    answered_max_bytes: int = 256 * 1024 * 1024

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class PredictionLog(Protocol):
    """A durable store of predictions and their ground truth, shared by API processes.

    ``record`` never blocks (writes are batched off the hot path); ``answer`` is exactly
    once across every process sharing the log. ``settle_seconds`` is how long a prediction
    made by another process may take to become visible (its batching delay).
    """

    settle_seconds: float

    def start(self) -> None:
        """Start the background writer (create_app's lifespan calls it)."""

    def record(
        self, ids: Sequence[str], predicted: Sequence[float], features: FloatArray, version: str
    ) -> None:
        """Queue one request's predictions, made now, for the next batched write."""

    async def answer(self, key: str, actual: float) -> Outcome:
        """Match the truth with its prediction: UnknownIdError, AlreadyAnsweredError,
        LogUnavailableError."""

    def awaiting(self) -> float:
        """Predictions awaiting their truth, across every process (a gauge)."""

    def rolling(self, seconds: float) -> tuple[float, int]:
        """Sum of squared log errors and count of the answers received in the last seconds,
        across every process."""

    def answered(self, since: float | None) -> list[Answered]:
        """The answered predictions made at or after ``since`` (unix s; None: all kept),
        sorted by prediction time, read without holding up the writers."""

    def close(self) -> None:
        """Write what is queued and stop the writer."""

    def describe(self) -> dict[str, Any]:
        """What /info shows: backend, location (no credentials) and retention."""


def squared_log_error(predicted: float, actual: float) -> float:
    """(log1p(predicted) - log1p(actual))^2, the term RMSLE averages."""
    diff = math.log1p(max(predicted, 0.0)) - math.log1p(actual)
    return diff * diff


def row_bytes(key: str, version: str, features: bytes) -> int:
    """What one stored prediction is counted as against the byte bound."""
    return len(key.encode()) + len(version.encode()) + len(features) + ROW_OVERHEAD_BYTES


def rmsle(total: float, count: int) -> float:
    """RMSLE from a window's sum and count; NaN when the window holds no answer."""
    return math.sqrt(total / count) if count else math.nan
