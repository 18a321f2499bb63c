"""The prediction log in SQLite: exactly-once answers across processes, bounds, durability."""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from calapi.serving.predlog import (
    AlreadyAnsweredError,
    LogUnavailableError,
    Retention,
    UnknownIdError,
    open_log,
    squared_log_error,
)
from calapi.serving.predlog.base import row_bytes
from calapi.serving.predlog.sqlite import SqliteLog

FEATURES = np.array([[1.0, 25, 180, 80, 20, 100, 40.0]])


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


Evictions = list[tuple[str, int]]


def make_log(
    path: Path, clock: Clock | None = None, evicted: Evictions | None = None, **bounds: float
) -> tuple[SqliteLog, Evictions]:
    """A started log; its evictions are appended to ``evicted`` (a new list by default)."""
    evicted = [] if evicted is None else evicted
    log = SqliteLog(
        path, Retention(**bounds),  # type: ignore[arg-type]
        flush_seconds=0.005, clock=clock or Clock(),
        on_evict=lambda reason, count: evicted.append((reason, count)),
    )  # fmt: skip
    log.start()
    return log, evicted


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "predictions.db"


@pytest.fixture
def log(db: Path) -> Iterator[SqliteLog]:
    opened, _ = make_log(db)
    yield opened
    opened.close()


def totals(db: Path) -> dict[str, int]:
    """Rows and bytes the file holds, as its triggers count them."""
    with sqlite3.connect(db) as connection:
        return dict(connection.execute("SELECT name, value FROM totals").fetchall())


def record(log: SqliteLog, *keys: str, value: float = 100.0, version: str = "v1") -> None:
    log.record(list(keys), [value] * len(keys), np.repeat(FEATURES, len(keys), axis=0), version)


def answer(log: SqliteLog, key: str, actual: float = 110.0):  # type: ignore[no-untyped-def]
    return asyncio.run(log.answer(key, actual))


def test_answered_once_then_already_answered_and_unknown(db: Path) -> None:
    """A prediction is answered once with its lag and version; again -> 409; unknown -> 404."""
    clock = Clock()
    log, _ = make_log(db, clock)
    record(log, "a")
    clock.now += 2.5
    outcome = answer(log, "a")
    assert (outcome.predicted, outcome.actual, outcome.model_version) == (100.0, 110.0, "v1")
    assert outcome.lag_seconds == 2.5
    assert outcome.squared_log_error == squared_log_error(100.0, 110.0)
    with pytest.raises(AlreadyAnsweredError):
        answer(log, "a")
    with pytest.raises(UnknownIdError):
        answer(log, "never")
    assert log.awaiting() == 0
    log.close()


def test_a_prediction_made_by_one_process_is_answered_by_another_exactly_once(db: Path) -> None:
    """Two logs on one file (two API processes): B answers A's predictions; when both race to
    answer the same ids, each id is accepted exactly once."""
    first, _ = make_log(db)
    second, _ = make_log(db)
    keys = [f"id-{n}" for n in range(300)]
    record(first, *keys)
    first.close()  # written
    first, _ = make_log(db)

    async def race() -> list[object]:
        calls = [log.answer(key, 90.0) for key in keys for log in (first, second)]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(race())
    accepted = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, AlreadyAnsweredError)]
    assert len(accepted) == len(keys)
    assert len(refused) == len(keys)
    for log in (first, second):
        log.close()


def test_answered_predictions_release_their_place_at_once(db: Path) -> None:
    """With room for 3, answering 3 makes room for 3 more: nothing awaiting is evicted."""
    log, evicted = make_log(db, max_rows=3)
    record(log, "a", "b", "c")
    for key in ("a", "b", "c"):
        answer(log, key)
    record(log, "d", "e", "f")
    for key in ("d", "e", "f"):
        answer(log, key)
    assert evicted == []
    log.close()


def test_row_bound_evicts_the_oldest_and_counts_it(db: Path) -> None:
    clock = Clock()
    log, evicted = make_log(db, clock, max_rows=2)
    for key in ("a", "b", "c"):
        record(log, key)
        clock.now += 1
        log.close()
        log, _ = make_log(db, clock, evicted, max_rows=2)
    with pytest.raises(UnknownIdError):
        answer(log, "a")
    assert answer(log, "c").predicted == 100.0
    assert evicted == [("capacity", 1)]
    log.close()


def test_hostile_ids_cannot_push_the_log_past_its_byte_bound(db: Path) -> None:
    """Batches of 128-character ids: after every write the awaiting rows stay within the bound,
    the newest survive, and the drops are counted."""
    bound = 64 * 1024
    log, evicted = make_log(db, max_bytes=bound)
    size = row_bytes("x" * 128, "v1", FEATURES.tobytes())
    for batch in range(20):
        keys = [f"{batch:04d}-{n:0124d}" for n in range(100)]
        record(log, *keys)
        log.close()
        assert 0 < totals(db)["pending_bytes"] <= bound
        log, _ = make_log(db, None, evicted, max_bytes=bound)
    assert sum(count for _, count in evicted) == 2000 - totals(db)["pending_rows"]
    assert totals(db)["pending_rows"] >= bound // size - 1
    assert answer(log, f"0019-{99:0124d}").predicted == 100.0
    log.close()


def test_predictions_expire_by_age(db: Path) -> None:
    clock = Clock()
    log, _ = make_log(db, clock, max_age_seconds=60.0)
    record(log, "old")
    clock.now += 30
    record(log, "young")
    clock.now += 31
    with pytest.raises(UnknownIdError):
        answer(log, "old")
    assert answer(log, "young").predicted == 100.0
    log.close()


def test_the_writer_prunes_aged_predictions_and_counts_them(db: Path) -> None:
    clock = Clock()
    log, evicted = make_log(db, clock, max_age_seconds=60.0)
    record(log, "old", "older")
    clock.now += 61
    log.close()  # the closing write prunes
    assert ("age", 2) in evicted
    assert totals(db)["pending_rows"] == 0
    log, evicted = make_log(db, clock, max_age_seconds=60.0)
    record(log, "a", "b")
    clock.now += 30
    record(log, "young")
    clock.now += 31
    log.close()
    assert evicted == [("age", 2)]  # the young one stays
    assert totals(db)["pending_rows"] == 1


def test_a_reused_id_starts_over(log: SqliteLog) -> None:
    """Predicting again under an answered id makes it await truth again (the seed reuses ids)."""
    record(log, "1", value=10.0)
    answer(log, "1")
    record(log, "1", value=20.0)
    assert answer(log, "1").predicted == 20.0


def test_predictions_and_answers_survive_a_restart(db: Path) -> None:
    """Closing writes what is queued; a new process answers the earlier predictions, and the
    answers are remembered (409) after another restart."""
    log, _ = make_log(db)
    record(log, *[str(n) for n in range(500)])
    log.close()
    log, _ = make_log(db)
    assert log.awaiting() == 500
    for n in range(500):
        answer(log, str(n))
    log.close()
    log, _ = make_log(db)
    with pytest.raises(AlreadyAnsweredError):
        answer(log, "7")
    log.close()


def test_closing_a_log_never_started_still_writes_its_queue(db: Path) -> None:
    log = SqliteLog(db, Retention())
    record(log, "queued")
    log.close()
    reopened, _ = make_log(db)
    assert reopened.awaiting() == 1
    reopened.close()


def test_rolling_is_the_exact_sum_and_count_of_the_window(db: Path) -> None:
    clock = Clock()
    log, _ = make_log(db, clock)
    pairs = [(100.0, 120.0), (5.0, 3.0), (250.0, 251.0), (0.0, 10.0)]
    for n, (predicted, _) in enumerate(pairs):
        record(log, str(n), value=predicted)
    for n, (_, actual) in enumerate(pairs):
        answer(log, str(n), actual)
    total, count = log.rolling(300.0)
    assert count == 4
    assert total == pytest.approx(math.fsum(squared_log_error(p, a) for p, a in pairs), rel=1e-12)
    clock.now += 301
    assert log.rolling(300.0) == (0.0, 0)
    log.close()


def test_answered_rows_are_bounded_by_age(db: Path) -> None:
    clock = Clock()
    log, _ = make_log(db, clock, answered_max_age_seconds=100.0)
    record(log, "a")
    answer(log, "a")
    clock.now += 101
    log.close()
    log, _ = make_log(db, clock, answered_max_age_seconds=100.0)
    with pytest.raises(UnknownIdError):  # forgotten: no longer a 409
        answer(log, "a")
    log.close()


def test_answered_rows_are_bounded_by_bytes(db: Path) -> None:
    bound = 8 * 1024
    log, _ = make_log(db, answered_max_bytes=bound)
    keys = [f"{n:0100d}" for n in range(200)]
    record(log, *keys)
    for key in keys:
        answer(log, key)
    log.close()
    assert 0 < totals(db)["answered_bytes"] <= bound


def test_a_file_of_another_schema_is_refused_with_one_sentence(db: Path) -> None:
    with sqlite3.connect(db) as connection:
        connection.execute("PRAGMA user_version=99")
    with pytest.raises(LogUnavailableError, match=r"schema version 99.*new file"):
        SqliteLog(db, Retention())


def test_an_unwritable_location_is_refused_with_one_sentence(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(LogUnavailableError, match="Cannot open the prediction log"):
        open_log(str(blocker / "predictions.db"), Retention())


def test_open_log_reads_sqlite_urls(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    log = open_log(f"sqlite:///{path}", Retention())
    assert isinstance(log, SqliteLog)
    assert log.path == path
    assert log.describe()["backend"] == "sqlite"
    log.close()


def test_a_failing_disk_never_hangs_answers_or_close(
    db: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every write failing: answers get LogUnavailableError (503), not a hang; close gives up
    after a few tries and says how many predictions are lost."""
    log, _ = make_log(db)

    def broken(*_: object, **__: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(log, "_write", broken)
    record(log, "a", "b")
    with pytest.raises(LogUnavailableError, match="disk I/O error"):
        answer(log, "a")
    log.close()
    assert "2 predictions could not be written" in caplog.text


def test_the_writer_survives_an_unexpected_error(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only SQLite errors: whatever a write raises fails that write, and the next works."""
    log, _ = make_log(db)
    real = log._write
    calls = iter([ValueError("unexpected")])

    def flaky(*args: object, **kwargs: object) -> object:
        error = next(calls, None)
        if error is not None:
            raise error
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(log, "_write", flaky)
    record(log, "a")
    with pytest.raises(LogUnavailableError):
        answer(log, "a")
    assert answer(log, "a").predicted == 100.0  # the prediction was kept and written on retry
    log.close()


def test_an_impossible_truth_is_refused_before_it_reaches_the_writer(log: SqliteLog) -> None:
    record(log, "a")
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="finite number"):
            answer(log, "a", bad)
    assert answer(log, "a", 50.0).actual == 50.0
