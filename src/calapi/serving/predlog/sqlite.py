"""The prediction log in one SQLite file (WAL mode): every API process of a machine shares it.

One writer thread per process owns the write connection. Predictions are queued by the
event loop and written together every ``flush_seconds`` (the most a crash can lose);
feedback wakes the writer at once and is answered after its transaction commits, so a
200 means the truth is on disk. SQLite serializes writers across processes, so
``DELETE ... RETURNING`` hands each prediction to exactly one answer. Triggers keep the
row and byte totals in the file itself, so every process sees the same bound (inserts add
theirs once per batch, which is most of the write cost saved).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from calapi.model.features import FloatArray
from calapi.serving.predlog.base import (
    ANSWER_EXTRA_BYTES,
    ROW_OVERHEAD_BYTES,
    AlreadyAnsweredError,
    Answered,
    LogUnavailableError,
    OnEvict,
    Outcome,
    Retention,
    UnknownIdError,
    squared_log_error,
)

log = logging.getLogger("calapi.predlog")

SCHEMA_VERSION: Final = 1
FLUSH_ROWS: Final = 2048  # wake the writer early when this many predictions queue
PRUNE_EVERY_SECONDS: Final = 1.0
TRIM_CHUNK: Final = 2000
BUSY_TIMEOUT_MS: Final = 5000
CLOSE_ATTEMPTS: Final = 3  # writes tried at close before queued predictions are given up

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS pending (
    id TEXT PRIMARY KEY, at REAL NOT NULL, version TEXT NOT NULL, predicted REAL NOT NULL,
    features BLOB NOT NULL, size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS answered (
    id TEXT PRIMARY KEY, at REAL NOT NULL, version TEXT NOT NULL, predicted REAL NOT NULL,
    features BLOB NOT NULL, actual REAL NOT NULL, answered_at REAL NOT NULL,
    squared_log_error REAL NOT NULL, size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS answered_by_time ON answered(answered_at);
CREATE TABLE IF NOT EXISTS totals (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES ('pending_rows', 0), ('pending_bytes', 0),
    ('answered_rows', 0), ('answered_bytes', 0);
CREATE TRIGGER IF NOT EXISTS pending_removed AFTER DELETE ON pending BEGIN
    UPDATE totals SET value = value - 1 WHERE name = 'pending_rows';
    UPDATE totals SET value = value - OLD.size WHERE name = 'pending_bytes';
END;
CREATE TRIGGER IF NOT EXISTS answered_added AFTER INSERT ON answered BEGIN
    UPDATE totals SET value = value + 1 WHERE name = 'answered_rows';
    UPDATE totals SET value = value + NEW.size WHERE name = 'answered_bytes';
END;
CREATE TRIGGER IF NOT EXISTS answered_removed AFTER DELETE ON answered BEGIN
    UPDATE totals SET value = value - 1 WHERE name = 'answered_rows';
    UPDATE totals SET value = value - OLD.size WHERE name = 'answered_bytes';
END;
"""


@dataclass(slots=True)
class _Rows:
    """One request's predictions as queued: turned into table rows by the writer thread."""

    ids: Sequence[str]
    predicted: Sequence[float]
    features: FloatArray
    version: str
    at: float

    def rows(self) -> list[tuple[str, float, str, float, bytes, int]]:
        blob = np.ascontiguousarray(self.features, dtype="<f8").tobytes()
        width = len(blob) // len(self.ids)
        version, at = self.version, self.at
        fixed = len(version.encode()) + width + ROW_OVERHEAD_BYTES
        return [
            (key, at, version, value, blob[start : start + width], len(key.encode()) + fixed)
            for key, value, start in zip(
                self.ids, self.predicted, range(0, len(blob), width), strict=True
            )
        ]


@dataclass(slots=True)
class _Answer:
    key: str
    actual: float
    at: float
    future: concurrent.futures.Future[Outcome]


def connect(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode that waits for other processes' writes instead of failing."""
    connection = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    connection.execute("PRAGMA journal_mode=WAL")
    # NORMAL: a commit survives the process being killed; only power loss can undo the last.
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA recursive_triggers=ON")  # REPLACE fires the delete trigger
    connection.execute("PRAGMA journal_size_limit=67108864")
    return connection


def open_schema(path: Path) -> sqlite3.Connection:
    """Connect and create the tables when new; refuse a file of another schema."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = connect(path)
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise LogUnavailableError(
                f"The prediction log {path} has schema version {version}, not "
                f"{SCHEMA_VERSION}; point CALOPS_PREDICTION_LOG at a new file."
            )
        connection.executescript(SCHEMA)  # idempotent: every process may run it
        connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except (sqlite3.Error, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else exc
        raise LogUnavailableError(
            f"Cannot open the prediction log {path} ({reason}); check the path and its "
            "permissions, or set CALOPS_PREDICTION_LOG."
        ) from None
    return connection


ANSWERED_QUERY: Final = (
    "SELECT id, at, answered_at, version, predicted, actual, features FROM answered "
    "WHERE answered_at >= ? AND at >= ? ORDER BY at"
)


def read_answered(path: Path, since: float | None) -> list[Answered]:
    """The answered predictions made at or after ``since`` in the log file at ``path``.

    Its own connection: in WAL mode a reader neither waits for nor holds up the writers.
    A prediction is answered after it is made, so the answered_at index narrows the scan.
    """
    if not path.is_file():
        raise LogUnavailableError(
            f"There is no prediction log at {path}; check the path (the API's "
            "CALOPS_PREDICTION_LOG)."
        )
    cutoff = -math.inf if since is None else since
    try:
        with closing(connect(path)) as connection:
            rows = connection.execute(ANSWERED_QUERY, (cutoff, cutoff)).fetchall()
    except sqlite3.Error as exc:
        raise LogUnavailableError(
            f"Cannot read the prediction log {path} ({exc}); check that it is a calops "
            "prediction log."
        ) from None
    return [Answered(*row) for row in rows]


class SqliteLog:
    """The prediction log in a SQLite file, written by one background thread per process."""

    def __init__(
        self, path: Path, retention: Retention, *, flush_seconds: float = 0.02,
        clock: Callable[[], float] = time.time, on_evict: OnEvict | None = None,
    ) -> None:  # fmt: skip
        self.path = path
        self.retention = retention
        self.settle_seconds = 3 * flush_seconds + 0.05
        self._flush_seconds = flush_seconds
        self._clock = clock
        self._on_evict = on_evict
        self._writer = open_schema(path)
        self._reader = connect(path)
        self._queue: deque[_Rows | _Answer] = deque()
        # Each counter has one writer (the event loop, the writer thread): no lock needed.
        self._rows_queued = 0
        self._rows_done = 0
        self._wake = threading.Event()
        self._written = threading.Lock()
        self._retry: list[tuple[str, float, str, float, bytes, int]] = []
        self._closing = False
        self._last_prune = 0.0
        self._thread = threading.Thread(target=self._run, name="calapi-prediction-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def record(
        self, ids: Sequence[str], predicted: Sequence[float], features: FloatArray, version: str
    ) -> None:
        self._queue.append(_Rows(ids, predicted, features, version, self._clock()))
        self._rows_queued += len(ids)
        if self._rows_queued - self._rows_done >= FLUSH_ROWS:
            self._wake.set()

    async def answer(self, key: str, actual: float) -> Outcome:
        if not 0.0 <= actual < math.inf:
            raise ValueError(f"A true value must be a finite number >= 0, got {actual!r}.")
        future: concurrent.futures.Future[Outcome] = concurrent.futures.Future()
        self._queue.append(_Answer(key, actual, self._clock(), future))
        self._wake.set()
        return await asyncio.wrap_future(future)

    def awaiting(self) -> float:
        query = "SELECT value FROM totals WHERE name = 'pending_rows'"
        with self._written:  # rows leave the queue's count when their commit is visible
            row = self._reader.execute(query).fetchone()
            return float(row[0] if row else 0) + self._rows_queued - self._rows_done

    def rolling(self, seconds: float) -> tuple[float, int]:
        since = self._clock() - seconds
        total, count = self._reader.execute(
            "SELECT total(squared_log_error), count(*) FROM answered WHERE answered_at > ?",
            (since,),
        ).fetchone()
        return float(total), int(count)

    def answered(self, since: float | None) -> list[Answered]:
        return read_answered(self.path, since)

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        else:  # never started: write what was queued here
            self._drain()
        self._writer.close()
        self._reader.close()

    def describe(self) -> dict[str, Any]:
        return {"backend": "sqlite", "location": str(self.path), **self.retention.as_dict()}

    def _run(self) -> None:
        failures = 0
        while True:
            self._wake.wait(self._flush_seconds)
            self._wake.clear()
            closing = self._closing
            failures = 0 if self._drain() else failures + 1
            if closing and (not (self._queue or self._retry) or failures >= CLOSE_ATTEMPTS):
                self._abandon()
                return

    def _abandon(self) -> None:
        """At close: say what could not be written; answer whoever still waits."""
        lost = self._rows_queued - self._rows_done
        if lost:
            log.error("%d predictions could not be written to %s and are lost.", lost, self.path)
        error = LogUnavailableError(f"The prediction log {self.path} is closing.")
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, _Answer):
                item.future.set_exception(error)

    def _drain(self) -> bool:
        """Write what is queued; False when the write failed (the rows are kept for a retry)."""
        items: list[_Rows | _Answer] = []
        while self._queue:
            items.append(self._queue.popleft())
        rows = self._retry + [
            row for item in items if isinstance(item, _Rows) for row in item.rows()
        ]
        self._retry = []
        answers = [item for item in items if isinstance(item, _Answer)]
        now = self._clock()
        prune = now - self._last_prune >= PRUNE_EVERY_SECONDS
        if not (rows or answers or prune):
            return True
        try:
            with self._written:
                results, evicted = self._write(rows, answers, now, prune=prune)
                self._rows_done += len(rows)
        except Exception as exc:  # the writer must outlive any failure: nothing may hang
            self._failed(exc, rows, answers)
            return False
        if prune:
            self._last_prune = now
        for answer, result in zip(answers, results, strict=True):
            if isinstance(result, Outcome):
                answer.future.set_result(result)
            else:
                answer.future.set_exception(result)
        self._count_evictions(evicted)
        return True

    def _write(
        self, rows: list[tuple[str, float, str, float, bytes, int]], answers: list[_Answer],
        now: float, *, prune: bool,
    ) -> tuple[list[Outcome | LookupError], dict[str, int]]:  # fmt: skip
        db = self._writer
        evicted = {"age": 0, "capacity": 0}
        db.execute("BEGIN IMMEDIATE")
        try:
            if rows:
                # A reused id replaces its row; the delete trigger takes the old one off.
                db.executemany(
                    "INSERT OR REPLACE INTO pending (id, at, version, predicted, features, size) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                db.execute(
                    "UPDATE totals SET value = value + CASE name WHEN 'pending_rows' THEN ? "
                    "ELSE ? END WHERE name IN ('pending_rows', 'pending_bytes')",
                    (len(rows), sum(row[5] for row in rows)),
                )
            results = [self._match(db, answer, now, evicted) for answer in answers]
            if prune:
                evicted["age"] += self._expire(db, now)
            evicted["capacity"] += self._trim(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return results, evicted

    def _match(
        self, db: sqlite3.Connection, answer: _Answer, now: float, evicted: dict[str, int]
    ) -> Outcome | LookupError:
        found = db.execute(
            "DELETE FROM pending WHERE id = ? RETURNING at, version, predicted, features, size",
            (answer.key,),
        ).fetchone()
        if found is None:
            seen = db.execute("SELECT 1 FROM answered WHERE id = ?", (answer.key,)).fetchone()
            return AlreadyAnsweredError(answer.key) if seen else UnknownIdError(answer.key)
        at, version, predicted, features, size = found
        if at < now - self.retention.max_age_seconds:
            evicted["age"] += 1  # expired, not yet pruned: deleted above
            return UnknownIdError(answer.key)
        error = squared_log_error(predicted, answer.actual)
        db.execute(
            "INSERT OR REPLACE INTO answered (id, at, version, predicted, features, actual, "
            "answered_at, squared_log_error, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (answer.key, at, version, predicted, features, answer.actual, answer.at, error,
             size + ANSWER_EXTRA_BYTES),
        )  # fmt: skip
        return Outcome(predicted, answer.actual, max(answer.at - at, 0.0), error, version)

    def _expire(self, db: sqlite3.Connection, now: float) -> int:
        retention = self.retention
        # Rows go in (nearly) in time order, so rowid order is age order: everything before the
        # first young row is old. Scanning stops there; no index on `at` costs every insert.
        young = db.execute(
            "SELECT rowid FROM pending WHERE at >= ? ORDER BY rowid LIMIT 1",
            (now - retention.max_age_seconds,),
        ).fetchone()
        if young is None:
            aged = db.execute("DELETE FROM pending").rowcount
        else:
            aged = db.execute("DELETE FROM pending WHERE rowid < ?", young).rowcount
        db.execute(
            "DELETE FROM answered WHERE answered_at < ?",
            (now - retention.answered_max_age_seconds,),
        )
        return max(aged, 0)

    def _trim(self, db: sqlite3.Connection) -> int:
        """Drop the oldest rows until both tables are within their bounds; unanswered dropped."""
        retention = self.retention
        dropped = 0
        while excess := _excess(db, "pending", retention.max_bytes, retention.max_rows):
            dropped += db.execute(
                "DELETE FROM pending WHERE rowid IN "
                "(SELECT rowid FROM pending ORDER BY rowid LIMIT ?)",
                (min(excess, TRIM_CHUNK),),
            ).rowcount
        while excess := _excess(db, "answered", retention.answered_max_bytes):
            db.execute(
                "DELETE FROM answered WHERE id IN "
                "(SELECT id FROM answered ORDER BY answered_at LIMIT ?)",
                (min(excess, TRIM_CHUNK),),
            )
        return dropped

    def _failed(
        self, exc: Exception, rows: list[tuple[str, float, str, float, bytes, int]],
        answers: list[_Answer],
    ) -> None:  # fmt: skip
        """Keep the predictions for the next try; tell each waiting answer why it failed."""
        log.warning("Writing the prediction log %s failed: %s; retrying.", self.path, exc)
        # Bounded like the file: beyond max_rows waiting in memory, the oldest are let go.
        kept = rows[-self.retention.max_rows :]
        self._rows_done += len(rows) - len(kept)
        self._retry = kept
        if len(kept) < len(rows):
            self._count_evictions({"age": 0, "capacity": len(rows) - len(kept)})
        error = LogUnavailableError(
            f"The prediction log {self.path} could not be written ({exc}); retry shortly."
        )
        for answer in answers:
            answer.future.set_exception(error)
        time.sleep(self._flush_seconds)

    def _count_evictions(self, evicted: dict[str, int]) -> None:
        if self._on_evict is None:
            return
        for reason in ("age", "capacity"):
            if evicted[reason]:
                self._on_evict(reason, evicted[reason])


def _excess(db: sqlite3.Connection, table: str, max_bytes: int, max_rows: int = 0) -> int:
    """Rows to drop from ``table`` to be within its bounds (from its counted totals), else 0."""
    totals = dict(db.execute("SELECT name, value FROM totals").fetchall())
    rows, size = totals[f"{table}_rows"], totals[f"{table}_bytes"]
    excess = rows - max_rows if max_rows else 0
    if size > max_bytes and rows:
        excess = max(excess, -(-(size - max_bytes) * rows // size))  # ceil, by average row
    return max(excess, 0)
