"""Counters, latencies and accuracy of a run, and the summary built from them."""

from __future__ import annotations

import math
from array import array
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final

import numpy as np

# Recent replies kept for the live p95; recent seconds kept for the live RMSLE.
RECENT_LATENCIES: Final = 2000
RECENT_SECONDS: Final = 30
RATE_NEEDS_SENDS: Final = 2  # a rate is measured between the first and the last send


def succeeded(status: int) -> bool:
    """True for a 2xx answer."""
    return HTTPStatus.OK <= status < HTTPStatus.MULTIPLE_CHOICES


def rmsle(squared_log_error_sum: float, n: int) -> float | None:
    """RMSLE from a running sum of squared log errors, or None without rows."""
    return math.sqrt(squared_log_error_sum / n) if n else None


def squared_log_errors(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(log1p(predicted) - log1p(truth))^2 per row where both are known (others dropped)."""
    known = np.isfinite(predicted) & np.isfinite(truth)
    diff = np.log1p(np.maximum(predicted[known], 0.0)) - np.log1p(np.maximum(truth[known], 0.0))
    return np.asarray(diff * diff, dtype=np.float64)


@dataclass
class Accuracy:
    """A running RMSLE plus one over the last ``RECENT_SECONDS`` seconds."""

    total: float = 0.0
    rows: int = 0
    recent: deque[tuple[int, float, int]] = field(default_factory=deque)

    def add(self, errors: np.ndarray, now: float) -> None:
        if not errors.size:
            return
        self.total += float(errors.sum())
        self.rows += int(errors.size)
        second = int(now)
        if self.recent and self.recent[-1][0] == second:
            _, total, rows = self.recent.pop()
            self.recent.append((second, total + float(errors.sum()), rows + int(errors.size)))
        else:
            self.recent.append((second, float(errors.sum()), int(errors.size)))
        while self.recent and self.recent[0][0] <= second - RECENT_SECONDS:
            self.recent.popleft()

    @property
    def value(self) -> float | None:
        return rmsle(self.total, self.rows)

    @property
    def recent_value(self) -> float | None:
        return rmsle(sum(t for _, t, _ in self.recent), sum(n for _, _, n in self.recent))


@dataclass
class FeedbackCounts:
    """What happened to the truth sent back."""

    scheduled: int = 0
    sent: int = 0
    ok: int = 0
    not_found: int = 0  # 404: unknown or expired id
    conflict: int = 0  # 409: already answered
    errors: int = 0  # other status or no answer
    dropped: int = 0  # never sent: the run was stopped or the flush ran out of time


@dataclass
class Stats:
    """Everything the live view and the summary report; mutated only on the event loop."""

    target_rps: float
    planned: int
    sent: int = 0
    ok: int = 0
    status_4xx: int = 0
    status_5xx: int = 0
    status_other: int = 0
    connection_errors: int = 0
    timeouts: int = 0
    late: int = 0  # had to wait for a free slot (in-flight bound reached)
    skipped: int = 0  # never sent: the duration ended or the run was stopped
    abandoned: int = 0  # sent, but the run stopped before the answer came
    rows_predicted: int = 0
    first_send: float | None = None
    last_send: float | None = None
    max_lag: float = 0.0
    latencies: array[float] = field(default_factory=lambda: array("d"))
    recent_latencies: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_LATENCIES))
    accuracy: Accuracy = field(default_factory=Accuracy)
    feedback_accuracy: Accuracy = field(default_factory=Accuracy)
    feedback: FeedbackCounts = field(default_factory=FeedbackCounts)
    model_versions: set[str] = field(default_factory=set)

    def on_send(self, now: float, lag: float) -> None:
        self.sent += 1
        self.first_send = now if self.first_send is None else self.first_send
        self.last_send = now
        self.max_lag = max(self.max_lag, lag)

    def on_reply(self, status: int, latency: float) -> None:
        self.latencies.append(latency)
        self.recent_latencies.append(latency)
        if succeeded(status):
            self.ok += 1
        elif HTTPStatus.BAD_REQUEST <= status < HTTPStatus.INTERNAL_SERVER_ERROR:
            self.status_4xx += 1
        elif status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            self.status_5xx += 1
        else:
            self.status_other += 1

    @property
    def errors(self) -> int:
        return (
            self.status_4xx
            + self.status_5xx
            + self.status_other
            + self.connection_errors
            + self.timeouts
        )

    @property
    def achieved_rps(self) -> float | None:
        """Requests per second between the first and the last send."""
        if self.first_send is None or self.last_send is None or self.sent < RATE_NEEDS_SENDS:
            return None
        span = self.last_send - self.first_send
        return (self.sent - 1) / span if span > 0 else None

    def recent_p95_ms(self) -> float | None:
        if not self.recent_latencies:
            return None
        return float(np.percentile(np.fromiter(self.recent_latencies, float), 95)) * 1000.0

    def latency_ms(self) -> dict[str, float | None]:
        values = np.frombuffer(self.latencies, dtype=np.float64)
        if not values.size:
            return {"p50": None, "p95": None, "p99": None, "max": None}
        p50, p95, p99 = np.percentile(values, [50, 95, 99]) * 1000.0
        return {
            "p50": round(float(p50), 2),
            "p95": round(float(p95), 2),
            "p99": round(float(p99), 2),
            "max": round(float(values.max()) * 1000.0, 2),
        }


def summary(stats: Stats, *, run: dict[str, Any]) -> dict[str, Any]:
    """The run's report as plain data (the ``--json`` output)."""
    achieved = stats.achieved_rps
    return {
        **run,
        "target_rps": stats.target_rps,
        "planned": stats.planned,
        "sent": stats.sent,
        "ok": stats.ok,
        "status_4xx": stats.status_4xx,
        "status_5xx": stats.status_5xx,
        "status_other": stats.status_other,
        "connection_errors": stats.connection_errors,
        "timeouts": stats.timeouts,
        "errors": stats.errors,
        "late": stats.late,
        "skipped": stats.skipped,
        "abandoned": stats.abandoned,
        "rows_predicted": stats.rows_predicted,
        "achieved_rps": round(achieved, 2) if achieved is not None else None,
        "max_schedule_lag_ms": round(stats.max_lag * 1000.0, 2),
        "latency_ms": stats.latency_ms(),
        "feedback": vars(stats.feedback).copy(),
        "rmsle": _rounded(stats.accuracy.value),
        "rmsle_feedback": _rounded(stats.feedback_accuracy.value),
        "model_versions": sorted(stats.model_versions),
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 5)
