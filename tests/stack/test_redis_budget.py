"""The compose stack's Redis holds the prediction log within its memory: the bounds the api is
given (counted by calops) times what Redis really spends per counted byte, measured here on a
real redis-server with the shortest ids (the worst case), stay inside Redis's maxmemory.

Redis runs with ``noeviction``: past maxmemory every write fails, so calops's own bounds must
be what stops the log growing.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis
import yaml

from calapi.serving.predlog.base import Retention
from calapi.serving.predlog.redis import RedisLog
from stacktools import COMPOSE_FILE
from support import free_port, stop

pytestmark = pytest.mark.integration

ROWS = 20_000
VERSION = "calories/12"
HEADROOM = 0.8  # of maxmemory: the append-only rewrite, Lua and client buffers need the rest
# Redis's units: k/m/g are powers of 1000, kb/mb/gb powers of 1024.
UNITS = {"k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return services


def redis_options() -> dict[str, str]:
    command = compose_services()["redis"]["command"]
    return dict(zip(command[1::2], command[2::2], strict=True))


def memory_bytes(value: str) -> int:
    """Redis's memory notation (256mb, 1gb, 100000) in bytes."""
    number = value.rstrip("bgkmBGKM")
    return int(number) * UNITS.get(value[len(number) :].lower(), 1)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server on loopback with the stack's memory options, nothing persisted."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    folder = tmp_path_factory.mktemp("redis")
    port = free_port()
    options = redis_options()
    argv = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(folder), "--maxmemory", options["--maxmemory"],
        "--maxmemory-policy", options["--maxmemory-policy"],
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)
    client = redis.Redis(port=port)
    try:
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        stop(process)


def used_memory(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        return int(client.info("memory")["used_memory"])


async def answer_all(log: RedisLog, ids: list[str]) -> None:
    for start in range(0, len(ids), 1000):
        await asyncio.gather(*(log.answer(key, 100.0) for key in ids[start : start + 1000]))


def measured_ratios(url: str) -> tuple[float, float]:
    """Bytes Redis spends per byte calops counts: for pending, then for answered predictions."""
    ids = [str(i) for i in range(ROWS)]  # the shortest ids: the most overhead per counted byte
    features = np.random.default_rng(3).uniform(1, 200, size=(ROWS, 7))
    log = RedisLog(url, Retention(), flush_seconds=0.01)
    log.start()
    try:
        before = used_memory(url)
        for start in range(0, ROWS, 1000):
            rows = slice(start, start + 1000)
            log.record(ids[rows], list(features[rows, 0]), features[rows], VERSION)
        log.flush()
        pending = (used_memory(url) - before) / log.totals()["pending_bytes"]
        asyncio.run(answer_all(log, ids))
        log.flush()
        totals = log.totals()
        assert totals["pending_rows"] == 0
        answered = (used_memory(url) - before) / totals["answered_bytes"]
    finally:
        log.close()
    return pending, answered


def test_the_log_bounds_fit_in_redis_maxmemory(redis_url: str) -> None:
    """Pending and answered bounds, at the memory Redis really spends on them, leave headroom."""
    pending_ratio, answered_ratio = measured_ratios(redis_url)
    environment = compose_services()["api"]["environment"]
    pending = int(environment["CALOPS_FEEDBACK_MAX_BYTES"]) * pending_ratio
    answered = int(environment["CALOPS_ANSWERED_MAX_BYTES"]) * answered_ratio
    budget = memory_bytes(redis_options()["--maxmemory"]) * HEADROOM
    assert pending + answered <= budget, (
        f"the log may take {(pending + answered) / 1e6:.0f} MB of Redis (x{pending_ratio:.2f} "
        f"pending, x{answered_ratio:.2f} answered), over {budget / 1e6:.0f} MB"
    )


def test_memory_notation() -> None:
    """Read as Redis reads it: mb is 1024 * 1024 bytes, m one million."""
    assert memory_bytes("256mb") == 256 * 1024**2
    assert memory_bytes("2m") == 2_000_000
    assert memory_bytes("1gb") == 1024**3
    assert memory_bytes("4096") == 4096
