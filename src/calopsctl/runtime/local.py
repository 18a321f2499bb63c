"""The local runtime: the stack as background processes on 127.0.0.1, for machines without Docker.

The API runs under uvicorn, MLflow as ``mlflow server``, Prometheus and Grafana from their
installed binaries. Each process leads its own session (it survives the terminal), logs to
``<home>/logs/<service>.log`` and is stopped by process group, so workers go with it.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from calopsctl.paths import stack_dir
from calopsctl.runtime import localconfig, processes
from calopsctl.runtime.base import Availability, Runtime, SaveState, StackSpec
from calopsctl.secrets import GRAFANA_ADMIN_USER
from calopsctl.services import LOOPBACK, NAMES, SERVICES, by_name
from calopsctl.state import StackState

Which = Callable[[str], str | None]
GRAFANA_HOMES = (Path("/usr/share/grafana"), Path("/opt/grafana"))


@dataclass(frozen=True)
class ServicePlan:
    """How to start one service: its command line and the environment it needs."""

    name: str
    argv: list[str]
    env: dict[str, str]


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
        for plan in self.plans(spec, state.services):
            if plan.name not in services:
                continue
            self.log_path(plan.name).unlink(missing_ok=True)  # a failure shows this run's log
            pid = processes.spawn(plan.argv, env=plan.env, log=self.log_path(plan.name))
            state.pids[plan.name] = pid
            save(state)

    def down(self, state: StackState, *, volumes: bool) -> list[str]:
        stopped = [name for name, pid in state.pids.items() if processes.stop_group(pid)]
        if volumes:
            for folder in ("mlflow", "prometheus", "grafana"):
                shutil.rmtree(self.home / folder, ignore_errors=True)
        return stopped

    def alive(self, state: StackState) -> dict[str, bool]:
        return {name: processes.leader_alive(pid) for name, pid in state.pids.items()}

    def log_tail(self, state: StackState, service: str, lines: int = 30) -> str:
        path = self.log_path(service)
        if not path.is_file():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stream_logs(
        self, state: StackState, services: list[str], *, follow: bool, tail: int
    ) -> None:
        for service in services:
            text = self.log_tail(state, service, tail)
            for line in text.splitlines():
                sys.stdout.write(f"{service:<10} | {line}\n")
        if follow:
            _follow({s: self.log_path(s) for s in services})

    def where_logs(self, state: StackState) -> str:
        return str(self.log_dir)

    def log_hint(self, state: StackState, service: str) -> str:
        return str(self.log_path(service))

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    def log_path(self, service: str) -> Path:
        return self.log_dir / f"{service}.log"

    def plans(self, spec: StackSpec, services: list[str]) -> list[ServicePlan]:
        """The command line of each service to start, after writing the configs they read."""
        builders = {
            "mlflow": self._mlflow,
            "api": self._api,
            "prometheus": self._prometheus,
            "grafana": self._grafana,
        }
        return [builders[name](spec, services) for name in NAMES if name in services]

    def _binary(self, name: str) -> str | None:
        """The first of the service's binaries on PATH; this Python for the Python services."""
        binaries = by_name(name).binaries
        if not binaries:
            return sys.executable
        return next((found for binary in binaries if (found := self.which(binary))), None)

    def _api(self, spec: StackSpec, services: list[str]) -> ServicePlan:
        argv = [sys.executable, "-m", "uvicorn", "--factory", "calapi.serving.app:create_app"]
        argv += ["--host", LOOPBACK, "--port", str(spec.ports["api"])]
        env = {**os.environ, "CALOPS_MODEL": spec.model}
        env["MLFLOW_TRACKING_URI"] = spec.url("mlflow")
        return ServicePlan("api", argv, env)

    def _mlflow(self, spec: StackSpec, services: list[str]) -> ServicePlan:
        root = self.home / "mlflow"
        (root / "artifacts").mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "mlflow", "server", "--host", LOOPBACK]
        argv += ["--port", str(spec.ports["mlflow"]), "--workers", "1"]
        argv += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
        # Artifacts go through the server (HTTP), so clients never write into its folders.
        argv += ["--serve-artifacts", "--artifacts-destination", str(root / "artifacts")]
        # The server's job-queue workers (several extra processes) serve no purpose here.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        return ServicePlan("mlflow", argv, env)

    def _prometheus(self, spec: StackSpec, services: list[str]) -> ServicePlan:
        root = self.home / "prometheus"
        config = localconfig.write_prometheus_config(
            self.stack / "prometheus" / "prometheus.yml",
            root / "prometheus.yml",
            spec.ports,
            services,
        )
        argv = [str(self._binary("prometheus")), f"--config.file={config}"]
        argv += [f"--storage.tsdb.path={root / 'data'}"]
        argv += [f"--web.listen-address={LOOPBACK}:{spec.ports['prometheus']}"]
        return ServicePlan("prometheus", argv, dict(os.environ))

    def _grafana(self, spec: StackSpec, services: list[str]) -> ServicePlan:
        root = self.home / "grafana"
        provisioning = localconfig.write_grafana_provisioning(
            self.stack, root / "provisioning", spec.url("prometheus")
        )
        binary = str(self._binary("grafana"))
        argv = [binary] + (["server"] if Path(binary).name == "grafana" else [])
        argv += ["--homepath", str(_grafana_home(Path(binary)))]
        env = {**os.environ, **_grafana_env(spec, root, provisioning)}
        return ServicePlan("grafana", argv, env)


def _grafana_env(spec: StackSpec, root: Path, provisioning: Path) -> dict[str, str]:
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
