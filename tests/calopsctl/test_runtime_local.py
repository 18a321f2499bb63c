"""The local runtime: commands and configs it derives, and real detached process groups."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from calapi.errors import CalopsError
from calapi.serving.server import port_free
from calopsctl.paths import stack_dir
from calopsctl.runtime import processes
from calopsctl.runtime.base import Replica, StackSpec
from calopsctl.runtime.local import REPLICA_PORTS, LocalRuntime, pick_replica_ports
from calopsctl.state import StackState

PORTS = {"api": 18001, "prometheus": 19091, "grafana": 13001, "mlflow": 15001}
OWN_PORTS = {"api-1": 28001, "api-2": 28002, "api-3": 28003}
RULES = [
    str(stack_dir().resolve() / "prometheus" / name) for name in ("recording.yml", "alerts.yml")
]


def _spec(tmp_path: Path, replicas: int = 1) -> StackSpec:
    return StackSpec(
        ports=PORTS,
        artifacts=tmp_path / "artifacts",
        model=str(tmp_path / "artifacts"),
        grafana_password="pw-123",
        replicas=replicas,
    )


def _which(found: dict[str, str]) -> Callable[[str], str | None]:
    return found.get


def _by_name(targets: Mapping[str, str]) -> list[dict[str, object]]:
    """Job api's target groups: one per replica, labelled with its name, not its address."""
    return [{"targets": [at], "labels": {"instance": name}} for name, at in targets.items()]


def test_missing_binaries_are_absent_with_a_hint(tmp_path: Path) -> None:
    """Without prometheus or grafana binaries those services are left out, saying why."""
    runtime = LocalRuntime(tmp_path, which=lambda name: None)
    available = runtime.availability(_spec(tmp_path))
    assert available.services == ["api", "mlflow"]
    assert "apt install prometheus" in available.absent["prometheus"]
    assert "grafana-server is not installed" in available.absent["grafana"]


def test_api_plan_serves_the_model_with_the_stack_tracking_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One replica: `python -m calapi.serving` alone on the API port (no port sharing, whatever
    the caller's environment says), with CALOPS_MODEL, the stack's MLflow URL and its log."""
    monkeypatch.setenv("CALOPS_REUSE_PORT", "true")
    monkeypatch.setenv("CALOPS_OWN_PORT", "4321")
    monkeypatch.setenv("CALOPS_WORKERS", "4")
    plans = LocalRuntime(tmp_path).plans(_spec(tmp_path), ["api"])
    assert [(plan.name, plan.service) for plan in plans] == [("api-1", "api")]
    plan = plans[0]
    assert plan.argv == [sys.executable, "-m", "calapi.serving"]
    assert plan.env["CALOPS_HOST"] == "127.0.0.1"
    assert plan.env["CALOPS_PORT"] == "18001"
    assert plan.env["CALOPS_REUSE_PORT"] == "false"
    assert "CALOPS_OWN_PORT" not in plan.env
    assert plan.env["CALOPS_WORKERS"] == "1"
    assert plan.env["CALOPS_PREDICTION_LOG"] == str(tmp_path / "predictions.db")
    assert plan.env["CALOPS_MODEL"] == str(tmp_path / "artifacts")
    assert plan.env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:15001"
    assert plan.env["CALOPS_ALLOW_PICKLE"] == "false"


def test_allow_pickle_reaches_every_api_replica(tmp_path: Path) -> None:
    """`calops up --allow-pickle` sets CALOPS_ALLOW_PICKLE=true for each API process."""
    spec = replace(_spec(tmp_path, replicas=3), allow_pickle=True)
    plans = LocalRuntime(tmp_path).plans(spec, ["api"], OWN_PORTS)
    assert [plan.env["CALOPS_ALLOW_PICKLE"] for plan in plans] == ["true"] * 3


def test_api_plans_for_three_replicas_share_the_port_and_the_log(tmp_path: Path) -> None:
    """Three replicas: three processes on the API port with SO_REUSEPORT, each alone on its
    own port, all writing the stack's one prediction log."""
    plans = LocalRuntime(tmp_path).plans(_spec(tmp_path, replicas=3), ["api"], OWN_PORTS)
    assert [plan.name for plan in plans] == ["api-1", "api-2", "api-3"]
    assert {plan.service for plan in plans} == {"api"}
    for plan, own in zip(plans, OWN_PORTS.values(), strict=True):
        assert plan.argv == [sys.executable, "-m", "calapi.serving"]
        assert plan.env["CALOPS_PORT"] == "18001"
        assert plan.env["CALOPS_REUSE_PORT"] == "true"
        assert plan.env["CALOPS_OWN_PORT"] == str(own)
        assert plan.env["CALOPS_PREDICTION_LOG"] == str(tmp_path / "predictions.db")


def test_replica_ports_are_the_api_port_alone_or_free_distinct_ports(tmp_path: Path) -> None:
    """A single replica's own port is the API port; several get distinct free ports that are
    none of the stack's."""
    assert pick_replica_ports(_spec(tmp_path)) == {"api-1": 18001}
    ports = pick_replica_ports(_spec(tmp_path, replicas=5))
    assert list(ports) == ["api-1", "api-2", "api-3", "api-4", "api-5"]
    assert len(set(ports.values())) == 5
    assert not set(ports.values()) & set(PORTS.values())
    assert all(port_free(port) for port in ports.values())


def test_up_spawns_each_replica_with_its_log_and_records_its_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """up starts api-1..api-3 as separate processes logging to logs/api-<i>.log, saves each
    pid as it starts, and records the ports Prometheus is told to scrape."""
    spawned: list[tuple[Sequence[str], Mapping[str, str], Path]] = []

    def spawn(argv: Sequence[str], *, env: Mapping[str, str], log: Path) -> int:
        spawned.append((argv, env, log))
        return 1000 + len(spawned)

    monkeypatch.setattr(processes, "spawn", spawn)
    runtime = LocalRuntime(tmp_path, which=_which({"prometheus": "/usr/bin/prometheus"}))
    spec = _spec(tmp_path, replicas=3)
    state = StackState(runtime="local", ports=PORTS, services=["api", "prometheus", "mlflow"])
    saved: list[dict[str, int]] = []
    runtime.up(spec, state, lambda record: saved.append(dict(record.pids)), ["mlflow"])
    assert REPLICA_PORTS not in state.extra, "no port is held while only MLflow starts"
    runtime.up(spec, state, lambda record: saved.append(dict(record.pids)), ["api", "prometheus"])
    own = state.extra[REPLICA_PORTS]
    assert list(own) == ["api-1", "api-2", "api-3"]
    assert list(state.pids) == ["mlflow", "api-1", "api-2", "api-3", "prometheus"]
    assert [log.name for _, _, log in spawned[1:4]] == ["api-1.log", "api-2.log", "api-3.log"]
    assert [env["CALOPS_OWN_PORT"] for _, env, _ in spawned[1:4]] == [str(p) for p in own.values()]
    assert len(saved) == 5, "the record is saved as each process starts"
    assert saved[-1] == state.pids
    config = yaml.safe_load((tmp_path / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {name: f"127.0.0.1:{port}" for name, port in own.items()}
    assert jobs["api"]["static_configs"] == _by_name(targets)


def test_mlflow_plan_uses_sqlite_and_serves_artifacts(tmp_path: Path) -> None:
    """MLflow keeps runs in SQLite under home and proxies artifacts over HTTP."""
    argv = LocalRuntime(tmp_path).plans(_spec(tmp_path), ["mlflow"])[0].argv
    assert argv[1:4] == ["-m", "mlflow", "server"]
    assert f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}" in argv
    assert "--serve-artifacts" in argv
    assert argv[argv.index("--artifacts-destination") + 1] == str(tmp_path / "mlflow" / "artifacts")
    assert argv[argv.index("--port") + 1] == "15001"


def test_mlflow_answers_only_loopback_host_names(tmp_path: Path) -> None:
    """MLflow has no login: it binds 127.0.0.1 and refuses other Host headers (DNS rebinding)."""
    argv = LocalRuntime(tmp_path).plans(_spec(tmp_path), ["mlflow"])[0].argv
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    allowed = argv[argv.index("--allowed-hosts") + 1].split(",")
    assert set(allowed) == {"localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*"}


def test_each_service_gets_only_the_environment_it_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unrelated secrets stay with the caller; PATH, locale, proxies and each service's own
    settings (CALOPS_*/MLFLOW_* for the API, MLFLOW_* for MLflow, GF_* for Grafana) pass."""
    secrets = {"AWS_SECRET_ACCESS_KEY": "s1", "GRAFANA_ADMIN_PASSWORD": "s2", "GITHUB_TOKEN": "s3"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    for name in ("CALOPS_ALLOW_PICKLE", "MLFLOW_TRACKING_TOKEN", "GF_LOG_LEVEL", "LC_ALL"):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    which = _which({"prometheus": "/usr/bin/prometheus", "grafana-server": "/usr/sbin/grafana"})
    runtime = LocalRuntime(tmp_path, which=which)
    plans = runtime.plans(_spec(tmp_path), ["mlflow", "api", "prometheus", "grafana"])
    envs = {plan.service: plan.env for plan in plans}
    assert set(envs) == {"mlflow", "api", "prometheus", "grafana"}
    for service, env in envs.items():
        assert not set(secrets) & set(env), service
        assert env["PATH"] == os.environ["PATH"], service
        assert (env["HTTPS_PROXY"], env["LC_ALL"]) == ("http://proxy:3128", "x"), service
    assert {"CALOPS_ALLOW_PICKLE", "MLFLOW_TRACKING_TOKEN"} <= set(envs["api"])
    assert "GF_LOG_LEVEL" not in envs["api"]
    assert "MLFLOW_TRACKING_TOKEN" in envs["mlflow"]
    assert "CALOPS_ALLOW_PICKLE" not in envs["mlflow"]
    assert not any(name.startswith(("CALOPS_", "MLFLOW_", "GF_")) for name in envs["prometheus"])
    assert envs["grafana"]["GF_LOG_LEVEL"] == "x"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in envs["api"]


def test_child_env_keeps_common_variables_and_the_prefixes_asked_for() -> None:
    """child_env is an allow-list: common names, LC_*, the given prefixes, minus ``deny``."""
    caller = {"PATH": "/bin", "LC_TIME": "C", "CALOPS_A": "1", "AWS_KEY": "k", "TZ": "UTC"}
    assert processes.child_env(environ=caller) == {"PATH": "/bin", "LC_TIME": "C", "TZ": "UTC"}
    assert processes.child_env(("CALOPS_",), deny=["TZ"], environ=caller) == {
        "PATH": "/bin",
        "LC_TIME": "C",
        "CALOPS_A": "1",
    }


def test_prometheus_config_scrapes_the_local_api(tmp_path: Path) -> None:
    """The generated prometheus.yml scrapes 127.0.0.1:<api port> and loads the shipped rules."""
    runtime = LocalRuntime(tmp_path, which=_which({"prometheus": "/usr/bin/prometheus"}))
    plan = runtime.plans(_spec(tmp_path), ["api", "prometheus", "mlflow"])[1]
    config_path = tmp_path / "prometheus" / "prometheus.yml"
    assert f"--config.file={config_path}" in plan.argv
    assert "--web.listen-address=127.0.0.1:19091" in plan.argv
    config = yaml.safe_load(config_path.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["api"]["static_configs"] == _by_name({"api-1": "127.0.0.1:18001"})
    assert "dns_sd_configs" not in jobs["api"]  # the compose replicas' discovery is dropped
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["127.0.0.1:19091"]}]
    assert config["rule_files"] == RULES


def test_prometheus_config_scrapes_every_replica_on_its_own_port(tmp_path: Path) -> None:
    """With three replicas job api has three targets, each replica's own port (not the shared
    API port, which would reach a random one); the rule files are still the shipped ones."""
    runtime = LocalRuntime(tmp_path, which=_which({"prometheus": "/usr/bin/prometheus"}))
    runtime.plans(_spec(tmp_path, replicas=3), ["api", "prometheus"], OWN_PORTS)
    config = yaml.safe_load((tmp_path / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {"api-1": "127.0.0.1:28001", "api-2": "127.0.0.1:28002", "api-3": "127.0.0.1:28003"}
    assert jobs["api"]["static_configs"] == _by_name(targets)
    assert config["rule_files"] == RULES


def test_api_instance_label_stays_across_host_ports(tmp_path: Path) -> None:
    """The api target's instance label is the replica's name, whatever port it listens on:
    after `down` and `up --host-port 8010` the per-process series (app_rolling_rmsle_5m)
    continue under the same labels instead of a second series beside the old one."""
    runtime = LocalRuntime(tmp_path, which=_which({"prometheus": "/usr/bin/prometheus"}))
    labels = []
    for port in (8000, 8010):
        spec = replace(_spec(tmp_path), ports={**PORTS, "api": port})
        runtime.plans(spec, ["api", "prometheus"])
        config = yaml.safe_load((tmp_path / "prometheus" / "prometheus.yml").read_text())
        [api] = [job for job in config["scrape_configs"] if job["job_name"] == "api"]
        [group] = api["static_configs"]
        assert group["targets"] == [f"127.0.0.1:{port}"]
        labels.append(group["labels"])
    assert labels == [{"instance": "api-1"}, {"instance": "api-1"}]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_generated_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """promtool accepts the generated config (three replicas, each target group labelled with
    its replica's name) with the shipped rule files."""
    runtime = LocalRuntime(tmp_path, which=_which({"prometheus": "/usr/bin/prometheus"}))
    runtime.plans(_spec(tmp_path, replicas=3), ["api", "prometheus"], OWN_PORTS)
    result = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_never_starts_without_a_password(tmp_path: Path) -> None:
    """`calops up` sets the password only when Grafana runs; a spec without one is refused
    rather than leave Grafana on its admin/admin default."""
    runtime = LocalRuntime(tmp_path, which=_which({"grafana-server": "/usr/sbin/grafana-server"}))
    unset = replace(_spec(tmp_path), grafana_password=None)
    assert [plan.name for plan in runtime.plans(unset, ["api"])] == ["api-1"]
    with pytest.raises(CalopsError, match="Grafana cannot start without an admin password"):
        runtime.plans(unset, ["api", "grafana"])


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


def _replica_state(runtime: LocalRuntime, count: int) -> StackState:
    """A recorded stack whose API replicas (and MLflow) are real sleeping process groups."""
    names = [f"api-{i}" for i in range(1, count + 1)]
    pids = {}
    for name in [*names, "mlflow"]:
        pids[name] = processes.spawn(_sleeper_with_child(), env={}, log=runtime.log_path(name))
    for name in pids:
        _wait_for(runtime.log_path(name), "ready")
    own = {name: 28000 + i for i, name in enumerate(names, start=1)}
    return StackState(
        runtime="local",
        ports=PORTS,
        services=["api", "mlflow"],
        replicas=count,
        pids=pids,
        extra={REPLICA_PORTS: own},
    )


def _killed(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        if not processes.leader_alive(pid):
            return
        time.sleep(0.1)
    raise AssertionError(f"{pid} still runs after SIGKILL")


def test_replicas_alive_and_down(tmp_path: Path) -> None:
    """Each replica reports its own process; the API runs while one does; down stops every
    group (a dead replica's leftover children too) and --volumes removes the prediction log
    with the data folders."""
    runtime = LocalRuntime(tmp_path)
    state = _replica_state(runtime, 3)
    try:
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"predictions.db{suffix}").write_text("x")
        assert runtime.replicas(state) == [
            Replica(f"api-{i}", True, f"127.0.0.1:2800{i}", f"http://127.0.0.1:2800{i}")
            for i in (1, 2, 3)
        ]
        _killed(state.pids["api-2"])
        assert [r.running for r in runtime.replicas(state)] == [True, False, True]
        assert runtime.alive(state) == {"api": True, "mlflow": True}
        _killed(state.pids["api-1"])
        _killed(state.pids["api-3"])
        assert runtime.alive(state) == {"api": False, "mlflow": True}
        assert sorted(runtime.down(state, volumes=True)) == ["api-1", "api-2", "api-3", "mlflow"]
        assert not any(processes.group_alive(pid) for pid in state.pids.values())
        assert not list(tmp_path.glob("predictions.db*"))
    finally:
        processes.stop_groups(state.pids.values(), grace=1)


def test_replica_logs_are_prefixed_by_replica(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`calops logs api` shows every replica's log, each line after the replica's name; a
    replica's own log is named in its hint."""
    runtime = LocalRuntime(tmp_path)
    runtime.log_dir.mkdir(parents=True)
    for i in (1, 2):
        runtime.log_path(f"api-{i}").write_text(f"started {i}\nserving {i}\n")
    own = {"api-1": 28001, "api-2": 28002}
    state = StackState(runtime="local", ports=PORTS, extra={REPLICA_PORTS: own})
    runtime.stream_logs(state, ["api"], follow=False, tail=1)
    assert capsys.readouterr().out == "api-1      | serving 1\napi-2      | serving 2\n"
    assert runtime.log_tail(state, "api", 1) == "api-1      | serving 1\napi-2      | serving 2"
    assert runtime.log_tail(state, "api-2", 1) == "serving 2"
    assert runtime.log_hint(state, "api-2") == str(tmp_path / "logs" / "api-2.log")


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
