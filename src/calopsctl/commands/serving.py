"""The serve command: run the inference API in the foreground."""

from __future__ import annotations

from typing import Annotated

import typer


def serve(
    *,
    host: Annotated[
        str, typer.Option(help="Address to listen on.", envvar="CALOPS_HOST")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", envvar="CALOPS_PORT")] = 8000,
    model: Annotated[
        str,
        typer.Option(
            help="Artifacts folder (or model file), or an MLflow URI like "
            "models:/calories@champion (uses MLFLOW_TRACKING_URI).",
            envvar="CALOPS_MODEL",
        ),
    ] = "artifacts",
    reload_interval: Annotated[
        float,
        typer.Option(
            help="Seconds between checks for a new model (files changed, or the alias "
            "moved); 0 turns watching off. POST /reload reloads at once.",
            envvar="CALOPS_RELOAD_INTERVAL_SECONDS",
            min=0.0,
        ),
    ] = 2.0,
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
    from calapi.serving.settings import ApiSettings

    run_server(
        ApiSettings(host=host, port=port, model=model, reload_interval_seconds=reload_interval)
    )
