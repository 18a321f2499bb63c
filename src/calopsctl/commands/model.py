"""Model commands: train."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from calopsctl import console
from calopsctl.application import settings

if TYPE_CHECKING:
    from calopsctl.training import TrainSummary


def train(
    ctx: typer.Context,
    *,
    script_args: Annotated[
        list[str] | None,
        typer.Argument(
            help="Arguments for --script, after `--` (e.g. `-- --config config.yaml`).",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="Training config (default: ./config.yaml, else the packaged one).",
            envvar="CALOPS_CONFIG",
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="CSV to train on, or 'synthetic'; overrides data.source.", show_default=False
        ),
    ] = None,
    holdout: Annotated[
        bool,
        typer.Option(
            "--holdout/--no-holdout",
            help="Evaluate on a held-out split; --no-holdout fits every row (training metrics).",
        ),
    ] = True,
    tracking: Annotated[
        str | None,
        typer.Option(
            help="MLflow tracking URI: file:./mlruns, sqlite:///PATH.db or http://HOST:PORT "
            "(default: the running stack's MLflow, else <CALOPS_HOME>/mlflow.db).",
            envvar="MLFLOW_TRACKING_URI",
            show_default=False,
        ),
    ] = None,
    script: Annotated[
        Path | None,
        typer.Option(
            help="Your own train.py, run unchanged with this Python; it must write the model "
            "and metrics.json where config.yaml says.",
            show_default=False,
        ),
    ] = None,
    promote: Annotated[
        bool,
        typer.Option(
            "--promote/--no-promote",
            help="Move the alias to the new version even when its holdout RMSLE is worse.",
        ),
    ] = False,
    experiment: Annotated[
        str,
        typer.Option(help="MLflow experiment to log into.", envvar="MLFLOW_EXPERIMENT_NAME"),
    ] = "calops",
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON (for scripts).")
    ] = False,
) -> None:
    """Train the model, log it to MLflow, register it, and move the alias if it is no worse.

    Logs params (the flattened config), metrics (metrics.json) and artifacts (model,
    config.yaml, metrics.json, model card); see the README for the alias rule.

    [bold]Examples[/]

      calops train
      calops train --tracking file:./mlruns
      calops train --tracking http://127.0.0.1:5000 --no-holdout
      calops train --data exercise.csv --promote
      calops train --script train.py -- --config config.yaml
    """
    from calopsctl.training import TrainOptions, train_and_track

    options = TrainOptions(
        config_path=config,
        data=data,
        holdout=holdout,
        tracking=tracking,
        script=script,
        script_args=tuple(script_args or ()),
        promote=promote,
        experiment=experiment,
    )
    with _progress() as report:
        summary = train_and_track(options, home=settings(ctx).home, report=report)
    _show(summary, json_output=json_output)


@contextmanager
def _progress() -> Iterator[Callable[[str], None]]:
    """A spinner naming the current step on a TTY; plain lines on stderr otherwise."""
    if not console.interactive():
        yield console.err.print
        return
    with console.out.status("Starting") as status:

        def report(message: str) -> None:
            console.out.print(f"[dim]• {message}[/]")
            status.update(message)

        yield report


def _rows(summary: TrainSummary) -> list[tuple[str, str]]:
    moved = "moved" if summary.alias_moved else "not moved"
    rows = [
        ("run id", summary.run_id),
        ("experiment", summary.experiment),
        ("tracking", f"{summary.tracking_uri} ({summary.tracking_origin})"),
        ("model", f"{summary.model_name} version {summary.model_version}"),
        ("alias", f"{summary.alias} {moved}: {summary.alias_reason}"),
        ("evaluated on", summary.evaluated_on),
    ]
    rows += [(name, f"{value:.6g}") for name, value in summary.metrics.items()]
    rows += [
        ("data", summary.data_source if summary.synthetic else f"file {summary.data_source}"),
        ("artifacts", summary.artifacts_dir),
        ("run artifacts", summary.run_artifacts),
        ("model uri", summary.model_uri),
    ]
    return rows


def _show(summary: TrainSummary, *, json_output: bool) -> None:
    if json_output:
        console.print_json(asdict(summary))
        return
    if not console.interactive():
        for key, value in _rows(summary):
            console.out.print(f"{key}: {value}", markup=False)
        return
    from rich.table import Table

    table = Table(title="Training run", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in _rows(summary):
        table.add_row(key, value)
    console.out.print(table)
