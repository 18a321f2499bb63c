"""Health probes of the stack's services over HTTP, one row per check.

Each probe takes an ``httpx.Client`` so tests can answer with ``httpx.MockTransport`` and the
real commands talk to the real services.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    from calapi.serving.schemas import Health

UP, DOWN, ABSENT = "up", "down", "absent"
Reply = TypeVar("Reply", bound=BaseModel)


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


def _parse(schema: type[Reply], response: httpx.Response) -> Reply | None:
    """The body read with one of the API's schemas, or None when it is not that shape."""
    try:
        return schema.model_validate_json(response.content)
    except ValidationError:
        return None


Verdict = tuple[str, str]  # (status, detail)


def _probe(
    client: httpx.Client,
    url: str,
    service: str,
    path: str,
    judge: Callable[[httpx.Response], Verdict],
) -> Check:
    """GET ``url + path`` and let ``judge`` read the answer; down naming the URL without one."""
    response = _get(client, f"{url}{path}")
    if isinstance(response, str):
        return Check(service, path, DOWN, response)
    return Check(service, path, *judge(response))


def probe_api(client: httpx.Client, url: str) -> Check:
    """GET /healthz: 200 while a model serves, 503 with the reason otherwise."""
    return _probe(client, url, "api", "/healthz", _api_verdict)


def _api_verdict(response: httpx.Response) -> Verdict:
    from calapi.serving.schemas import Health

    health = _parse(Health, response)
    if response.status_code != HTTPStatus.OK:
        return DOWN, f"HTTP {response.status_code}: {_reason(health, response)}"
    if health is None:
        return DOWN, "HTTP 200 but not the API's health answer (another server on this port?)"
    version = health.model_version
    return UP, f"serving model {version}" if version else "serving"


def _reason(health: Health | None, response: httpx.Response) -> str:
    """Why the API does not serve: its health reason, else its error detail."""
    from calapi.serving.schemas import Problem

    if health is not None:
        return health.reason or health.status
    problem = _parse(Problem, response)
    return problem.detail if problem is not None else "not serving"


def probe_prometheus(client: httpx.Client, url: str) -> list[Check]:
    """GET /-/ready, then the health of the scrape target of job ``api``."""
    response = _get(client, f"{url}/-/ready")
    if isinstance(response, str):
        return [
            Check("prometheus", "/-/ready", DOWN, response),
            Check("prometheus", "target api", DOWN, "Prometheus does not answer"),
        ]
    if response.status_code != HTTPStatus.OK:
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
    return _probe(client, url, "grafana", "/api/health", _grafana_verdict)


def _grafana_verdict(response: httpx.Response) -> Verdict:
    body = _json(response) or {}
    if response.status_code == HTTPStatus.OK and body.get("database") == "ok":
        return UP, f"version {body.get('version', '?')}"
    return DOWN, f"HTTP {response.status_code}: {body}"


def probe_mlflow(client: httpx.Client, url: str) -> Check:
    """GET /health: 200 ``OK``."""
    return _probe(client, url, "mlflow", "/health", _mlflow_verdict)


def _mlflow_verdict(response: httpx.Response) -> Verdict:
    if response.status_code == HTTPStatus.OK:
        return UP, "ok"
    return DOWN, f"HTTP {response.status_code}"


def probe_service(client: httpx.Client, service: str, url: str) -> list[Check]:
    """Every check of ``service`` (one of calopsctl.services.NAMES) at ``url``."""
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
