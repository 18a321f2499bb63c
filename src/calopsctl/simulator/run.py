"""One simulation from options to summary: rows, API check, engine, progress, report."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from calopsctl.simulator.engine import Engine
from calopsctl.simulator.http1 import Http1Transport
from calopsctl.simulator.plan import RequestPlan
from calopsctl.simulator.rows import load_pool
from calopsctl.simulator.settings import SimulationSettings
from calopsctl.simulator.stats import Stats, summary
from calopsctl.simulator.target import CHECK_TIMEOUT_S, check_api
from calopsctl.simulator.transport import HttpxTransport, Transport
from calopsctl.simulator.view import RateMeter, Snapshot, View, snapshot

TransportFactory = Callable[[SimulationSettings], Transport]


def http_transport(settings: SimulationSettings) -> Transport:
    """Pooled keep-alive connections: one per in-flight prediction and one per feedback.

    Plain http goes through the lean client (the rate targets need it); https through httpx.
    """
    connections = 2 * settings.max_in_flight
    if settings.url.startswith("http://"):
        return Http1Transport(settings.url, connections=connections, timeout=settings.timeout)
    return HttpxTransport(settings.url, connections=connections, timeout=settings.timeout)


def simulate(
    settings: SimulationSettings,
    *,
    view: View,
    announce: Callable[[str], None] = lambda line: None,
    transport: TransportFactory = http_transport,
) -> dict[str, Any]:
    """Run the simulation and return its summary (``interrupted`` says if it was stopped)."""
    pool = load_pool(
        settings.data,
        rows_needed=settings.requests * settings.batch_size,
        seed=settings.seed,
        need_truth=settings.feedback_fraction > 0,
    )
    plan = RequestPlan(settings, pool)
    stats = Stats(target_rps=settings.rps, planned=len(plan))
    opening = announcement(settings, pool.source)
    ending, elapsed = asyncio.run(
        _drive(plan, stats, view, transport(settings), ready=lambda: announce(opening))
    )
    return summary(stats, run=_run_facts(settings, pool.source, plan.run_id, ending, elapsed))


@dataclass(frozen=True)
class Ending:
    """How the sending stopped early, if it did: Ctrl-C, or the API went away (and why)."""

    interrupted: bool = False
    api_gone: str | None = None


async def _drive(
    plan: RequestPlan, stats: Stats, view: View, client: Transport, *, ready: Callable[[], None]
) -> tuple[Ending, float]:
    """Check the API, then call ``ready`` (which says what is sent) and run the engine.

    The check comes first so that a run against an API that is down says so and nothing else.
    """
    settings = plan.settings
    try:
        await check_api(client, settings.url, timeout=min(settings.timeout, CHECK_TIMEOUT_S))
        ready()
        engine = Engine(settings, plan, client, stats)
        await _run_with_progress(engine, view)
        ending = Ending(interrupted=engine.stop.is_set() and not engine.gone, api_gone=engine.gone)
        return ending, engine.clock() - (engine.started or engine.clock())
    finally:
        await client.aclose()


async def _run_with_progress(engine: Engine, view: View) -> None:
    with _stop_on_signals(engine.stop):
        view.start()
        progress = asyncio.create_task(_show_progress(view, engine))
        try:
            await engine.run()
            view.show(_progress_now(engine, rate=None))  # the last frame: what the drain left
        finally:
            progress.cancel()
            await asyncio.gather(progress, return_exceptions=True)
            view.stop()


async def _show_progress(view: View, engine: Engine) -> None:
    meter = RateMeter()
    meter(engine.clock(), engine.stats.sent)
    while True:
        await asyncio.sleep(view.interval)
        view.show(_progress_now(engine, meter(engine.clock(), engine.stats.sent)))


def _progress_now(engine: Engine, rate: float | None) -> Snapshot:
    """The engine's state now; once sending is over, with the feedback still to go back."""
    now = engine.clock()
    left = engine.feedback_left if engine.sending_ended is not None else None
    elapsed = now - (engine.started or now)
    return snapshot(engine.stats, elapsed, engine.settings.planned_seconds, rate, left)


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Ctrl-C (or SIGTERM) stops the run cleanly; a second Ctrl-C interrupts at once."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []

    def on_signal() -> None:
        stop.set()
        for signum in installed:
            loop.remove_signal_handler(signum)
        installed.clear()

    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, on_signal)
            installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def announcement(settings: SimulationSettings, source: str) -> str:
    """Two short lines (what goes where; which rows and truths) rather than one too wide."""
    requests = f"{settings.requests} request{'s' if settings.requests != 1 else ''}"
    if settings.count is None:
        requests = f"{settings.planned_seconds:g}s ({requests})"
    drift = "" if settings.drift == "none" else f", {settings.drift} drift from "
    drift += f"{settings.drift_start_s:g}s" if drift else ""
    return (
        f"Sending {requests} at {settings.rps:g}/s to {settings.url}; Ctrl-C stops.\n"
        f"Rows: {source}{drift}; feedback for {settings.feedback_fraction:.0%} of rows after "
        f"{settings.feedback_delay:g}s."
    )


def _run_facts(
    settings: SimulationSettings, source: str, run_id: str, ending: Ending, elapsed: float
) -> dict[str, Any]:
    return {
        "url": settings.url,
        "run_id": run_id,
        "interrupted": ending.interrupted,
        "api_gone": ending.api_gone,
        "elapsed_s": round(elapsed, 3),
        "rows_source": source,
        "batch_size": settings.batch_size,
        "drift": str(settings.drift),
        "drift_start_s": round(settings.drift_start_s, 3),
        "feedback_delay_s": settings.feedback_delay,
        "feedback_fraction": settings.feedback_fraction,
        "seed": settings.seed,
    }
