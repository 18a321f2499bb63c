"""The real local stack: uvicorn, mlflow server and Prometheus started by `calops up`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from calapi.serving.server import port_free
from calopsctl.runtime import processes
from calopsctl.services import NAMES
from stacktools import Stack, port_options, small_config, stack_env
from support import api_argv, free_port, running

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed"),
]
# In the environment of `calops up`: a secret no service needs, and a setting for the API.
SENTINEL = {"AWS_SECRET_ACCESS_KEY": "sentinel-secret-7f3a", "CALOPS_SENTINEL_SETTING": "kept"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One real local stack for the whole module; `up` registers the tiny configured model."""
    folder = tmp_path_factory.mktemp("stack")
    small_config(folder)
    ports = {name: free_port() for name in NAMES}
    env = {**stack_env(), **SENTINEL}
    handle = Stack(folder, env, ports, up=subprocess.CompletedProcess([], 0, "", ""))
    try:
        handle.up = handle.calops("up", "--runtime", "local", *port_options(ports), "--json")
        yield handle
    finally:
        handle.calops("down")
        processes.stop_groups(handle.pids().values(), grace=2)


def test_up_starts_every_installed_service(stack: Stack) -> None:
    """up exits 0, says it chose local, and reports each service healthy or absent."""
    assert stack.up.returncode == 0, stack.up.stderr
    assert "Runtime: local (asked for with --runtime local)." in stack.up.stderr
    report = json.loads(stack.up.stdout)
    rows = {row["service"]: row for row in report["services"]}
    assert [r["name"] for r in report["replicas"]] == ["api-1"], "one API process by default"
    assert report["replicas"][0]["url"] == f"http://127.0.0.1:{stack.ports['api']}"
    for service in ("api", "prometheus", "mlflow"):
        assert rows[service]["status"] == "healthy"
        assert rows[service]["url"] == f"http://127.0.0.1:{stack.ports[service]}"
    if shutil.which("grafana-server") is None and shutil.which("grafana") is None:
        assert rows["grafana"]["status"].startswith("absent: grafana-server is not installed")


def environ_of(pid: int) -> dict[str, str]:
    """A running process's environment, as the kernel keeps it."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(item.partition("=")[::2] for item in raw.split("\0") if item)


def test_services_never_see_the_callers_unrelated_secrets(stack: Stack) -> None:
    """Each started process has PATH and its own settings, never the caller's other secrets."""
    pids = stack.pids()
    assert {"mlflow", "prometheus"} <= set(pids)
    for name, pid in pids.items():
        env = environ_of(pid)
        assert "AWS_SECRET_ACCESS_KEY" not in env, name
        assert "sentinel-secret-7f3a" not in env.values(), name
        assert env["PATH"], name
        expected = name.startswith("api")
        assert ("CALOPS_SENTINEL_SETTING" in env) is expected, name
    api = environ_of(pids["api-1"])
    assert api["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{stack.ports['mlflow']}"
    assert api["CALOPS_MODEL"]


def test_health_passes_with_prometheus_scraping_the_api(stack: Stack) -> None:
    """health exits 0 and Prometheus's api target is UP."""
    result = stack.calops("health", "--json", "--wait", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    target = next(c for c in report["checks"] if c["check"] == "target api")
    assert target["status"] == "up"
    assert f"127.0.0.1:{stack.ports['api']}/metrics" in target["detail"]
    [replica] = report["replicas"]
    assert (replica["name"], replica["status"], replica["via"]) == ("api-1", "up", "/healthz")
    assert replica["model_version"].startswith("calories/")


def test_health_table_in_plain_lines(stack: Stack) -> None:
    """Without a terminal, health prints one plain line per check and the verdict."""
    result = stack.calops("health")
    assert result.returncode == 0, result.stdout
    assert "prometheus  target api  up" in result.stdout
    assert result.stdout.rstrip().endswith("All required services are healthy.")


def test_info_json_shows_the_served_model(stack: Stack) -> None:
    """info --json: the API serves the champion `up` registered (its run folder is local too)."""
    result = stack.calops("info", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    model = data["model"]
    assert (model["source"], model["version"], model["alias"]) == (
        "models:/calories@champion",
        "calories/1",
        "champion",
    )
    run = json.loads(
        (stack.folder / "artifacts" / "runs" / model["run_id"] / "run.json").read_text()
    )
    assert run["version"] == "1"
    assert "First start: no version of model 'calories' holds alias 'champion'" in stack.up.stderr
    assert data["runtime"] == "local"
    assert data["tracking_uri"] == f"http://127.0.0.1:{stack.ports['mlflow']}"
    assert data["logs"] == str(stack.folder / ".calops" / "logs")


def test_second_up_reports_the_running_stack(stack: Stack) -> None:
    """A second up starts nothing and says what already runs."""
    before = stack.pids()
    result = stack.calops("up", "--runtime", "local", *port_options(stack.ports))
    assert result.returncode == 0, result.stderr
    assert "already running" in result.stderr
    assert stack.pids() == before


def test_port_taken_by_the_stack_is_refused_elsewhere(stack: Stack, tmp_path: Path) -> None:
    """A second stack from another folder on the same API port fails naming port and flag."""
    shutil.copytree(stack.folder / "artifacts", tmp_path / "artifacts")
    ports = {**{s: free_port() for s in stack.ports}, "api": stack.ports["api"]}
    result = stack.calops("up", "--runtime", "local", *port_options(ports), folder=tmp_path)
    assert result.returncode == 1
    api = stack.ports["api"]
    assert f"Port {api} (API) is already in use; pick another with --host-port" in result.stderr
    assert not (tmp_path / ".calops" / "stack.json").exists()


def test_logs_show_the_api_log(stack: Stack) -> None:
    """logs api prints the API's log lines, prefixed with its one replica."""
    result = stack.calops("logs", "api", "--tail", "5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("api-1      | ")
    assert (stack.folder / ".calops" / "logs" / "api-1.log").is_file()


def test_train_logs_to_the_stack_and_api_serves_the_alias(stack: Stack, tmp_path: Path) -> None:
    """train without --tracking logs to the stack's MLflow; an API serves the registered alias."""
    result = stack.calops("train", "--config", "config.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    mlflow = f"http://127.0.0.1:{stack.ports['mlflow']}"
    found = httpx.get(
        f"{mlflow}/api/2.0/mlflow/registered-models/alias",
        params={"name": "calories", "alias": "champion"},
        timeout=10,
    )
    assert found.status_code == 200, found.text
    port = free_port()
    env = {"CALOPS_MODEL": "models:/calories@champion", "MLFLOW_TRACKING_URI": mlflow}
    url = f"http://127.0.0.1:{port}"
    with running(api_argv(port), ready_url=f"{url}/readyz", env=env, log=tmp_path / "api.log"):
        info = httpx.get(f"{url}/info", timeout=10).json()
    assert "models:/calories" in json.dumps(info["model"])


def test_killed_service_shows_red(stack: Stack) -> None:
    """A Prometheus killed after up shows down (exited) in health, which exits 1."""
    os.killpg(stack.pids()["prometheus"], signal.SIGKILL)
    result = stack.calops("health", "--json")
    assert result.returncode == 1
    rows = [c for c in json.loads(result.stdout)["checks"] if c["service"] == "prometheus"]
    assert rows
    assert all(c["status"] == "down" for c in rows)
    assert rows[0]["detail"].startswith("exited: prometheus is no longer running")
    api = next(c for c in json.loads(result.stdout)["checks"] if c["service"] == "api")
    assert api["status"] == "up"


def test_down_leaves_no_process_and_frees_ports(stack: Stack) -> None:
    """down stops every process group, frees every port and clears the record; again is a no-op."""
    pids = stack.pids()
    result = stack.calops("down")
    assert result.returncode == 0, result.stderr
    assert not any(processes.group_alive(pid) for pid in pids.values())
    assert all(port_free(port) for port in stack.ports.values())
    assert stack.state() == {}
    again = stack.calops("down")
    assert again.returncode == 0
    assert "Nothing to take down" in again.stderr
