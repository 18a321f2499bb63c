"""The local runtime: the stack as background processes on 127.0.0.1, for machines without Docker.

The API runs as ``python -m calapi.serving`` (one process per replica), MLflow as ``mlflow
server``, Prometheus and Grafana from their installed binaries. Each process leads its own
session (it survives the terminal), logs to ``<home>/logs/<name>.log`` and is stopped by process
group, so workers go with it.

With ``--replicas N`` the API processes ``api-1``..``api-N`` all listen on the API port
(SO_REUSEPORT: the kernel spreads connections over them) and each also alone on a port of its
own, which Prometheus scrapes and health checks; they share one prediction log
(``<home>/predictions.db``), so feedback joins whichever process made the prediction.
"""

from __future__ import annotations

import shutil
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from calapi.errors import CalopsError
from calopsctl.paths import stack_dir
from calopsctl.runtime import localconfig, processes
from calopsctl.runtime.base import Availability, Replica, Runtime, SaveState, StackSpec
from calopsctl.secrets import GRAFANA_ADMIN_USER
from calopsctl.services import API, LOOPBACK, NAMES, SERVICES, by_name, loopback_url
from calopsctl.state import StackState

Which = Callable[[str], str | None]
GRAFANA_HOMES = (Path("/usr/share/grafana"), Path("/opt/grafana"))
PREDICTION_LOG: Final = "predictions.db"  # under home; SQLite adds -wal and -shm beside it
REPLICA_PORTS: Final = "replica_ports"  # state.extra: replica name -> the port it alone serves
API_ARGV: Final = (sys.executable, "-m", "calapi.serving")  # settings from CALOPS_* variables
# The caller's variables each service reads besides processes.COMMON_VARIABLES: its own settings.
API_VARIABLES: Final = ("CALOPS_", "MLFLOW_", "PYTHON")
MLFLOW_VARIABLES: Final = ("MLFLOW_", "PYTHON")
GRAFANA_VARIABLES: Final = ("GF_",)
# MLflow has no login: it answers only on loopback, and only to these Host headers (DNS rebinding).
MLFLOW_ALLOWED_HOSTS: Final = "localhost,localhost:*,127.0.0.1,127.0.0.1:*"


@dataclass(frozen=True)
class ServicePlan:
    """How to start one process: its name (the service, or ``api-<i>`` for an API replica), the
    service it belongs to, its command line and the environment it needs."""

    name: str
    argv: list[str]
    env: dict[str, str]
    service: str


def replica_names(count: int) -> list[str]:
    """``api-1``..``api-<count>``: process, log file and health row of each API replica."""
    return [f"{API.name}-{index}" for index in range(1, count + 1)]


def pick_replica_ports(spec: StackSpec) -> dict[str, int]:
    """Each replica's own port: the API port itself for a single replica (nothing to share),
    otherwise a free loopback port apart from the stack's ports."""
    names = replica_names(spec.replicas)
    if spec.replicas == 1:
        return {names[0]: spec.ports[API.name]}
    taken = set(spec.ports.values())
    ports: dict[str, int] = {}
    for name in names:
        ports[name] = _free_port(taken)
        taken.add(ports[name])
    return ports


def _free_port(taken: set[int], attempts: int = 100) -> int:
    """A loopback port the kernel hands out as free now, not one of ``taken``."""
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            return port
    raise CalopsError("Found no free loopback port for an API replica; free some ports.")


class LocalRuntime(Runtime):
    """Runs each service as a detached process group under ``home``."""

    name = "local"

    def __init__(self, home: Path, *, which: Which = shutil.which, stack: Path | None = None):
        self.home = home
        self.which = which
        self.stack = stack or stack_dir()

    def availability(self, spec: StackSpec) -> Availability:
        services = [s.name for s in SERVICES if self._binary(s.name)]
        absent = {s.name: s.install_hint for s in SERVICES if s.name not in services}
        return Availability(services=services, absent=absent)

    def up(
        self, spec: StackSpec, state: StackState, save: SaveState, services: Sequence[str]
    ) -> None:
        state.logs = str(self.log_dir)
        if API.name in services:  # picked as the API starts, so the ports are free right now
            state.extra[REPLICA_PORTS] = pick_replica_ports(spec)
        replica_ports: dict[str, int] = state.extra.get(REPLICA_PORTS, {})
        for plan in self.plans(spec, state.services, replica_ports):
            if plan.service not in services:
                continue
            self.log_path(plan.name).unlink(missing_ok=True)  # a failure shows this run's log
            pid = processes.spawn(plan.argv, env=plan.env, log=self.log_path(plan.name))
            state.pids[plan.name] = pid
            save(state)

    def down(self, state: StackState, *, volumes: bool) -> list[str]:
        ran = set(processes.stop_groups(state.pids.values()))
        stopped = [name for name, pid in state.pids.items() if pid in ran]
        if volumes:
            for folder in ("mlflow", "prometheus", "grafana"):
                shutil.rmtree(self.home / folder, ignore_errors=True)
            for suffix in ("", "-wal", "-shm"):
                (self.home / f"{PREDICTION_LOG}{suffix}").unlink(missing_ok=True)
        return stopped

    def alive(self, state: StackState) -> dict[str, bool]:
        """Per service; the API runs while any of its replicas does (`replicas` tells which)."""
        found: dict[str, bool] = {}
        for name, pid in state.pids.items():
            service = _service_of(name)
            found[service] = found.get(service, False) or processes.leader_alive(pid)
        return found

    def replicas(self, state: StackState) -> list[Replica]:
        return [
            Replica(
                name=name,
                running=name in state.pids and processes.leader_alive(state.pids[name]),
                address=f"{LOOPBACK}:{port}",
                url=loopback_url(port),
            )
            for name, port in state.extra.get(REPLICA_PORTS, {}).items()
        ]

    def log_tail(self, state: StackState, service: str, lines: int = 30) -> str:
        """The end of the service's log; of each replica's log, lines prefixed, for the API."""
        names = self._process_names(state, service)
        if len(names) == 1:
            return _tail(self.log_path(names[0]), lines)
        return "\n".join(_prefixed(name, _tail(self.log_path(name), lines)) for name in names)

    def stream_logs(
        self, state: StackState, services: list[str], *, follow: bool, tail: int
    ) -> None:
        names = [name for service in services for name in self._process_names(state, service)]
        for name in names:
            text = _prefixed(name, _tail(self.log_path(name), tail))
            sys.stdout.write(f"{text}\n" if text else "")
        if follow:
            _follow({name: self.log_path(name) for name in names})

    def where_logs(self, state: StackState) -> str:
        return str(self.log_dir)

    def log_hint(self, state: StackState, service: str) -> str:
        paths = [str(self.log_path(name)) for name in self._process_names(state, service)]
        return ", ".join(paths)

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    def log_path(self, name: str) -> Path:
        """The log of a process: a service, or an API replica (``api-2``)."""
        return self.log_dir / f"{name}.log"

    @property
    def prediction_log(self) -> Path:
        """The SQLite prediction log every API replica of this stack shares."""
        return self.home.absolute() / PREDICTION_LOG

    def plans(
        self,
        spec: StackSpec,
        services: list[str],
        replica_ports: Mapping[str, int] | None = None,
    ) -> list[ServicePlan]:
        """The command line of each process to start, after writing the configs they read.

        ``replica_ports`` (replica name -> its own port) as recorded by ``up``; picked afresh
        when not given.
        """
        ports = dict(pick_replica_ports(spec) if replica_ports is None else replica_ports)
        builders = {
            "mlflow": self._mlflow,
            "api": self._api,
            "prometheus": self._prometheus,
            "grafana": self._grafana,
        }
        return [
            plan
            for name in NAMES
            if name in services
            for plan in builders[name](spec, services, ports)
        ]

    def _process_names(self, state: StackState, service: str) -> list[str]:
        """The processes (and log files) of ``service``: its replicas for the API."""
        if service == API.name:
            return list(state.extra.get(REPLICA_PORTS, {})) or [service]
        return [service]

    def _binary(self, name: str) -> str | None:
        """The first of the service's binaries on PATH; this Python for the Python services."""
        binaries = by_name(name).binaries
        if not binaries:
            return sys.executable
        return next((found for binary in binaries if (found := self.which(binary))), None)

    def _api(
        self, spec: StackSpec, services: list[str], replica_ports: dict[str, int]
    ) -> list[ServicePlan]:
        """One process per replica, all on the API port; each also alone on its own port when
        there are several (a single replica's own port is the API port)."""
        port = spec.ports[API.name]
        shared = {
            **processes.child_env(API_VARIABLES),
            "CALOPS_MODEL": spec.model,
            "CALOPS_ALLOW_PICKLE": str(spec.allow_pickle).lower(),
            "MLFLOW_TRACKING_URI": spec.url("mlflow"),
            "CALOPS_HOST": LOOPBACK,
            "CALOPS_PORT": str(port),
            "CALOPS_WORKERS": "1",  # replicas, not uvicorn workers, share the port
            "CALOPS_PREDICTION_LOG": str(self.prediction_log),
        }
        plans = []
        for name, own in replica_ports.items():
            env = {**shared, "CALOPS_REUSE_PORT": "true" if own != port else "false"}
            env.pop("CALOPS_OWN_PORT", None)
            if own != port:
                env["CALOPS_OWN_PORT"] = str(own)
            plans.append(ServicePlan(name, list(API_ARGV), env, API.name))
        return plans

    def _mlflow(
        self, spec: StackSpec, services: list[str], replica_ports: dict[str, int]
    ) -> list[ServicePlan]:
        root = self.home / "mlflow"
        (root / "artifacts").mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "mlflow", "server", "--host", LOOPBACK]
        argv += ["--port", str(spec.ports["mlflow"]), "--workers", "1"]
        argv += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
        # Artifacts go through the server (HTTP), so clients never write into its folders.
        argv += ["--serve-artifacts", "--artifacts-destination", str(root / "artifacts")]
        argv += ["--allowed-hosts", MLFLOW_ALLOWED_HOSTS]
        # The server's job-queue workers (several extra processes) serve no purpose here.
        env = processes.child_env(MLFLOW_VARIABLES)
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        return [ServicePlan("mlflow", argv, env, "mlflow")]

    def _prometheus(
        self, spec: StackSpec, services: list[str], replica_ports: dict[str, int]
    ) -> list[ServicePlan]:
        root = self.home / "prometheus"
        config = localconfig.write_prometheus_config(
            self.stack / "prometheus" / "prometheus.yml",
            root / "prometheus.yml",
            spec.ports,
            services,
            {name: f"{LOOPBACK}:{port}" for name, port in replica_ports.items()},
        )
        argv = [str(self._binary("prometheus")), f"--config.file={config}"]
        argv += [f"--storage.tsdb.path={root / 'data'}"]
        argv += [f"--web.listen-address={LOOPBACK}:{spec.ports['prometheus']}"]
        return [ServicePlan("prometheus", argv, processes.child_env(), "prometheus")]

    def _grafana(
        self, spec: StackSpec, services: list[str], replica_ports: dict[str, int]
    ) -> list[ServicePlan]:
        root = self.home / "grafana"
        provisioning = localconfig.write_grafana_provisioning(
            self.stack, root / "provisioning", spec.url("prometheus")
        )
        binary = str(self._binary("grafana"))
        argv = [binary] + (["server"] if Path(binary).name == "grafana" else [])
        argv += ["--homepath", str(_grafana_home(Path(binary)))]
        env = {**processes.child_env(GRAFANA_VARIABLES), **_grafana_env(spec, root, provisioning)}
        return [ServicePlan("grafana", argv, env, "grafana")]


def _service_of(name: str) -> str:
    """The service a process belongs to: ``api-2`` -> ``api``; a service is its own."""
    return name if name in NAMES else name.rpartition("-")[0]


def _tail(path: Path, lines: int) -> str:
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _prefixed(name: str, text: str) -> str:
    """Each line of ``text`` after the process name, as `calops logs` prints them."""
    return "\n".join(f"{name:<10} | {line}" for line in text.splitlines())


def _grafana_env(spec: StackSpec, root: Path, provisioning: Path) -> dict[str, str]:
    if spec.grafana_password is None:  # never Grafana's admin/admin default
        raise CalopsError("Grafana cannot start without an admin password; none was set.")
    return {
        "GF_SERVER_HTTP_ADDR": LOOPBACK,
        "GF_SERVER_HTTP_PORT": str(spec.ports["grafana"]),
        "GF_PATHS_DATA": str(root / "data"),
        "GF_PATHS_LOGS": str(root / "logs"),
        "GF_PATHS_PLUGINS": str(root / "plugins"),
        "GF_PATHS_PROVISIONING": str(provisioning),
        "GF_SECURITY_ADMIN_USER": GRAFANA_ADMIN_USER,
        "GF_SECURITY_ADMIN_PASSWORD": spec.grafana_password,
        "GF_ANALYTICS_REPORTING_ENABLED": "false",
        "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
    }


def _grafana_home(binary: Path) -> Path:
    """The folder holding Grafana's conf/defaults.ini (a tarball's root or the distro's)."""
    candidates = [binary.resolve().parent.parent, *GRAFANA_HOMES]
    for candidate in candidates:
        if (candidate / "conf" / "defaults.ini").is_file():
            return candidate
    return candidates[0]


def _follow(paths: dict[str, Path], poll: float = 0.5) -> None:
    """Print lines appended to the logs until interrupted (Ctrl-C ends `calops logs -f`)."""
    offsets = {s: p.stat().st_size if p.is_file() else 0 for s, p in paths.items()}
    while True:
        for service, path in paths.items():
            if not path.is_file():
                continue
            with path.open("rb") as handle:
                handle.seek(offsets[service])
                chunk = handle.read()
            offsets[service] += len(chunk)
            for line in chunk.decode(errors="replace").splitlines():
                sys.stdout.write(f"{service:<10} | {line}\n")
        sys.stdout.flush()
        time.sleep(poll)
