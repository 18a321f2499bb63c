"""The model answering now: loaded from its source, watched, and swapped atomically."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Hashable
from typing import Final

from calapi.errors import ModelError
from calapi.serving.metrics import ApiMetrics
from calapi.serving.sources import LoadedModel, ModelSource

log = logging.getLogger("calapi")
FIRST_LOAD_WAIT_SECONDS: Final = 30.0


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

    async def _watch(self, interval: float) -> None:
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
        self._metrics.show_model(model.version, model.sha256, model.source, alias=model.alias)
        log.info("Serving model %s (alias %s, run %s) from %s (%s path)", model.version,
                 model.alias, model.run_id, model.source, model.predict.kind)  # fmt: skip

    def _fail(self, reason: str) -> None:
        if self.current is None:
            self.problem = reason
        else:
            self._metrics.model_reloads.labels("failed").inc()
        log.warning("%s", reason)
