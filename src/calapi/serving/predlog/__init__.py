"""The prediction log: predictions and their ground truth, durable and shared by API processes.

``open_log`` picks the backend from one setting (``CALOPS_PREDICTION_LOG``): a file path
or ``sqlite:///path`` for SQLite (every process of one machine), ``redis://host:port/db``
for Redis or Valkey (every process of every machine).
"""

from __future__ import annotations

from pathlib import Path

from calapi.serving.predlog.base import (
    MAX_ID_CHARS,
    AlreadyAnsweredError,
    LogUnavailableError,
    OnEvict,
    Outcome,
    PredictionLog,
    Retention,
    UnknownIdError,
    rmsle,
    squared_log_error,
)

__all__ = [
    "MAX_ID_CHARS",
    "AlreadyAnsweredError",
    "LogUnavailableError",
    "Outcome",
    "PredictionLog",
    "Retention",
    "UnknownIdError",
    "open_log",
    "rmsle",
    "squared_log_error",
]

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def open_log(
    location: str, retention: Retention, *, flush_seconds: float = 0.02,
    on_evict: OnEvict | None = None,
) -> PredictionLog:  # fmt: skip
    """The log at ``location``; raises LogUnavailableError when it cannot be opened."""
    if location.startswith(REDIS_SCHEMES):
        from calapi.serving.predlog.redis import RedisLog

        return RedisLog(location, retention, flush_seconds=flush_seconds, on_evict=on_evict)
    from calapi.serving.predlog.sqlite import SqliteLog

    path = location.removeprefix("sqlite:///") if location.startswith("sqlite:///") else location
    return SqliteLog(Path(path), retention, flush_seconds=flush_seconds, on_evict=on_evict)
