"""The ``calops`` application: assembles commands from their modules, nothing else."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from calapi import __version__
from calopsctl.application import Application
from calopsctl.commands import k8s, model, observe, serving, stack, traffic
from calopsctl.console import expected_failures

app = typer.Typer(
    name="calops",
    help=(
        "Operate a calorie-expenditure model like production: train and track it in MLflow, "
        "serve it with Prometheus metrics, run Prometheus, Grafana and MLflow beside it, "
        "and stream traffic with delayed ground truth.\n\n"
        "Start with [bold]calops up[/] (trains a model if none exists), then "
        "[bold]calops simulate[/] and open Grafana."
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"calops {__version__}")
        raise typer.Exit


@app.callback()
def main(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            help="Show the version and exit.",
            callback=_show_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Operate the calorie-expenditure model stack."""
    ctx.ensure_object(Application)  # settings are read when a command first asks for them


def _unwrap(doc: str | None) -> str:
    """Join hard-wrapped docstring lines into paragraphs; keep indented blocks (examples).

    Typer's rich help keeps every newline, so source-wrapped prose would print ragged.
    """
    paragraphs = inspect.cleandoc(doc or "").split("\n\n")
    return "\n\n".join(
        p if any(line.startswith(" ") for line in p.splitlines()) else " ".join(p.split("\n"))
        for p in paragraphs
    )


def _register(
    function: Callable[..., Any], name: str, panel: str, group: typer.Typer = app
) -> None:
    command = expected_failures(function)
    command.__doc__ = _unwrap(function.__doc__)
    group.command(name, rich_help_panel=panel)(command)


k8s_app = typer.Typer(
    name="k8s",
    help=(
        "The stack on Kubernetes: the kustomize overlays in stack/k8s (`kubectl apply -k "
        "stack/k8s/overlays/local`), built from compose's own Prometheus rules and Grafana "
        "files.\n\n"
        "Example: [bold]calops k8s render --overlay production[/]"
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(k8s_app, rich_help_panel="Stack")

traffic_app = typer.Typer(
    name="traffic",
    help=(
        "The traffic the API answered: export the labelled predictions (features and the "
        "ground truth that came back) as training data.\n\n"
        "Example: [bold]calops traffic export --since 1h --out traffic.csv[/]"
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(traffic_app, rich_help_panel="Traffic")


_register(stack.up, "up", "Stack")
_register(stack.down, "down", "Stack")
_register(stack.health, "health", "Stack")
_register(stack.info, "info", "Stack")
_register(stack.logs, "logs", "Stack")
_register(observe.watch, "watch", "Stack")
_register(observe.report, "report", "Stack")
_register(model.train, "train", "Model")
_register(model.retrain, "retrain", "Model")
_register(model.models, "models", "Model")
_register(model.promote, "promote", "Model")
_register(model.rollback, "rollback", "Model")
_register(serving.serve, "serve", "Model")
_register(traffic.simulate, "simulate", "Traffic")
_register(traffic.export, "export", "Traffic", group=traffic_app)
_register(k8s.render, "render", "Kubernetes", group=k8s_app)
