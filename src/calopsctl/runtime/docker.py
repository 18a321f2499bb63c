"""The Docker runtime: Docker Compose driven through python-on-whales.

``up`` rebuilds the API image and recreates every container (the seed's ``compose-up-observe``)
and lets Compose wait for the healthchecks; when one fails, the error names the service and
shows the end of its log.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from calapi.errors import CalopsError
from calopsctl.paths import source_root, stack_dir
from calopsctl.runtime.base import Availability, Runtime, SaveState, StackSpec
from calopsctl.services import NAMES, SERVICES
from calopsctl.state import StackState

PROJECT = "calops"
ClientFactory = Callable[..., Any]


def engine_answers(binary: str = "docker", timeout: float = 8.0) -> bool:
    """True when the docker CLI exists and a daemon answers it within ``timeout`` seconds."""
    path = shutil.which(binary)
    if path is None:
        return False
    try:
        result = subprocess.run(
            [path, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except (subprocess.TimeoutExpired, OSError):
        return False
    return result.returncode == 0 and bool(result.stdout.strip())


def compose_files(overrides: Sequence[Path] = ()) -> list[Path]:
    """stack/compose.yaml, then the overrides (``CALOPS_COMPOSE_FILES``)."""
    return [stack_dir() / "compose.yaml", *overrides]


def compose_env(spec: StackSpec) -> dict[str, str]:
    """The variables compose.yaml reads, from the spec of this `up`."""
    env = {service.port_env: str(spec.ports[service.name]) for service in SERVICES}
    env["GRAFANA_ADMIN_PASSWORD"] = spec.grafana_password
    env["CALOPS_ARTIFACTS"] = str(spec.artifacts)
    # A host folder means nothing inside the container: compose.yaml mounts the artifacts
    # folder and points the API at it; only a registry reference is passed through.
    if spec.model.startswith("models:/"):
        env["CALOPS_MODEL"] = spec.model
    return env


def _default_client(**kwargs: Any) -> Any:
    from python_on_whales import DockerClient

    return DockerClient(**kwargs)


class DockerRuntime(Runtime):
    """Runs the stack as the Compose project ``calops``; ``overrides`` go over compose.yaml."""

    name = "docker"

    def __init__(
        self,
        home: Path,
        *,
        overrides: Sequence[Path] = (),
        client_factory: ClientFactory = _default_client,
    ):
        self.home = home
        self.overrides = tuple(overrides)
        self.client_factory = client_factory

    @property
    def env_file(self) -> Path:
        return self.home / "compose.env"

    @property
    def client(self) -> Any:
        env_files = [self.env_file] if self.env_file.is_file() else []
        return self.client_factory(
            compose_files=compose_files(self.overrides),
            compose_project_name=PROJECT,
            compose_env_files=env_files,
        )

    def availability(self, spec: StackSpec) -> Availability:
        if not self._compose("find its plugin", lambda c: c.is_installed()):
            raise CalopsError(
                "Docker Compose v2 is not installed for this docker CLI; install the "
                "docker-compose-plugin package, or use --runtime local."
            )
        self._write_env(spec)
        config = self._compose("read the compose files", lambda c: c.config(return_json=True))
        defined = set(config.get("services", {}))
        services = [s for s in NAMES if s in defined]
        absent = {s: "left out by the compose files" for s in NAMES if s not in defined}
        return Availability(services=services, absent=absent)

    def up(
        self, spec: StackSpec, state: StackState, save: SaveState, services: Sequence[str]
    ) -> None:
        build = spec.build and "api" in services
        if build and source_root() is None:
            raise CalopsError(
                "Building the API image needs the calops source checkout; run `calops up` "
                "from a clone of the repository, or pass --no-build with the image already built."
            )
        save(state)  # recorded first, so `calops down` can clean up a half-started stack
        try:
            self.client.compose.up(
                services=list(services),
                build=build,
                force_recreate=True,
                dependencies=False,  # started in an earlier step, and left running
                remove_orphans=True,
                detach=True,
                wait=spec.wait,
                wait_timeout=int(spec.timeout) if spec.wait else None,
            )
        except _docker_exception() as exc:
            raise CalopsError(self._failure(state, exc)) from None

    def down(self, state: StackState, *, volumes: bool) -> list[str]:
        running = [s for s, up in self.alive(state).items() if up]
        self._compose("remove the stack", lambda c: c.down(volumes=volumes, remove_orphans=True))
        self.env_file.unlink(missing_ok=True)
        return running

    def alive(self, state: StackState) -> dict[str, bool]:
        containers = self._compose("list the containers", lambda c: c.ps(all=True))
        return {_service_of(c): bool(c.state.running) for c in containers}

    def log_tail(self, state: StackState, service: str, lines: int = 30) -> str:
        try:
            text = self.client.compose.logs(services=[service], tail=str(lines), no_log_prefix=True)
        except _docker_exception():
            return ""
        return str(text).rstrip()

    def stream_logs(
        self, state: StackState, services: list[str], *, follow: bool, tail: int
    ) -> None:
        stream = self.client.compose.logs(
            services=services, tail=str(tail), follow=follow, stream=True
        )
        for _source, chunk in stream:
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()

    def where_logs(self, state: StackState) -> str:
        return "calops logs [SERVICE] (docker compose logs)"

    def _compose(self, doing: str, call: Callable[[Any], Any]) -> Any:
        try:
            return call(self.client.compose)
        except _docker_exception() as exc:
            detail = (getattr(exc, "stderr", None) or str(exc)).strip().splitlines()
            last = detail[-1] if detail else "no output"
            raise CalopsError(f"Docker Compose could not {doing}: {last}") from None

    def _write_env(self, spec: StackSpec) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        lines = "".join(f"{key}={value}\n" for key, value in compose_env(spec).items())
        # The file holds the Grafana password: created 0600 before anything is written.
        fd = os.open(self.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(lines)

    def _failure(self, state: StackState, exc: Exception) -> str:
        """Which service failed to become healthy, with the end of its log."""
        unhealthy = self._unhealthy()
        if not unhealthy:
            detail = (getattr(exc, "stderr", None) or str(exc)).strip()
            return f"Docker Compose could not start the stack:\n{detail[-2000:]}"
        service, status = unhealthy[0]
        tail = self.log_tail(state, service)
        return (
            f"Service {service} did not become healthy ({status}); last log lines:\n{tail}\n"
            "Fix it and run `calops up` again, or `calops down` to remove the stack."
        )

    def _unhealthy(self) -> list[tuple[str, str]]:
        try:
            containers = self.client.compose.ps(all=True)
        except _docker_exception():
            return []
        found = []
        for container in containers:
            status = _container_status(container)
            if status not in ("running", "healthy"):
                found.append((_service_of(container), status))
        return found


def _service_of(container: Any) -> str:
    labels = container.config.labels or {}
    return str(labels.get("com.docker.compose.service", container.name))


def _container_status(container: Any) -> str:
    state = container.state
    health = getattr(state, "health", None)
    if health is not None and health.status:
        return str(health.status)
    return str(state.status or ("running" if state.running else "exited"))


def _docker_exception() -> type[Exception]:
    from python_on_whales.exceptions import DockerException

    return DockerException
