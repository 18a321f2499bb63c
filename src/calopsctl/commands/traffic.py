"""Traffic commands: simulate, and export the labelled traffic."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from calopsctl.application import settings
from calopsctl.console import err, one_of
from calopsctl.console import out as out_console
from calopsctl.project import describe
from calopsctl.services import API, loopback_url
from calopsctl.simulator.settings import DEFAULT_DURATION_S, DriftKind, SimulationSettings


def _above_zero(value: float | None) -> float | None:
    """A rate, a length or a timeout must be a finite number above 0 (``min=`` allows 0)."""
    if value is not None and not 0 < value < math.inf:
        raise typer.BadParameter(f"must be a number above 0, got {value}")
    return value


def _run_length(duration: float | None, count: int | None) -> float | None:
    """The duration to run for: the one given, none when --count is given, else the default."""
    if duration is not None and count is not None:
        raise typer.BadParameter("give one of them, not both", param_hint="--duration / --count")
    return DEFAULT_DURATION_S if duration is None and count is None else duration


def _url_option_source(ctx: typer.Context) -> str:
    """``CALOPS_URL`` when the --url value came from that variable, else ``--url``."""
    source = ctx.get_parameter_source("url")
    # By name: Typer ships its own copy of click, so click's enum is not the one it returns.
    return "CALOPS_URL" if source is not None and source.name == "ENVIRONMENT" else "--url"


def _target_line(ctx: typer.Context, url: str | None, seed_url: str | None) -> str | None:
    """The URL given and where it came from; None when the target comes from the stack.

    Said first on stderr so a run against an unexpected API is noticed before it starts.
    """
    if url:
        return f"Target: {url.rstrip('/')} (from {_url_option_source(ctx)})."
    if seed_url:
        return f"Target: {seed_url.rstrip('/')} (from URL)."
    return None


def simulate(
    ctx: typer.Context,
    *,
    url: Annotated[
        str | None,
        typer.Option(
            help="API base URL (default: $URL, else the running stack's API, "
            f"else {loopback_url(API.default_port)}).",
            envvar="CALOPS_URL",
            show_default=False,
        ),
    ] = None,
    rps: Annotated[
        float,
        typer.Option(
            help="Target /predict requests per second (each carries --batch-size rows).",
            callback=_above_zero,
        ),
    ] = 20.0,
    duration: Annotated[
        float | None,
        typer.Option(
            help=f"Seconds to send for (default {DEFAULT_DURATION_S:g} when --count is not given).",
            show_default=False,
            callback=_above_zero,
        ),
    ] = None,
    count: Annotated[
        int | None,
        typer.Option(
            help="Send exactly this many requests instead of a duration.",
            show_default=False,
            min=1,
        ),
    ] = None,
    feedback_delay: Annotated[
        float,
        typer.Option(help="Seconds before the true Calories go back (±10% jitter).", min=0.0),
    ] = 5.0,
    feedback_fraction: Annotated[
        float,
        typer.Option(help="Fraction of predicted rows whose truth is sent back.", min=0.0, max=1.0),
    ] = 1.0,
    data: Annotated[
        Path | None,
        typer.Option(
            help="CSV of rows to replay (any layout `calops train` reads; needs Calories for "
            "feedback). Default: the synthetic generator.",
            show_default=False,
        ),
    ] = None,
    drift: Annotated[
        DriftKind,
        typer.Option(
            help="covariate: inputs shift (heavier, longer, harder sessions); concept: the same "
            "inputs burn up to 30% more; both.",
            parser=one_of(DriftKind),
        ),
    ] = DriftKind.NONE,
    drift_start: Annotated[
        float | None,
        typer.Option(
            help="Seconds into the run when the drift starts (default: a quarter of the run); "
            "it ramps to full strength over half of what remains.",
            show_default=False,
            min=0.0,
        ),
    ] = None,
    drift_ramp: Annotated[
        float | None,
        typer.Option(
            help="Seconds the drift takes to reach full strength (0: at full strength from "
            "--drift-start on; default: half of the run after --drift-start).",
            show_default=False,
            min=0.0,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for rows, feedback choice and jitter.")] = 0,
    batch_size: Annotated[
        int,
        typer.Option(help='Rows per request, sent as {"instances": [...]} when above 1.', min=1),
    ] = 1,
    max_in_flight: Annotated[
        int,
        typer.Option(
            help="Most predictions outstanding at once; beyond it requests wait (counted late).",
            min=1,
        ),
    ] = 128,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for each answer.", callback=_above_zero)
    ] = 10.0,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print only the summary, as JSON (for scripts).")
    ] = False,
) -> None:
    """Stream realistic /predict traffic with delayed ground truth and optional drift.

    Requests leave on a fixed schedule whatever the server's latency (open loop); the true
    Calories go back to /feedback after the delay, so the API's rolling RMSLE moves.
    Ends with a summary; Ctrl-C stops early, prints the summary so far and exits 130.

    [bold]Examples[/]

      calops simulate                                   [dim]# 20 req/s for 60 s[/]
      calops simulate --rps 100 --duration 30 --drift concept
      calops simulate --url http://127.0.0.1:8010 --count 500 --json
      calops simulate --data exercise.csv --feedback-delay 2 --batch-size 16
    """
    from calopsctl.simulator.main import run_simulation
    from calopsctl.simulator.target import resolve_url

    cli = settings(ctx)
    line = _target_line(ctx, url, cli.seed_url) or describe(cli.home_info)
    err.print(line, markup=False)
    run = SimulationSettings(
        url=resolve_url(url, seed_url=cli.seed_url, home=cli.home),
        rps=rps,
        duration=_run_length(duration, count),
        count=count,
        feedback_delay=feedback_delay,
        feedback_fraction=feedback_fraction,
        data=data,
        drift=drift,
        drift_start=drift_start,
        drift_ramp=drift_ramp,
        seed=seed,
        batch_size=batch_size,
        max_in_flight=max_in_flight,
        timeout=timeout,
    )
    code = run_simulation(run, json_output=json_output)
    if code:
        raise typer.Exit(code)


def _duration(value: str | None) -> float | None:
    """``--since`` as seconds (90s, 30m, 1h, 2d); None keeps every labelled row."""
    from calopsctl.trafficdata import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None


def export(
    ctx: typer.Context,
    *,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="CSV file to write ('-' for stdout).", show_default=False),
    ],
    since: Annotated[
        str | None,
        typer.Option(
            help="Only predictions made in this last span: 90s, 30m, 1h, 2d (default: all the "
            "log keeps).",
            show_default=False,
        ),
    ] = None,
    log: Annotated[
        str | None,
        typer.Option(
            help="Prediction log to read instead of the stack's: a SQLite path or a redis:// "
            "URL (what `calops serve --prediction-log` used).",
            show_default=False,
        ),
    ] = None,
    all_columns: Annotated[
        bool,
        typer.Option(
            "--all-columns",
            help="Also write predicted, model_version, predicted_at and answered_at (unix s).",
        ),
    ] = False,
) -> None:
    """Export labelled traffic (predictions whose ground truth came back) as training data.

    Rows are the features the API saw and the true Calories, oldest first, in the trainer's
    CSV layout (id,Sex,Age,Height,Weight,Duration,Heart_Rate,Body_Temp,Calories), so
    `calops train --data` reads the file as it is.

    [bold]Examples[/]

      calops traffic export --since 1h --out traffic.csv
      calops train --data traffic.csv
      calops traffic export --log redis://127.0.0.1:6379/0 --out - --all-columns
    """
    from calopsctl.trafficdata import export_csv, labelled_traffic

    cli = settings(ctx)
    seconds = _duration(since)
    frame = labelled_traffic(cli.home, seconds, log, compose_files=cli.compose_files)
    summary = export_csv(frame, out, since=since, all_columns=all_columns)
    (err if str(out) == "-" else out_console).print(summary, markup=False)
