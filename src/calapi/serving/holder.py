"""The model answering now: loaded from its source, watched, and swapped atomically."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Coroutine, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from calapi.errors import ModelError, ModelRefusedError
from calapi.serving.metrics import ApiMetrics
from calapi.serving.sources import LoadedModel, ModelSource

log = logging.getLogger("calapi")
FIRST_LOAD_WAIT_SECONDS: Final = 30.0
# A source already tried is loaded again (forced, or a retry of a failed one) at most this often;
# requests in between get that attempt's result, so a burst of /reload costs one load.
RELOAD_MIN_SECONDS: Final = 1.0

Result = Literal["loaded", "unchanged", "failed", "refused"]  # metrics.RELOAD_RESULTS


def _load_settled(source: ModelSource) -> LoadedModel:
    """``source.load()``, then its garbage collected and the surviving heap frozen.

    Loading compiles the predictor's numba kernels and leaves many long-lived objects behind.
    Left alone, the first full collection under traffic scans them all: a 100-170 ms pause
    that showed as a p99 of ~100 ms over the first seconds of load. Collected here, before the
    model answers, and frozen (``gc.freeze``), they are never scanned again. A model swapped
    out later is still freed by reference counting.
    """
    model = source.load()
    gc.collect()
    gc.freeze()
    return model


@dataclass(frozen=True)
class Reload:
    """How one look at the model source ended, and why when it did not load."""

    result: Result
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.result in ("loaded", "unchanged")


@dataclass(frozen=True)
class Stale:
    """Why the model serving is no longer what its source holds, and since when."""

    reason: str
    since: str
    result: Result


@dataclass(frozen=True)
class _Attempt:
    signature: Hashable
    at: float  # time.monotonic()
    outcome: Reload


class ModelHolder:
    """The model answering now; reloads it when its source changes, swapping atomically.

    Looks at the source are single-flight: a caller arriving while one runs waits for it, then
    joins (or starts) the next, so any burst of callers causes at most two looks.
    """

    def __init__(
        self,
        source: ModelSource,
        metrics: ApiMetrics,
        on_swap: Callable[[LoadedModel], None] | None = None,
    ) -> None:
        self.source = source
        self.current: LoadedModel | None = None
        self.problem: str | None = "The model is still loading."
        self.stale: Stale | None = None
        self._metrics = metrics
        self._on_swap = on_swap
        self._served: Hashable = object()
        self._attempt: _Attempt | None = None
        self._flight: asyncio.Task[Reload] | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def start(self, reload_interval: float) -> None:
        """Load the model (waiting a bounded time), then check its source every interval."""
        first = asyncio.create_task(self.refresh())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(first), FIRST_LOAD_WAIT_SECONDS)
        if reload_interval > 0:
            self._watcher = asyncio.create_task(self._watch(reload_interval))

    async def stop(self) -> None:
        """Stop watching the source."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    async def refresh(self, *, force: bool = False) -> Reload:
        """Load the model unless its source holds what serves (``force``: even then).

        A source tried less than RELOAD_MIN_SECONDS ago is not loaded again: the caller gets
        that attempt's result.
        """
        return await self._single_flight(lambda: self._look(force=force, asked=True))

    async def _single_flight(self, look: Callable[[], Coroutine[Any, Any, Reload]]) -> Reload:
        if self._flight is not None:
            # It began before this call, so it may have read the source before the change
            # this caller asks about: wait for it, then join the next one.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._flight)
        if self._flight is None:
            self._flight = asyncio.create_task(look())
            self._flight.add_done_callback(self._landed)
        return await asyncio.shield(self._flight)

    def _landed(self, flight: asyncio.Task[Reload]) -> None:
        if self._flight is flight:
            self._flight = None

    async def _look(self, *, force: bool, asked: bool) -> Reload:
        try:
            signature = await asyncio.to_thread(self.source.signature)
        except ModelError as exc:
            return self._count(self._failed(exc))
        if signature == self._served and not force:
            self._fresh()
            return self._count(Reload("unchanged")) if asked else Reload("unchanged")
        tried = self._attempt
        if (
            tried is not None
            and tried.signature == signature
            and (not asked or time.monotonic() - tried.at < RELOAD_MIN_SECONDS)
        ):
            return tried.outcome
        return self._count(await self._load(signature))

    async def _load(self, signature: Hashable) -> Reload:
        started = time.monotonic()
        try:
            model = await asyncio.to_thread(_load_settled, self.source)
        except ModelError as exc:
            outcome = self._failed(exc)
        else:
            self._swap(model)
            self._served = signature
            outcome = Reload("loaded")
        self._attempt = _Attempt(signature, started, outcome)
        return outcome

    def _count(self, outcome: Reload) -> Reload:
        self._metrics.model_reloads.labels(outcome.result).inc()
        return outcome

    async def _watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self._look_quietly()

    async def _look_quietly(self) -> None:
        try:
            await self._single_flight(lambda: self._look(force=False, asked=False))
        except Exception:
            log.exception("Checking %s for a new model failed", self.source.description)

    def _swap(self, model: LoadedModel) -> None:
        if self._on_swap is not None:
            self._on_swap(model)
        # One reference assignment: a batch reads the model once, so none sees a mix.
        self.current = model
        self.problem = None
        self._fresh()
        self._metrics.show_model(model.version, model.sha256, model.source, alias=model.alias)
        log.info("Serving model %s (alias %s, run %s) from %s (%s path)", model.version,
                 model.alias, model.run_id, model.source, model.predict.kind)  # fmt: skip

    def _failed(self, exc: ModelError) -> Reload:
        outcome = Reload("refused" if isinstance(exc, ModelRefusedError) else "failed", str(exc))
        reason = str(exc)
        if self.current is None:
            if reason != self.problem:
                log.warning("%s", reason)
            self.problem = reason
            return outcome
        previous = self.stale
        if previous is None or previous.reason != reason:
            log.warning("Still serving %s: %s", self.current.version, reason)
        since = previous.since if previous else datetime.now(UTC).isoformat(timespec="seconds")
        self.stale = Stale(reason, since, outcome.result)
        self._metrics.model_stale = True
        return outcome

    def _fresh(self) -> None:
        if self.stale is not None:
            log.info("The model source holds the serving model again; no longer stale.")
        self.stale = None
        self._metrics.model_stale = False
