"""The API's state and behaviour, independent of HTTP: model, batching, feedback, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Final

from calapi.errors import ModelError
from calapi.model.features import FloatArray
from calapi.serving.batching import MicroBatcher
from calapi.serving.drift import DriftMonitor
from calapi.serving.feedback import Outcome, PendingStore, RollingRmsle
from calapi.serving.metrics import ApiMetrics, bind_gauge
from calapi.serving.parsing import ParsedRows
from calapi.serving.schemas import RowId
from calapi.serving.settings import ApiSettings
from calapi.serving.sources import LoadedModel, ModelSource

log = logging.getLogger("calapi")
FIRST_LOAD_WAIT_SECONDS: Final = 30.0


@dataclass(frozen=True, slots=True)
class Served:
    """Predictions for one request, with the ids they were stored under."""

    ids: list[RowId]
    calories: list[float]
    model_version: str


class ModelHolder:
    """The model answering now; reloads it when its source changes, swapping atomically."""

    def __init__(
        self,
        source: ModelSource,
        metrics: ApiMetrics,
        on_swap: Callable[[LoadedModel], None] | None = None,
    ) -> None:
        self.source = source
        self.current: LoadedModel | None = None
        self.problem: str | None = "The model is still loading."
        self._metrics = metrics
        self._on_swap = on_swap
        self._signature: Hashable = object()

    async def refresh(self, *, force: bool = False) -> bool:
        """Load the model if its source changed (or when forced); True when a new one is in."""
        try:
            signature = await asyncio.to_thread(self.source.signature)
        except ModelError as exc:
            self._fail(str(exc))
            return False
        if signature == self._signature and not force:
            return False
        self._signature = signature
        try:
            model = await asyncio.to_thread(self.source.load)
        except ModelError as exc:
            self._fail(str(exc))
            return False
        self._swap(model)
        return True

    async def watch(self, interval: float) -> None:
        """Check the source every ``interval`` seconds, forever."""
        while True:
            await asyncio.sleep(interval)
            if await self._refresh_quietly():
                self._metrics.model_reloads.labels("loaded").inc()

    async def _refresh_quietly(self) -> bool:
        try:
            return await self.refresh()
        except Exception:
            log.exception("Checking %s for a new model failed", self.source.description)
            return False

    def _swap(self, model: LoadedModel) -> None:
        if self._on_swap is not None:
            self._on_swap(model)
        # One reference assignment: a batch reads the model once, so none sees a mix.
        self.current = model
        self.problem = None
        self._metrics.show_model(model.version, model.sha256, model.source)
        log.info("Serving model %s from %s (%s path)", model.version, model.source,
                 model.predict.kind)  # fmt: skip

    def _fail(self, reason: str) -> None:
        if self.current is None:
            self.problem = reason
        else:
            self._metrics.model_reloads.labels("failed").inc()
        log.warning("%s", reason)


class Service:
    """Everything a request needs; built once per app."""

    def __init__(self, settings: ApiSettings, metrics: ApiMetrics, source: ModelSource) -> None:
        self.settings = settings
        self.metrics = metrics
        self.drift = DriftMonitor(settings.drift_window_seconds, min_rows=settings.drift_min_rows)
        # A new model brings its own reference, so its drift window starts empty.
        self.holder = ModelHolder(
            source, metrics, on_swap=lambda model: self.drift.reset(model, model.card)
        )
        self.store = PendingStore(
            settings.feedback_max_pending,
            settings.feedback_max_age_seconds,
            on_evict=lambda reason, count: metrics.evictions.labels(reason).inc(count),
        )
        self.rolling = RollingRmsle(settings.rolling_window_seconds)
        self.batcher = MicroBatcher(
            lambda: self.holder.current,
            max_rows=max(settings.microbatch_max_rows, 1),
            max_wait_seconds=settings.microbatch_max_wait_ms / 1000.0,
            threads=settings.predict_threads,
            on_batch=self._record_batch,
        )
        self._id_prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)
        self._watcher: asyncio.Task[None] | None = None
        bind_gauge(metrics.rolling_rmsle, self.rolling.value)
        bind_gauge(metrics.pending, self._awaiting)
        metrics.bind_drift(self.drift.snapshot)
        metrics.show_model(None)

    async def start(self) -> None:
        """Load the model (waiting a bounded time) and start watching its source."""
        first = asyncio.create_task(self.holder.refresh())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(first), FIRST_LOAD_WAIT_SECONDS)
        if self.settings.reload_interval_seconds > 0:
            self._watcher = asyncio.create_task(
                self.holder.watch(self.settings.reload_interval_seconds)
            )

    async def stop(self) -> None:
        """Stop watching and let the worker thread finish."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await asyncio.to_thread(self.batcher.close)

    async def predict(self, rows: ParsedRows) -> Served:
        """Predict, remember each prediction for feedback, and record the metrics."""
        calories, model = await self.batcher.predict(rows.raw)
        ids = [self._assign() if row_id is None else row_id for row_id in rows.ids]
        values = calories.tolist()
        self.store.add_many(list(map(str, ids)), values, model.version)
        return Served(ids, values, model.version)

    def feedback(self, row_id: RowId, actual: float) -> Outcome:
        """Match ground truth with its prediction; raises UnknownIdError or AlreadyAnsweredError."""
        outcome = self.store.answer(str(row_id), actual)
        self.rolling.add(outcome.squared_log_error)
        self.metrics.feedback_lag.observe(outcome.lag_seconds)
        return outcome

    def _record_batch(self, raw: FloatArray, calories: FloatArray, model: LoadedModel) -> None:
        self.metrics.batch_rows.observe(len(calories))
        self.metrics.observe_predictions(calories)
        self.metrics.count_out_of_range(model.out_of_range(raw))
        self.drift.observe(model, raw, calories)

    def _assign(self) -> str:
        return f"{self._id_prefix}-{next(self._counter)}"

    def _awaiting(self) -> float:
        self.store.expire()
        return float(self.store.awaiting)
