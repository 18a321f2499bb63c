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
from calopsctl.simulator.target import check_api
from calopsctl.simulator.transport import HttpxTransport, Transport
from calopsctl.simulator.view import RateMeter, View, snapshot

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
    announce(_announcement(settings, pool.source))
    ending, elapsed = asyncio.run(_drive(settings, plan, stats, view, transport(settings)))
    return summary(stats, run=_run_facts(settings, pool.source, plan.run_id, ending, elapsed))


@dataclass(frozen=True)
class Ending:
    """How the sending stopped early, if it did: Ctrl-C, or the API went away (and why)."""

    interrupted: bool = False
    api_gone: str | None = None


async def _drive(
    settings: SimulationSettings, plan: RequestPlan, stats: Stats, view: View, client: Transport
) -> tuple[Ending, float]:
    try:
        await check_api(client, settings.url)
        engine = Engine(settings, plan, client, stats)
        loop = asyncio.get_running_loop()
        with _stop_on_signals(engine.stop):
            view.start()
            progress = asyncio.create_task(_show_progress(view, engine, stats))
            try:
                await engine.run()
            finally:
                progress.cancel()
                await asyncio.gather(progress, return_exceptions=True)
                view.stop()
        ending = Ending(interrupted=engine.stop.is_set() and not engine.gone, api_gone=engine.gone)
        return ending, loop.time() - (engine.started or loop.time())
    finally:
        await client.aclose()


async def _show_progress(view: View, engine: Engine, stats: Stats) -> None:
    meter = RateMeter()
    meter(engine.clock(), stats.sent)
    planned_s = engine.settings.planned_seconds
    while True:
        await asyncio.sleep(view.interval)
        now = engine.clock()
        elapsed = now - (engine.started or now)
        view.show(snapshot(stats, elapsed, planned_s, meter(now, stats.sent)))


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


def _announcement(settings: SimulationSettings, source: str) -> str:
    length = (
        f"{settings.count} requests"
        if settings.count is not None
        else f"{settings.planned_seconds:g}s ({settings.requests} requests)"
    )
    drift = "" if settings.drift == "none" else f", {settings.drift} drift from "
    drift += f"{settings.drift_start_s:g}s" if drift else ""
    return (
        f"Sending {length} at {settings.rps:g}/s to {settings.url} (rows: {source}{drift}, "
        f"feedback {settings.feedback_fraction:g} after {settings.feedback_delay:g}s); "
        "Ctrl-C stops."
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
