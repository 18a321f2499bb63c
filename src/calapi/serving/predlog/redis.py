"""The prediction log in Redis (or Valkey): every API process of every machine shares it.

One writer thread per process owns the writes. Predictions are queued by the event loop and
written together every ``flush_seconds`` by one Lua script call, which also applies every
bound: Redis runs a script atomically, so the counters and the bounds are the same for every
process, drops happen once (in the process whose script made them) and no traffic, however
hostile, leaves the log past its bound after a write. Feedback is matched in two steps: that
call also reads the prediction, Python computes its squared log error (so it is bit for bit
SQLite's), then a second script moves it from pending to answered only if it is still there
unchanged, which hands each prediction to exactly one answer across all processes. A row
already answered is never written back as pending, so a write retried after a lost reply is
harmless. Only a single Redis (with its replicas) is supported, not Redis Cluster.

Keys, under a prefix (``calops:predlog:``, or ``?prefix=`` in the URL to separate stacks
sharing one Redis; a ``/db`` number works too):

- ``pending``: hash, id -> ``"<size> <at> <predicted> <len(version)> "`` + version + the
  features as little-endian float64 (``size`` is ``row_bytes``, counted against the bound);
- ``pending:by_time``: sorted set of ids scored by ``at``, the eviction order;
- ``answered``: hash, id -> ``"<serial> <actual> <answered_at> <error> "`` + the pending value;
- ``answered:by_time``: sorted set scored by ``answered_at`` (never decreasing), members
  ``<serial>:<running sum of errors>:<size>:<id>``; the difference of two running sums makes
  ``rolling`` two lookups, however many answers the window holds;
- ``totals``: hash of the pending rows and bytes, the answered bytes, the serial and running
  sum of the newest answer, and those of the newest answer forgotten.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from calapi.model.features import FloatArray
from calapi.redaction import redact_uri
from calapi.serving.predlog.base import (
    ANSWER_EXTRA_BYTES,
    AlreadyAnsweredError,
    Answered,
    LogUnavailableError,
    OnEvict,
    Outcome,
    Retention,
    UnknownIdError,
    row_bytes,
    squared_log_error,
)

log = logging.getLogger("calapi.predlog")

PREFIX: Final = "calops:predlog:"
FLUSH_ROWS: Final = 2048  # wake the writer early when this many predictions queue
PRUNE_EVERY_SECONDS: Final = 1.0
WRITE_ROWS: Final = 10_000  # a backlog (after an outage) is written in calls of this many rows
WRITE_TIMEOUT_SECONDS: Final = 5.0
READ_TIMEOUT_SECONDS: Final = 0.5  # reads run on the event loop, at scrape time
CONNECT_TIMEOUT_SECONDS: Final = 2.0
READ_CHUNK: Final = 1000  # answered rows read per ZRANGEBYSCORE + HMGET

_COMMON: Final = """
local pending, pending_time, answered, answered_time, totals =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local CHUNK = 1000

local function number(name)
  return tonumber(redis.call('HGET', totals, name) or '0')
end

local function size_of(value)
  return tonumber(string.match(value, '^%d+'))
end

local rows, bytes = number('pending_rows'), number('pending_bytes')
local answered_bytes = number('answered_bytes')
local floor_serial, floor_sum

local function forget_pending(id)
  local value = redis.call('HGET', pending, id)
  if value then
    redis.call('HDEL', pending, id)
    rows, bytes = rows - 1, bytes - size_of(value)
  end
end

local function forget_answer(member)
  local serial, sum, size, id = string.match(member, '^(%d+):([^:]+):(%d+):(.*)$')
  answered_bytes = answered_bytes - tonumber(size)
  local value = redis.call('HGET', answered, id)
  if value and string.sub(value, 1, #serial) == serial then
    redis.call('HDEL', answered, id)
  end
  floor_serial, floor_sum = serial, sum
end

local function trim_answered(max_bytes)
  while answered_bytes > max_bytes do
    local oldest = redis.call('ZPOPMIN', answered_time)
    if #oldest == 0 then
      answered_bytes = 0
      break
    end
    forget_answer(oldest[1])
  end
end

local function save_totals()
  redis.call('HSET', totals, 'pending_rows', rows, 'pending_bytes', bytes,
    'answered_bytes', answered_bytes)
  if floor_serial then
    redis.call('HSET', totals, 'floor_serial', floor_serial, 'floor_sum', floor_sum)
  end
end
"""

# ARGV: pending cutoff, answered cutoff, max_rows, max_bytes, answered_max_bytes, row count,
# (id, at, value) per row, then the ids to look up. A row already answered is not written
# again (a write retried after its reply was lost). Returns the age and capacity drops, then
# per id looked up its pending value, 1 when answered already or 0.
FLUSH_SCRIPT: Final = (
    _COMMON
    + """
local function expire(zset, cutoff, forget)
  local dropped = 0
  while true do
    local old = redis.call('ZRANGEBYSCORE', zset, '-inf', '(' .. cutoff, 'LIMIT', 0, CHUNK)
    if #old == 0 then
      return dropped
    end
    for _, member in ipairs(old) do
      forget(member)
    end
    redis.call('ZREM', zset, unpack(old))
    dropped = dropped + #old
  end
end

local function trim_pending(max_rows, max_bytes)
  local dropped = 0
  while rows > max_rows or bytes > max_bytes do
    local excess = rows - max_rows
    if bytes > max_bytes and rows > 0 then
      excess = math.max(excess, math.ceil((bytes - max_bytes) * rows / bytes))
    end
    local oldest = redis.call('ZPOPMIN', pending_time, math.max(1, math.min(excess, CHUNK)))
    if #oldest == 0 then
      rows, bytes = 0, 0
      break
    end
    for i = 1, #oldest, 2 do
      forget_pending(oldest[i])
    end
    dropped = dropped + #oldest / 2
  end
  return dropped
end

local function answered_already(id, value)
  local record = redis.call('HGET', answered, id)
  return record and string.sub(record, -#value) == value
end

local count = tonumber(ARGV[6])
for i = 7, 6 + 3 * count, 3 do
  if not answered_already(ARGV[i], ARGV[i + 2]) then
    forget_pending(ARGV[i])
    redis.call('HSET', pending, ARGV[i], ARGV[i + 2])
    redis.call('ZADD', pending_time, ARGV[i + 1], ARGV[i])
    rows, bytes = rows + 1, bytes + size_of(ARGV[i + 2])
  end
end
local aged = expire(pending_time, ARGV[1], forget_pending)
local trimmed = trim_pending(tonumber(ARGV[3]), tonumber(ARGV[4]))
expire(answered_time, ARGV[2], forget_answer)
trim_answered(tonumber(ARGV[5]))
save_totals()
local result = {aged, trimmed}
for i = 7 + 3 * count, #ARGV do
  local value = redis.call('HGET', pending, ARGV[i])
  result[#result + 1] = value or redis.call('HEXISTS', answered, ARGV[i])
end
return result
"""
)

# ARGV: answered_max_bytes, then (id, pending value read, actual, answered_at, error) per
# answer. Returns per answer: ok, answered, unknown, or changed (recorded again meanwhile).
ANSWER_SCRIPT: Final = (
    _COMMON
    + """
local serial = number('answered_count')
local sum = number('answered_sum')
local last = redis.call('ZRANGE', answered_time, -1, -1, 'WITHSCORES')[2]
local statuses = {}
for i = 2, #ARGV, 5 do
  local id, read, actual, at, err = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local value = redis.call('HGET', pending, id)
  if value == read then
    forget_pending(id)
    redis.call('ZREM', pending_time, id)
    serial, sum = serial + 1, sum + tonumber(err)
    if last and tonumber(last) > tonumber(at) then
      at = last
    end
    last = at
    local size = size_of(value) + ANSWER_EXTRA_BYTES
    local tag = string.format('%015d', serial)
    local member = string.format('%s:%.17g:%d:%s', tag, sum, size, id)
    redis.call('ZADD', answered_time, at, member)
    redis.call('HSET', answered, id, table.concat({tag, actual, ARGV[i + 3], err, value}, ' '))
    answered_bytes = answered_bytes + size
    statuses[#statuses + 1] = 'ok'
  elseif value then
    statuses[#statuses + 1] = 'changed'
  elseif redis.call('HEXISTS', answered, id) == 1 then
    statuses[#statuses + 1] = 'answered'
  else
    statuses[#statuses + 1] = 'unknown'
  end
end
redis.call('HSET', totals, 'answered_count', serial, 'answered_sum', string.format('%.17g', sum))
trim_answered(tonumber(ARGV[1]))
save_totals()
return statuses
""".replace("ANSWER_EXTRA_BYTES", str(ANSWER_EXTRA_BYTES))
)

# KEYS: totals, answered:by_time; ARGV: since. Returns the newest answer's serial and running
# sum, then those of the newest answer at or before since (or of the newest forgotten).
ROLLING_SCRIPT: Final = """
local totals, answered_time = KEYS[1], KEYS[2]
local function get(name)
  return redis.call('HGET', totals, name) or '0'
end
local before = redis.call('ZREVRANGEBYSCORE', answered_time, ARGV[1], '-inf', 'LIMIT', 0, 1)
local serial, sum
if before[1] then
  serial, sum = string.match(before[1], '^(%d+):([^:]+):')
else
  serial, sum = get('floor_serial'), get('floor_sum')
end
return {get('answered_count'), get('answered_sum'), serial, sum}
"""

_Row = tuple[str, str, bytes]  # id, at, pending value


@dataclass(slots=True)
class _Rows:
    ids: Sequence[str]
    predicted: Sequence[float]
    features: bytes
    width: int
    version: str
    at: float

    def pack(self) -> list[_Row]:
        version = self.version.encode()
        at = repr(float(self.at))
        rows = []
        for i, (key, value) in enumerate(zip(self.ids, self.predicted, strict=True)):
            features = self.features[i * self.width : (i + 1) * self.width]
            size = row_bytes(key, self.version, features)
            head = f"{size} {at} {float(value)!r} {len(version)} ".encode()
            rows.append((key, at, head + version + features))
        return rows


@dataclass(slots=True)
class _Packed:
    rows: list[_Row]

    def pack(self) -> list[_Row]:
        return self.rows


@dataclass(slots=True)
class _Answer:
    key: str
    actual: float
    at: float
    future: concurrent.futures.Future[Outcome]


@dataclass(slots=True)
class _Barrier:
    future: concurrent.futures.Future[None]


@dataclass(frozen=True, slots=True)
class _Match:
    answer: _Answer
    value: bytes
    at: float
    predicted: float
    version: str
    error: float

    @classmethod
    def read(cls, answer: _Answer, value: bytes) -> _Match:
        _size, at, predicted, length, rest = value.split(b" ", 4)
        version = rest[: int(length)].decode()
        error = squared_log_error(float(predicted), answer.actual)
        return cls(answer, value, float(at), float(predicted), version, error)

    def outcome(self) -> Outcome:
        lag = max(self.answer.at - self.at, 0.0)
        return Outcome(self.predicted, self.answer.actual, lag, self.error, self.version)


@dataclass(frozen=True, slots=True)
class _Keys:
    pending: str
    pending_time: str
    answered: str
    answered_time: str
    totals: str

    @classmethod
    def under(cls, prefix: str) -> _Keys:
        names = ("pending", "pending:by_time", "answered", "answered:by_time", "totals")
        return cls(*(prefix + name for name in names))

    def all(self) -> list[str]:
        return [self.pending, self.pending_time, self.answered, self.answered_time, self.totals]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def split_location(location: str) -> tuple[str, str]:
    """The URL redis-py connects to, and the key prefix (``?prefix=``, else ``PREFIX``)."""
    parts = urlsplit(location)
    query = parse_qsl(parts.query)
    prefix = next((value for name, value in query if name == "prefix"), PREFIX)
    rest = urlencode([(name, value) for name, value in query if name != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


def redact(location: str) -> str:
    """``location`` with its password (in the authority or the query) shown as ``***``."""
    return redact_uri(location)


def connect(url: str, location: str, timeout: float) -> redis.Redis:
    """A client that fails at once instead of retrying (the writer retries on its own)."""
    try:
        return redis.Redis.from_url(
            url, socket_timeout=timeout,
            socket_connect_timeout=min(timeout, CONNECT_TIMEOUT_SECONDS),
            retry=Retry(NoBackoff(), 0),
        )  # fmt: skip
    except ValueError:
        raise LogUnavailableError(
            f"The prediction log location {location} is not a valid Redis URL; set "
            "CALOPS_PREDICTION_LOG to redis://host:port/db."
        ) from None


def parse_answered(key: str, value: bytes) -> tuple[int, Answered]:
    """An ``answered`` hash value: its serial and the row it holds."""
    serial, actual, answered_at, _error, _size, at, predicted, length, rest = value.split(b" ", 8)
    size = int(length)
    row = Answered(
        key, float(at), float(answered_at), rest[:size].decode(), float(predicted),
        float(actual), rest[size:],
    )  # fmt: skip
    return int(serial), row


def read_answered(client: redis.Redis, keys: _Keys, since: float | None) -> list[Answered]:
    """The answered predictions made at or after ``since``, read READ_CHUNK at a time.

    A prediction is answered after it is made, so only answers from ``since`` on are read.
    Members sort by serial within a time; a row answered again since (its id reused) is
    read at its newer member only.
    """
    low, skip, rows = "-inf" if since is None else repr(float(since)), 0, []
    while True:
        chunk: list[tuple[bytes, float]] = client.zrangebyscore(  # type: ignore[assignment]
            keys.answered_time, low, "+inf", start=skip, num=READ_CHUNK, withscores=True
        )
        rows += _answered_rows(client, keys, [member for member, _score in chunk], since)
        if len(chunk) < READ_CHUNK:
            break
        last = chunk[-1][1]
        ties = sum(score == last for _member, score in chunk)
        skip = skip + ties if repr(last) == low else ties  # past the rows read at that time
        low = repr(last)
    rows.sort(key=lambda row: row.at)
    return rows


def _answered_rows(
    client: redis.Redis, keys: _Keys, members: list[bytes], since: float | None
) -> list[Answered]:
    """The rows of these ``answered:by_time`` members still current and made from ``since``."""
    if not members:
        return []
    parts = [_text(member).split(":", 3) for member in members]
    values: list[bytes | None] = client.hmget(keys.answered, [part[3] for part in parts])  # type: ignore[assignment]
    rows = []
    for (serial, _sum, _size, key), value in zip(parts, values, strict=True):
        if value is not None:
            stored, row = parse_answered(key, value)
            if stored == int(serial) and (since is None or row.at >= since):
                rows.append(row)
    return rows


def read_answered_at(location: str, since: float | None) -> list[Answered]:
    """``read_answered`` from the log at a ``redis://`` location, without starting a writer."""
    url, prefix = split_location(location)
    client = connect(url, redact(location), WRITE_TIMEOUT_SECONDS)
    try:
        return read_answered(client, _Keys.under(prefix), since)
    except redis.RedisError as exc:
        raise LogUnavailableError(
            f"The prediction log at {redact(location)} could not be read "
            f"({type(exc).__name__}); check that Redis is running and reachable there."
        ) from None
    finally:
        client.close()


class RedisLog:
    """The prediction log in Redis, written by one background thread per process."""

    def __init__(
        self, location: str, retention: Retention, *, flush_seconds: float = 0.02,
        clock: Callable[[], float] = time.time, on_evict: OnEvict | None = None,
    ) -> None:  # fmt: skip
        url, prefix = split_location(location)
        self.location = redact(location)
        self.retention = retention
        self.settle_seconds = 3 * flush_seconds + 0.05
        self._flush_seconds = flush_seconds
        self._clock = clock
        self._on_evict = on_evict
        self._keys = _Keys.under(prefix)
        self._writer = connect(url, self.location, WRITE_TIMEOUT_SECONDS)
        self._reader = connect(url, self.location, READ_TIMEOUT_SECONDS)
        self._flush_script = Script(self._writer, FLUSH_SCRIPT)
        self._answer_script = Script(self._writer, ANSWER_SCRIPT)
        self._rolling_script = Script(self._reader, ROLLING_SCRIPT)
        self._queue: deque[_Rows | _Packed | _Answer | _Barrier] = deque()
        self._queued_rows = 0
        self._count_lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._last_prune = -float("inf")
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="calapi-prediction-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def record(
        self, ids: Sequence[str], predicted: Sequence[float], features: FloatArray, version: str
    ) -> None:
        array = features.astype("<f8", copy=False)
        if not len(ids) == len(predicted) == array.shape[0]:
            raise ValueError(f"{len(ids)} ids, {len(predicted)} predictions, {len(array)} rows")
        rows = _Rows(ids, predicted, array.tobytes(), array.shape[1] * 8, version, self._clock())
        self._queue.append(rows)
        if self._count(len(ids)) >= FLUSH_ROWS:
            self._wake.set()

    async def answer(self, key: str, actual: float) -> Outcome:
        future: concurrent.futures.Future[Outcome] = concurrent.futures.Future()
        self._queue.append(_Answer(key, actual, self._clock(), future))
        self._wake.set()
        return await asyncio.wrap_future(future)

    def awaiting(self) -> float:
        return float(self._totals().get("pending_rows", 0))

    def rolling(self, seconds: float) -> tuple[float, int]:
        since = repr(float(self._clock() - seconds))
        try:
            newest, total, oldest, before = self._rolling_script(
                keys=[self._keys.totals, self._keys.answered_time], args=[since]
            )
        except redis.RedisError as exc:
            raise self._unavailable(exc, "read") from exc
        count = int(newest) - int(oldest)
        return (float(total) - float(before) if count else 0.0), count

    def flush(self) -> None:
        """Write what is queued now and wait for it; LogUnavailableError when Redis fails."""
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._queue.append(_Barrier(future))
        if self._thread.is_alive():
            self._wake.set()
        else:
            self._drain()
        future.result()

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        else:  # never started: write what was queued here
            self._drain()
        self._writer.close()
        self._reader.close()

    def answered(self, since: float | None) -> list[Answered]:
        try:
            return read_answered(self._writer, self._keys, since)
        except redis.RedisError as exc:
            raise self._unavailable(exc, "read") from exc

    def describe(self) -> dict[str, Any]:
        return {"backend": "redis", "location": self.location, **self.retention.as_dict()}

    def totals(self) -> dict[str, int]:
        """Pending rows and bytes, answered rows and bytes, held now by the whole log."""
        fields = self._totals()
        try:
            answered = int(self._reader.hlen(self._keys.answered))
        except redis.RedisError as exc:
            raise self._unavailable(exc, "read") from exc
        names = ("pending_rows", "pending_bytes", "answered_bytes")
        return {**{name: fields.get(name, 0) for name in names}, "answered_rows": answered}

    def _totals(self) -> dict[str, int]:
        try:
            fields = self._reader.hgetall(self._keys.totals)
        except redis.RedisError as exc:
            raise self._unavailable(exc, "read") from exc
        return {_text(name): int(float(value)) for name, value in fields.items()}

    def _count(self, rows: int) -> int:
        with self._count_lock:
            self._queued_rows += rows
            return self._queued_rows

    def _run(self) -> None:
        while True:
            self._wake.wait(self._flush_seconds)
            self._wake.clear()
            closing = self._closing
            written = self._drain()
            if closing and (not written or not self._queue):
                self._abandon()
                return

    def _drain(self) -> bool:
        items: list[_Rows | _Packed | _Answer | _Barrier] = []
        while self._queue:
            items.append(self._queue.popleft())
        batches = [item for item in items if isinstance(item, _Rows | _Packed)]
        answers = [item for item in items if isinstance(item, _Answer)]
        barriers = [item.future for item in items if isinstance(item, _Barrier)]
        now = self._clock()
        if not (batches or answers or barriers or now - self._last_prune >= PRUNE_EVERY_SECONDS):
            return True
        rows = [row for batch in batches for row in batch.pack()]
        self._count(-len(rows))
        try:
            found = self._write(rows, answers, now)
        except Exception as exc:
            self._keep(rows)
            self._failed(exc, [answer.future for answer in answers] + barriers)
            return False
        self._recovered()
        self._last_prune = now
        try:
            self._match(answers, found)
        except Exception as exc:
            self._failed(exc, [answer.future for answer in answers])
        for barrier in barriers:
            barrier.set_result(None)
        return True

    def _write(self, rows: list[_Row], answers: list[_Answer], now: float) -> list[bytes | int]:
        """Write the rows and apply every bound; look up the answers' predictions."""
        starts = range(0, len(rows), WRITE_ROWS)
        chunks = [rows[start : start + WRITE_ROWS] for start in starts] or [[]]
        found: list[bytes | int] = []
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1
            args = self._flush_args(chunk, answers if last else [], now)
            aged, trimmed, *found = self._flush_script(keys=self._keys.all(), args=args)
            self._count_evictions({"age": int(aged), "capacity": int(trimmed)})
        return found

    def _flush_args(
        self, rows: list[_Row], answers: list[_Answer], now: float
    ) -> list[str | bytes | int]:
        retention = self.retention
        args: list[str | bytes | int] = [
            repr(now - retention.max_age_seconds),
            repr(now - retention.answered_max_age_seconds),
            retention.max_rows, retention.max_bytes, retention.answered_max_bytes, len(rows),
        ]  # fmt: skip
        args += [part for row in rows for part in row]
        args += [answer.key for answer in answers]
        return args

    def _match(self, answers: list[_Answer], found: list[bytes | int]) -> None:
        """Settle what the lookup decides; move the rest from pending to answered."""
        matches: list[_Match] = []
        for answer, value in zip(answers, found, strict=True):
            if not isinstance(value, bytes):
                error = AlreadyAnsweredError if value else UnknownIdError
                answer.future.set_exception(error(answer.key))
                continue
            try:
                matches.append(_Match.read(answer, value))
            except ValueError as exc:
                answer.future.set_exception(exc)
        if matches:
            self._move(matches)

    def _move(self, matches: list[_Match]) -> None:
        args: list[str | bytes | int] = [self.retention.answered_max_bytes]
        for match in matches:
            answer = match.answer
            args += [answer.key, match.value, repr(answer.actual), repr(answer.at),
                     repr(match.error)]  # fmt: skip
        statuses = self._answer_script(keys=self._keys.all(), args=args)
        for match, status in zip(matches, statuses, strict=True):
            future = match.answer.future
            if status == b"ok":
                future.set_result(match.outcome())
            elif status == b"answered":
                future.set_exception(AlreadyAnsweredError(match.answer.key))
            elif status == b"unknown":
                future.set_exception(UnknownIdError(match.answer.key))
            else:
                self._queue.appendleft(match.answer)
                self._wake.set()

    def _keep(self, rows: list[_Row]) -> None:
        """Queue unwritten predictions again, at most max_rows: the oldest beyond are let go."""
        kept = rows[-self.retention.max_rows :] if self.retention.max_rows > 0 else []
        if kept:
            self._queue.appendleft(_Packed(kept))
            self._count(len(kept))
        if len(kept) < len(rows):
            self._count_evictions({"age": 0, "capacity": len(rows) - len(kept)})

    def _failed(self, exc: Exception, futures: Sequence[concurrent.futures.Future[Any]]) -> None:
        """Tell each waiting answer why it failed; pause before the writer tries again."""
        if not self._failing:
            log.warning("Writing the prediction log %s failed: %r; retrying.", self.location, exc)
            self._failing = True
        error = self._unavailable(exc, "written")
        for future in futures:
            if not future.done():
                future.set_exception(error)
        if self._thread.is_alive():
            time.sleep(self._flush_seconds)

    def _recovered(self) -> None:
        if self._failing:
            log.warning("Writing the prediction log %s works again.", self.location)
            self._failing = False

    def _abandon(self) -> None:
        """At close, with Redis still failing: give up what is queued, saying how much."""
        items = list(self._queue)
        self._queue.clear()
        lost = sum(len(item.pack()) for item in items if isinstance(item, _Rows | _Packed))
        error = LogUnavailableError(f"The prediction log at {self.location} is closed.")
        for item in items:
            if isinstance(item, _Answer | _Barrier) and not item.future.done():
                item.future.set_exception(error)
        if lost:
            log.warning("Closing the prediction log %s lost %d predictions.", self.location, lost)
            self._count_evictions({"age": 0, "capacity": lost})

    def _unavailable(self, exc: Exception, verb: str) -> LogUnavailableError:
        return LogUnavailableError(
            f"The prediction log at {self.location} could not be {verb} "
            f"({type(exc).__name__}); check that Redis is running and reachable there, then retry."
        )

    def _count_evictions(self, evicted: dict[str, int]) -> None:
        if self._on_evict is None:
            return
        for reason in ("age", "capacity"):
            if evicted[reason]:
                self._on_evict(reason, evicted[reason])
