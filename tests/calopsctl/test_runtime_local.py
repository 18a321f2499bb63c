"""The local runtime: commands and configs it derives, and real detached process groups."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from calopsctl.paths import stack_dir
from calopsctl.runtime import processes
from calopsctl.runtime.base import StackSpec
from calopsctl.runtime.local import LocalRuntime
from calopsctl.state import StackState

PORTS = {"api": 18001, "prometheus": 19091, "grafana": 13001, "mlflow": 15001}


def _spec(tmp_path: Path) -> StackSpec:
    return StackSpec(
        ports=PORTS,
        artifacts=tmp_path / "artifacts",
        model=str(tmp_path / "artifacts"),
        grafana_password="pw-123",
    )


def _which(found: dict[str, str]) -> Callable[[str], str | None]:
    return found.get


def test_missing_binaries_are_absent_with_a_hint(tmp_path: Path) -> None:
    """Without prometheus or grafana binaries those services are left out, saying why."""
    runtime = LocalRuntime(tmp_path, which=lambda name: None)
    available = runtime.availability(_spec(tmp_path))
    assert available.services == ["api", "mlflow"]
    assert "apt install prometheus" in available.absent["prometheus"]
    assert "grafana-server is not installed" in available.absent["grafana"]


def test_api_plan_serves_the_model_with_the_stack_tracking_uri(tmp_path: Path) -> None:
    """The API runs under uvicorn on loopback with CALOPS_MODEL and the stack's MLflow URL."""
    plan = LocalRuntime(tmp_path).plans(_spec(tmp_path), ["api"])[0]
    assert plan.argv[:5] == [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "calapi.serving.app:create_app",
    ]
    assert plan.argv[-4:] == ["--host", "127.0.0.1", "--port", "18001"]
    assert plan.env["CALOPS_MODEL"] == str(tmp_path / "artifacts")
    assert plan.env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:15001"


def test_mlflow_plan_uses_sqlite_and_serves_artifacts(tmp_path: Path) -> None:
    """MLflow keeps runs in SQLite under home and proxies artifacts over HTTP."""
    argv = LocalRuntime(tmp_path).plans(_spec(tmp_path), ["mlflow"])[0].argv
    assert argv[1:4] == ["-m", "mlflow", "server"]
    assert f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}" in argv
    assert "--serve-artifacts" in argv
    assert argv[argv.index("--artifacts-destination") + 1] == str(tmp_path / "mlflow" / "artifacts")
    assert argv[argv.index("--port") + 1] == "15001"


def test_prometheus_config_scrapes_the_local_api(tmp_path: Path) -> None:
    """The generated prometheus.yml scrapes 127.0.0.1:<api port> and loads the shipped rules."""
    runtime = LocalRuntime(tmp_path, which=_which({"prometheus": "/usr/bin/prometheus"}))
    plan = runtime.plans(_spec(tmp_path), ["api", "prometheus", "mlflow"])[1]
    config_path = tmp_path / "prometheus" / "prometheus.yml"
    assert f"--config.file={config_path}" in plan.argv
    assert "--web.listen-address=127.0.0.1:19091" in plan.argv
    config = yaml.safe_load(config_path.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["api"]["static_configs"] == [{"targets": ["127.0.0.1:18001"]}]
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["127.0.0.1:19091"]}]
    assert config["rule_files"] == [str(stack_dir().resolve() / "prometheus" / "alerts.yml")]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_generated_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """promtool accepts the generated config together with the shipped alert rules."""
    runtime = LocalRuntime(tmp_path, which=_which({"prometheus": "/usr/bin/prometheus"}))
    runtime.plans(_spec(tmp_path), ["api", "prometheus"])
    result = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning_points_at_local_prometheus(tmp_path: Path) -> None:
    """Grafana's datasource is rewritten to local Prometheus, dashboards to the shipped folder."""
    runtime = LocalRuntime(tmp_path, which=_which({"grafana-server": "/usr/sbin/grafana-server"}))
    plan = runtime.plans(_spec(tmp_path), ["api", "grafana"])[-1]
    provisioning = Path(plan.env["GF_PATHS_PROVISIONING"])
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    source = datasources["datasources"][0]
    assert source["url"] == "http://127.0.0.1:19091"
    assert source["uid"] == "calops-prometheus"
    providers = yaml.safe_load((provisioning / "dashboards" / "calops.yaml").read_text())
    assert providers["providers"][0]["options"]["path"] == str(
        stack_dir() / "grafana" / "dashboards"
    )
    assert plan.env["GF_SECURITY_ADMIN_PASSWORD"] == "pw-123"
    assert plan.env["GF_SERVER_HTTP_PORT"] == "13001"
    assert plan.env["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"


def _sleeper_with_child() -> list[str]:
    """A parent process that starts a child in its group and both sleep."""
    code = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        "print('ready', flush=True); time.sleep(120)"
    )
    return [sys.executable, "-c", code]


def _wait_for(path: Path, text: str) -> None:
    for _ in range(100):
        if path.is_file() and text in path.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in {path}")


def test_spawned_group_is_detached_logged_and_stopped_whole(tmp_path: Path) -> None:
    """A spawned process leads its own session, logs to its file, and stop kills its children."""
    log = tmp_path / "logs" / "svc.log"
    pid = processes.spawn(_sleeper_with_child(), env={}, log=log)
    try:
        _wait_for(log, "ready")
        assert processes.leader_alive(pid)
        assert subprocess.run(
            ["ps", "-o", "sid=", "-p", str(pid)], capture_output=True, text=True, check=True
        ).stdout.strip() == str(pid)
        assert len(processes._group_members(pid)) == 2
        assert processes.stop_group(pid, grace=5)
        assert not processes.group_alive(pid)
        assert not processes.leader_alive(pid)
    finally:
        processes.stop_group(pid, grace=1)


def test_dead_leader_with_live_child_is_still_stopped(tmp_path: Path) -> None:
    """A group whose leader was killed still counts as running until its children are gone."""
    log = tmp_path / "svc.log"
    pid = processes.spawn(_sleeper_with_child(), env={}, log=log)
    try:
        _wait_for(log, "ready")
        os.kill(pid, signal.SIGKILL)
        for _ in range(50):
            if not processes.leader_alive(pid):
                break
            time.sleep(0.1)
        assert not processes.leader_alive(pid)
        assert processes.group_alive(pid)
        assert processes.stop_group(pid, grace=5)
        assert not processes.group_alive(pid)
    finally:
        processes.stop_group(pid, grace=1)


def test_down_clears_processes_and_volumes(tmp_path: Path) -> None:
    """down stops each recorded group; --volumes deletes the data folders."""
    runtime = LocalRuntime(tmp_path)
    pid = processes.spawn(_sleeper_with_child(), env={}, log=runtime.log_path("api"))
    _wait_for(runtime.log_path("api"), "ready")
    (tmp_path / "mlflow" / "artifacts").mkdir(parents=True)
    state = StackState(runtime="local", ports=PORTS, services=["api"], pids={"api": pid})
    assert runtime.alive(state) == {"api": True}
    assert runtime.down(state, volumes=True) == ["api"]
    assert runtime.alive(state) == {"api": False}
    assert not (tmp_path / "mlflow").exists()
    assert runtime.down(state, volumes=False) == [], "a second down finds nothing to stop"


def test_log_tail_and_stream(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """log_tail returns the last lines; stream_logs prefixes each line with its service."""
    runtime = LocalRuntime(tmp_path)
    runtime.log_dir.mkdir(parents=True)
    runtime.log_path("mlflow").write_text("".join(f"line {i}\n" for i in range(10)))
    state = StackState(runtime="local", ports=PORTS)
    assert runtime.log_tail(state, "mlflow", 2) == "line 8\nline 9"
    assert runtime.log_tail(state, "api") == ""
    runtime.stream_logs(state, ["mlflow"], follow=False, tail=1)
    assert capsys.readouterr().out == "mlflow     | line 9\n"
