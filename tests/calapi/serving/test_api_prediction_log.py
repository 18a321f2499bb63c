"""The API and its prediction log: bounded ids, a byte bound hostile traffic cannot pass,
feedback that waits for another process's write, /info naming the log."""

from __future__ import annotations

import asyncio
import itertools
import math
import sqlite3
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, Summary

from api_support import api_client, routed_client, row, sample
from calapi.serving.predlog import MAX_ID_CHARS, Outcome, UnknownIdError
from calapi.serving.service import MAX_PATIENCE_SECONDS, PATIENCE_TRIPS, Feedback, ask_delays

pytestmark = pytest.mark.anyio


def pending_bytes(db: Path) -> int:
    with sqlite3.connect(db) as connection:
        return int(
            connection.execute("SELECT value FROM totals WHERE name = 'pending_bytes'").fetchone()[
                0
            ]
        )


async def written(db: Path, key: str, timeout: float = 10.0) -> None:
    """Wait until the writer has flushed the prediction ``key`` (a flush may lag under load)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        with sqlite3.connect(db) as connection:
            if connection.execute("SELECT 1 FROM pending WHERE id = ?", (key,)).fetchone():
                return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{key} was not written to {db} within {timeout} s")


async def test_ids_longer_than_the_cap_are_422_everywhere(trained_model_dir: Path) -> None:
    """A 129-character id is refused by the fast path, the validated path, batches and
    /feedback alike; 128 characters are fine."""
    longest, too_long = "x" * MAX_ID_CHARS, "y" * (MAX_ID_CHARS + 1)
    async with api_client(trained_model_dir) as client:
        assert (await client.post("/predict", json=row(id=longest))).status_code == 200
        for api in (client, routed_client(client)):
            single = await api.post("/predict", json=row(id=too_long))
            assert single.status_code == 422
            assert "128" in single.text
            validated = await api.post("/predict", json=row(id=too_long, Sex="FEMALE"))
            assert validated.status_code == 422
            batch = [row(id=f"ok{n}") for n in range(20)] + [row(id=too_long)]
            assert (await api.post("/predict", json={"instances": batch})).status_code == 422
        feedback = await client.post("/feedback", json={"id": too_long, "Calories": 10.0})
        assert feedback.status_code == 422
        answer = await client.post("/feedback", json={"id": longest, "Calories": 10.0})
        assert answer.status_code == 200


async def test_hostile_batches_cannot_push_the_log_past_its_byte_bound(
    trained_model_dir: Path, tmp_path: Path
) -> None:
    """Ten 10,000-row batches of 128-character ids against a 1 MiB bound: the log stays within
    it after every write, the newest predictions still take feedback, the drops are counted."""
    db = tmp_path / "predictions.db"
    bound = 1024 * 1024
    async with api_client(
        trained_model_dir, prediction_log=str(db), feedback_max_bytes=bound
    ) as client:
        for batch in range(10):
            rows = [row(id=f"{batch:02d}{n:0126d}") for n in range(10_000)]
            response = await client.post("/predict", json={"instances": rows})
            assert response.status_code == 200
            await written(db, rows[-1]["id"])
            assert 0 < pending_bytes(db) <= bound
        newest = {"id": f"09{9999:0126d}", "Calories": 100.0}
        assert (await client.post("/feedback", json=newest)).status_code == 200
        evicted = sample(client.registry, "app_feedback_evictions_total", reason="capacity")  # type: ignore[attr-defined]
    assert evicted > 90_000


async def test_feedback_for_a_prediction_not_yet_written_waits_for_the_write(
    trained_model_dir: Path, tmp_path: Path
) -> None:
    """Another process's prediction may not be written yet when its feedback lands: the API
    asks again once the log has settled instead of answering 404 at once."""
    db = tmp_path / "predictions.db"
    async with (
        api_client(trained_model_dir, prediction_log=str(db), log_flush_ms=200) as first,
        api_client(trained_model_dir, prediction_log=str(db), log_flush_ms=200) as second,
    ):
        assert (await first.post("/predict", json=row(id="made-by-first"))).status_code == 200
        answer = await second.post("/feedback", json={"id": "made-by-first", "Calories": 90.0})
        assert answer.status_code == 200, answer.text
        again = await first.post("/feedback", json={"id": "made-by-first", "Calories": 90.0})
        assert again.status_code == 409


async def test_info_names_the_prediction_log_and_its_bounds(
    trained_model_dir: Path, tmp_path: Path
) -> None:
    db = tmp_path / "predictions.db"
    async with api_client(trained_model_dir, prediction_log=str(db)) as client:
        log = (await client.get("/info")).json()["prediction_log"]
    assert log["backend"] == "sqlite"
    assert log["location"] == str(db)
    assert log["max_age_seconds"] == 3600.0
    assert log["max_bytes"] == 256 * 1024 * 1024


class LateLog:
    """A prediction log where another process's row shows ``visible_after`` s from creation,
    and every lookup takes ``trip`` s (a busy machine's writer waits for a core)."""

    settle_seconds = 0.05

    def __init__(self, *, visible_after: float, trip: float) -> None:
        self.visible_after = visible_after
        self.trip = trip
        self.started = time.monotonic()
        self.asked: list[float] = []

    async def answer(self, key: str, actual: float) -> Outcome:
        await asyncio.sleep(self.trip)
        self.asked.append(time.monotonic() - self.started)
        if self.asked[-1] < self.visible_after:
            raise UnknownIdError(key)
        return Outcome(100.0, actual, 1.0, 0.0, "v1")


def feedback_on(log: LateLog) -> Feedback:
    registry = CollectorRegistry()
    return Feedback(
        log,  # type: ignore[arg-type]
        Histogram("lag", "lag", registry=registry),
        Summary("error", "error", registry=registry),
    )


def test_on_an_idle_machine_an_unknown_id_is_given_up_on_after_about_one_settle_time() -> None:
    """A fast first lookup (1 ms): one more ask after the settle time, a last one soon after."""
    delays = ask_delays(0.05, 0.001)
    assert delays[0] == 0.05
    assert len(delays) <= 2
    assert sum(delays) == pytest.approx(0.05 + PATIENCE_TRIPS * 0.001)


def test_on_a_busy_machine_the_asks_double_for_longer_up_to_the_bound() -> None:
    assert ask_delays(0.05, 0.03) == pytest.approx([0.05, 0.1, 0.14])  # 0.05 + 8 x 30 ms
    capped = ask_delays(0.05, 1.0)
    assert sum(capped) == pytest.approx(MAX_PATIENCE_SECONDS)
    assert all(b <= 2 * a for a, b in itertools.pairwise(capped))
    assert ask_delays(0.05, 0.0) == [0.05]  # never less than one settle time
    assert ask_delays(0.0, 0.03) == [0.0]  # a log that settles at once: one more ask


async def test_an_id_no_process_wrote_is_unknown_after_the_asks() -> None:
    never = LateLog(visible_after=math.inf, trip=0.001)
    with pytest.raises(UnknownIdError):
        await feedback_on(never).answer("nobody", 90.0)
    assert len(never.asked) >= 2
    assert never.asked[-1] <= MAX_PATIENCE_SECONDS + 1.0


async def test_a_busy_machine_waits_longer_for_another_process_s_write() -> None:
    """Slow lookups (30 ms): a row written 0.25 s late, after the first retry, still matches."""
    late = LateLog(visible_after=0.25, trip=0.03)
    outcome = await feedback_on(late).answer("made-elsewhere", 90.0)
    assert outcome.actual == 90.0
    assert len(late.asked) >= 2
