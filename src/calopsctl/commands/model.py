"""Model commands: train, retrain, models, promote, rollback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from calopsctl import console
from calopsctl.application import settings
from calopsctl.paths import project_base

if TYPE_CHECKING:
    from calopsctl.promotion import Outcome, Where
    from calopsctl.retraining import RetrainSummary
    from calopsctl.settings import CliSettings
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
            help="Serve the new version even when it scores worse than the champion.",
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
    """Train into a new run folder, log and register it in MLflow; it serves only if it earns it.

    Never changes what serves by itself: the new version takes the serving pointer (the
    registry alias, or artifacts/current without a tracking server) only when it is no worse
    than the champion, both scored on this run's holdout, or with --promote.
    Logs params, metrics (metrics.json) and artifacts (model, config.yaml, metrics.json,
    model card, train.log).

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
    cli = _stack_settings(ctx)
    with _progress() as (report, echo):
        summary = train_and_track(
            options, home=cli.home, base=project_base(cli.home_info), report=report, echo=echo
        )
    _show(summary, json_output=json_output)


Say = Callable[[str], None]


def _plain(message: str) -> None:
    console.err.print(message, markup=False, highlight=False)


@contextmanager
def _progress() -> Iterator[tuple[Say, Say]]:
    """(report, echo): a spinner naming the step on a TTY, plain lines on stderr otherwise;
    echo prints a training script's own lines as they come."""
    if not console.interactive():
        yield _plain, _plain
        return
    with console.out.status("Starting") as status:

        def report(message: str) -> None:
            console.out.print(f"[dim]• {message}[/]", markup=True)
            status.update(message)

        def echo(line: str) -> None:
            console.out.print(f"  {line}", markup=False, highlight=False)

        yield report, echo


def _stack_settings(ctx: typer.Context) -> CliSettings:
    """The invocation's settings, after the first line naming the stack folder they point at."""
    from calopsctl.project import describe

    cli = settings(ctx)
    _plain(describe(cli.home_info))
    return cli


def _rows(summary: TrainSummary) -> list[tuple[str, str]]:
    moved = "promoted" if summary.promoted else "not promoted"
    rows = [
        ("run id", summary.run_id),
        ("experiment", summary.experiment),
        ("tracking", f"{summary.tracking_uri} ({summary.tracking_origin})"),
        ("model", f"{summary.model_name} version {summary.model_version}"),
        ("serving", f"{moved}: {summary.promotion_reason}"),
        ("pointer", summary.serving_pointer),
        ("evaluated on", summary.evaluated_on),
    ]
    rows += [_metric_row(name, value, summary.metrics) for name, value in summary.metrics.items()]
    rows += [
        ("data", summary.data_source),
        ("run folder", summary.run_folder),
        ("log", summary.log),
        ("run artifacts", summary.run_artifacts),
        ("model uri", summary.model_uri),
    ]
    return rows


def _metric_row(name: str, value: float, metrics: dict[str, float]) -> tuple[str, str]:
    """One metric; the RMSLE shown beside Keytel's on the same rows, so learning shows."""
    baseline = metrics.get("baseline_rmsle")
    if name == "rmsle" and baseline is not None:
        return name, f"{value:.6g} (Keytel's equations alone: {baseline:.6g})"
    return name, f"{value:.6g}"


def _show(summary: TrainSummary, *, json_output: bool) -> None:
    if json_output:
        console.print_json(asdict(summary))
        return
    _table("Training run", _rows(summary))


def _table(title: str, rows: list[tuple[str, str]]) -> None:
    """``rows`` as a two-column table on a TTY, as ``key: value`` lines otherwise."""
    if not console.interactive():
        for key, value in rows:
            console.out.print(f"{key}: {value}", markup=False)
        return
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    console.out.print(table)


# ---------------------------------------------------------------- retrain

_TRAIN_CONFIG = typer.Option(
    help="Training config (default: ./config.yaml, else the packaged one).",
    envvar="CALOPS_CONFIG",
    show_default=False,
)
_TRAIN_TRACKING = typer.Option(
    help="MLflow tracking URI (default: the running stack's MLflow, else <CALOPS_HOME>/mlflow.db).",
    envvar="MLFLOW_TRACKING_URI",
    show_default=False,
)


def _since(value: str) -> str:
    from calopsctl.trafficdata import parse_duration

    try:
        parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def retrain(
    ctx: typer.Context,
    *,
    since: Annotated[
        str,
        typer.Option(
            help="Learn from the predictions made in this last while: 90s, 30m, 1h, 2d.",
            callback=_since,
        ),
    ] = "1h",
    min_rows: Annotated[
        int, typer.Option(help="Fewest labelled predictions worth retraining on.", min=2)
    ] = 200,
    base_data: Annotated[
        str | None,
        typer.Option(
            help="Rows mixed in beside the traffic (at most one per four traffic rows): a CSV, "
            "'synthetic', or 'none' (default: the config's data.source).",
            show_default=False,
        ),
    ] = None,
    recent: Annotated[
        float,
        typer.Option(
            help="Newest fraction of the traffic, by prediction time, kept out of training to "
            "score the new model and the champion on.",
            min=0.01,
            max=0.9,
        ),
    ] = 0.2,
    promote: Annotated[
        bool,
        typer.Option(
            "--promote/--no-promote",
            help="Serve the new version even when it is not better than the champion.",
        ),
    ] = False,
    config: Annotated[Path | None, _TRAIN_CONFIG] = None,
    tracking: Annotated[str | None, _TRAIN_TRACKING] = None,
    log: Annotated[
        str | None,
        typer.Option(
            help="Prediction log to read instead of the stack's: a SQLite path or a redis:// "
            "URL (what `calops serve --prediction-log` used).",
            show_default=False,
        ),
    ] = None,
    experiment: Annotated[
        str,
        typer.Option(help="MLflow experiment to log into.", envvar="MLFLOW_EXPERIMENT_NAME"),
    ] = "calops",
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON (for scripts).")
    ] = False,
) -> None:
    """Retrain on the labelled traffic; the new version serves only if it beats the champion
    on the most recent of that traffic.

    Reads the predictions whose ground truth came back (/feedback) in the last --since, keeps
    the newest --recent of them (by prediction time) out of training, and fits the older ones,
    mixed with a smaller share of base data, with the same trainer and config as `calops
    train`. The new version and the champion are scored on those same recent rows; the new one
    is registered with that lineage (window, rows, champion and both RMSLEs) and serves only
    when strictly better, or with --promote.

    [bold]Examples[/]

      calops retrain
      calops retrain --since 30m --json
      calops retrain --since 2h --base-data none --min-rows 500
      calops retrain --base-data exercise.csv --promote
      calops retrain --log .calops/predictions.db --tracking file:./mlruns
    """
    from calopsctl.retraining import RetrainOptions
    from calopsctl.retraining import retrain as run_retrain
    from calopsctl.trafficdata import parse_duration

    options = RetrainOptions(
        since_seconds=parse_duration(since), since=since, min_rows=min_rows,
        base_data=base_data, recent=recent, promote=promote, config_path=config,
        tracking=tracking, experiment=experiment, log=log,
    )  # fmt: skip
    cli = _stack_settings(ctx)
    with _progress() as (report, _echo):
        summary = run_retrain(
            options, home=cli.home, base=project_base(cli.home_info), report=report
        )
    _show_retrain(summary, json_output=json_output)


def _retrain_rows(summary: RetrainSummary) -> list[tuple[str, str]]:
    champion = "none" if summary.champion_rmsle is None else f"{summary.champion_rmsle:.5f}"
    return [
        ("outcome", summary.outcome),
        ("challenger", f"{summary.model_name} version {summary.model_version}"),
        ("RMSLE", f"challenger {summary.challenger_rmsle:.5f} | champion "
                  f"({summary.champion or 'none'}) {champion}"),
        ("evaluated on", f"{summary.rows_evaluated} recent rows predicted "
                         f"{summary.window_start} to {summary.window_end}"),
        ("trained on", f"{summary.rows_traffic} traffic rows (from {summary.traffic_start}) "
                       f"+ {summary.rows_base} base rows"),
        ("base data", summary.base_data),
        ("serving", summary.promotion_reason),
        ("pointer", summary.serving_pointer),
        ("run id", summary.run_id),
        ("run folder", summary.run_folder),
        ("tracking", summary.tracking_uri),
        ("model uri", summary.model_uri),
    ]  # fmt: skip


def _show_retrain(summary: RetrainSummary, *, json_output: bool) -> None:
    if json_output:
        console.print_json(asdict(summary))
        return
    _table("Retraining run", _retrain_rows(summary))


# ---------------------------------------------------------------- models, promote, rollback

_TRACKING = typer.Option(
    help="MLflow tracking URI holding the registry (default: the running stack's MLflow, "
    "else the outputs folder's `current` pointer).",
    envvar="MLFLOW_TRACKING_URI",
    show_default=False,
)
_CONFIG = typer.Option(
    help="Config naming the model, alias and outputs folder (default: the project's config.yaml).",
    envvar="CALOPS_CONFIG",
    show_default=False,
)
_URL = typer.Option(
    help="The API to watch (default: the stack's, else http://127.0.0.1:8000).",
    envvar="CALOPS_URL",
    show_default=False,
)
_WAIT = typer.Option(help="Seconds to wait for the API to answer with the new version.", min=0)
_JSON = typer.Option("--json", help="Print the result as JSON.")


def _where(ctx: typer.Context, tracking: str | None, config: Path | None, url: str | None) -> Where:
    from calopsctl.promotion import Where

    cli = _stack_settings(ctx)
    return Where(cli.home, project_base(cli.home_info), tracking=tracking, config=config, url=url)


def models(
    ctx: typer.Context,
    *,
    tracking: Annotated[str | None, _TRACKING] = None,
    config: Annotated[Path | None, _CONFIG] = None,
    url: Annotated[str | None, _URL] = None,
    json_output: Annotated[bool, _JSON] = False,
) -> None:
    """List the model versions (or local runs) and show which one the API answers with.

    Each row: version, created, data source, holdout RMSLE, who put it in service and how,
    its aliases, and a mark on the one the running API serves right now.

    [bold]Examples[/]

      calops models
      calops models --json
      calops models --tracking file:./mlruns
    """
    from calopsctl import promotion

    data = promotion.listing(_where(ctx, tracking, config, url), _plain)
    if json_output:
        console.print_json(data)
        return
    _show_models(data)


def promote(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="The version (or local run) to serve.")],
    *,
    tracking: Annotated[str | None, _TRACKING] = None,
    config: Annotated[Path | None, _CONFIG] = None,
    url: Annotated[str | None, _URL] = None,
    wait: Annotated[float, _WAIT] = 30.0,
    json_output: Annotated[bool, _JSON] = False,
) -> None:
    """Serve VERSION: move the serving pointer to it and wait until the API answers with it.

    An explicit decision: the gate is not asked. `calops rollback` goes back.

    [bold]Examples[/]

      calops promote 3
      calops promote 3 --wait 0
      calops promote 3 --url http://127.0.0.1:8010
    """
    from calopsctl import promotion

    outcome = promotion.promote(
        _where(ctx, tracking, config, url), promotion.require_known(version), wait, _plain
    )
    _finish(outcome, json_output=json_output)


def rollback(
    ctx: typer.Context,
    *,
    tracking: Annotated[str | None, _TRACKING] = None,
    config: Annotated[Path | None, _CONFIG] = None,
    url: Annotated[str | None, _URL] = None,
    wait: Annotated[float, _WAIT] = 30.0,
    json_output: Annotated[bool, _JSON] = False,
) -> None:
    """Serve the previous champion again, and wait until the API answers with it.

    Each rollback goes one step further back through the champions' history.

    [bold]Examples[/]

      calops rollback
      calops rollback --json
    """
    from calopsctl import promotion

    outcome = promotion.rollback(_where(ctx, tracking, config, url), wait, _plain)
    _finish(outcome, json_output=json_output)


def _finish(outcome: Outcome, *, json_output: bool) -> None:
    from calopsctl.promotion import verdict

    followed, sentence = verdict(outcome)
    if json_output:
        console.print_json(outcome.as_json())
    _plain(sentence)
    if not followed:
        raise typer.Exit(code=1)


def _show_models(data: dict[str, object]) -> None:
    from calopsctl import stackview

    stackview.show_models(data)
