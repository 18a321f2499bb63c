"""Health probes of the stack's services over HTTP, one row per check.

Each probe takes an ``httpx.Client`` so tests can answer with ``httpx.MockTransport`` and the
real commands talk to the real services.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import httpx

UP, DOWN, ABSENT = "up", "down", "absent"


@dataclass(frozen=True)
class Check:
    """One health check: ``status`` is up, down or absent (not part of this stack)."""

    service: str
    check: str
    status: str
    detail: str
    required: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def healthy(checks: list[Check]) -> bool:
    """True when no required check is down."""
    return not [c for c in checks if c.required and c.status == DOWN]


def failing(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.required and c.status == DOWN]


def _get(client: httpx.Client, url: str) -> httpx.Response | str:
    """The response, or a short reason why there is none."""
    try:
        return client.get(url)
    except httpx.ConnectError:
        return f"no answer at {url} (connection refused)"
    except httpx.TimeoutException:
        return f"no answer at {url} within {client.timeout.read}s"
    except httpx.HTTPError as exc:
        return f"{url}: {type(exc).__name__}: {exc}"


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def probe_api(client: httpx.Client, url: str) -> Check:
    """GET /healthz: 200 while a model serves, 503 with the reason otherwise."""
    response = _get(client, f"{url}/healthz")
    if isinstance(response, str):
        return Check("api", "/healthz", DOWN, response)
    body = _json(response)
    if response.status_code == 200:
        return Check("api", "/healthz", UP, _model_summary(body))
    return Check("api", "/healthz", DOWN, f"HTTP {response.status_code}: {_reason(body)}")


def _model_summary(body: Any) -> str:
    if not isinstance(body, dict):
        return "serving"
    if body.get("model_version"):
        return f"serving model {body['model_version']}"
    model = body.get("model")
    if isinstance(model, dict):
        version = model.get("version") or model.get("sha256", "")[:12]
        return f"serving model {version}".strip()
    return f"serving model {model}" if model else str(body.get("status", "serving"))


def _reason(body: Any) -> str:
    if isinstance(body, dict):
        for key in ("reason", "detail", "status"):
            if body.get(key):
                return str(body[key])
    return "not serving"


def probe_prometheus(client: httpx.Client, url: str) -> list[Check]:
    """GET /-/ready, then the health of the scrape target of job ``api``."""
    response = _get(client, f"{url}/-/ready")
    if isinstance(response, str):
        return [
            Check("prometheus", "/-/ready", DOWN, response),
            Check("prometheus", "target api", DOWN, "Prometheus does not answer"),
        ]
    if response.status_code != 200:
        ready = Check("prometheus", "/-/ready", DOWN, f"HTTP {response.status_code}")
    else:
        ready = Check("prometheus", "/-/ready", UP, "ready")
    return [ready, _api_target(client, url)]


def _api_target(client: httpx.Client, url: str) -> Check:
    response = _get(client, f"{url}/api/v1/targets?state=active")
    if isinstance(response, str):
        return Check("prometheus", "target api", DOWN, response)
    body = _json(response) or {}
    targets = [
        t
        for t in body.get("data", {}).get("activeTargets", [])
        if t.get("labels", {}).get("job") == "api"
    ]
    if not targets:
        return Check("prometheus", "target api", DOWN, "no scrape job named api")
    down = [t for t in targets if t.get("health") != "up"]
    if down:
        target = down[0]
        why = target.get("lastError") or f"health {target.get('health', 'unknown')}"
        return Check("prometheus", "target api", DOWN, f"{target.get('scrapeUrl')}: {why}")
    return Check("prometheus", "target api", UP, f"UP ({targets[0].get('scrapeUrl')})")


def probe_grafana(client: httpx.Client, url: str) -> Check:
    """GET /api/health: 200 with ``database: ok``."""
    response = _get(client, f"{url}/api/health")
    if isinstance(response, str):
        return Check("grafana", "/api/health", DOWN, response)
    body = _json(response) or {}
    if response.status_code == 200 and body.get("database") == "ok":
        return Check("grafana", "/api/health", UP, f"version {body.get('version', '?')}")
    return Check("grafana", "/api/health", DOWN, f"HTTP {response.status_code}: {body}")


def probe_mlflow(client: httpx.Client, url: str) -> Check:
    """GET /health: 200 ``OK``."""
    response = _get(client, f"{url}/health")
    if isinstance(response, str):
        return Check("mlflow", "/health", DOWN, response)
    if response.status_code == 200:
        return Check("mlflow", "/health", UP, "ok")
    return Check("mlflow", "/health", DOWN, f"HTTP {response.status_code}")


def probe_service(client: httpx.Client, service: str, url: str) -> list[Check]:
    if service == "prometheus":
        return probe_prometheus(client, url)
    probes = {"api": probe_api, "grafana": probe_grafana, "mlflow": probe_mlflow}
    return [probes[service](client, url)]


def retry(
    probe: Callable[[], list[Check]],
    *,
    timeout: float,
    interval: float = 1.0,
    give_up: Callable[[list[Check]], bool] = lambda checks: False,
) -> list[Check]:
    """Probe until healthy, ``give_up`` says stop, or ``timeout`` passes; the last result."""
    deadline = time.monotonic() + timeout
    checks = probe()
    while not healthy(checks) and not give_up(checks) and time.monotonic() < deadline:
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        checks = probe()
    return checks
