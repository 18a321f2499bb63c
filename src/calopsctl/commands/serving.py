"""The serve command: run the inference API in the foreground."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from calapi.serving.settings import ApiSettings

ALLOW_PICKLE_HELP = (
    "Also serve pickled models (model.joblib, or an MLflow version logged as a pickle): "
    "loading a pickle runs any code its writer put in it, so only when you trust everyone "
    "who can write the artifacts folder or the registry. Logged as a warning at each load."
)


def _default(variable: str) -> str:
    """What help shows as the default: ApiSettings (which reads CALOPS_*) owns the values."""
    return f"{variable} or the API's default"


def serve(
    *,
    host: Annotated[
        str | None,
        typer.Option(help="Address to listen on.", show_default=_default("CALOPS_HOST")),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help="Port to listen on.", show_default=_default("CALOPS_PORT")),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Artifacts folder (serves the run its `current` points to), a model file, or "
            "an MLflow URI like models:/calories@champion (uses MLFLOW_TRACKING_URI).",
            show_default=_default("CALOPS_MODEL"),
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Processes serving the port. They share the prediction log (feedback joins "
            "on any of them) and /metrics shows the totals of all of them.",
            show_default=_default("CALOPS_WORKERS"),
            min=1,
            max=64,
        ),
    ] = None,
    prediction_log: Annotated[
        str | None,
        typer.Option(
            help="Where predictions await their ground truth: a SQLite file (shared by the "
            "processes of this machine) or redis://host:port/db (shared by several machines).",
            show_default=_default("CALOPS_PREDICTION_LOG"),
        ),
    ] = None,
    reload_interval: Annotated[
        float | None,
        typer.Option(
            help="Seconds between checks for a new model (files changed, or the alias "
            "moved); 0 turns watching off. POST /reload reloads at once.",
            show_default=_default("CALOPS_RELOAD_INTERVAL_SECONDS"),
            min=0.0,
        ),
    ] = None,
    allow_pickle: Annotated[
        bool | None,
        typer.Option(
            "--allow-pickle/--no-allow-pickle",
            help=ALLOW_PICKLE_HELP,
            show_default=_default("CALOPS_ALLOW_PICKLE"),
        ),
    ] = None,
) -> None:
    """Run the inference API in the foreground (like `fastapi run`); Ctrl+C stops it.

    Serves /predict, /feedback, /healthz, /readyz, /info and /metrics. With no model
    yet, it stays up and /healthz says why. Every prediction is kept in the prediction
    log until its ground truth arrives, also across restarts.

    [bold]Examples[/]

      calops serve
      calops serve --port 8010 --model ./artifacts
      calops serve --workers 4 --prediction-log ./predictions.db
      MLFLOW_TRACKING_URI=http://127.0.0.1:5000 calops serve --model models:/calories@champion
    """
    from calapi.serving.server import serve as run_server

    run_server(
        _api_settings(
            host=host, port=port, model=model, workers=workers, prediction_log=prediction_log,
            reload_interval_seconds=reload_interval, allow_pickle=allow_pickle,
        )
    )  # fmt: skip


def _api_settings(**given: object) -> ApiSettings:
    """``ApiSettings()`` as the environment sets it, with the options that were given on top."""
    from calapi.serving.settings import ApiSettings
    from calopsctl.settings import build

    return build(ApiSettings, **{name: value for name, value in given.items() if value is not None})
