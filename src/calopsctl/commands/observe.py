"""Observe commands: the dashboard's panels in the terminal (watch) and as PNG charts
(report), straight from Prometheus, for when Grafana is not there to look at."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from calopsctl.application import settings
from calopsctl.console import err
from calopsctl.console import out as out_console
from calopsctl.project import describe
from calopsctl.services import PROMETHEUS, loopback_url

PROMETHEUS_OPTION = typer.Option(
    "--prometheus",
    help="Prometheus base URL (default: the running stack's Prometheus, else "
    f"{loopback_url(PROMETHEUS.default_port)}).",
    show_default=False,
)


def _seconds(value: str, option: str) -> float:
    """A duration option (90s, 30m, 1h, 2d) in seconds; a usage error naming ``option``."""
    from calopsctl.trafficdata import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def _prometheus_url(ctx: typer.Context, explicit: str | None) -> str:
    """The Prometheus to ask, after a line on stderr saying where it came from."""
    from calopsctl.panels import resolve_url

    cli = settings(ctx)
    given = f"Prometheus: {explicit.rstrip('/')} (from --prometheus)." if explicit else None
    err.print(given or describe(cli.home_info), markup=False)
    return resolve_url(explicit, cli.home)


def watch(
    ctx: typer.Context,
    *,
    window: Annotated[
        str, typer.Option(help="Span of the sparklines and the calorie bars: 90s, 30m, 1h, 2d.")
    ] = "15m",
    refresh: Annotated[float, typer.Option(help="Seconds between refreshes.", min=0.5)] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
    prometheus: Annotated[str | None, PROMETHEUS_OPTION] = None,
) -> None:
    """Watch the dashboard's panels live in the terminal: request rate, latency, predicted
    calories, rolling RMSLE, feedback lag, drift, model version, errors and firing alerts.

    The panels and their PromQL are Grafana's (stack/grafana/dashboards/calops.json), asked of
    Prometheus directly, so no Grafana is needed. Ctrl-C quits.

    [bold]Examples[/]
      calops watch
      calops watch --window 1h --refresh 5
      calops watch --once --prometheus http://127.0.0.1:9090
    """
    from calopsctl.watchview import watch as show

    window_s = _seconds(window, "--window")
    show(_prometheus_url(ctx, prometheus), window_s=window_s, refresh_s=refresh, once=once)


def report(
    ctx: typer.Context,
    *,
    since: Annotated[
        str, typer.Option(help="Span the charts cover, up to now: 90s, 30m, 1h, 2d.")
    ] = "1h",
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder to write the PNGs and index.html into.")
    ] = Path("calops-report"),
    prometheus: Annotated[str | None, PROMETHEUS_OPTION] = None,
) -> None:
    """Write every dashboard panel as a PNG chart over the last --since, and an index.html
    listing them; prints the path of index.html.

    Panels without data get a chart saying "no data". Charts are drawn with matplotlib.

    [bold]Examples[/]
      calops report
      calops report --since 30m --out /tmp/calops-report
    """
    from calopsctl.report import write_report

    since_s = _seconds(since, "--since")
    index = write_report(_prometheus_url(ctx, prometheus), since_s, since, out)
    out_console.print(str(index), markup=False)
