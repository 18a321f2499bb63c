"""From the command's options to printed output and an exit code."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from calapi.errors import CalopsError
from calopsctl import console
from calopsctl.simulator.run import simulate
from calopsctl.simulator.settings import DEFAULT_DURATION_S, DriftKind, SimulationSettings
from calopsctl.simulator.target import resolve_url
from calopsctl.simulator.view import LiveView, PlainView, QuietView, View, print_summary

EXIT_INTERRUPTED = 130


def run_simulation(
    *,
    url: str | None,
    rps: float,
    duration: float | None,
    count: int | None,
    feedback_delay: float,
    feedback_fraction: float,
    data: Path | None,
    drift: DriftKind,
    drift_start: float | None,
    seed: int,
    batch_size: int,
    max_in_flight: int,
    timeout: float,
    json_output: bool,
) -> int:
    """Run ``calops simulate``; print progress and the summary; return the exit code."""
    settings = SimulationSettings(
        url=resolve_url(url),
        rps=rps,
        duration=DEFAULT_DURATION_S if duration is None and count is None else duration,
        count=count,
        feedback_delay=feedback_delay,
        feedback_fraction=feedback_fraction,
        data=data,
        drift=drift,
        drift_start=drift_start,
        seed=seed,
        batch_size=batch_size,
        max_in_flight=max_in_flight,
        timeout=timeout,
    )
    report = simulate(settings, view=_view(json_output), announce=_announcer(json_output))
    if json_output:
        console.print_json(report)
    else:
        print_summary(console.out, report)
    if report["interrupted"]:
        return EXIT_INTERRUPTED
    if report["sent"] and not report["ok"]:
        raise CalopsError(
            f"No prediction succeeded ({report['errors']} errors); "
            "check the API with `calops health`."
        )
    return 0


def _view(json_output: bool) -> View:
    if json_output:
        return QuietView()
    if console.interactive():
        return LiveView(console.out)
    return PlainView(console.out)


def _announcer(json_output: bool) -> Callable[[str], None]:
    def announce(line: str) -> None:
        if not json_output:
            console.out.print(line, markup=False, highlight=False)

    return announce
