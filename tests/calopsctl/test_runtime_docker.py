"""The docker runtime's calls into python-on-whales, with a fake client standing in for Docker."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from python_on_whales.exceptions import DockerException

from calapi.errors import CalopsError
from calopsctl import paths
from calopsctl.runtime import docker as docker_module
from calopsctl.runtime import select_runtime
from calopsctl.runtime.base import Replica, StackSpec
from calopsctl.runtime.docker import DockerRuntime, compose_env, engine_answers, with_companions
from calopsctl.runtime.local import LocalRuntime
from calopsctl.services import SERVICES, RuntimeChoice
from calopsctl.settings import CliSettings
from calopsctl.state import StackState

PORTS = {"api": 8010, "prometheus": 9091, "grafana": 3001, "mlflow": 5001}
ALL = ["api", "prometheus", "grafana", "mlflow"]
# What the shipped compose files define: the stack's services, the gateway and the log's Redis.
COMPOSED = [*ALL, "gateway", "redis"]


def _container(
    service: str,
    *,
    running: bool = True,
    health: str | None = "healthy",
    number: int = 1,
    status: str | None = None,
    networks: dict[str, str] | None = None,
    exit_code: int = 1,
) -> Any:
    labels = {
        "com.docker.compose.service": service,
        "com.docker.compose.container-number": str(number),
    }
    addresses = {name: SimpleNamespace(ip_address=ip) for name, ip in (networks or {}).items()}
    return SimpleNamespace(
        name=f"calops-{service}-{number}",
        config=SimpleNamespace(labels=labels),
        state=SimpleNamespace(
            running=running,
            status=status or ("running" if running else "exited"),
            health=SimpleNamespace(status=health) if health else None,
            exit_code=0 if running else exit_code,
        ),
        network_settings=SimpleNamespace(networks=addresses),
    )


class FakeCompose:
    """Records every call; answers like Compose would."""

    def __init__(
        self,
        services: list[str],
        containers: list[Any] | None = None,
        definitions: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.services = services
        self.containers = containers or []
        self.definitions = definitions or {}  # service -> its compose model (image, build)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.up_error: Exception | None = None
        self.installed = True
        self.environ_at_up: dict[str, str] = {}

    def is_installed(self) -> bool:
        return self.installed

    def config(self, return_json: bool = False) -> dict[str, Any]:
        return {"services": {name: self.definitions.get(name, {}) for name in self.services}}

    def up(self, **kwargs: Any) -> None:
        self.calls.append(("up", kwargs))
        self.environ_at_up = dict(os.environ)
        if self.up_error:
            raise self.up_error

    def down(self, **kwargs: Any) -> None:
        self.calls.append(("down", kwargs))

    def ps(self, **kwargs: Any) -> list[Any]:
        return self.containers

    def logs(self, **kwargs: Any) -> Any:
        self.calls.append(("logs", kwargs))
        if kwargs.get("stream"):
            return iter([("stdout", b"api | started\n")])
        return "line one\nline two\n"


class FakeContainers:
    """Stands in for DockerClient.container: the logs of one container."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def logs(self, container: str, **kwargs: Any) -> str:
        self.calls.append((container, kwargs))
        return f"{container} started\n"


class FakeImages:
    """Stands in for DockerClient.image: the images this engine has."""

    def __init__(self, present: set[str] | None = None) -> None:
        self.present = present or set()

    def exists(self, image: str) -> bool:
        return image in self.present


class FakeFactory:
    """Stands in for python_on_whales.DockerClient and keeps the arguments it was built with."""

    def __init__(self, compose: FakeCompose) -> None:
        self.compose = compose
        self.container = FakeContainers()
        self.image = FakeImages()
        self.kwargs: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> Any:
        self.kwargs.append(kwargs)
        return SimpleNamespace(compose=self.compose, container=self.container, image=self.image)


def _spec(tmp_path: Path, model: str | None = None, replicas: int = 1) -> StackSpec:
    artifacts = tmp_path / "artifacts"
    return StackSpec(
        ports=PORTS,
        artifacts=artifacts,
        model=model or str(artifacts),
        grafana_password="s3cret-pw",
        timeout=90,
        replicas=replicas,
    )


def _runtime(
    tmp_path: Path, compose: FakeCompose, overrides: tuple[Path, ...] = ()
) -> tuple[DockerRuntime, FakeFactory]:
    factory = FakeFactory(compose)
    runtime = DockerRuntime(tmp_path / "home", overrides=overrides, client_factory=factory)
    return runtime, factory


def _state() -> StackState:
    return StackState(runtime="docker", ports=PORTS, services=list(ALL))


def test_client_gets_compose_files_project_and_env_file(tmp_path: Path) -> None:
    """The client uses stack/compose.yaml plus the overrides, project calops, the env file."""
    override = tmp_path / "override.yaml"
    runtime, factory = _runtime(tmp_path, FakeCompose(ALL), overrides=(override,))
    runtime.availability(_spec(tmp_path))
    built = factory.kwargs[-1]
    assert built["compose_files"] == [paths.stack_dir() / "compose.yaml", override]
    assert built["compose_project_name"] == "calops"
    assert built["compose_env_files"] == [runtime.env_file]


def test_env_file_holds_ports_password_artifacts_and_is_private(tmp_path: Path) -> None:
    """The env file carries every variable compose.yaml reads and is readable by its owner only."""
    runtime, _ = _runtime(tmp_path, FakeCompose(ALL))
    runtime.availability(_spec(tmp_path))
    text = runtime.env_file.read_text()
    for line in ("HOST_PORT=8010", "PROMETHEUS_PORT=9091", "GRAFANA_PORT=3001", "MLFLOW_PORT=5001"):
        assert line in text
    assert "GRAFANA_ADMIN_PASSWORD=s3cret-pw" in text
    assert f"CALOPS_ARTIFACTS={tmp_path / 'artifacts'}" in text
    assert stat.S_IMODE(runtime.env_file.stat().st_mode) == 0o600


def test_an_env_file_left_readable_by_others_is_made_private(tmp_path: Path) -> None:
    """compose.env from an older calops, mode 0644: the next write leaves it 0600, no copy."""
    runtime, _ = _runtime(tmp_path, FakeCompose(ALL))
    runtime.env_file.parent.mkdir(parents=True, exist_ok=True)
    runtime.env_file.write_text("GRAFANA_ADMIN_PASSWORD=old\n")
    runtime.env_file.chmod(0o644)
    runtime.availability(_spec(tmp_path))
    assert stat.S_IMODE(runtime.env_file.stat().st_mode) == 0o600
    assert "GRAFANA_ADMIN_PASSWORD=s3cret-pw" in runtime.env_file.read_text()
    assert [p.name for p in runtime.env_file.parent.iterdir()] == ["compose.env"]


def test_compose_file_reads_the_port_variables_of_the_services_table() -> None:
    """stack/compose.yaml publishes each service on the variable the services table names."""
    text = (paths.stack_dir() / "compose.yaml").read_text()
    for service in SERVICES:
        assert f"${{{service.port_env}:-{service.default_port}}}" in text


def test_model_reference_passes_only_registry_uris(tmp_path: Path) -> None:
    """A host folder stays outside the container; a models:/ reference is handed to the API."""
    assert "CALOPS_MODEL" not in compose_env(_spec(tmp_path))
    registry = compose_env(_spec(tmp_path, "models:/calories@champion"))
    assert registry["CALOPS_MODEL"] == "models:/calories@champion"


def test_allow_pickle_is_passed_to_compose(tmp_path: Path) -> None:
    """compose.yaml's api reads CALOPS_ALLOW_PICKLE, which is true only with --allow-pickle."""
    assert compose_env(_spec(tmp_path))["CALOPS_ALLOW_PICKLE"] == "false"
    allowed = compose_env(replace(_spec(tmp_path), allow_pickle=True))
    assert allowed["CALOPS_ALLOW_PICKLE"] == "true"
    text = (paths.stack_dir() / "compose.yaml").read_text()
    assert "CALOPS_ALLOW_PICKLE: ${CALOPS_ALLOW_PICKLE:-false}" in text


def test_service_disabled_by_override_is_absent_not_fatal(tmp_path: Path) -> None:
    """A compose model without grafana (the offline override) reports grafana as absent."""
    runtime, _ = _runtime(tmp_path, FakeCompose(["api", "prometheus", "mlflow"]))
    available = runtime.availability(_spec(tmp_path))
    assert available.services == ["api", "prometheus", "mlflow"]
    assert set(available.absent) == {"grafana"}


def test_missing_compose_plugin_is_one_sentence(tmp_path: Path) -> None:
    """Without the Compose v2 plugin the error says what to install or use instead."""
    compose = FakeCompose(ALL)
    compose.installed = False
    runtime, _ = _runtime(tmp_path, compose)
    with pytest.raises(CalopsError, match="Docker Compose v2 is not installed"):
        runtime.availability(_spec(tmp_path))


def test_up_rebuilds_recreates_and_waits(tmp_path: Path) -> None:
    """`up` asks Compose to build, force-recreate, detach and wait with the spec's timeout."""
    compose = FakeCompose(ALL)
    runtime, _ = _runtime(tmp_path, compose)
    saved: list[StackState] = []
    runtime.up(_spec(tmp_path), _state(), saved.append, ["api", "prometheus"])
    name, kwargs = compose.calls[-1]
    assert name == "up"
    assert kwargs["services"] == ["api", "prometheus"]
    assert kwargs["dependencies"] is False
    assert kwargs["build"] is True
    assert kwargs["force_recreate"] is True
    assert kwargs["detach"] is True
    assert kwargs["wait"] is True
    assert kwargs["wait_timeout"] == 90
    assert saved, "the state is recorded before anything starts"


def test_a_step_without_the_api_builds_nothing(tmp_path: Path) -> None:
    """The first step starts MLflow alone: no image build for a service it does not start."""
    compose = FakeCompose(ALL)
    runtime, _ = _runtime(tmp_path, compose)
    runtime.up(_spec(tmp_path), _state(), lambda state: None, ["mlflow"])
    name, kwargs = compose.calls[-1]
    assert (name, kwargs["services"], kwargs["build"]) == ("up", ["mlflow"], False)


def test_unhealthy_service_is_named_with_its_log_tail(tmp_path: Path) -> None:
    """When Compose's wait fails, the error names the unhealthy service and shows its log."""
    compose = FakeCompose(
        ALL, containers=[_container("api", health="unhealthy"), _container("mlflow")]
    )
    compose.up_error = DockerException(["docker", "compose", "up"], 1, b"", b"dependency failed")
    runtime, _ = _runtime(tmp_path, compose)
    with pytest.raises(CalopsError, match="Service api did not become healthy") as caught:
        runtime.up(_spec(tmp_path), _state(), lambda state: None, ALL)
    assert "line two" in str(caught.value)
    logs_call = [kw for name, kw in compose.calls if name == "logs"][-1]
    assert logs_call["services"] == ["api"]


def test_a_one_shot_service_that_exited_0_is_not_the_failure(tmp_path: Path) -> None:
    """mlflow-volume exits 0 before mlflow starts: a failed `up` names the service that failed."""
    chown = _container("mlflow-volume", running=False, health=None, exit_code=0)
    compose = FakeCompose(ALL, containers=[chown, _container("api", health="unhealthy")])
    compose.up_error = DockerException(["docker", "compose", "up"], 1, b"", b"dependency failed")
    runtime, _ = _runtime(tmp_path, compose)
    with pytest.raises(CalopsError, match="Service api did not become healthy"):
        runtime.up(_spec(tmp_path), _state(), lambda state: None, ALL)


def test_build_without_checkout_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the API image outside a source checkout fails with a clear sentence."""
    monkeypatch.setattr(docker_module, "source_root", lambda: None)
    runtime, _ = _runtime(tmp_path, FakeCompose(ALL))
    with pytest.raises(CalopsError, match="source checkout"):
        runtime.up(_spec(tmp_path), _state(), lambda state: None, ALL)


def test_down_removes_project_volumes_and_env_file(tmp_path: Path) -> None:
    """`down --volumes` calls compose down with volumes and reports what was running."""
    compose = FakeCompose(ALL, containers=[_container("api"), _container("mlflow", running=False)])
    runtime, _ = _runtime(tmp_path, compose)
    runtime.availability(_spec(tmp_path))
    stopped = runtime.down(_state(), volumes=True)
    assert stopped == ["api"]
    assert ("down", {"volumes": True, "remove_orphans": True}) in compose.calls
    assert not runtime.env_file.exists()


def test_alive_reads_container_state(tmp_path: Path) -> None:
    """A stopped container shows as not alive, by its compose service label."""
    compose = FakeCompose(ALL, containers=[_container("api"), _container("grafana", running=False)])
    runtime, _ = _runtime(tmp_path, compose)
    assert runtime.alive(_state()) == {"api": True, "grafana": False}


def test_stream_logs_writes_compose_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`calops logs` streams compose logs with the tail and follow asked for."""
    compose = FakeCompose(ALL)
    runtime, _ = _runtime(tmp_path, compose)
    runtime.stream_logs(_state(), ["api"], follow=False, tail=5)
    assert "api | started" in capsys.readouterr().out
    assert ("logs", {"services": ["api"], "tail": "5", "follow": False, "stream": True}) in (
        compose.calls
    )


def test_docker_asked_without_engine_is_one_sentence(tmp_path: Path) -> None:
    """--runtime docker with no engine names where it looked and what to do."""
    settings = CliSettings(home=tmp_path, docker_host="unix:///nonexistent/docker.sock")
    with pytest.raises(CalopsError) as caught:
        select_runtime(RuntimeChoice.DOCKER, settings, answers=lambda: False)
    assert str(caught.value) == (
        "Docker was asked for but no engine answers at unix:///nonexistent/docker.sock; "
        "start Docker or use --runtime local."
    )


def test_auto_picks_local_without_engine_and_docker_with_one(tmp_path: Path) -> None:
    """auto: local processes when no engine answers (saying why), Docker when one does."""
    settings = CliSettings(home=tmp_path, compose_files=[tmp_path / "extra.yaml"])
    chosen = select_runtime(RuntimeChoice.AUTO, settings, answers=lambda: False)
    assert isinstance(chosen.runtime, LocalRuntime)
    assert "no Docker engine answers" in chosen.reason
    chosen = select_runtime(RuntimeChoice.AUTO, settings, answers=lambda: True)
    assert isinstance(chosen.runtime, DockerRuntime)
    assert chosen.runtime.home == tmp_path
    assert chosen.runtime.overrides == (tmp_path / "extra.yaml",)
    assert "engine answers" in chosen.reason


def test_unknown_runtime_is_refused_with_the_choices(isolated_home: Path) -> None:
    """`calops up --runtime podman` is a usage error naming auto, docker and local."""
    from typer.testing import CliRunner

    from calopsctl.cli import app

    result = CliRunner().invoke(app, ["up", "--runtime", "podman"])
    assert result.exit_code == 2
    assert all(choice in result.output for choice in ("auto", "docker", "local"))


def test_env_file_asks_for_the_replicas(tmp_path: Path) -> None:
    """`--replicas 3` reaches compose.yaml as API_REPLICAS (api replicas, the gateway's wait)."""
    runtime, _ = _runtime(tmp_path, FakeCompose(COMPOSED))
    runtime.availability(_spec(tmp_path, replicas=3))
    assert "API_REPLICAS=3" in runtime.env_file.read_text()
    assert compose_env(_spec(tmp_path))["API_REPLICAS"] == "1"


def test_gateway_and_redis_are_compose_details_not_stack_services(tmp_path: Path) -> None:
    """The stack's services stay the four of the services table: the gateway serves the api's
    port and Redis its log, so neither has a port, a flag or a health row of its own."""
    runtime, _ = _runtime(tmp_path, FakeCompose(COMPOSED))
    available = runtime.availability(_spec(tmp_path, replicas=2))
    assert available.services == ALL
    assert available.absent == {}


def test_the_api_starts_with_its_gateway_and_its_log(tmp_path: Path) -> None:
    """The step that starts the api starts redis and the gateway with it; the MLflow step not."""
    compose = FakeCompose(COMPOSED)
    runtime, _ = _runtime(tmp_path, compose)
    runtime.availability(_spec(tmp_path, replicas=3))
    runtime.up(_spec(tmp_path, replicas=3), _state(), lambda state: None, ["mlflow"])
    runtime.up(_spec(tmp_path, replicas=3), _state(), lambda state: None, ["api", "prometheus"])
    started = [kwargs["services"] for name, kwargs in compose.calls if name == "up"]
    assert started == [["mlflow"], ["api", "redis", "gateway", "prometheus"]]


def test_companions_only_when_the_compose_files_define_them() -> None:
    """An override without a gateway or Redis starts the api alone; none is listed twice."""
    assert with_companions(["api", "grafana"], set(ALL)) == ["api", "grafana"]
    assert with_companions(["gateway", "api"], set(COMPOSED)) == ["gateway", "api", "redis"]


@pytest.mark.parametrize("replicas", [0, 17])
def test_replicas_beyond_the_gateway_slots_are_refused(tmp_path: Path, replicas: int) -> None:
    """The gateway has 16 server slots: 0 or 17 replicas are refused before anything starts."""
    runtime, _ = _runtime(tmp_path, FakeCompose(COMPOSED))
    with pytest.raises(CalopsError, match=f"1 to 16 API replicas.*{replicas} were asked for"):
        runtime.availability(_spec(tmp_path, replicas=replicas))


def test_replicas_without_a_gateway_are_refused(tmp_path: Path) -> None:
    """Compose files with no gateway cannot put several replicas behind one port."""
    runtime, _ = _runtime(tmp_path, FakeCompose(ALL))
    with pytest.raises(CalopsError, match="need the gateway service"):
        runtime.availability(_spec(tmp_path, replicas=2))
    assert runtime.availability(_spec(tmp_path)).services == ALL  # one replica needs none


def test_replicas_are_the_api_containers_with_their_network_address(tmp_path: Path) -> None:
    """One Replica per api container, by compose number, at its compose-network address."""
    containers = [
        _container("api", number=2, networks={"calops_default": "172.18.0.6"}),
        _container("gateway", networks={"calops_default": "172.18.0.9"}),
        _container("api", number=1, networks={"other": "10.0.0.2", "calops_default": "172.18.0.5"}),
        _container("api", number=3, running=False, health=None),
    ]
    runtime, _ = _runtime(tmp_path, FakeCompose(COMPOSED, containers=containers))
    assert runtime.replicas(_state()) == [
        Replica("api-1", running=True, address="172.18.0.5:8000"),
        Replica("api-2", running=True, address="172.18.0.6:8000"),
        Replica("api-3", running=False, address=""),
    ]


def test_alive_counts_a_service_up_while_one_replica_runs(tmp_path: Path) -> None:
    """An api with one replica stopped is alive; gateway and redis are reported by name."""
    containers = [
        _container("api", number=1, running=False),
        _container("api", number=2),
        _container("gateway"),
        _container("redis", running=False),
    ]
    runtime, _ = _runtime(tmp_path, FakeCompose(COMPOSED, containers=containers))
    assert runtime.alive(_state()) == {"api": True, "gateway": True, "redis": False}


def test_down_reports_every_service_that_ran(tmp_path: Path) -> None:
    """`down` names the gateway and Redis among what it stopped, each once."""
    containers = [_container("api", number=n) for n in (1, 2, 3)]
    containers += [_container("gateway"), _container("redis")]
    runtime, _ = _runtime(tmp_path, FakeCompose(COMPOSED, containers=containers))
    assert runtime.down(_state(), volumes=False) == ["api", "gateway", "redis"]


def test_the_failed_service_is_named_before_those_waiting_for_it(tmp_path: Path) -> None:
    """A gateway left "created" behind an unhealthy api: the error names the api."""
    containers = [
        _container("gateway", running=False, health=None, status="created"),
        _container("api", health="unhealthy"),
    ]
    compose = FakeCompose(COMPOSED, containers=containers)
    compose.up_error = DockerException(["docker", "compose", "up"], 1, b"", b"dependency failed")
    runtime, _ = _runtime(tmp_path, compose)
    with pytest.raises(CalopsError, match="Service api did not become healthy"):
        runtime.up(_spec(tmp_path), _state(), lambda state: None, ALL)


def test_the_env_file_wins_over_the_shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compose prefers the shell's variables to the env file's: while `up` runs, the shell's
    HOST_PORT and API_REPLICAS are hidden, so the ports and replicas asked for are the ones
    used; they are back afterwards."""
    monkeypatch.setenv("HOST_PORT", "8999")
    monkeypatch.setenv("API_REPLICAS", "5")
    compose = FakeCompose(COMPOSED)
    runtime, _ = _runtime(tmp_path, compose)
    spec = _spec(tmp_path, replicas=3)
    runtime.availability(spec)
    runtime.up(spec, _state(), lambda state: None, ["api"])
    assert "HOST_PORT" not in compose.environ_at_up
    assert "API_REPLICAS" not in compose.environ_at_up
    assert (os.environ["HOST_PORT"], os.environ["API_REPLICAS"]) == ("8999", "5")


def test_a_replica_log_is_its_container_log(tmp_path: Path) -> None:
    """`api-2` (a replica's name) reads container calops-api-2; `api` reads the service's logs."""
    compose = FakeCompose(COMPOSED)
    runtime, factory = _runtime(tmp_path, compose)
    assert runtime.log_tail(_state(), "api-2", lines=5) == "calops-api-2 started"
    assert factory.container.calls == [("calops-api-2", {"tail": 5})]
    assert runtime.log_tail(_state(), "api") == "line one\nline two"
    assert [kw["services"] for name, kw in compose.calls if name == "logs"] == [["api"]]


def test_log_hints_name_a_command_that_works(tmp_path: Path) -> None:
    """A replica's hint is its container's `docker logs`; a service's is `calops logs`."""
    runtime, _ = _runtime(tmp_path, FakeCompose(COMPOSED))
    assert runtime.log_hint(_state(), "api-3") == (
        "docker logs calops-api-3 (every replica: calops logs api)"
    )
    assert runtime.log_hint(_state(), "api") == "calops logs api"
    assert runtime.log_hint(_state(), "prometheus") == "calops logs prometheus"


# The images of stack/compose.yaml: the api's is built, the others are pulled.
IMAGES: dict[str, dict[str, Any]] = {
    "api": {"image": "calops/api:local", "build": {"context": ".."}},
    "gateway": {"image": "haproxy:3.0.5-alpine"},
    "redis": {"image": "redis:7.4.2-alpine"},
    "prometheus": {"image": "prom/prometheus:v3.5.0"},
    "grafana": {"image": "grafana/grafana:12.0.2"},
    "mlflow": {"image": "ghcr.io/mlflow/mlflow:v3.17.2"},
}
EVERY_IMAGE = {str(definition["image"]) for definition in IMAGES.values()}
NO_SUCH_HOST = (
    'Error response from daemon: Get "https://registry-1.docker.io/v2/": dial tcp: lookup '
    "registry-1.docker.io on 127.0.0.53:53: no such host"
)
PULL_DENIED = (
    "Error response from daemon: pull access denied for calops-offline/debian, repository does "
    "not exist or may require 'docker login': denied: requested access to the resource is denied"
)
WAYS_ON = (
    "without an image registry, build the offline images with `bash stack/offline/prepare.sh` "
    "and run `CALOPS_COMPOSE_FILES=stack/compose.offline.yaml calops up --runtime docker`, or "
    "run the stack as local processes with `calops up --runtime local`."
)


def _failed_up(stderr: str | None) -> DockerException:
    """What python-on-whales raises when `docker compose up` exits 1 (stderr None: Compose
    wrote to the terminal, as python-on-whales's compose.up lets it)."""
    command = ["docker", "compose", "up", "--build", "--detach", "--wait"]
    return DockerException(command, 1, None, stderr.encode() if stderr is not None else None)


def _pulling(
    tmp_path: Path, error: DockerException, *, present: set[str], overrides: tuple[Path, ...] = ()
) -> tuple[DockerRuntime, FakeCompose]:
    compose = FakeCompose(COMPOSED, definitions=IMAGES)
    compose.up_error = error
    runtime, factory = _runtime(tmp_path, compose, overrides=overrides)
    factory.image.present = present
    return runtime, compose


def test_unreachable_registry_names_the_images_and_the_ways_on(tmp_path: Path) -> None:
    """Docker's "no such host" for the registry: one sentence naming the images of the step
    that are not here (not the api's, which is built), why, and the two ways on, never
    python-on-whales's account of the command."""
    runtime, _ = _pulling(tmp_path, _failed_up(NO_SUCH_HOST), present={"redis:7.4.2-alpine"})
    with pytest.raises(CalopsError) as caught:
        runtime.up(_spec(tmp_path), _state(), lambda state: None, ["api", "prometheus"])
    assert str(caught.value) == (
        "Docker could not pull the images haproxy:3.0.5-alpine, prom/prometheus:v3.5.0 "
        '(Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io on '
        f"127.0.0.53:53: no such host); {WAYS_ON}"
    )


def test_uncaptured_compose_output_still_tells_a_pull_failure(tmp_path: Path) -> None:
    """python-on-whales lets `compose up` write to the terminal (no stderr in the exception):
    the step's pulled image missing from the engine is the sign, named with the ways on."""
    runtime, _ = _pulling(tmp_path, _failed_up(None), present=set())
    with pytest.raises(CalopsError) as caught:
        runtime.up(_spec(tmp_path), _state(), lambda state: None, ["mlflow"])
    message = str(caught.value)
    assert message.startswith("Docker could not pull the image ghcr.io/mlflow/mlflow:v3.17.2 (")
    assert message.endswith(WAYS_ON)
    assert "The command executed was" not in message


def test_pull_denied_with_the_offline_files_asks_for_prepare(tmp_path: Path) -> None:
    """With compose.offline.yaml in use, a base image nobody built ("pull access denied") is
    named from Docker's text and the way on is prepare.sh, or the local runtime."""
    offline = (paths.stack_dir() / "compose.offline.yaml",)
    runtime, _ = _pulling(tmp_path, _failed_up(PULL_DENIED), present=EVERY_IMAGE, overrides=offline)
    with pytest.raises(CalopsError) as caught:
        runtime.up(_spec(tmp_path), _state(), lambda state: None, ["prometheus"])
    assert str(caught.value) == (
        "Docker could not pull the image calops-offline/debian (pull access denied for "
        "calops-offline/debian, repository does not exist or may require 'docker login': "
        "denied: requested access to the resource is denied); build the offline images with "
        "`bash stack/offline/prepare.sh` and run `calops up`, or run the stack as local "
        "processes with `calops up --runtime local`."
    )


def test_a_pull_failure_after_a_started_step_says_down_first(tmp_path: Path) -> None:
    """MLflow already runs from the first step: the ways on start with `calops down`, or the
    next `calops up` would find a running stack."""
    runtime, compose = _pulling(tmp_path, _failed_up(NO_SUCH_HOST), present=set())
    compose.containers = [_container("mlflow")]
    with pytest.raises(CalopsError) as caught:
        runtime.up(_spec(tmp_path), _state(), lambda state: None, ["prometheus"])
    assert "; run `calops down` to remove what started, then without an image registry" in str(
        caught.value
    )


def test_a_failure_that_is_no_pull_keeps_compose_s_words(tmp_path: Path) -> None:
    """Every image here and nothing unhealthy: not called a pull failure; with Compose's output
    on the terminal the sentence points there, with its stderr it shows it."""
    runtime, compose = _pulling(tmp_path, _failed_up(None), present=EVERY_IMAGE)
    with pytest.raises(CalopsError) as caught:
        runtime.up(_spec(tmp_path), _state(), lambda state: None, ["mlflow"])
    assert str(caught.value) == (
        "Docker Compose could not start the stack (exit code 1; see above)."
    )
    compose.up_error = _failed_up("Error response from daemon: driver failed programming")
    with pytest.raises(CalopsError) as caught:
        runtime.up(_spec(tmp_path), _state(), lambda state: None, ["mlflow"])
    assert str(caught.value) == (
        "Docker Compose could not start the stack:\n"
        "Error response from daemon: driver failed programming"
    )


def test_no_grafana_password_is_invented_for_grafana_to_use(tmp_path: Path) -> None:
    """Compose cannot read compose.yaml without GRAFANA_ADMIN_PASSWORD, so before `up` knows
    Grafana runs an unguessable stand-in is written; `up` writes the real one."""
    runtime, _ = _runtime(tmp_path, FakeCompose(ALL))
    unknown = replace(_spec(tmp_path), grafana_password=None)
    runtime.availability(unknown)
    stand_in = compose_env(unknown)["GRAFANA_ADMIN_PASSWORD"]
    assert len(stand_in) >= 20
    assert stand_in != compose_env(unknown)["GRAFANA_ADMIN_PASSWORD"], "never the same twice"
    assert "GRAFANA_ADMIN_PASSWORD=s3cret-pw" not in runtime.env_file.read_text()
    runtime.up(_spec(tmp_path), _state(), lambda state: None, ["grafana"])
    assert "GRAFANA_ADMIN_PASSWORD=s3cret-pw\n" in runtime.env_file.read_text()


@pytest.mark.integration
def test_engine_check_against_a_socket_nobody_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real docker CLI pointed at a dead socket makes the engine check answer False."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert engine_answers() is False
    assert engine_answers("no-such-docker-binary") is False


def _compose_plugin() -> bool:
    from python_on_whales import DockerClient

    try:
        return bool(DockerClient().compose.is_installed())
    except Exception:
        return False


@pytest.mark.integration
@pytest.mark.skipif(not _compose_plugin(), reason="the Docker Compose v2 plugin is not installed")
def test_real_compose_reads_the_stack_with_the_env_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real python-on-whales: compose config sees the env file's ports; offline drops grafana."""
    for service in SERVICES:
        monkeypatch.delenv(service.port_env, raising=False)
    runtime = DockerRuntime(tmp_path / "home")
    assert runtime.availability(_spec(tmp_path)).services == ALL
    config = runtime.client.compose.config(return_json=True)
    assert str(config["services"]["gateway"]["ports"][0]["published"]) == "8010"
    assert "ports" not in config["services"]["api"]
    offline = DockerRuntime(
        tmp_path / "home", overrides=[paths.stack_dir() / "compose.offline.yaml"]
    )
    available = offline.availability(_spec(tmp_path))
    assert available.services == ["api", "prometheus", "mlflow"]
    assert available.absent == {"grafana": "left out by the compose files"}
