"""Labelled traffic read back from both prediction log backends (a real SQLite file, a real
redis-server), recorded and answered through the log's own API."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from calapi.model.features import FEATURES
from calapi.serving.predlog import PredictionLog, Retention
from calapi.serving.predlog import redis as redis_backend
from calapi.serving.predlog.base import LogUnavailableError
from calapi.serving.predlog.labelled import COLUMNS, read_labelled
from calapi.serving.predlog.redis import RedisLog
from calapi.serving.predlog.sqlite import SqliteLog
from support import free_port, stop

START = 1_800_000_000.0
# Sex, Age, Height, Weight, Duration, Heart_Rate, Body_Temp: values no float32 or text
# round trip would keep.
ROWS = np.array(
    [
        [1.0, 25.123456789012345, 180.1, 80.25, 20.0, 100.0, 40.1],
        [0.0, 61.0, 150.3, 55.5, 7.5, 88.0, 38.7],
        [1.0, 33.3, 199.9, 101.01, 29.9, 127.0, 41.2],
        [0.0, 44.4, 160.0, 60.6, 12.0, 90.5, 39.25],
        [0.0, 70.0, 170.7, 70.7, 1.0, 67.0, 37.1],
    ]
)


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class RedisServer:
    """A throwaway redis-server on a free loopback port."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(directory)]  # fmt: skip
        self.process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_timeout=1.0).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.02)
        raise TimeoutError(f"redis-server on port {self.port} did not answer PING")


Factory = Callable[[Clock], PredictionLog]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    stop(server.process)


@pytest.fixture
def redis_location(redis_server: RedisServer) -> str:
    with redis.Redis(port=redis_server.port) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture(params=["sqlite", "redis"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty log of each backend."""
    if request.param == "sqlite":
        return str(tmp_path / "predictions.db")
    return str(request.getfixturevalue("redis_location"))


@pytest.fixture
def factory(location: str) -> Iterator[Factory]:
    """Opens a started log at ``location`` with a given clock; closes them all after."""
    opened: list[PredictionLog] = []

    def open_with(clock: Clock) -> PredictionLog:
        log: PredictionLog
        if location.startswith("redis://"):
            log = RedisLog(location, Retention(), flush_seconds=0.005, clock=clock)
        else:
            log = SqliteLog(Path(location), Retention(), flush_seconds=0.005, clock=clock)
        log.start()
        opened.append(log)
        return log

    yield open_with
    for log in opened:
        log.close()


def answer_all(log: PredictionLog, answers: dict[str, float]) -> None:
    async def send() -> None:
        for key, actual in answers.items():
            await log.answer(key, actual)

    asyncio.run(send())


def settle(log: PredictionLog) -> None:
    """Wait until the recorded predictions are written (the writer batches them)."""
    time.sleep(log.settle_seconds + 0.05)


def filled(factory: Factory) -> tuple[PredictionLog, Clock]:
    """Three predictions by v1 at START, two by v2 ten minutes later; one v1 left unanswered."""
    clock = Clock()
    log = factory(clock)
    log.record(["#1", "a", "##b"], [100.5, 200.25, 50.0], ROWS[:3], "v1")
    settle(log)
    clock.now = START + 600
    log.record(["c", "d"], [30.0, 8.125], ROWS[3:], "v2")
    settle(log)
    clock.now = START + 605
    answer_all(log, {"c": 33.5, "#1": 110.0})
    clock.now = START + 610
    answer_all(log, {"a": 190.0, "d": 9.0})
    return log, clock


def test_every_column_is_what_the_api_saw_and_the_truth(location: str, factory: Factory) -> None:
    """Answered rows only, sorted by prediction time, every column exact; the log object and
    its location string read the same rows."""
    log, clock = filled(factory)
    frame = read_labelled(log, None, now=clock.now)
    assert tuple(frame.columns) == COLUMNS
    assert list(frame["id"]) == ["#1", "a", "c", "d"]
    assert list(frame["predicted_at"]) == [START, START, START + 600, START + 600]
    assert list(frame["answered_at"]) == [START + 605, START + 610, START + 605, START + 610]
    assert list(frame["model_version"]) == ["v1", "v1", "v2", "v2"]
    assert list(frame["Sex"]) == ["male", "female", "female", "female"]
    expected = ROWS[[0, 1, 3, 4]]
    np.testing.assert_array_equal(frame[list(FEATURES[1:])].to_numpy(), expected[:, 1:])
    assert list(frame["predicted"]) == [100.5, 200.25, 30.0, 8.125]
    assert list(frame["Calories"]) == [110.0, 190.0, 33.5, 9.0]
    pd.testing.assert_frame_equal(read_labelled(location, None), frame)


def test_since_keeps_the_predictions_made_in_the_window(factory: Factory) -> None:
    """The window is on prediction time: answers that came late do not bring old rows in."""
    log, clock = filled(factory)
    assert list(read_labelled(log, 300, now=clock.now)["id"]) == ["c", "d"]
    assert list(read_labelled(log, 610, now=clock.now)["id"]) == ["#1", "a", "c", "d"]
    assert read_labelled(log, 1, now=clock.now).empty
    empty = read_labelled(log, 1, now=clock.now)
    assert tuple(empty.columns) == COLUMNS


def test_redis_reads_in_chunks_across_equal_answer_times(
    redis_location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of 7 over 40 answers sharing few answer times: each row once, none missed."""
    monkeypatch.setattr(redis_backend, "READ_CHUNK", 7)
    clock = Clock()
    log = RedisLog(redis_location, Retention(), flush_seconds=0.005, clock=clock)
    log.start()
    keys = [f"k{i:02d}" for i in range(40)]
    log.record(keys, [float(i) for i in range(40)], np.repeat(ROWS[:1], 40, axis=0), "v1")
    settle(log)
    for start in range(0, 40, 10):  # 10 answers at each time: ties span chunks
        clock.now = START + start
        answer_all(log, dict.fromkeys(keys[start : start + 10], 1.0))
    log.close()
    assert list(read_labelled(redis_location, None)["id"]) == keys
    assert list(read_labelled(redis_location, 5, now=START + 5)["id"]) == keys


def test_a_missing_sqlite_log_is_one_sentence_and_not_created(tmp_path: Path) -> None:
    """Reading never creates a log file: a wrong path is an error naming it."""
    path = tmp_path / "nowhere.db"
    with pytest.raises(LogUnavailableError, match=r"There is no prediction log at .*nowhere\.db"):
        read_labelled(str(path), None)
    assert not path.exists()


def test_an_unreachable_redis_is_one_sentence() -> None:
    """A Redis nobody listens on: LogUnavailableError saying to check Redis."""
    with pytest.raises(LogUnavailableError, match=r"could not be read .*Redis is running"):
        read_labelled(f"redis://127.0.0.1:{free_port()}/0", None)


def test_module_writes_the_rows_as_csv(location: str, factory: Factory) -> None:
    """`python -m calapi.serving.predlog.labelled` reads CALOPS_PREDICTION_LOG and writes
    CSV that reads back to the same rows."""
    log, _ = filled(factory)
    argv = [sys.executable, "-m", "calapi.serving.predlog.labelled", "--since", "1e12"]
    env = {**os.environ, "CALOPS_PREDICTION_LOG": location}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=True)
    written = pd.read_csv(StringIO(done.stdout), dtype={"id": str, "model_version": str})
    pd.testing.assert_frame_equal(written, read_labelled(log, None))


def test_module_says_why_it_cannot_read(tmp_path: Path) -> None:
    """An unreadable log: exit 1, one 'Error:' line, no traceback."""
    argv = [sys.executable, "-m", "calapi.serving.predlog.labelled",
            "--log", str(tmp_path / "missing.db")]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("Error: There is no prediction log at")
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_module_needs_only_the_serve_install() -> None:
    """The API container has only the `serve` extra: reading imports no CLI library."""
    cli_only = ("mlflow", "typer", "python_on_whales", "rich", "httpx", "sklearn")
    code = (
        "import sys; from calapi.serving.predlog.labelled import main; "
        f"print(','.join(m for m in {cli_only!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == ""
