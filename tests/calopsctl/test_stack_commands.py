"""The stack commands through the CLI, with a recording runtime in place of real processes."""

from __future__ import annotations

import json
import shutil
import socket
import stat
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from calapi.errors import CalopsError
from calopsctl import stackops
from calopsctl.application import Application
from calopsctl.cli import app
from calopsctl.runtime import Selection
from calopsctl.runtime.base import Availability, Replica, Runtime, SaveState, StackSpec
from calopsctl.secrets import password_file
from calopsctl.services import NAMES, SERVICES, Service
from calopsctl.settings import CliSettings
from calopsctl.state import StackState, load_state, save_state
from stacktools import serve_json
from support import free_port

runner = CliRunner()


class RecordingRuntime(Runtime):
    """Starts nothing; records what it was asked and reports what a test tells it."""

    name = "local"

    def __init__(self, services: list[str] | None = None) -> None:
        self.services = services or list(NAMES)
        self.started: list[StackSpec] = []  # one per stack brought up
        self.events: list[str] = []  # "up mlflow", "prepare models:/...", "up api,..." in order
        self.stopped = 0
        self.running: dict[str, bool] = {}
        self.replica_list: list[Replica] = []

    def availability(self, spec: StackSpec) -> Availability:
        absent = {s: "not installed" for s in NAMES if s not in self.services}
        return Availability(services=list(self.services), absent=absent)

    def up(
        self, spec: StackSpec, state: StackState, save: SaveState, services: Sequence[str]
    ) -> None:
        if not state.pids:
            self.started.append(spec)
        self.events.append(f"up {','.join(services)}")
        state.pids.update(dict.fromkeys(services, 1))
        self.running.update(dict.fromkeys(services, True))
        save(state)

    def down(self, state: StackState, *, volumes: bool) -> list[str]:
        self.stopped += 1
        stopped = [s for s, up in self.running.items() if up]
        self.running = {}
        return stopped

    def alive(self, state: StackState) -> dict[str, bool]:
        return dict(self.running)

    def replicas(self, state: StackState) -> list[Replica]:
        return list(self.replica_list)

    def log_tail(self, state: StackState, service: str, lines: int = 30) -> str:
        return f"{service}: boom at start-up"

    def stream_logs(
        self, state: StackState, services: list[str], *, follow: bool, tail: int
    ) -> None:
        print(f"logs of {','.join(services)} tail {tail}")


@pytest.fixture
def fake_runtime(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> RecordingRuntime:
    """A recording runtime that `calops` picks for every command."""
    runtime = RecordingRuntime()
    monkeypatch.setattr(
        stackops, "select_runtime", lambda choice, settings: Selection(runtime, "test")
    )
    monkeypatch.setattr(stackops, "runtime_named", lambda name, settings: runtime)

    def prepare_model(state: StackState, *args: object, **kwargs: object) -> None:
        # The real step waits for MLflow and registers a model: tested with real processes
        # in test_local_stack_integration.py and test_lifecycle_integration.py.
        runtime.events.append(f"prepare {state.extra['model']}")

    monkeypatch.setattr(stackops, "prepare_model", prepare_model)
    monkeypatch.delenv("GRAFANA_ADMIN_PASSWORD", raising=False)
    return runtime


@pytest.fixture
def home(isolated_home: Path) -> Path:
    """The state folder the commands use (CALOPS_HOME of isolated_home)."""
    return isolated_home / ".calops"


@pytest.fixture
def model_in_place(isolated_home: Path, trained_model_dir: Path) -> Path:
    """The tiny trained model copied to ./artifacts, so `up` does not train."""
    target = isolated_home / "artifacts"
    shutil.copytree(trained_model_dir, target)
    return target


@pytest.fixture
def ports() -> list[str]:
    """Free ports for the four services as CLI options."""
    return [arg for service in SERVICES for arg in (service.port_flag, str(free_port()))]


@pytest.fixture
def listener() -> Iterator[int]:
    """A port something already listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_taken_port_fails_before_anything_starts(
    fake_runtime: RecordingRuntime, ports: list[str], listener: int, isolated_home: Path, home: Path
) -> None:
    """A taken API port is named with the flag to change it; nothing starts, nothing trains."""
    result = runner.invoke(app, ["up", *ports, "--host-port", str(listener)])
    assert result.exit_code == 1
    assert f"Port {listener} (API) is already in use; pick another with --host-port " in (
        result.stderr
    )
    assert "(or HOST_PORT=" in result.stderr
    assert fake_runtime.started == []
    assert load_state(home) is None
    assert not (isolated_home / "artifacts").exists()


def test_taken_mlflow_port_names_its_own_flag(
    fake_runtime: RecordingRuntime, ports: list[str], listener: int, model_in_place: Path
) -> None:
    """Each service's port error names that service's option and variable."""
    result = runner.invoke(app, ["up", *ports, "--mlflow-port", str(listener)])
    assert result.exit_code == 1
    assert f"Port {listener} (MLflow) is already in use" in result.stderr
    assert "--mlflow-port" in result.stderr
    assert "MLFLOW_PORT=" in result.stderr


def test_same_port_twice_is_refused(fake_runtime: RecordingRuntime, model_in_place: Path) -> None:
    """Two services on one port are refused before anything starts."""
    port = str(free_port())
    result = runner.invoke(app, ["up", "--host-port", port, "--mlflow-port", port])
    assert result.exit_code == 1
    assert "same port" in result.stderr


@pytest.mark.parametrize("service", SERVICES, ids=NAMES)
def test_port_variables_of_the_services_table_set_the_ports(
    fake_runtime: RecordingRuntime,
    ports: list[str],
    model_in_place: Path,
    monkeypatch: pytest.MonkeyPatch,
    service: Service,
) -> None:
    """Each service's port variable (e.g. the hand-out's HOST_PORT=8010) sets its port."""
    port = free_port()
    monkeypatch.setenv(service.port_env, str(port))
    flag = ports.index(service.port_flag)
    without_flag = ports[:flag] + ports[flag + 2 :]
    result = runner.invoke(app, ["up", *without_flag, "--no-wait"])
    assert result.exit_code == 0, result.output
    assert fake_runtime.started[0].ports[service.name] == port


def test_port_out_of_range_is_a_usage_error(fake_runtime: RecordingRuntime) -> None:
    """A port beyond 65535 is refused by the option itself, before anything runs."""
    result = runner.invoke(app, ["up", "--grafana-port", "70000"])
    assert result.exit_code == 2
    assert "--grafana-port" in result.output
    assert fake_runtime.started == []


@pytest.mark.parametrize("where", ["option", "env"])
def test_unknown_runtime_lists_the_choices_in_one_sentence(
    fake_runtime: RecordingRuntime, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """--runtime sideways (or CALOPS_RUNTIME=sideways): the value and the real choices, without
    pydantic's "Value error" in front; nothing starts."""
    argv = ["up", "--runtime", "sideways"] if where == "option" else ["up"]
    if where == "env":
        monkeypatch.setenv("CALOPS_RUNTIME", "sideways")
    result = runner.invoke(app, argv)
    assert result.exit_code == 2
    words = " ".join(result.output.replace("│", " ").split())
    assert "'sideways' is not one of auto, docker, local." in words
    assert "Value error" not in words
    assert fake_runtime.started == []


@pytest.mark.parametrize(
    "argv", [["health"], ["info", "--json"], ["logs"], ["down"], ["up", "--no-wait"]]
)
def test_every_stack_command_first_names_its_stack(
    fake_runtime: RecordingRuntime, home: Path, argv: list[str]
) -> None:
    """The first stderr line says which stack folder the command uses, before anything else."""
    result = runner.invoke(app, [*argv, "--host-port", "1"] if argv[0] == "up" else argv)
    assert result.stderr.splitlines()[0] == f"Stack: {home} (CALOPS_HOME)."


def test_json_output_stays_pure_json(fake_runtime: RecordingRuntime, home: Path) -> None:
    """With --json the stack line goes to stderr and stdout parses as JSON."""
    ports = {name: free_port() for name in NAMES}
    save_state(home, StackState(runtime="local", ports=ports))
    result = runner.invoke(app, ["health", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["healthy"] is False
    assert result.stderr.startswith(f"Stack: {home} (CALOPS_HOME).\n")


def test_commands_read_the_settings_on_the_context(
    fake_runtime: RecordingRuntime, tmp_path: Path
) -> None:
    """The settings come from ctx.obj (built once per run), not from reading the environment."""
    application = Application()
    application.settings = CliSettings(home=tmp_path / "elsewhere")
    result = runner.invoke(app, ["down"], obj=application)
    assert result.exit_code == 0
    assert f"no stack is recorded in {tmp_path / 'elsewhere'}" in result.stderr


def test_up_starts_mlflow_then_prepares_the_model_then_the_rest(
    fake_runtime: RecordingRuntime, ports: list[str]
) -> None:
    """The API serves the registry alias: MLflow starts first, the champion is ensured, then
    the API and the rest start."""
    result = runner.invoke(app, ["up", *ports, "--no-wait"])
    assert result.exit_code == 0, result.output
    assert fake_runtime.events == [
        "up mlflow",
        "prepare models:/calories@champion",
        "up api,prometheus,grafana",
    ]
    assert fake_runtime.started[0].model == "models:/calories@champion"


def test_up_with_a_registry_model_needs_mlflow(
    fake_runtime: RecordingRuntime, ports: list[str]
) -> None:
    """A stack without MLflow cannot serve models:/...: one sentence, nothing started."""
    fake_runtime.services = ["api", "prometheus"]
    result = runner.invoke(app, ["up", *ports, "--no-wait"])
    assert result.exit_code == 1
    assert "has no MLflow server; pass --model with an artifacts folder" in result.stderr
    assert fake_runtime.events == []


def test_first_start_on_a_folder_trains_into_its_runs(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stack serving a folder with no model: the configured model is trained into a run
    folder and `current` points at it (no MLflow: the home's local store)."""
    config = isolated_home / "small.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"source": "synthetic", "synthetic_rows": 1500, "synthetic_seed": 3},
                "model": {"params": {"max_iter": 20}},
                "outputs": {"dir": "trained"},
            }
        )
    )
    said: list[str] = []
    folder = isolated_home / "trained"
    stackops.ensure_champion(str(folder), config, CliSettings(), said.append)
    assert said[0] == (
        f"First start: {folder} has no model to serve; training and registering the configured "
        "model first."
    )
    served = (folder / "current").resolve()
    assert served.parent == folder / "runs"
    assert json.loads((served / "run.json").read_text())["version"] == "1"
    said.clear()
    stackops.ensure_champion(str(folder), config, CliSettings(), said.append)
    assert said == [], "a folder that has a model is left alone"


def test_up_ends_with_services_urls_and_credentials(
    fake_runtime: RecordingRuntime, ports: list[str], model_in_place: Path, home: Path
) -> None:
    """The closing table lists each service's URL and Grafana's generated login."""
    result = runner.invoke(app, ["up", *ports, "--no-wait", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["service"]: row for row in json.loads(result.stdout)["services"]}
    port = ports[ports.index("--host-port") + 1]
    assert rows["api"]["url"] == f"http://127.0.0.1:{port}"
    password = password_file(home).read_text().strip()
    assert rows["grafana"]["credentials"] == f"admin / {password}"
    assert password != "admin"
    assert stat.S_IMODE(password_file(home).stat().st_mode) == 0o600
    assert fake_runtime.started[0].grafana_password == password


def test_password_is_kept_and_env_wins(
    fake_runtime: RecordingRuntime,
    ports: list[str],
    model_in_place: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The generated password is reused by later ups; GRAFANA_ADMIN_PASSWORD overrides it."""
    runner.invoke(app, ["up", *ports, "--no-wait"])
    runner.invoke(app, ["down"])
    runner.invoke(app, ["up", *ports, "--no-wait"])
    first, second = fake_runtime.started
    assert first.grafana_password == second.grafana_password
    runner.invoke(app, ["down"])
    monkeypatch.setenv("GRAFANA_ADMIN_PASSWORD", "from-the-environment")
    runner.invoke(app, ["up", *ports, "--no-wait"])
    assert fake_runtime.started[-1].grafana_password == "from-the-environment"


def test_absent_service_is_reported_not_fatal(
    fake_runtime: RecordingRuntime, ports: list[str], model_in_place: Path
) -> None:
    """A runtime without Grafana says it is left out and starts the rest."""
    fake_runtime.services = ["api", "prometheus", "mlflow"]
    result = runner.invoke(app, ["up", *ports, "--no-wait"])
    assert result.exit_code == 0, result.output
    assert "Grafana is left out: not installed." in result.stderr
    assert "absent: not installed" in result.stdout


def test_second_up_reports_what_runs(
    fake_runtime: RecordingRuntime, ports: list[str], model_in_place: Path
) -> None:
    """up twice starts once; the second reports the running stack."""
    assert runner.invoke(app, ["up", *ports, "--no-wait"]).exit_code == 0
    second = runner.invoke(app, ["up", *ports, "--no-wait", "--json"])
    assert second.exit_code == 0, second.output
    assert "already running" in second.stderr
    assert json.loads(second.stdout)["already_running"] is True
    assert len(fake_runtime.started) == 1


def test_stale_record_is_cleared_and_up_starts_again(
    fake_runtime: RecordingRuntime, ports: list[str], model_in_place: Path, home: Path
) -> None:
    """A record whose processes are all gone is cleaned away and the stack starts anew."""
    save_state(
        home,
        StackState(
            runtime="local",
            ports={"api": 1, "prometheus": 2, "grafana": 3, "mlflow": 4},
            pids={"api": 999999},
        ),
    )
    result = runner.invoke(app, ["up", *ports, "--no-wait"])
    assert result.exit_code == 0, result.output
    assert "no longer runs" in result.stderr
    assert len(fake_runtime.started) == 1


def test_failed_wait_names_the_service_and_keeps_the_record(
    fake_runtime: RecordingRuntime, ports: list[str], model_in_place: Path, home: Path
) -> None:
    """When a service never gets healthy, up exits 1 naming it with its log, and down cleans."""
    result = runner.invoke(app, ["up", *ports, "--timeout", "1"])
    assert result.exit_code == 1
    assert "API did not become healthy (/healthz: no answer at" in result.stderr
    assert "api: boom at start-up" in result.stderr
    assert load_state(home) is not None
    assert runner.invoke(app, ["down"]).exit_code == 0
    assert load_state(home) is None


def test_down_when_nothing_is_up_exits_zero(fake_runtime: RecordingRuntime) -> None:
    """down with no recorded stack says so and succeeds."""
    result = runner.invoke(app, ["down"])
    assert result.exit_code == 0
    assert "Nothing to take down" in result.stderr
    assert fake_runtime.stopped == 0


@pytest.mark.parametrize("command", ["health", "info", "logs"])
def test_read_commands_without_a_stack_fail_in_one_line(
    fake_runtime: RecordingRuntime, command: str
) -> None:
    """health, info and logs with nothing up exit 1 with one sentence pointing at up."""
    result = runner.invoke(app, [command])
    assert result.exit_code == 1
    assert "Nothing is up" in result.stderr
    assert "Traceback" not in result.output


def test_crashed_service_is_red_in_health(
    fake_runtime: RecordingRuntime, ports: list[str], model_in_place: Path
) -> None:
    """A service whose process died shows down as exited, and health exits 1."""
    runner.invoke(app, ["up", *ports, "--no-wait"])
    fake_runtime.running["mlflow"] = False
    result = runner.invoke(app, ["health", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    mlflow = next(c for c in report["checks"] if c["service"] == "mlflow")
    assert report["healthy"] is False
    assert mlflow["status"] == "down"
    assert mlflow["detail"].startswith("exited: mlflow is no longer running")


def test_info_shows_stack_even_when_api_is_unreachable(
    fake_runtime: RecordingRuntime, ports: list[str], model_in_place: Path
) -> None:
    """info --json lists runtime, URLs, tracking URI and credentials; the model says why not."""
    runner.invoke(app, ["up", *ports, "--no-wait"])
    result = runner.invoke(app, ["info", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    port = ports[ports.index("--mlflow-port") + 1]
    assert data["runtime"] == "local"
    assert data["tracking_uri"] == f"http://127.0.0.1:{port}"
    assert "did not answer" in data["model"]["error"]
    grafana = next(row for row in data["services"] if row["service"] == "grafana")
    assert grafana["credentials"].startswith("admin / ")


def test_logs_of_one_service_and_unknown_service(
    fake_runtime: RecordingRuntime, ports: list[str], model_in_place: Path
) -> None:
    """logs SERVICE streams that service; an unknown name lists the choices."""
    runner.invoke(app, ["up", *ports, "--no-wait"])
    result = runner.invoke(app, ["logs", "api", "--tail", "7"])
    assert result.exit_code == 0
    assert "logs of api tail 7" in result.stdout
    unknown = runner.invoke(app, ["logs", "redis"])
    assert unknown.exit_code == 1
    assert "choose one of api, prometheus, grafana, mlflow" in unknown.stderr


def test_docker_asked_for_without_engine(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch, ports: list[str], home: Path
) -> None:
    """--runtime docker against a socket nobody serves fails in one sentence, starting nothing."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    result = runner.invoke(app, ["up", "--runtime", "docker", *ports])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"Stack: {home} (CALOPS_HOME).",
        "Error: Docker was asked for but no engine answers at unix:///nonexistent/docker.sock; "
        "start Docker or use --runtime local.",
    ]
    assert load_state(home) is None


def test_replicas_option_reaches_the_runtime_and_the_record(
    fake_runtime: RecordingRuntime,
    ports: list[str],
    model_in_place: Path,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--replicas (or CALOPS_REPLICAS) is what the runtime is asked to start and what the
    record keeps; one API process by default."""
    assert runner.invoke(app, ["up", *ports, "--no-wait", "--replicas", "3"]).exit_code == 0
    state = load_state(home)
    assert state is not None
    assert (fake_runtime.started[-1].replicas, state.replicas) == (3, 3)
    runner.invoke(app, ["down"])
    monkeypatch.setenv("CALOPS_REPLICAS", "2")
    assert runner.invoke(app, ["up", *ports, "--no-wait"]).exit_code == 0
    assert fake_runtime.started[-1].replicas == 2
    runner.invoke(app, ["down"])
    monkeypatch.delenv("CALOPS_REPLICAS")
    assert runner.invoke(app, ["up", *ports, "--no-wait"]).exit_code == 0
    assert fake_runtime.started[-1].replicas == 1


@pytest.mark.parametrize("count", ["0", "17"])
def test_replicas_out_of_range_is_a_usage_error(
    fake_runtime: RecordingRuntime, ports: list[str], count: str
) -> None:
    """1..16 replicas; anything else is refused by the option before anything runs."""
    result = runner.invoke(app, ["up", *ports, "--replicas", count])
    assert result.exit_code == 2
    assert "--replicas" in result.output
    assert fake_runtime.started == []


def test_running_stack_keeps_its_replicas(
    fake_runtime: RecordingRuntime, ports: list[str], model_in_place: Path
) -> None:
    """up on a running stack with another --replicas says what runs and how to change it and
    exits 1; the same number, or none given, reports the running stack."""
    assert runner.invoke(app, ["up", *ports, "--no-wait", "--replicas", "2"]).exit_code == 0
    other = runner.invoke(app, ["up", *ports, "--no-wait", "--replicas", "3"])
    assert other.exit_code == 1
    assert other.stderr.splitlines()[-1] == (
        "Error: The stack already runs 2 API replicas (local runtime); to run 3, take it down "
        "with `calops down` and run `calops up --replicas 3`."
    )
    for again in (["--replicas", "2"], []):
        result = runner.invoke(app, ["up", *ports, "--no-wait", *again])
        assert result.exit_code == 0, result.output
        assert "already running (local runtime, 2 API replicas, started" in result.stderr
    assert len(fake_runtime.started) == 1


def _healthz(version: str) -> dict[str, Any]:
    return {"/healthz": lambda: (200, {"status": "ok", "model_loaded": True,
                                       "model_version": version})}  # fmt: skip


def _replica(name: str, url: str, *, running: bool = True) -> Replica:
    return Replica(name, running, url.removeprefix("http://"), url)


@pytest.fixture
def serving_api(fake_runtime: RecordingRuntime, home: Path) -> Iterator[list[str]]:
    """A recorded stack of just the API, whose port and two replicas answer /healthz over real
    HTTP; yields the replicas' URLs."""
    with ExitStack() as servers:
        api, _ = servers.enter_context(serve_json(_healthz("v1")))
        urls = [servers.enter_context(serve_json(_healthz("v1")))[0] for _ in range(2)]
        ports = {name: free_port() for name in NAMES}
        ports["api"] = int(api.rpartition(":")[2])
        save_state(home, StackState(runtime="local", ports=ports, services=["api"], replicas=2))
        fake_runtime.running = {"api": True}
        fake_runtime.replica_list = [_replica(f"api-{i}", url) for i, url in enumerate(urls, 1)]
        yield urls


def test_health_lists_every_replica(fake_runtime: RecordingRuntime, serving_api: list[str]) -> None:
    """health --json has one entry per replica with its version from its own /healthz; the
    table names each replica with its address."""
    result = runner.invoke(app, ["health", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(r["name"], r["status"], r["model_version"], r["url"]) for r in report["replicas"]] == [
        ("api-1", "up", "v1", serving_api[0]),
        ("api-2", "up", "v1", serving_api[1]),
    ]
    assert [c["check"] for c in report["checks"] if c["service"] == "api"] == ["/healthz"]
    table = runner.invoke(app, ["health"])
    assert table.exit_code == 0
    address = serving_api[1].removeprefix("http://")
    assert f"api  api-2 ({address})  up  serving model v1" in table.stdout


def test_crashed_replica_is_red_in_health(
    fake_runtime: RecordingRuntime, serving_api: list[str]
) -> None:
    """A replica whose process died is down as exited, naming its log, and health exits 1
    while the API address itself still answers."""
    fake_runtime.replica_list[1] = _replica("api-2", serving_api[1], running=False)
    result = runner.invoke(app, ["health", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["healthy"] is False
    assert [r["status"] for r in report["replicas"]] == ["up", "down"]
    assert report["replicas"][1]["detail"] == (
        "exited: api-2 is no longer running; its log: calops logs api-2"
    )
    assert next(c for c in report["checks"] if c["service"] == "api")["status"] == "up"


def test_up_waits_for_every_replica_and_names_the_one_that_died(
    fake_runtime: RecordingRuntime, serving_api: list[str], home: Path
) -> None:
    """Waiting for health stops at once when a replica exited, naming it, its address and the
    end of its own log."""
    fake_runtime.replica_list[1] = _replica("api-2", serving_api[1], running=False)
    state = load_state(home)
    assert state is not None
    started = time.monotonic()
    with pytest.raises(CalopsError) as failed:
        stackops.wait_healthy(state, fake_runtime, timeout=30)
    assert time.monotonic() - started < 10
    address = serving_api[1].removeprefix("http://")
    assert str(failed.value).startswith(
        f"API replica api-2 ({address}) did not become healthy (api-2: exited: api-2 is no "
        "longer running; its log: calops logs api-2); last lines of its log:\n"
        "api-2: boom at start-up\n"
    )


def test_up_lists_the_replicas(
    fake_runtime: RecordingRuntime, ports: list[str], model_in_place: Path
) -> None:
    """up --json lists each replica; the table gives each its own row under the API."""
    fake_runtime.replica_list = [
        _replica("api-1", "http://127.0.0.1:9101"),
        _replica("api-2", "http://127.0.0.1:9102"),
    ]
    result = runner.invoke(app, ["up", *ports, "--no-wait", "--replicas", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["replicas"] == [
        {"name": "api-1", "address": "127.0.0.1:9101", "url": "http://127.0.0.1:9101",
         "status": "started"},
        {"name": "api-2", "address": "127.0.0.1:9102", "url": "http://127.0.0.1:9102",
         "status": "started"},
    ]  # fmt: skip
    runner.invoke(app, ["down"])
    table = runner.invoke(app, ["up", *ports, "--no-wait", "--replicas", "2"])
    lines = table.stdout.splitlines()
    api = next(i for i, line in enumerate(lines) if line.startswith("api  "))
    assert lines[api + 1 : api + 3] == [
        "  api-1  http://127.0.0.1:9101  started",
        "  api-2  http://127.0.0.1:9102  started",
    ]


def test_info_names_every_replica(fake_runtime: RecordingRuntime, serving_api: list[str]) -> None:
    """info --json lists the replicas with their addresses; the plain text names them."""
    result = runner.invoke(app, ["info", "--json"])
    assert result.exit_code == 0, result.output
    assert [(r["name"], r["running"], r["url"]) for r in json.loads(result.stdout)["replicas"]] == [
        ("api-1", True, serving_api[0]),
        ("api-2", True, serving_api[1]),
    ]
    text = runner.invoke(app, ["info"]).stdout
    assert f"API replicas: api-1 {serving_api[0]}, api-2 {serving_api[1]}" in text


def test_health_json_without_a_stack_still_prints_the_verdict(
    fake_runtime: RecordingRuntime, home: Path
) -> None:
    """health --json with nothing up: JSON on stdout (unhealthy, with the reason), the sentence
    on stderr, exit 1; a script reads the same keys as from a checked stack."""
    result = runner.invoke(app, ["health", "--json"])
    assert result.exit_code == 1
    reason = f"Nothing is up (no stack recorded in {home}); run `calops up`."
    assert json.loads(result.stdout) == {
        "healthy": False, "reason": reason, "checks": [], "replicas": [],
    }  # fmt: skip
    assert result.stderr.splitlines()[-1] == f"Error: {reason}"


def test_health_json_of_a_healthy_stack_exits_zero_without_a_reason(
    fake_runtime: RecordingRuntime, serving_api: list[str]
) -> None:
    """A healthy stack: health --json says healthy with no reason and exits 0."""
    result = runner.invoke(app, ["health", "--json"])
    assert result.exit_code == 0, result.output
    assert {key: json.loads(result.stdout)[key] for key in ("healthy", "reason")} == {
        "healthy": True, "reason": None,
    }  # fmt: skip


LONG_FOLDER = "/srv/calops/projects/calorie-expenditure/artifacts/runs/20250101T000000Z-abcdef"
SHA256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


@pytest.fixture
def api_with_long_values(fake_runtime: RecordingRuntime, home: Path) -> Iterator[None]:
    """A recorded stack whose API's /info names a model by a long path and its full sha256."""
    model = {"source": LONG_FOLDER, "version": "calories/12", "sha256": SHA256,
             "created": "2025-01-01T00:00:00+00:00"}  # fmt: skip
    with serve_json({"/info": lambda: (200, {"model": model})}) as (url, _):
        ports = {name: free_port() for name in NAMES}
        ports["api"] = int(url.rpartition(":")[2])
        save_state(home, StackState(runtime="local", ports=ports, services=["api"]))
        fake_runtime.running = {"api": True}
        yield


@pytest.mark.usefixtures("api_with_long_values")
def test_info_shows_long_values_whole() -> None:
    """info prints the model's path and its 64-hex sha256 in full (nothing cut at 40
    characters); --json has them too."""
    text = runner.invoke(app, ["info"])
    assert text.exit_code == 0, text.output
    [line] = [line for line in text.stdout.splitlines() if line.startswith("model: ")]
    assert line == (
        f"model: source {LONG_FOLDER}, version calories/12, sha256 {SHA256}, "
        "created 2025-01-01T00:00:00+00:00"
    )
    model = json.loads(runner.invoke(app, ["info", "--json"]).stdout)["model"]
    assert (model["source"], model["sha256"]) == (LONG_FOLDER, SHA256)


@pytest.mark.parametrize(
    ("option", "sentence"),
    [
        ("--host-port", "the API on {api}"),
        ("--mlflow-port", "the MLflow server on {mlflow}"),
    ],
)
def test_up_on_a_running_stack_refuses_other_ports(
    fake_runtime: RecordingRuntime,
    ports: list[str],
    model_in_place: Path,
    option: str,
    sentence: str,
) -> None:
    """A port option that differs from the running stack's is refused in one sentence, exit 1,
    nothing started; the same port, or no option, reports the running stack as before."""
    assert runner.invoke(app, ["up", *ports, "--no-wait"]).exit_code == 0
    running = {flag.removeprefix("--").removesuffix("-port"): value
               for flag, value in zip(ports[::2], ports[1::2], strict=True)}  # fmt: skip
    running["api"] = running.pop("host")
    other = runner.invoke(app, ["up", option, str(free_port()), "--no-wait"])
    assert other.exit_code == 1
    assert other.stderr.splitlines()[-1] == (
        f"Error: The stack already runs with {sentence.format(**running)}; run `calops down` "
        "first to change ports."
    )
    for again in ([option, ports[ports.index(option) + 1]], []):
        result = runner.invoke(app, ["up", *again, "--no-wait"])
        assert result.exit_code == 0, result.output
        assert "The stack is already running (local runtime, started" in result.stderr
    assert len(fake_runtime.started) == 1


def test_a_port_variable_that_differs_is_refused_too(
    fake_runtime: RecordingRuntime,
    ports: list[str],
    model_in_place: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HOST_PORT is the --host-port option: set to another port while the stack runs, `up`
    refuses it rather than ignore it."""
    assert runner.invoke(app, ["up", *ports, "--no-wait"]).exit_code == 0
    monkeypatch.setenv("HOST_PORT", str(free_port()))
    result = runner.invoke(app, ["up", "--no-wait"])
    assert result.exit_code == 1
    api = ports[ports.index("--host-port") + 1]
    assert f"The stack already runs with the API on {api}; run `calops down`" in result.stderr


def test_the_port_of_an_absent_service_is_not_refused(
    fake_runtime: RecordingRuntime, ports: list[str], model_in_place: Path
) -> None:
    """A stack without Grafana has no Grafana port to keep: another --grafana-port reports the
    running stack."""
    fake_runtime.services = ["api", "prometheus", "mlflow"]
    assert runner.invoke(app, ["up", *ports, "--no-wait"]).exit_code == 0
    result = runner.invoke(app, ["up", "--grafana-port", str(free_port()), "--no-wait"])
    assert result.exit_code == 0, result.output
    assert "already running" in result.stderr


def test_no_grafana_password_without_grafana(
    fake_runtime: RecordingRuntime, ports: list[str], model_in_place: Path, home: Path
) -> None:
    """A stack without Grafana generates, stores and prints no Grafana password; with Grafana
    the generated one is stored and shown."""
    fake_runtime.services = ["api", "prometheus", "mlflow"]
    result = runner.invoke(app, ["up", *ports, "--no-wait", "--json"])
    assert result.exit_code == 0, result.output
    assert not password_file(home).exists()
    assert fake_runtime.started[0].grafana_password is None
    rows = {row["service"]: row for row in json.loads(result.stdout)["services"]}
    assert rows["grafana"]["credentials"] is None
    info = json.loads(runner.invoke(app, ["info", "--json"]).stdout)
    assert all(row["credentials"] is None for row in info["services"])
    runner.invoke(app, ["down"])
    fake_runtime.services = list(NAMES)
    assert runner.invoke(app, ["up", *ports, "--no-wait"]).exit_code == 0
    assert fake_runtime.started[1].grafana_password == password_file(home).read_text().strip()
