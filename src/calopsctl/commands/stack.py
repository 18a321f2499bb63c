"""Stack lifecycle commands: up, down, health, info, logs.

Each one first says on stderr which stack folder it uses, since that folder is found from the
working directory (or CALOPS_HOME) and may not be the one the user thinks of.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from calapi.errors import CalopsError
from calopsctl.application import settings
from calopsctl.commands.serving import ALLOW_PICKLE_HELP
from calopsctl.console import err, one_of, print_json
from calopsctl.project import describe
from calopsctl.services import API, GRAFANA, MLFLOW, NAMES, PROMETHEUS, RuntimeChoice, Service

if TYPE_CHECKING:
    from calopsctl.settings import CliSettings

RUNTIME_HELP = "auto: Docker when an engine answers, else local processes."
MAX_REPLICAS = 16
REPLICAS_HELP = (
    "API processes serving the one API address (default 1); each is scraped and checked by "
    "itself. A running stack keeps its number: `calops down` first to change it."
)
SERVICE_CHOICES = f"{', '.join(NAMES[:-1])} or {NAMES[-1]}"
# service -> the `calops up` parameter holding its port
PORT_PARAMETERS = {
    API.name: "host_port",
    PROMETHEUS.name: "prometheus_port",
    GRAFANA.name: "grafana_port",
    MLFLOW.name: "mlflow_port",
}


def _say(message: str) -> None:
    err.print(message, markup=False)


def _stack_settings(ctx: typer.Context, *, starting: bool = False) -> CliSettings:
    """The invocation's settings, after the first line naming the stack folder they point at."""
    cli = settings(ctx)
    _say(describe(cli.home_info, starting=starting))
    return cli


def _port_option(service: Service) -> Any:
    """The `calops up` option for a service's host port, as its row in the services table says."""
    return typer.Option(
        service.port_flag,
        help=f"Host port of {service.description}.",
        envvar=service.port_env,
        min=1,
        max=65535,
    )


def _given(ctx: typer.Context, parameters: dict[str, str]) -> frozenset[str]:
    """The keys of ``parameters`` whose option was given, on the command line or by its
    variable, rather than left at its default."""
    # By the source's name: Typer may bring its own copy of click's ParameterSource.
    sources = {key: ctx.get_parameter_source(name) for key, name in parameters.items()}
    given = {"COMMANDLINE", "ENVIRONMENT"}
    return frozenset(key for key, source in sources.items() if getattr(source, "name", "") in given)


def up(
    ctx: typer.Context,
    *,
    host_port: Annotated[int, _port_option(API)] = API.default_port,
    prometheus_port: Annotated[int, _port_option(PROMETHEUS)] = PROMETHEUS.default_port,
    grafana_port: Annotated[int, _port_option(GRAFANA)] = GRAFANA.default_port,
    mlflow_port: Annotated[int, _port_option(MLFLOW)] = MLFLOW.default_port,
    runtime: Annotated[
        RuntimeChoice,
        typer.Option(help=RUNTIME_HELP, envvar="CALOPS_RUNTIME", parser=one_of(RuntimeChoice)),
    ] = RuntimeChoice.AUTO,
    build: Annotated[bool, typer.Option(help="Rebuild the API image (docker runtime).")] = True,
    wait: Annotated[bool, typer.Option(help="Wait until every service is healthy.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for health.", min=1)] = 180.0,
    config: Annotated[
        Path | None,
        typer.Option(help="Training config used when no model exists yet.", envvar="CALOPS_CONFIG"),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="What the API serves: models:/NAME@ALIAS from the stack's MLflow, or an "
            "artifacts folder (its `current` run) (default: models:/<model.name>@<model.alias> "
            "of the config).",
        ),
    ] = None,
    replicas: Annotated[
        int | None,
        typer.Option(help=REPLICAS_HELP, envvar="CALOPS_REPLICAS", min=1, max=MAX_REPLICAS),
    ] = None,
    allow_pickle: Annotated[bool, typer.Option(help=ALLOW_PICKLE_HELP)] = False,
    json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Bring up the API, Prometheus, Grafana and MLflow, and print where each one is.

    The API serves the registry alias (models:/calories@champion) from the stack's MLflow;
    on a fresh stack, MLflow starts first and the configured model is trained and registered.
    Refuses a taken port before starting anything.
    A second `calops up` reports what already runs; asked for other ports, it refuses
    (`calops down` first).

    [bold]Examples[/]
      calops up
      calops up --host-port 8010
      calops up --runtime local --no-wait
      calops up --runtime local --replicas 3
      calops up --model ./artifacts
    """
    from calopsctl import stackops, stackview

    cli = _stack_settings(ctx, starting=True)
    ports = {
        API.name: host_port,
        PROMETHEUS.name: prometheus_port,
        GRAFANA.name: grafana_port,
        MLFLOW.name: mlflow_port,
    }
    options = stackops.UpOptions(
        ports=ports,
        runtime=runtime,
        build=build,
        wait=wait,
        timeout=timeout,
        config=config,
        model=model,
        replicas=replicas,
        allow_pickle=allow_pickle,
        given_ports=_given(ctx, PORT_PARAMETERS),
    )
    result = stackops.up(options, cli, _say)
    rows = stackops.summary_rows(result, cli)
    replica_rows = stackops.replica_rows(result)
    if json:
        print_json(
            {
                "already_running": result.already_running,
                "runtime": result.state.runtime,
                "services": rows,
                "replicas": replica_rows,
            }
        )
        return
    stackview.show_services(rows, replica_rows)
    _say("Stop it with `calops down`; check it with `calops health`.")


def down(
    ctx: typer.Context,
    *,
    volumes: Annotated[
        bool, typer.Option("--volumes", "-v", help="Also delete MLflow, Prometheus, Grafana data.")
    ] = False,
) -> None:
    """Stop and remove the stack; nothing of it keeps running.

    [bold]Examples[/]
      calops down
      calops down --volumes
    """
    from calopsctl import stackops

    stackops.down(_stack_settings(ctx), volumes=volumes, say=_say)


def health(
    ctx: typer.Context,
    *,
    json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
    wait: Annotated[
        float, typer.Option(help="Retry for up to this many seconds until healthy.", min=0)
    ] = 0.0,
) -> None:
    """Check each service and each API replica, including that Prometheus scrapes every
    replica; exit 1 if one is down. With --json the verdict is always on stdout, also when
    nothing is up (healthy false and the reason).

    [bold]Examples[/]
      calops health
      calops health --wait 60
      calops health --json
    """
    from calopsctl import health as checks_module
    from calopsctl import stackops, stackview

    try:
        _state, checks = stackops.stack_health(_stack_settings(ctx), wait)
    except CalopsError as exc:
        if json:  # a script reads stdout: the verdict is there even when nothing could be checked
            print_json(checks_module.unchecked(str(exc)))
        raise
    if json:
        print_json(checks_module.report(checks))
    else:
        stackview.show_health(checks)
    if not checks_module.healthy(checks):
        raise typer.Exit(code=1)


def info(
    ctx: typer.Context,
    *,
    json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Show the model in service and the stack: runtime, URLs, tracking URI, logs, credentials.

    [bold]Examples[/]
      calops info
      calops info --json
    """
    from calopsctl import stackops, stackview

    data = stackops.info(_stack_settings(ctx))
    if json:
        print_json(data)
    else:
        stackview.show_info(data)


def logs(
    ctx: typer.Context,
    *,
    service: Annotated[
        str | None, typer.Argument(help=f"{SERVICE_CHOICES} (default: all).")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    tail: Annotated[int, typer.Option(help="Lines to show from the end of each log.")] = 50,
) -> None:
    """Show the logs of the stack's services; `api` shows every API replica's, each line
    after the replica's name.

    [bold]Examples[/]
      calops logs api
      calops logs mlflow --tail 200
      calops logs -f
    """
    from calopsctl import stackops

    stackops.logs(_stack_settings(ctx), service, follow=follow, tail=tail)
