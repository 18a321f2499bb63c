"""The docker runtime's calls into python-on-whales, with a fake client standing in for Docker."""

from __future__ import annotations

import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from python_on_whales.exceptions import DockerException

from calapi.errors import CalopsError
from calopsctl import paths
from calopsctl.runtime import docker as docker_module
from calopsctl.runtime import select_runtime
from calopsctl.runtime.base import StackSpec
from calopsctl.runtime.docker import DockerRuntime, compose_env, engine_answers
from calopsctl.runtime.local import LocalRuntime
from calopsctl.services import SERVICES, RuntimeChoice
from calopsctl.settings import CliSettings
from calopsctl.state import StackState

PORTS = {"api": 8010, "prometheus": 9091, "grafana": 3001, "mlflow": 5001}
ALL = ["api", "prometheus", "grafana", "mlflow"]


def _container(service: str, *, running: bool = True, health: str | None = "healthy") -> Any:
    return SimpleNamespace(
        name=f"calops-{service}-1",
        config=SimpleNamespace(labels={"com.docker.compose.service": service}),
        state=SimpleNamespace(
            running=running,
            status="running" if running else "exited",
            health=SimpleNamespace(status=health) if health else None,
        ),
    )


class FakeCompose:
    """Records every call; answers like Compose would."""

    def __init__(self, services: list[str], containers: list[Any] | None = None) -> None:
        self.services = services
        self.containers = containers or []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.up_error: Exception | None = None
        self.installed = True

    def is_installed(self) -> bool:
        return self.installed

    def config(self, return_json: bool = False) -> dict[str, Any]:
        return {"services": {name: {} for name in self.services}}

    def up(self, **kwargs: Any) -> None:
        self.calls.append(("up", kwargs))
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


class FakeFactory:
    """Stands in for python_on_whales.DockerClient and keeps the arguments it was built with."""

    def __init__(self, compose: FakeCompose) -> None:
        self.compose = compose
        self.kwargs: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> Any:
        self.kwargs.append(kwargs)
        return SimpleNamespace(compose=self.compose)


def _spec(tmp_path: Path, model: str | None = None) -> StackSpec:
    artifacts = tmp_path / "artifacts"
    return StackSpec(
        ports=PORTS,
        artifacts=artifacts,
        model=model or str(artifacts),
        grafana_password="s3cret-pw",
        timeout=90,
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
    assert str(config["services"]["api"]["ports"][0]["published"]) == "8010"
    offline = DockerRuntime(
        tmp_path / "home", overrides=[paths.stack_dir() / "compose.offline.yaml"]
    )
    available = offline.availability(_spec(tmp_path))
    assert available.services == ["api", "prometheus", "mlflow"]
    assert available.absent == {"grafana": "left out by the compose files"}
