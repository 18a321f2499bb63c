"""The runtime interface: what every way of running the stack (Docker, local processes) offers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from calopsctl.services import loopback_url
from calopsctl.state import StackState


@dataclass(frozen=True)
class StackSpec:
    """What `calops up` asks a runtime to start."""

    ports: dict[str, int]
    artifacts: Path  # absolute host folder of run folders and the `current` pointer
    model: str  # CALOPS_MODEL for the API: models:/name@alias, or the artifacts folder
    # Grafana's admin password; set by `calops up` only once it knows Grafana will run.
    grafana_password: str | None = None
    build: bool = True
    wait: bool = True
    timeout: float = 180.0
    replicas: int = 1  # API processes behind the one API address
    allow_pickle: bool = False  # CALOPS_ALLOW_PICKLE for the API: also load pickled models

    def url(self, service: str) -> str:
        return loopback_url(self.ports[service])


@dataclass
class Availability:
    """Which services this runtime will run, and why the others are left out."""

    services: list[str]
    absent: dict[str, str] = field(default_factory=dict)  # service -> reason


@dataclass(frozen=True)
class Replica:
    """One API process of the stack."""

    name: str  # "api-1", "api-2", ...
    running: bool  # its process or container is alive
    address: str  # host:port Prometheus scrapes it at
    url: str | None = None  # where it answers by itself from this machine; None: only in-network


SaveState = Callable[[StackState], None]


class Runtime(ABC):
    """Starts, inspects and removes the stack; one implementation per way of running it."""

    name: str

    @abstractmethod
    def availability(self, spec: StackSpec) -> Availability:
        """The services this runtime can run here (e.g. no Grafana binary -> absent)."""

    @abstractmethod
    def up(
        self, spec: StackSpec, state: StackState, save: SaveState, services: Sequence[str]
    ) -> None:
        """Start ``services`` (some of ``state.services``: the stack starts in steps); call
        ``save`` as soon as anything runs."""

    @abstractmethod
    def down(self, state: StackState, *, volumes: bool) -> list[str]:
        """Remove everything ``state`` records; return the services that were stopped."""

    @abstractmethod
    def alive(self, state: StackState) -> dict[str, bool]:
        """Per service: is its process or container still running?"""

    @abstractmethod
    def log_tail(self, state: StackState, service: str, lines: int = 30) -> str:
        """The last ``lines`` lines a service wrote, to explain a failure."""

    @abstractmethod
    def stream_logs(
        self, state: StackState, services: list[str], *, follow: bool, tail: int
    ) -> None:
        """Write services' logs to stdout (until interrupted when ``follow``)."""

    def replicas(self, state: StackState) -> list[Replica]:
        """Every API process the stack runs (one unless started with --replicas)."""
        return []

    def where_logs(self, state: StackState) -> str:
        """Where a user finds the logs."""
        return "calops logs [SERVICE]"

    def log_hint(self, state: StackState, service: str) -> str:
        """Where a user finds one service's log."""
        return f"calops logs {service}"
