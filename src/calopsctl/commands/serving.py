"""The serve command: run the inference API in the foreground."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from calapi.serving.settings import ApiSettings


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
    reload_interval: Annotated[
        float | None,
        typer.Option(
            help="Seconds between checks for a new model (files changed, or the alias "
            "moved); 0 turns watching off. POST /reload reloads at once.",
            show_default=_default("CALOPS_RELOAD_INTERVAL_SECONDS"),
            min=0.0,
        ),
    ] = None,
) -> None:
    """Run the inference API in the foreground (like `fastapi run`); Ctrl+C stops it.

    Serves /predict, /feedback, /healthz, /readyz, /info and /metrics. With no model
    yet, it stays up and /healthz says why.

    [bold]Examples[/]

      calops serve
      calops serve --port 8010 --model ./artifacts
      MLFLOW_TRACKING_URI=http://127.0.0.1:5000 calops serve --model models:/calories@champion
    """
    from calapi.serving.server import serve as run_server

    run_server(
        _api_settings(host=host, port=port, model=model, reload_interval_seconds=reload_interval)
    )


def _api_settings(**given: object) -> ApiSettings:
    """``ApiSettings()`` as the environment sets it, with the options that were given on top."""
    from calapi.serving.settings import ApiSettings
    from calopsctl.settings import build

    return build(ApiSettings, **{name: value for name, value in given.items() if value is not None})
