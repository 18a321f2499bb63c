"""Adaptive micro-batching: rows of concurrent requests go to the model in one call.

Requests queue on the event loop. One worker thread predicts; while it runs, new
requests wait, and the next call takes every row that queued meanwhile (up to a cap).
Under light load a request is predicted alone and at once; under heavy load the calls
grow, so the per-call overhead of the model is paid once for many requests.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from calapi.model.features import FloatArray
from calapi.model.predictor import limit_threads
from calapi.serving.sources import LoadedModel


class ModelUnavailableError(RuntimeError):
    """No model is loaded."""


@dataclass(slots=True)
class _Job:
    raw: FloatArray
    future: asyncio.Future[tuple[FloatArray, LoadedModel]]


Answer = tuple[FloatArray, LoadedModel]
# Called once per model call with its raw rows, their predictions and the model.
BatchCallback = Callable[[FloatArray, FloatArray, LoadedModel], None]


class MicroBatcher:
    """Runs ``current_model().predict`` on one worker thread over batched requests."""

    def __init__(
        self,
        current_model: Callable[[], LoadedModel | None],
        *,
        max_rows: int,
        max_wait_seconds: float = 0.0,
        threads: int = 1,
        on_batch: BatchCallback | None = None,
    ) -> None:
        self._current_model = current_model
        self._max_rows = max_rows
        self._max_wait = max_wait_seconds
        self._on_batch = on_batch
        self._queue: deque[_Job] = deque()
        self._busy = False
        self._executor = ThreadPoolExecutor(
            1, thread_name_prefix="calapi-predict", initializer=limit_threads, initargs=(threads,)
        )

    async def predict(self, raw: FloatArray) -> Answer:
        """Predict raw rows; returns the kcal and the model that computed all of them."""
        loop = asyncio.get_running_loop()
        job = _Job(raw, loop.create_future())
        self._queue.append(job)
        if not self._busy:
            self._busy = True
            if self._max_wait > 0:
                loop.call_later(self._max_wait, self._launch, loop)
            else:
                self._launch(loop)
        return await job.future

    def close(self) -> None:
        """Stop the worker thread once queued work is done."""
        self._executor.shutdown(wait=True)

    def _launch(self, loop: asyncio.AbstractEventLoop) -> None:
        jobs = self._take()
        done = self._executor.submit(self._run, [job.raw for job in jobs])
        done.add_done_callback(lambda f: loop.call_soon_threadsafe(self._finish, loop, jobs, f))

    def _take(self) -> list[_Job]:
        jobs = [self._queue.popleft()]
        rows = len(jobs[0].raw)
        while self._queue and rows + len(self._queue[0].raw) <= self._max_rows:
            job = self._queue.popleft()
            rows += len(job.raw)
            jobs.append(job)
        return jobs

    def _run(self, raws: list[FloatArray]) -> Answer:
        # Read the model once: every row of this call comes from the same model.
        model = self._current_model()
        if model is None:
            raise ModelUnavailableError
        raw = raws[0] if len(raws) == 1 else np.concatenate(raws)
        predicted = model.predict(raw)
        if self._on_batch is not None:
            # Once per call, off the event loop: the per-row metrics cost one numpy pass.
            self._on_batch(raw, predicted, model)
        return predicted, model

    def _finish(
        self, loop: asyncio.AbstractEventLoop, jobs: list[_Job], done: Future[Answer]
    ) -> None:
        error = done.exception()
        if error is not None:
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(error)
        else:
            self._deliver(jobs, *done.result())
        if self._queue:
            self._launch(loop)
        else:
            self._busy = False

    def _deliver(self, jobs: list[_Job], predicted: FloatArray, model: LoadedModel) -> None:
        start = 0
        for job in jobs:
            end = start + len(job.raw)
            if not job.future.done():
                job.future.set_result((predicted[start:end], model))
            start = end
