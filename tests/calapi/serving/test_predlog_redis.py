"""The Redis prediction log against a real redis-server on loopback (one per module, plus one
per test that stops and restarts its own)."""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from calapi.serving.predlog import open_log
from calapi.serving.predlog.base import (
    AlreadyAnsweredError,
    EvictionReason,
    LogUnavailableError,
    Outcome,
    Retention,
    UnknownIdError,
    row_bytes,
    squared_log_error,
)
from calapi.serving.predlog.redis import WRITE_ROWS, RedisLog
from support import free_port, stop

if shutil.which("redis-server") is None:
    pytest.skip(
        "redis-server is not installed (apt-get install redis-server)", allow_module_level=True
    )

pytestmark = pytest.mark.anyio

START = 1_000_000.0
FEATURES = 7


class RedisServer:
    """A redis-server on a free loopback port, its files in ``directory``."""

    def __init__(
        self, directory: Path, *, appendonly: bool = False, password: str | None = None
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.appendonly = appendonly
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
                "--dir", str(self.directory)]  # fmt: skip
        if self.password:
            argv += ["--requirepass", self.password]
        with (self.directory / "redis.log").open("ab") as sink:
            self.process = subprocess.Popen(
                argv, cwd=self.directory, stdout=sink, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self._wait_ready()

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    def client(self) -> redis.Redis:
        return redis.Redis(
            port=self.port, password=self.password, socket_timeout=1.0,
            retry=Retry(NoBackoff(), 0),
        )  # fmt: skip

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError((self.directory / "redis.log").read_text()[-2000:])
            with self.client() as client:
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass
            time.sleep(0.02)
        raise TimeoutError(f"redis-server on port {self.port} did not answer PING")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class Evictions:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, reason: EvictionReason, count: int) -> None:
        self.counts[reason] += count


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def url(server: RedisServer) -> str:
    with server.client() as client:
        client.flushall()
    return server.url


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server this test may stop and start again; it keeps its data (append-only file)."""
    server = RedisServer(tmp_path, appendonly=True)
    server.start()
    yield server
    server.stop()


@contextmanager
def started(url: str, retention: Retention | None = None, **options: Any) -> Iterator[RedisLog]:
    log = RedisLog(url, retention or Retention(), flush_seconds=0.005, **options)
    log.start()
    try:
        yield log
    finally:
        log.close()


def features(rows: int, start: float = 0.0) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.arange(start, start + rows * FEATURES, dtype=np.float64).reshape(rows, FEATURES)


def record(log: RedisLog, ids: list[str], version: str = "v1") -> None:
    log.record(ids, [100.0 + i for i in range(len(ids))], features(len(ids)), version)


async def outcomes(answers: list[Any]) -> list[Outcome | BaseException]:
    return list(await asyncio.gather(*answers, return_exceptions=True))


async def test_answer_returns_the_outcome_once(url: str) -> None:
    clock = Clock()
    with started(url, clock=clock) as log:
        log.record(["a", "b"], [100.0, 50.5], features(2), "v7")
        clock.now += 2.5
        outcome = await log.answer("a", 110.0)
        assert outcome == Outcome(100.0, 110.0, 2.5, squared_log_error(100.0, 110.0), "v7")
        with pytest.raises(AlreadyAnsweredError):
            await log.answer("a", 110.0)
        with pytest.raises(UnknownIdError):
            await log.answer("never-made", 1.0)
        assert log.awaiting() == 1.0
        assert log.rolling(60.0) == (outcome.squared_log_error, 1)
    with redis.Redis.from_url(url) as client:
        stored = client.hget("calops:predlog:pending", "b")
    assert isinstance(stored, bytes)
    assert stored.endswith(b"v7" + features(2)[1].astype("<f8").tobytes())


async def test_a_prediction_made_by_one_process_is_answered_by_another(url: str) -> None:
    with started(url) as made, started(url) as answering:
        record(made, ["x1", "x2"])
        made.flush()
        outcome = await answering.answer("x2", 101.0)
        assert (outcome.predicted, outcome.model_version) == (101.0, "v1")
        with pytest.raises(AlreadyAnsweredError):
            await made.answer("x2", 101.0)
        assert made.awaiting() == answering.awaiting() == 1.0


async def test_racing_answers_from_two_processes_succeed_exactly_once(url: str) -> None:
    ids = [f"race-{i}" for i in range(300)]
    with started(url) as first, started(url) as second:
        record(first, ids)
        first.flush()
        logs = (first, second, second, first)
        results = await outcomes([log.answer(key, 90.0) for key in ids for log in logs])
        for start in range(0, len(results), len(logs)):
            answered = results[start : start + len(logs)]
            assert sum(isinstance(result, Outcome) for result in answered) == 1
            assert sum(isinstance(result, AlreadyAnsweredError) for result in answered) == 3
        assert second.awaiting() == 0.0
        assert first.rolling(60.0)[1] == len(ids)
        assert first.totals()["answered_rows"] == len(ids)


async def test_predictions_older_than_max_age_expire(url: str) -> None:
    clock, evictions = Clock(), Evictions()
    retention = Retention(max_age_seconds=60.0)
    with started(url, retention, clock=clock, on_evict=evictions) as log:
        record(log, [f"old-{i}" for i in range(5)])
        log.flush()
        clock.now += 61.0
        record(log, ["new"])
        log.flush()
        assert evictions.counts == {"age": 5}
        assert log.totals()["pending_rows"] == 1
        with pytest.raises(UnknownIdError):
            await log.answer("old-0", 1.0)
        assert (await log.answer("new", 1.0)).lag_seconds == 0.0


async def test_pending_rows_never_exceed_max_rows(url: str) -> None:
    evictions = Evictions()
    with started(url, Retention(max_rows=100), on_evict=evictions) as log:
        for batch in range(25):
            record(log, [f"r{batch}-{i}" for i in range(10)])
            log.flush()
            assert log.totals()["pending_rows"] <= 100
        assert evictions.counts == {"capacity": 150}
        with pytest.raises(UnknownIdError):
            await log.answer("r0-0", 1.0)
        assert isinstance(await log.answer("r24-9", 1.0), Outcome)


async def test_pending_bytes_never_exceed_max_bytes(url: str) -> None:
    size = row_bytes("0" * 128, "v1", bytes(8 * FEATURES))
    bound = 20 * size + size // 2
    evictions = Evictions()
    with started(url, Retention(max_bytes=bound), on_evict=evictions) as log:
        recorded = 0
        for batch in range(12):
            record(log, [f"{batch:04d}{i:0124d}" for i in range(7)])
            recorded += 7
            log.flush()
            assert log.totals()["pending_bytes"] <= bound
        record(log, [f"{i:0128d}" for i in range(3000)])  # one hostile request
        recorded += 3000
        log.flush()
        totals = log.totals()
        assert totals == {**totals, "pending_rows": 20, "pending_bytes": 20 * size}
        assert evictions.counts == {"capacity": recorded - 20}
        assert log.awaiting() == 20.0


async def test_answered_entries_expire_after_their_max_age(url: str) -> None:
    clock = Clock()
    with started(url, Retention(answered_max_age_seconds=100.0), clock=clock) as log:
        record(log, ["a", "b", "c"])
        for key in ("a", "b", "c"):
            await log.answer(key, 5.0)
        clock.now += 99.0
        log.flush()
        assert log.totals()["answered_rows"] == 3
        with pytest.raises(AlreadyAnsweredError):
            await log.answer("a", 5.0)
        clock.now += 2.0
        log.flush()
        assert log.totals() == {
            "pending_rows": 0, "pending_bytes": 0, "answered_bytes": 0, "answered_rows": 0,
        }  # fmt: skip
        with pytest.raises(UnknownIdError):
            await log.answer("a", 5.0)
        assert log.rolling(1000.0) == (0.0, 0)


async def test_answered_entries_are_bounded_by_bytes(url: str) -> None:
    answered_size = row_bytes("a00", "v1", bytes(8 * FEATURES)) + 16
    bound = 5 * answered_size + answered_size // 2
    clock = Clock()
    with started(url, Retention(answered_max_bytes=bound), clock=clock) as log:
        ids = [f"a{i:02d}" for i in range(12)]
        record(log, ids)
        for key in ids:
            clock.now += 1.0
            await log.answer(key, 50.0)
            assert log.totals()["answered_bytes"] <= bound
        assert log.totals()["answered_rows"] == 5
        with pytest.raises(UnknownIdError):
            await log.answer(ids[0], 50.0)
        with pytest.raises(AlreadyAnsweredError):
            await log.answer(ids[-1], 50.0)
        assert log.rolling(1000.0)[1] == 5


async def test_rolling_sums_the_window_across_processes(url: str) -> None:
    clock = Clock()
    rng = np.random.default_rng(3)
    actuals = rng.uniform(0.0, 400.0, 60).tolist()
    with started(url, clock=clock) as first, started(url, clock=clock) as second:
        ids = [f"w{i}" for i in range(60)]
        record(first, ids)
        first.flush()
        errors = []
        for i, (key, actual) in enumerate(zip(ids, actuals, strict=True)):
            clock.now = START + i
            errors.append((await (first, second)[i % 2].answer(key, actual)).squared_log_error)
        total, count = second.rolling(20.5)
        assert count == 21
        assert total == pytest.approx(math.fsum(errors[-21:]), rel=1e-12)
        total, count = first.rolling(1000.0)
        assert count == 60
        assert total == pytest.approx(math.fsum(errors), rel=1e-12)
        clock.now += 100.0
        assert first.rolling(50.0) == (0.0, 0)


async def test_predictions_survive_a_restart_of_the_api_and_of_redis(
    own_server: RedisServer,
) -> None:
    before = RedisLog(own_server.url, Retention())  # never started: close writes the queue
    record(before, ["kept-1", "kept-2"], version="v3")
    before.close()
    own_server.stop()
    own_server.start()
    with started(own_server.url) as after:
        assert after.awaiting() == 2.0
        outcome = await after.answer("kept-2", 120.0)
        assert (outcome.predicted, outcome.model_version) == (101.0, "v3")


async def test_redis_down_answers_fail_clearly_and_predictions_wait(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, appendonly=True, password="s3cret")
    server.start()
    location = server.url.replace("redis://", "redis://default:s3cret@")
    try:
        with started(location) as log:
            record(log, ["before"])
            log.flush()
            server.stop()
            with pytest.raises(LogUnavailableError) as failure:
                await log.answer("before", 1.0)
            record(log, ["during"])
            server.start()
            wait_for(lambda: log.awaiting() == 2.0)
            assert (await log.answer("during", 100.0)).predicted == 100.0
    finally:
        server.stop()
    message = str(failure.value)
    redacted = server.url.replace("redis://", "redis://default:***@")
    assert redacted in message
    assert "s3cret" not in message
    assert message.endswith(".")
    assert message.replace(redacted, "").count(".") == 1


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except LogUnavailableError:
            pass
        time.sleep(0.02)
    raise TimeoutError("the condition never held")


async def test_prefixes_separate_two_stacks_on_one_redis(url: str) -> None:
    with started(f"{url}?prefix=blue:") as blue, started(f"{url}?prefix=green:") as green:
        record(blue, ["shared-id"])
        blue.flush()
        with pytest.raises(UnknownIdError):
            await green.answer("shared-id", 1.0)
        assert isinstance(await blue.answer("shared-id", 1.0), Outcome)
    with redis.Redis.from_url(url) as client:
        assert all(key.startswith((b"blue:", b"green:")) for key in client.scan_iter())


def test_describe_hides_the_password() -> None:
    log = RedisLog("redis://calops:s3cret@127.0.0.1:1/2?prefix=x:", Retention(max_rows=9))
    described = log.describe()
    log.close()
    assert described["backend"] == "redis"
    assert described["location"] == "redis://calops:***@127.0.0.1:1/2?prefix=x:"
    assert described["max_rows"] == 9


def test_open_log_picks_redis_for_a_redis_url(server: RedisServer) -> None:
    log = open_log(f"redis://127.0.0.1:{server.port}/0", Retention())
    try:
        assert isinstance(log, RedisLog)
        assert log.describe()["backend"] == "redis"
    finally:
        log.close()


async def test_an_id_recorded_again_after_its_answer_is_answered_again(url: str) -> None:
    with started(url) as log:
        log.record(["again"], [10.0], features(1), "v1")
        first = await log.answer("again", 12.0)
        log.record(["again"], [20.0], features(1), "v2")
        second = await log.answer("again", 18.0)
        assert (first.predicted, second.predicted, second.model_version) == (10.0, 20.0, "v2")
        total, count = log.rolling(60.0)
        assert count == 2
        assert total == pytest.approx(first.squared_log_error + second.squared_log_error)
        assert log.totals()["answered_rows"] == 1


async def test_rolling_counts_an_answer_from_a_process_whose_clock_lags(url: str) -> None:
    ahead, behind = Clock(), Clock()
    ahead.now += 100.0
    with started(url, clock=ahead) as first, started(url, clock=behind) as second:
        record(first, ["early", "late"])
        first.flush()
        early = await first.answer("early", 1.0)
        late = await second.answer("late", 1.0)
        total, count = first.rolling(50.0)
        assert count == 2
        assert total == pytest.approx(early.squared_log_error + late.squared_log_error)


async def test_a_backlog_is_written_in_parts_and_bounded(url: str) -> None:
    evictions = Evictions()
    rows = 2 * WRITE_ROWS + 500
    with started(url, Retention(max_rows=WRITE_ROWS + 100), on_evict=evictions) as log:
        record(log, [f"backlog-{i:06d}" for i in range(rows)])
        log.flush()
        assert log.awaiting() == WRITE_ROWS + 100
        assert evictions.counts == {"capacity": rows - WRITE_ROWS - 100}
        with pytest.raises(UnknownIdError):
            await log.answer("backlog-000000", 1.0)
        assert isinstance(await log.answer(f"backlog-{rows - 1:06d}", 1.0), Outcome)


async def test_a_write_retried_after_its_reply_was_lost_revives_no_answered_prediction(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with started(url) as making, started(url) as answering:
        script = making._flush_script
        calls = 0

        def reply_lost(**arguments: Any) -> Any:
            nonlocal calls
            calls += 1
            result = script(**arguments)
            if calls == 1:
                raise redis.TimeoutError("the reply was lost")
            return result

        monkeypatch.setattr(making, "_flush_script", reply_lost)
        record(making, ["lost-reply"])
        with pytest.raises(LogUnavailableError):
            making.flush()
        assert isinstance(await answering.answer("lost-reply", 1.0), Outcome)
        making.flush()  # writes the kept row again
        assert calls >= 2
        assert answering.awaiting() == 0.0
        with pytest.raises(AlreadyAnsweredError):
            await answering.answer("lost-reply", 1.0)


def test_flush_of_a_log_never_started_says_when_redis_is_away() -> None:
    log = RedisLog(f"redis://127.0.0.1:{free_port()}/0", Retention())
    record(log, ["nowhere"])
    with pytest.raises(LogUnavailableError, match="could not be written"):
        log.flush()
    log.close()
