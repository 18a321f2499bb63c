"""The stack's services in one table: name, label, port, and the flag and variable that set it.

``calops up`` builds its port options from this table, the Docker runtime writes the same
variables into the env file stack/compose.yaml reads (``HOST_PORT=8010 calops up`` is the
hand-out's contract), the local runtime finds each binary here, and errors name the flag.
Kept free of heavy imports: the CLI reads it to build ``calops up --help``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

LOOPBACK: Final = "127.0.0.1"


@dataclass(frozen=True)
class Service:
    """One service of the stack."""

    name: str  # compose service, state key, `calops logs` argument
    label: str  # how messages name it
    description: str  # for help text: "Host port of <description>."
    default_port: int
    port_flag: str  # the `calops up` option
    port_env: str  # read by `calops up` and by stack/compose.yaml
    binaries: tuple[str, ...] = ()  # local runtime: first one found on PATH; () = this Python
    install_hint: str = ""  # local runtime: why it is left out when no binary is found


SERVICES: Final = (
    Service("api", "API", "the API", 8000, "--host-port", "HOST_PORT"),
    Service(
        "prometheus",
        "Prometheus",
        "Prometheus",
        9090,
        "--prometheus-port",
        "PROMETHEUS_PORT",
        binaries=("prometheus",),
        install_hint="prometheus is not installed (e.g. apt install prometheus)",
    ),
    Service(
        "grafana",
        "Grafana",
        "Grafana",
        3000,
        "--grafana-port",
        "GRAFANA_PORT",
        binaries=("grafana-server", "grafana"),
        install_hint="grafana-server is not installed (see grafana.com/grafana/download)",
    ),
    Service("mlflow", "MLflow", "the MLflow server", 5000, "--mlflow-port", "MLFLOW_PORT"),
)
NAMES: Final = tuple(service.name for service in SERVICES)
DEFAULT_PORTS: Final = {service.name: service.default_port for service in SERVICES}
API, PROMETHEUS, GRAFANA, MLFLOW = SERVICES
_BY_NAME: Final = {service.name: service for service in SERVICES}


class RuntimeChoice(StrEnum):
    """How `calops up` runs the services: auto picks Docker when an engine answers."""

    AUTO = "auto"
    DOCKER = "docker"
    LOCAL = "local"


def by_name(name: str) -> Service:
    """The row of service ``name`` (one of ``NAMES``)."""
    return _BY_NAME[name]


def loopback_url(port: int) -> str:
    """Where a service listening on ``port`` of this machine answers, e.g. http://127.0.0.1:8000."""
    return f"http://{LOOPBACK}:{port}"
