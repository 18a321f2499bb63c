"""Health probes of the stack's services over HTTP, one row per check.

Each probe takes an ``httpx.Client`` so tests can answer with ``httpx.MockTransport`` and the
real commands talk to the real services.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    from calapi.serving.schemas import Health
    from calopsctl.runtime.base import Replica

UP, DOWN, ABSENT, UNKNOWN = "up", "down", "absent", "unknown"
VIA_HEALTHZ, VIA_PROMETHEUS = "/healthz", "prometheus"
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


@dataclass(frozen=True)
class ReplicaCheck(Check):
    """One API process of the stack (``check`` is its name, e.g. api-2): from its own /healthz
    when this machine reaches it, else from Prometheus's scrape of its ``address``."""

    address: str = ""
    url: str | None = None
    model_version: str | None = None
    via: str = ""  # VIA_HEALTHZ or VIA_PROMETHEUS

    @property
    def name(self) -> str:
        return self.check

    def as_replica(self) -> dict[str, Any]:
        """The replica's entry of `calops health --json`."""
        return {
            "name": self.name,
            "status": self.status,
            "address": self.address,
            "url": self.url,
            "model_version": self.model_version,
            "via": self.via,
            "detail": self.detail,
        }


def report(checks: list[Check]) -> dict[str, Any]:
    """`calops health --json`: the verdict, why (the first failing check; None when healthy),
    the service checks and one entry per replica."""
    down = failing(checks)
    return {
        "healthy": not down,
        "reason": _reason_of(down[0]) if down else None,
        "checks": [c.as_dict() for c in checks if not isinstance(c, ReplicaCheck)],
        "replicas": [c.as_replica() for c in checks if isinstance(c, ReplicaCheck)],
    }


def unchecked(reason: str) -> dict[str, Any]:
    """`calops health --json` when there is nothing to check (no stack recorded): the same keys,
    so a script reads the verdict the same way whatever happened."""
    return {"healthy": False, "reason": reason, "checks": [], "replicas": []}


def _reason_of(check: Check) -> str:
    return f"{check.service} {check.check}: {check.detail}"


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


def _served_version(response: httpx.Response) -> str | None:
    """The model version a /healthz answer names, if it is the API's answer."""
    from calapi.serving.schemas import Health

    health = _parse(Health, response)
    return health.model_version if health is not None else None


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


def _active_targets(client: httpx.Client, url: str) -> list[dict[str, Any]] | str:
    """Prometheus's active scrape targets, or why there are none to read."""
    response = _get(client, f"{url}/api/v1/targets?state=active")
    if isinstance(response, str):
        return response
    body = _json(response)
    if response.status_code != HTTPStatus.OK or not isinstance(body, dict):
        return f"{url}/api/v1/targets: HTTP {response.status_code}"
    targets = body.get("data", {}).get("activeTargets", [])
    return [t for t in targets if isinstance(t, dict)]


def _api_target(client: httpx.Client, url: str) -> Check:
    """Every target of job ``api`` (one per API replica) is scraped."""
    found = _active_targets(client, url)
    if isinstance(found, str):
        return Check("prometheus", "target api", DOWN, found)
    targets = [t for t in found if t.get("labels", {}).get("job") == "api"]
    if not targets:
        return Check("prometheus", "target api", DOWN, "no scrape job named api")
    down = [t for t in targets if t.get("health") != "up"]
    if down:
        target = down[0]
        why = _target_error(target)
        detail = f"{target.get('scrapeUrl')}: {why}"
        if len(targets) > 1:
            detail = f"{len(down)} of {len(targets)} targets down; {detail}"
        return Check("prometheus", "target api", DOWN, detail)
    urls = ", ".join(str(t.get("scrapeUrl")) for t in targets)
    every = f"all {len(targets)} " if len(targets) > 1 else ""
    return Check("prometheus", "target api", UP, f"{every}UP ({urls})")


def _target_error(target: dict[str, Any]) -> str:
    return str(target.get("lastError") or f"health {target.get('health', 'unknown')}")


def probe_replicas(
    client: httpx.Client, replicas: Sequence[Replica], prometheus: str | None
) -> list[ReplicaCheck]:
    """One row per API process: its own /healthz when it has a URL from this machine, else
    the health of Prometheus's target at its address (Prometheus asked once for them all)."""
    scraped: tuple[list[dict[str, Any]] | str, dict[str, str]] | None = None
    checks = []
    for replica in replicas:
        if replica.url is not None:
            checks.append(_replica_from_healthz(client, replica, replica.url))
            continue
        if scraped is None:
            scraped = _scraped(client, prometheus)
        checks.append(_replica_from_prometheus(replica, *scraped))
    return checks


def _replica_from_healthz(client: httpx.Client, replica: Replica, url: str) -> ReplicaCheck:
    response = _get(client, f"{url}/healthz")
    if isinstance(response, str):
        return _replica_row(replica, DOWN, response, via=VIA_HEALTHZ)
    status, detail = _api_verdict(response)
    version = _served_version(response)
    return _replica_row(replica, status, detail, via=VIA_HEALTHZ, version=version)


def _scraped(
    client: httpx.Client, prometheus: str | None
) -> tuple[list[dict[str, Any]] | str, dict[str, str]]:
    """Prometheus's targets (or why not) and the model version each instance last reported."""
    if prometheus is None:
        return "no URL from this machine and no Prometheus in the stack to ask", {}
    return _active_targets(client, prometheus), _model_versions(client, prometheus)


def _model_versions(client: httpx.Client, prometheus: str) -> dict[str, str]:
    """instance -> version of the app_model_info series Prometheus last scraped from it."""
    response = _get(client, f"{prometheus}/api/v1/query?query=app_model_info")
    body = _json(response) if not isinstance(response, str) else None
    if not isinstance(body, dict):
        return {}
    series = body.get("data", {}).get("result", [])
    return {
        str(s["metric"]["instance"]): str(s["metric"]["version"])
        for s in series
        if isinstance(s, dict) and {"instance", "version"} <= set(s.get("metric", {}))
    }


def _replica_from_prometheus(
    replica: Replica, targets: list[dict[str, Any]] | str, versions: dict[str, str]
) -> ReplicaCheck:
    if isinstance(targets, str):
        # Not known to be down: Prometheus's own rows say what is wrong with it.
        return _replica_row(replica, UNKNOWN, targets, via=VIA_PROMETHEUS, required=False)
    # Labelled by its address in compose (the container's IP), by its name locally (api-1).
    known = (replica.address, replica.name)
    target = next((t for t in targets if t.get("labels", {}).get("instance") in known), None)
    if target is None:
        detail = f"Prometheus has no scrape target at {replica.address}"
        return _replica_row(replica, DOWN, detail, via=VIA_PROMETHEUS)
    if target.get("health") != "up":
        detail = f"Prometheus cannot scrape {target.get('scrapeUrl')}: {_target_error(target)}"
        return _replica_row(replica, DOWN, detail, via=VIA_PROMETHEUS)
    version = versions.get(replica.address) or versions.get(replica.name)
    detail = f"serving model {version}" if version else "scraped by Prometheus"
    return _replica_row(replica, UP, detail, via=VIA_PROMETHEUS, version=version)


def _replica_row(
    replica: Replica,
    status: str,
    detail: str,
    *,
    via: str,
    version: str | None = None,
    required: bool = True,
) -> ReplicaCheck:
    return ReplicaCheck(
        service="api",
        check=replica.name,
        status=status,
        detail=detail,
        required=required,
        address=replica.address,
        url=replica.url,
        model_version=version if status == UP else None,
        via=via,
    )


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
