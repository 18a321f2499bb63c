"""The open-loop engine: requests leave on an absolute schedule whatever the server does.

Request ``i`` is due at ``t0 + i / rps``; a late loop sends at once to catch up, so the
rate does not drift. At most ``max_in_flight`` predictions are outstanding: when the bound
is reached the next request waits for a slot and is counted as late. Every wait is sliced
so that a stop request is seen within ``SLICE`` seconds, and every phase has an end.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Coroutine, Iterable
from http import HTTPStatus
from typing import Any, Final

import numpy as np
import orjson

from calopsctl.simulator.answers import predictions
from calopsctl.simulator.feedback import FeedbackQueue, PendingFeedback
from calopsctl.simulator.outage import Outage
from calopsctl.simulator.plan import PlannedRequest
from calopsctl.simulator.settings import FEEDBACK_JITTER, SimulationSettings
from calopsctl.simulator.stats import Stats, squared_log_errors, succeeded
from calopsctl.simulator.transport import ConnectionFailedError, TimedOutError, Transport

SLICE: Final = 0.05  # longest sleep before looking at the stop flag again
STOP_GRACE: Final = 0.5  # after a stop, how long answers already on their way may take
CUTOFF_GRACE: Final = 1.0  # a duration run still sends requests this late, then skips them


class Engine:
    """Runs one simulation against ``transport``, recording into ``stats``."""

    def __init__(
        self,
        settings: SimulationSettings,
        plan: Iterable[PlannedRequest],
        transport: Transport,
        stats: Stats,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.plan = plan
        self.transport = transport
        self.stats = stats
        self.clock = clock
        self.stop = asyncio.Event()
        self.feedback = FeedbackQueue()
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._predicting: set[asyncio.Task[None]] = set()
        self._answering: set[asyncio.Task[None]] = set()
        self._jitter = random.Random(settings.seed)
        self.started: float | None = None
        self.sending_ended: float | None = None  # then only answers and feedback are awaited
        self.outage = Outage(window=settings.gone_after)
        self.gone: str | None = None  # why the API counts as gone, once it does

    async def run(self) -> None:
        """Send the plan, wait for the answers, flush the feedback; stop early on ``stop``."""
        sending_done = asyncio.Event()
        feedback_loop = asyncio.create_task(self._feedback_loop(sending_done))
        try:
            await self._send_all()
            self.sending_ended = self.clock()
            await self._settle(self._predicting, self.settings.timeout + 1.0)
            sending_done.set()
            await feedback_loop
            await self._settle(self._answering, self.settings.timeout + 1.0)
        finally:
            feedback_loop.cancel()
            await _cancel(self._predicting | self._answering | {feedback_loop})

    @property
    def feedback_left(self) -> int:
        """Truths not yet answered: waiting for their due time or on their way."""
        return len(self.feedback) + len(self._answering)

    async def _send_all(self) -> None:
        t0 = self.started = self.clock()
        cutoff = math.inf
        if self.settings.duration is not None:
            cutoff = t0 + self.settings.duration + CUTOFF_GRACE
        for request in self.plan:
            deadline = t0 + request.due
            if not await self._wait_until(deadline) or self.clock() > cutoff:
                break
            if not await self._take_slot(cutoff):
                break
            now = self.clock()
            self.stats.on_send(now, now - deadline)
            self._spawn(self._predicting, self._predict(request))
        self.stats.skipped = self.stats.planned - self.stats.sent

    async def _wait_until(self, deadline: float) -> bool:
        while (remaining := deadline - self.clock()) > 0:
            if self.stop.is_set():
                return False
            await asyncio.sleep(min(remaining, SLICE))
        return not self.stop.is_set()

    async def _take_slot(self, cutoff: float) -> bool:
        if not self._slots.locked():
            await self._slots.acquire()
            return True
        self.stats.late += 1
        while not self.stop.is_set() and self.clock() < cutoff:
            try:
                await asyncio.wait_for(self._slots.acquire(), timeout=SLICE)
            except TimeoutError:
                continue
            return True
        return False

    async def _predict(self, request: PlannedRequest) -> None:
        started = self.clock()
        try:
            reply = await self.transport.post("/predict", request.body)
        except TimedOutError:
            self.stats.timeouts += 1
            return
        except ConnectionFailedError as exc:
            self.stats.connection_errors += 1
            self._on_connection_failed(exc)
            return
        except asyncio.CancelledError:
            self.stats.abandoned += 1
            raise
        finally:
            self._slots.release()
        answered = self.clock()
        self.outage.answered()
        self.stats.on_reply(reply.status, answered - started)
        if succeeded(reply.status):
            self._on_predictions(request, reply.body, answered)

    def _on_predictions(self, request: PlannedRequest, body: bytes, answered: float) -> None:
        values, version = predictions(body, request.ids)
        predicted = np.asarray(values, dtype=np.float64)
        self.stats.rows_predicted += int(np.isfinite(predicted).sum())
        self.stats.accuracy.add(squared_log_errors(predicted, request.truth), answered)
        if version is not None:
            self.stats.model_versions.add(version)
        for i in np.flatnonzero(request.feedback):
            self._schedule_feedback(
                request.ids[i], float(request.truth[i]), float(predicted[i]), answered
            )

    def _schedule_feedback(self, row_id: str, truth: float, predicted: float, now: float) -> None:
        jitter = self._jitter.uniform(1.0 - FEEDBACK_JITTER, 1.0 + FEEDBACK_JITTER)
        due = now + self.settings.feedback_delay * jitter
        self.feedback.push(PendingFeedback(due, row_id, truth, predicted))
        self.stats.feedback.scheduled += 1

    async def _feedback_loop(self, sending_done: asyncio.Event) -> None:
        flush_until = math.inf
        while not self.stop.is_set():
            now = self.clock()
            free = self.settings.max_in_flight - len(self._answering)
            for item in self.feedback.pop_due(now, free):
                self._spawn(self._answering, self._send_feedback(item))
            if sending_done.is_set():
                if not self.feedback:
                    break
                if flush_until == math.inf:
                    flush_until = now + self.settings.feedback_wait_s + CUTOFF_GRACE
                if now > flush_until:
                    break
            next_due = self.feedback.next_due()
            wait = SLICE if next_due is None or free <= 0 else next_due - now
            await asyncio.sleep(min(max(wait, 0.001), SLICE))
        self.stats.feedback.dropped += self.feedback.clear()

    async def _send_feedback(self, item: PendingFeedback) -> None:
        body = orjson.dumps({"id": item.row_id, "Calories": round(item.truth, 3)})
        self.stats.feedback.sent += 1
        try:
            reply = await self.transport.post("/feedback", body)
        except TimedOutError:
            self.stats.feedback.errors += 1
            return
        except ConnectionFailedError as exc:
            self.stats.feedback.errors += 1
            self._on_connection_failed(exc)
            return
        self.outage.answered()
        self._count_feedback(item, reply.status)

    def _on_connection_failed(self, exc: ConnectionFailedError) -> None:
        """Stop the run once connections have failed for the whole window with no answer."""
        if self.gone is None and self.outage.failed(self.clock(), exc.reason):
            self.gone = exc.reason
            self.stop.set()

    def _count_feedback(self, item: PendingFeedback, status: int) -> None:
        counts = self.stats.feedback
        if succeeded(status):
            counts.ok += 1
            errors = squared_log_errors(np.array([item.predicted]), np.array([item.truth]))
            self.stats.feedback_accuracy.add(errors, self.clock())
        elif status == HTTPStatus.NOT_FOUND:
            counts.not_found += 1
        elif status == HTTPStatus.CONFLICT:
            counts.conflict += 1
        else:
            counts.errors += 1

    async def _settle(self, tasks: set[asyncio.Task[None]], limit: float) -> None:
        give_up = self.clock() + limit
        while tasks and self.clock() < give_up:
            if self.stop.is_set():
                give_up = min(give_up, self.clock() + STOP_GRACE)
            await asyncio.wait(set(tasks), timeout=SLICE)

    def _spawn(self, tasks: set[asyncio.Task[None]], work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def _cancel(tasks: set[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
