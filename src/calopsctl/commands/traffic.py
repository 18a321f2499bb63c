"""Traffic commands: simulate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from calopsctl.simulator.settings import DriftKind


def simulate(
    *,
    url: Annotated[
        str | None,
        typer.Option(
            help="API base URL (default: $URL, else the running stack's API, "
            "else http://127.0.0.1:8000).",
            envvar="CALOPS_URL",
            show_default=False,
        ),
    ] = None,
    rps: Annotated[
        float,
        typer.Option(help="Target /predict requests per second (each carries --batch-size rows)."),
    ] = 20.0,
    duration: Annotated[
        float | None,
        typer.Option(
            help="Seconds to send for (default 60 when --count is not given).",
            show_default=False,
        ),
    ] = None,
    count: Annotated[
        int | None,
        typer.Option(
            help="Send exactly this many requests instead of a duration.", show_default=False
        ),
    ] = None,
    feedback_delay: Annotated[
        float, typer.Option(help="Seconds before the true Calories go back (±10% jitter).")
    ] = 5.0,
    feedback_fraction: Annotated[
        float, typer.Option(help="Fraction of predicted rows whose truth is sent back (0..1).")
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
            "inputs burn up to 30% more; both."
        ),
    ] = DriftKind.NONE,
    drift_start: Annotated[
        float | None,
        typer.Option(
            help="Seconds into the run when the drift starts (default: a quarter of the run); "
            "it ramps to full strength over half of what remains.",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for rows, feedback choice and jitter.")] = 0,
    batch_size: Annotated[
        int, typer.Option(help='Rows per request, sent as {"instances": [...]} when above 1.')
    ] = 1,
    max_in_flight: Annotated[
        int,
        typer.Option(
            help="Most predictions outstanding at once; beyond it requests wait (counted late)."
        ),
    ] = 128,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each answer.")] = 10.0,
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

    code = run_simulation(
        url=url,
        rps=rps,
        duration=duration,
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
        json_output=json_output,
    )
    if code:
        raise typer.Exit(code)
