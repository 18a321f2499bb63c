"""`calops up --runtime docker` works as written, driven through the CLI like a user would:
images build, services become healthy, Prometheus scrapes the API inside the compose network,
the API and the host both reach MLflow, training logs artifacts through the server, and
`calops down --volumes` leaves nothing behind.

Where no registry can be reached, run `bash stack/offline/prepare.sh` first and set
CALOPS_COMPOSE_FILES=stack/compose.offline.yaml (the `e2e` nox session does both).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import small_config
from stacktools import instant_query, unanswered_panels, wait_for_query
from support import free_port

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1200)]

PROJECT = "calops"
PREDICTIONS = 150
CALOPS = str(Path(sys.executable).with_name("calops"))


@dataclass(frozen=True)
class Stack:
    """A running stack: where the user works and the URLs `calops up` recorded."""

    workdir: Path
    env: dict[str, str]
    urls: dict[str, str]

    def calops(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run `calops ARGS` as a user would, in the workspace."""
        return run_calops(self.workdir, self.env, *args, timeout=timeout)


def run_calops(
    workdir: Path, env: dict[str, str], *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """`calops ARGS` in ``workdir`` with ``env``; the output is kept for failure messages."""
    return subprocess.run(
        [CALOPS, *args], cwd=workdir, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def succeeded(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """Assert a CLI call exited 0, showing everything it printed when it did not."""
    shown = " ".join(result.args[1:])
    assert result.returncode == 0, (
        f"`calops {shown}` exited {result.returncode}\n"
        f"--- stdout (end) ---\n{result.stdout[-1500:]}\n--- stderr ---\n{result.stderr}"
    )
    return result


def docker_lines(*args: str) -> list[str]:
    """Non-empty output lines of a docker CLI command."""
    out = subprocess.run(["docker", *args], capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if line.strip()]


def leftovers() -> dict[str, list[str]]:
    """Containers, networks and volumes still labelled with the compose project."""
    label = f"label=com.docker.compose.project={PROJECT}"
    return {
        "containers": docker_lines("ps", "-aq", "--filter", label),
        "networks": docker_lines("network", "ls", "-q", "--filter", label),
        "volumes": docker_lines("volume", "ls", "-q", "--filter", label),
    }


@pytest.fixture(scope="module")
def engine() -> None:
    """Skip, with the reason, when no Docker engine answers."""
    from calopsctl.runtime.docker import engine_answers

    if not engine_answers():
        pytest.skip("no Docker engine answers (start one: bash stack/offline/prepare.sh)")
    if leftovers()["containers"]:
        pytest.skip(f"a Compose project named {PROJECT!r} already runs on this engine")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """An empty working folder with a small training config and its own CALOPS_HOME."""
    workdir = tmp_path_factory.mktemp("user")
    config = small_config(workdir / "artifacts").model_dump(mode="json")
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env.update(CALOPS_HOME=str(workdir / ".calops"), NO_COLOR="1", COLUMNS="200")
    return workdir, env


@pytest.fixture(scope="module")
def stack(engine: None, workspace: tuple[Path, dict[str, str]]) -> Iterator[Stack]:
    """`calops up --runtime docker` on free ports; `calops down --volumes` at the end."""
    workdir, env = workspace
    ports = {name: free_port() for name in ("api", "prometheus", "grafana", "mlflow")}
    args = [
        "up", "--runtime", "docker", "--host-port", str(ports["api"]),
        "--prometheus-port", str(ports["prometheus"]), "--grafana-port", str(ports["grafana"]),
        "--mlflow-port", str(ports["mlflow"]), "--timeout", "300",
    ]  # fmt: skip
    try:
        succeeded(run_calops(workdir, env, *args, timeout=900))
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        yield Stack(workdir, env, urls)
    finally:
        run_calops(workdir, env, "down", "--volumes", timeout=300)


def test_health_is_green(stack: Stack) -> None:
    """`calops health` exits 0 once the stack is up, and the API answers on the chosen port."""
    succeeded(stack.calops("health", "--wait", "60"))
    assert httpx.get(f"{stack.urls['api']}/readyz", timeout=5).status_code == 200


def test_prometheus_scrapes_the_api_and_counts_the_traffic(stack: Stack) -> None:
    """After `calops simulate --count N`, the compose Prometheus has `api` UP and N predictions."""
    prometheus = stack.urls["prometheus"]
    predicted = 'sum(app_requests_total{route="/predict", status=~"2.."})'
    before = sum(float(s["value"][1]) for s in instant_query(prometheus, predicted))
    simulate = ["simulate", "--count", str(PREDICTIONS), "--rps", "15", "--feedback-delay", "1"]
    # Two rows per request: enough rows for the API's drift window to report a value.
    succeeded(stack.calops(*simulate, "--batch-size", "2", "--feedback-fraction", "1"))
    wait_for_query(prometheus, predicted, at_least=before + PREDICTIONS, attempts=90, pause=1)
    targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]
    api = [t for t in targets["activeTargets"] if t["labels"]["job"] == "api"]
    assert [(t["health"], t["scrapeUrl"]) for t in api] == [("up", "http://api:8000/metrics")]


def test_every_dashboard_panel_has_data(stack: Stack) -> None:
    """Every panel of the provisioned dashboard answers from the compose Prometheus."""
    prometheus = stack.urls["prometheus"]
    wait_for_query(prometheus, "sum(app_feedback_lag_seconds_count)", at_least=1, pause=1)
    wait_for_query(prometheus, "app_drift_window_rows", at_least=200, pause=1)
    assert unanswered_panels(prometheus) == []


def test_api_container_reaches_mlflow(stack: Stack) -> None:
    """Inside the compose network the api container calls MLflow's REST API as `mlflow:5000`."""
    container = docker_lines(
        "ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}",
        "--filter", "label=com.docker.compose.service=api",
    )  # fmt: skip
    probe = (
        "import json, urllib.request; "
        "url = 'http://mlflow:5000/api/2.0/mlflow/experiments/search?max_results=5'; "
        "print(json.load(urllib.request.urlopen(url, timeout=10)))"
    )
    result = subprocess.run(
        ["docker", "exec", container[0], "python", "-c", probe],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "experiments" in result.stdout


def test_train_logs_through_the_compose_mlflow(stack: Stack, tmp_path: Path) -> None:
    """`calops train` logs to the stack's MLflow by default: artifacts served, model registered."""
    from mlflow.tracking import MlflowClient

    succeeded(stack.calops("train", "--json"))
    client = MlflowClient(tracking_uri=stack.urls["mlflow"])
    versions = client.search_model_versions("name = 'calories'")
    assert versions, "no registered version of model 'calories'"
    run_id = versions[0].run_id
    assert run_id, "the registered version names no run"
    run = client.get_run(run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    logged = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "model.joblib"} <= logged
    metrics = client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path))
    assert json.loads(Path(metrics).read_text())["rmsle"] == pytest.approx(
        run.data.metrics["rmsle"]
    )


def test_api_container_follows_promote_and_rollback(stack: Stack) -> None:
    """The api container serves the registry alias: `promote 1` and `rollback` move what it
    answers with, without a rebuild or a restart."""
    trained = json.loads(succeeded(stack.calops("train", "--json")).stdout)
    newest = trained["model_version"]
    row = {"Sex": "male", "Age": 30, "Height": 180, "Weight": 80, "Duration": 20,
           "Heart_Rate": 110, "Body_Temp": 39.5}  # fmt: skip
    promoted = json.loads(succeeded(stack.calops("promote", "1", "--json")).stdout)
    assert promoted["api"]["followed"], promoted
    answer = httpx.post(f"{stack.urls['api']}/predict", json=row, timeout=10).json()
    assert answer["model_version"] == "calories/1"
    rolled = json.loads(succeeded(stack.calops("rollback", "--json")).stdout)
    assert rolled["to"] != "1", rolled
    assert rolled["api"]["followed"], rolled
    answer = httpx.post(f"{stack.urls['api']}/predict", json=row, timeout=10).json()
    assert answer["model_version"] == f"calories/{rolled['to']}"
    assert int(newest) >= int(rolled["to"])


def test_info_shows_the_stack(stack: Stack) -> None:
    """`calops info --json` reports the docker runtime and the URLs of the running services."""
    info = json.loads(succeeded(stack.calops("info", "--json")).stdout)
    text = json.dumps(info)
    assert "docker" in text
    for name in ("api", "prometheus", "mlflow"):
        assert stack.urls[name] in text, name


def test_down_with_volumes_leaves_nothing(stack: Stack) -> None:
    """`calops down --volumes` removes every container, network and volume of the project."""
    succeeded(stack.calops("down", "--volumes", timeout=300))
    assert leftovers() == {"containers": [], "networks": [], "volumes": []}


BROKEN_HEALTHCHECK = """
services:
  api:
    healthcheck:
      test: ["CMD", "python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9/')"]
      interval: 2s
      timeout: 2s
      retries: 2
      start_period: 5s
"""


def test_a_failing_healthcheck_names_the_service_and_its_log(
    engine: None, workspace: tuple[Path, dict[str, str]]
) -> None:
    """With a broken api healthcheck, `calops up` fails naming `api` and showing its log tail."""
    workdir, env = workspace
    broken = workdir / "broken-healthcheck.yaml"
    broken.write_text(BROKEN_HEALTHCHECK)
    extra = [f for f in env.get("CALOPS_COMPOSE_FILES", "").split(os.pathsep) if f]
    env = {**env, "CALOPS_COMPOSE_FILES": os.pathsep.join([*extra, str(broken)])}
    ports = [str(free_port()) for _ in range(4)]
    args = [
        "up", "--runtime", "docker", "--host-port", ports[0], "--prometheus-port", ports[1],
        "--grafana-port", ports[2], "--mlflow-port", ports[3], "--timeout", "240",
    ]  # fmt: skip
    try:
        result = run_calops(workdir, env, *args, timeout=600)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "api" in result.stderr
        assert "Started server process" in result.stderr, result.stderr
    finally:
        succeeded(run_calops(workdir, env, "down", "--volumes", timeout=300))
    assert leftovers() == {"containers": [], "networks": [], "volumes": []}
