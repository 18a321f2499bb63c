"""From the command's settings to printed output and an exit code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from calapi.errors import CalopsError
from calopsctl import console
from calopsctl.simulator.run import simulate
from calopsctl.simulator.settings import SimulationSettings
from calopsctl.simulator.view import (
    LiveView,
    PlainView,
    QuietView,
    View,
    announce,
    print_summary,
)

EXIT_INTERRUPTED = 130


def run_simulation(settings: SimulationSettings, *, json_output: bool) -> int:
    """Run ``calops simulate``; print progress and the summary; return the exit code."""
    report = simulate(settings, view=_view(json_output), announce=_announcer(json_output))
    if json_output:
        console.print_json(report)
    else:
        print_summary(console.out, report)
    if report["interrupted"]:
        return EXIT_INTERRUPTED
    if report["api_gone"]:
        raise CalopsError(_gone_sentence(report, settings.gone_after))
    if report["sent"] and not report["ok"]:
        raise CalopsError(
            f"No prediction succeeded ({report['errors']} errors); "
            "check the API with `calops health`."
        )
    return 0


def _gone_sentence(report: dict[str, Any], window: float) -> str:
    return (
        f"The API at {report['url']} stopped answering after {report['ok']} predictions "
        f"({report['api_gone']} for {window:g}s); check it with `calops health` or "
        "`calops logs api`, start it again (`calops up` or `calops serve`) and rerun."
    )


def _view(json_output: bool) -> View:
    if json_output:
        return QuietView()
    if console.interactive():
        return LiveView(console.out)
    return PlainView(console.out)


def _announcer(json_output: bool) -> Callable[[str], None]:
    def say(text: str) -> None:
        if not json_output:
            announce(console.out, text)

    return say
