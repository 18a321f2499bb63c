"""The Docker runtime: Docker Compose driven through python-on-whales.

``up`` rebuilds the API image and recreates every container (the seed's ``compose-up-observe``)
and lets Compose wait for the healthchecks; when one fails, the error names the service and
shows the end of its log.

The API runs as ``API_REPLICAS`` containers of the compose service ``api`` (``deploy.replicas``)
with no host port: the ``gateway`` service publishes the API's port and spreads requests over
every replica, which keep their predictions in the ``redis`` service. Those two start with the
api; the gateway is healthy only once it routes to every replica, so Compose's wait covers them.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from calapi.errors import CalopsError
from calopsctl.paths import source_root, stack_dir
from calopsctl.runtime.base import Availability, Replica, Runtime, SaveState, StackSpec
from calopsctl.secrets import write_private
from calopsctl.services import API, NAMES, SERVICES
from calopsctl.state import StackState

PROJECT = "calops"
NETWORK: Final = f"{PROJECT}_default"  # the compose network the replicas are scraped on
API_CONTAINER_PORT: Final = 8000
MAX_REPLICAS: Final = 16  # server-template slots of stack/gateway/haproxy.cfg
GATEWAY: Final = "gateway"
# Compose services started with a stack service when the compose files define them: the api's
# shared prediction log, and the gateway publishing the api's port.
COMPANIONS: Final = {API.name: ("redis", GATEWAY)}
SERVICE_LABEL: Final = "com.docker.compose.service"
NUMBER_LABEL: Final = "com.docker.compose.container-number"
FAILED_STATES: Final = frozenset({"unhealthy", "exited", "dead"})
OFFLINE_FILE: Final = "compose.offline.yaml"
# What a registry that cannot be reached or refuses an image leaves in Docker's error text.
REGISTRY_FAILURE: Final = re.compile(
    r'https://[^"\s]+/v2/|pull access denied|manifest unknown|failed to resolve (reference|source)'
    r"|toomanyrequests",
    re.IGNORECASE,
)
# Where Docker's error text names the image it could not pull.
UNPULLED_IMAGE: Final = (
    re.compile(r"pull access denied for ([^\s,]+)"),
    re.compile(r'failed to resolve (?:reference|source metadata for) "?([\w./-]+(?::[\w.-]+)?)'),
    re.compile(r"manifest for (\S+) not found"),
)
DAEMON_PREFIX: Final = "Error response from daemon: "
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
    # Compose refuses to read compose.yaml without a Grafana password, even with grafana left
    # out (compose.offline.yaml); until `up` knows Grafana runs, one nobody knows stands in.
    env["GRAFANA_ADMIN_PASSWORD"] = spec.grafana_password or secrets.token_urlsafe(18)
    env["CALOPS_ARTIFACTS"] = str(spec.artifacts)
    env["API_REPLICAS"] = str(spec.replicas)
    env["CALOPS_ALLOW_PICKLE"] = str(spec.allow_pickle).lower()
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
        self._config: dict[str, Any] | None = None  # the merged compose model, once read

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
        defined = self._compose_services()
        check_replicas(spec.replicas, defined)
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
        self._write_env(spec)  # with the Grafana password, now that `up` knows whether it runs
        started = with_companions(services, self._compose_services())
        try:
            with self._env_file_wins():
                self.client.compose.up(
                    services=started,
                    build=build,
                    force_recreate=True,
                    dependencies=False,  # started in an earlier step, and left running
                    remove_orphans=True,
                    detach=True,
                    wait=spec.wait,
                    wait_timeout=int(spec.timeout) if spec.wait else None,
                )
        except _docker_exception() as exc:
            raise CalopsError(self._failure(state, exc, started)) from None

    def down(self, state: StackState, *, volumes: bool) -> list[str]:
        running = [s for s, up in self.alive(state).items() if up]
        self._compose("remove the stack", lambda c: c.down(volumes=volumes, remove_orphans=True))
        self.env_file.unlink(missing_ok=True)
        return running

    def alive(self, state: StackState) -> dict[str, bool]:
        """Per compose service (gateway and redis too): does any of its containers run?"""
        alive: dict[str, bool] = {}
        for container in self._containers():
            service = _service_of(container)
            alive[service] = alive.get(service, False) or bool(container.state.running)
        return alive

    def replicas(self, state: StackState) -> list[Replica]:
        """One per container of the api service, by its compose number: api-1, api-2, ..."""
        api = [c for c in self._containers() if _service_of(c) == API.name]
        return [_replica(c) for c in sorted(api, key=_number)]

    def log_tail(self, state: StackState, service: str, lines: int = 30) -> str:
        """The end of a service's log, or of one API replica's (``api-2``: its container's)."""
        number = replica_number(service)
        try:
            if number is None:
                text = self.client.compose.logs(
                    services=[service], tail=str(lines), no_log_prefix=True
                )
            else:
                text = self.client.container.logs(replica_container(number), tail=lines)
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

    def log_hint(self, state: StackState, service: str) -> str:
        number = replica_number(service)
        if number is None:
            return f"calops logs {service}"
        return f"docker logs {replica_container(number)} (every replica: calops logs {API.name})"

    def _containers(self) -> list[Any]:
        return list(self._compose("list the containers", lambda c: c.ps(all=True)))

    def _compose_services(self) -> set[str]:
        """The services the compose files define."""
        return set(self._compose_config().get("services", {}))

    def _compose_config(self) -> dict[str, Any]:
        """The merged compose model (read once per runtime)."""
        if self._config is None:
            self._config = self._compose(
                "read the compose files", lambda c: c.config(return_json=True)
            )
        return self._config or {}

    @contextmanager
    def _env_file_wins(self) -> Iterator[None]:
        """Compose lets the shell's variables override the env file's; the env file holds what
        this `up` decided (``HOST_PORT=8010 calops up --host-port 8020`` publishes 8020), so the
        shell's values of its variables are hidden from Compose meanwhile."""
        keys = env_file_keys(self.env_file)
        hidden = {key: os.environ.pop(key) for key in keys if key in os.environ}
        try:
            yield
        finally:
            os.environ.update(hidden)

    def _compose(self, doing: str, call: Callable[[Any], Any]) -> Any:
        try:
            with self._env_file_wins():
                return call(self.client.compose)
        except _docker_exception() as exc:
            detail = (getattr(exc, "stderr", None) or str(exc)).strip().splitlines()
            last = detail[-1] if detail else "no output"
            raise CalopsError(f"Docker Compose could not {doing}: {last}") from None

    def _write_env(self, spec: StackSpec) -> None:
        lines = "".join(f"{key}={value}\n" for key, value in compose_env(spec).items())
        write_private(self.env_file, lines)  # it holds the Grafana password

    def _failure(self, state: StackState, exc: Exception, started: Sequence[str]) -> str:
        """Which images could not be pulled, else which service failed to become healthy, with
        the end of its log."""
        unpulled = self._unpulled(exc, started)
        if unpulled:
            text = _error_text(exc)
            return pull_failure(unpulled, text, offline=self._offline, down=self._any_running())
        unhealthy = self._unhealthy()
        if not unhealthy:
            detail = _error_text(exc)
            if not detail:  # Compose wrote to the terminal itself: its own words are above
                code = getattr(exc, "return_code", "?")
                return f"Docker Compose could not start the stack (exit code {code}; see above)."
            return f"Docker Compose could not start the stack:\n{detail[-2000:]}"
        service, status = unhealthy[0]
        tail = self.log_tail(state, service)
        return (
            f"Service {service} did not become healthy ({status}); last log lines:\n{tail}\n"
            "Fix it and run `calops up` again, or `calops down` to remove the stack."
        )

    @property
    def _offline(self) -> bool:
        """True when compose.offline.yaml is among the overrides (images built, not pulled)."""
        return any(path.name == OFFLINE_FILE for path in self.overrides)

    def _unpulled(self, exc: Exception, started: Sequence[str]) -> list[str]:
        """The images a failed `up` could not pull: named in Docker's error text, or pulled
        images (``image:`` without ``build:``) still missing here; none when the text (if
        Compose's output was captured) shows another failure."""
        text = _error_text(exc)
        if text and not REGISTRY_FAILURE.search(text):
            return []
        wanted = self._pulled_images(started)
        named = [*images_named(text), *self._missing(wanted)]
        if not named and text:  # a registry failure that names no image: those pulled
            named = wanted
        return list(dict.fromkeys(named))

    def _pulled_images(self, services: Sequence[str]) -> list[str]:
        """The images Compose pulls to start ``services``: those it does not build."""
        defined: dict[str, Any] = self._compose_config().get("services", {})
        found = [defined.get(service) or {} for service in services]
        return [str(item["image"]) for item in found if item.get("image") and not item.get("build")]

    def _missing(self, images: Sequence[str]) -> list[str]:
        """The ``images`` this Docker engine does not have."""
        try:
            return [image for image in images if not self.client.image.exists(image)]
        except _docker_exception():
            return []

    def _any_running(self) -> bool:
        """Whether a container of the project runs (an earlier step's MLflow, say)."""
        try:
            return any(container.state.running for container in self._containers())
        except CalopsError:
            return False

    def _unhealthy(self) -> list[tuple[str, str]]:
        try:
            containers = self.client.compose.ps(all=True)
        except _docker_exception():
            return []
        found = []
        for container in containers:
            status = _container_status(container)
            if _finished(container):
                continue
            if status not in ("running", "healthy"):
                found.append((_service_of(container), status))
        # A service that failed first, before those left waiting for it ("created").
        return sorted(found, key=lambda item: item[1] not in FAILED_STATES)


def images_named(text: str) -> list[str]:
    """The images Docker's error text says it could not pull, in order, each once."""
    found = [match.group(1) for pattern in UNPULLED_IMAGE for match in pattern.finditer(text)]
    return list(dict.fromkeys(found))


def registry_reason(text: str) -> str:
    """The line of Docker's error text that says why the registry failed, else a summary."""
    lines = [line.strip() for line in text.splitlines() if REGISTRY_FAILURE.search(line)]
    if not lines:
        return "no registry gave them and they are not on this machine"
    return lines[-1].removeprefix(DAEMON_PREFIX).rstrip(".")


def pull_failure(images: Sequence[str], text: str, *, offline: bool, down: bool = False) -> str:
    """One sentence: which images could not be pulled, why, and the two ways on (after
    `calops down` when ``down``: what already started would pass for a running stack)."""
    plural = "s" * (len(images) > 1)
    said = f"Docker could not pull the image{plural} {', '.join(images)} ({registry_reason(text)})"
    first = "run `calops down` to remove what started, then " if down else ""
    if offline:
        docker = "build the offline images with `bash stack/offline/prepare.sh` and run `calops up`"
    else:
        docker = (
            "without an image registry, build the offline images with "
            f"`bash stack/offline/prepare.sh` and run `CALOPS_COMPOSE_FILES=stack/{OFFLINE_FILE} "
            "calops up --runtime docker`"
        )
    return f"{said}; {first}{docker}, or run the stack as local processes with " + (
        "`calops up --runtime local`."
    )


def _error_text(exc: Exception) -> str:
    """What Docker wrote on stderr, when python-on-whales captured it ("" when Compose wrote to
    the terminal itself): never python-on-whales's own account of the command it ran."""
    return str(getattr(exc, "stderr", None) or "").strip()


def env_file_keys(path: Path) -> list[str]:
    """The variables an env file sets (none when it does not exist)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [line.partition("=")[0] for line in lines if "=" in line]


def check_replicas(replicas: int, defined: set[str]) -> None:
    """Refuse a replica count the compose files cannot serve, in one sentence."""
    if not 1 <= replicas <= MAX_REPLICAS:
        raise CalopsError(
            f"The Docker stack runs 1 to {MAX_REPLICAS} API replicas (the gateway's slots); "
            f"{replicas} were asked for."
        )
    if replicas > 1 and GATEWAY not in defined:
        raise CalopsError(
            f"{replicas} API replicas need the {GATEWAY} service in front of them, and the "
            "compose files define none; use the shipped stack/compose.yaml or --replicas 1."
        )


def with_companions(services: Sequence[str], defined: set[str]) -> list[str]:
    """``services`` and, after each, the compose services that start with it (when defined)."""
    started: list[str] = []
    for service in services:
        extra = [c for c in COMPANIONS.get(service, ()) if c in defined and c not in services]
        started += [service, *extra]
    return started


def replica_number(name: str) -> int | None:
    """3 for the API replica ``api-3``; None for a service name."""
    prefix, _, number = name.rpartition("-")
    return int(number) if prefix == API.name and number.isdigit() else None


def replica_container(number: int) -> str:
    """The container Compose names for API replica ``number``."""
    return f"{PROJECT}-{API.name}-{number}"


def _replica(container: Any) -> Replica:
    ip = _ip_address(container)
    address = f"{ip}:{API_CONTAINER_PORT}" if ip else ""
    running = bool(container.state.running)
    return Replica(name=f"{API.name}-{_number(container)}", running=running, address=address)


def _ip_address(container: Any) -> str:
    """The container's address on the compose network ("" when it has none: not running)."""
    settings = getattr(container, "network_settings", None)
    networks: dict[str, Any] = (getattr(settings, "networks", None) or {}) if settings else {}
    preferred = [networks[NETWORK]] if NETWORK in networks else []
    for network in [*preferred, *networks.values()]:
        if getattr(network, "ip_address", None):
            return str(network.ip_address)
    return ""


def _number(container: Any) -> int:
    labels = container.config.labels or {}
    try:
        return int(labels.get(NUMBER_LABEL, 0))
    except ValueError:
        return 0


def _service_of(container: Any) -> str:
    labels = container.config.labels or {}
    return str(labels.get(SERVICE_LABEL, container.name))


def _finished(container: Any) -> bool:
    """A one-shot service (mlflow-volume) that exited 0 did its job; it did not fail."""
    state = container.state
    return not state.running and getattr(state, "exit_code", None) == 0


def _container_status(container: Any) -> str:
    state = container.state
    health = getattr(state, "health", None)
    if health is not None and health.status:
        return str(health.status)
    return str(state.status or ("running" if state.running else "exited"))


def _docker_exception() -> type[Exception]:
    from python_on_whales.exceptions import DockerException

    return DockerException
