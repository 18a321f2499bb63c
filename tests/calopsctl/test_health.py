"""Health probes: answers of each service turned into up/down rows with a reason."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from calopsctl import health
from calopsctl.health import ABSENT, DOWN, UP, Check

URL = "http://127.0.0.1:9"


def _client(routes: dict[str, Callable[[], httpx.Response]]) -> httpx.Client:
    def answer(request: httpx.Request) -> httpx.Response:
        route = routes.get(request.url.path)
        if route is None:
            raise httpx.ConnectError("connection refused", request=request)
        return route()

    return httpx.Client(transport=httpx.MockTransport(answer))


def _json(status: int, body: Any) -> Callable[[], httpx.Response]:
    return lambda: httpx.Response(status, json=body)


def _targets(*targets: dict[str, Any]) -> Callable[[], httpx.Response]:
    return _json(200, {"status": "success", "data": {"activeTargets": list(targets)}})


def _target(job: str, state: str, error: str = "") -> dict[str, Any]:
    return {
        "labels": {"job": job},
        "health": state,
        "lastError": error,
        "scrapeUrl": "http://127.0.0.1:8000/metrics",
    }


def _healthz(code: int, **body: Any) -> httpx.Client:
    """A client whose /healthz answers HTTP ``code`` with ``body``."""
    return _client({"/healthz": _json(code, body)})


def test_api_up_shows_the_model_version() -> None:
    """A 200 Health body from /healthz is up, with the model version in the detail."""
    client = _healthz(200, status="ok", model_loaded=True, model_version="abc123")
    check = health.probe_api(client, URL)
    assert (check.status, check.detail) == (UP, "serving model abc123")


def test_api_up_without_a_version_just_serves() -> None:
    """A Health body without model_version is still up."""
    check = health.probe_api(_healthz(200, status="ok", model_loaded=True), URL)
    assert (check.status, check.detail) == (UP, "serving")


def test_api_without_model_is_down_with_its_reason() -> None:
    """A 503 Health body from /healthz is down and carries the API's reason."""
    client = _healthz(503, status="unavailable", model_loaded=False, reason="no model yet")
    check = health.probe_api(client, URL)
    assert check.status == DOWN
    assert check.detail == "HTTP 503: no model yet"


def test_api_error_body_is_read_as_a_problem() -> None:
    """An error answer in the API's Problem shape gives its detail."""
    check = health.probe_api(_healthz(500, detail="model file is corrupt"), URL)
    assert (check.status, check.detail) == (DOWN, "HTTP 500: model file is corrupt")


@pytest.mark.parametrize(
    "route",
    [
        lambda: httpx.Response(200, json={"status": "ok", "model_version": "abc"}),
        lambda: httpx.Response(200, text="<html>it works</html>"),
    ],
    ids=["missing model_loaded", "html"],
)
def test_api_200_that_is_not_a_health_body_is_down(route: Callable[[], httpx.Response]) -> None:
    """A 200 whose body is not the API's Health schema is not taken for the API."""
    check = health.probe_api(_client({"/healthz": route}), URL)
    assert check.status == DOWN
    assert "not the API's health answer" in check.detail


def test_api_error_without_a_known_body_says_not_serving() -> None:
    """An error answer in no known shape still gives the status code."""
    client = _client({"/healthz": lambda: httpx.Response(502, text="Bad Gateway")})
    assert health.probe_api(client, URL).detail == "HTTP 502: not serving"


def test_refused_connection_is_down_naming_the_url() -> None:
    """Nothing listening is down, saying where it looked."""
    check = health.probe_api(_client({}), URL)
    assert check.status == DOWN
    assert f"no answer at {URL}/healthz" in check.detail


def test_prometheus_ready_and_api_target_up() -> None:
    """Prometheus ready and its api target UP give two up rows."""
    client = _client(
        {
            "/-/ready": lambda: httpx.Response(200, text="Prometheus Server is Ready."),
            "/api/v1/targets": _targets(_target("prometheus", "up"), _target("api", "up")),
        }
    )
    ready, target = health.probe_prometheus(client, URL)
    assert ready.status == UP
    assert target.status == UP
    assert target.check == "target api"


def test_api_target_down_carries_the_scrape_error() -> None:
    """An api target that fails to scrape is down with Prometheus's lastError."""
    client = _client(
        {
            "/-/ready": lambda: httpx.Response(200),
            "/api/v1/targets": _targets(_target("api", "down", "connection refused")),
        }
    )
    target = health.probe_prometheus(client, URL)[1]
    assert target.status == DOWN
    assert "connection refused" in target.detail


def test_missing_api_job_is_down() -> None:
    """A Prometheus without a job named api does not count as scraping the API."""
    client = _client({"/-/ready": lambda: httpx.Response(200), "/api/v1/targets": _targets()})
    assert health.probe_prometheus(client, URL)[1].detail == "no scrape job named api"


def test_prometheus_unreachable_downs_both_rows() -> None:
    """No Prometheus means neither ready nor a scraped API."""
    rows = health.probe_prometheus(_client({}), URL)
    assert [row.status for row in rows] == [DOWN, DOWN]


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [(200, {"database": "ok", "version": "12.0.2"}, UP), (503, {"database": "failing"}, DOWN)],
)
def test_grafana_health(status: int, body: dict[str, str], expected: str) -> None:
    """Grafana is up only with a 200 and database ok."""
    client = _client({"/api/health": _json(status, body)})
    assert health.probe_grafana(client, URL).status == expected


def test_mlflow_health() -> None:
    """MLflow's /health 200 is up; anything else is down."""
    assert health.probe_mlflow(_client({"/health": lambda: httpx.Response(200)}), URL).status == UP
    assert (
        health.probe_mlflow(_client({"/health": lambda: httpx.Response(500)}), URL).status == DOWN
    )


def test_healthy_ignores_absent_and_optional_rows() -> None:
    """Only a required row that is down makes the stack unhealthy."""
    rows = [
        Check("api", "/healthz", UP, ""),
        Check("grafana", "-", ABSENT, "not installed", required=False),
    ]
    assert health.healthy(rows)
    assert not health.healthy([*rows, Check("mlflow", "/health", DOWN, "")])


def test_retry_stops_when_healthy_and_is_bounded() -> None:
    """retry probes again until healthy, and gives up at the timeout with the last answer."""
    answers = iter([[Check("api", "/healthz", DOWN, "")], [Check("api", "/healthz", UP, "")]])
    assert health.healthy(health.retry(lambda: next(answers), timeout=5, interval=0.01))
    calls: list[int] = []

    def always_down() -> list[Check]:
        calls.append(1)
        return [Check("api", "/healthz", DOWN, "")]

    assert not health.healthy(health.retry(always_down, timeout=0.2, interval=0.05))
    assert 2 <= len(calls) < 20


def test_retry_gives_up_early_when_told() -> None:
    """give_up ends the wait at once (e.g. a process that exited)."""
    calls: list[int] = []

    def down() -> list[Check]:
        calls.append(1)
        return [Check("api", "/healthz", DOWN, "exited")]

    health.retry(down, timeout=30, interval=0.01, give_up=lambda rows: True)
    assert len(calls) == 1


@pytest.mark.integration
def test_probe_against_the_real_api(live_api: str) -> None:
    """The real API under uvicorn answers /healthz as up with its model version."""
    with httpx.Client(timeout=5) as client:
        check = health.probe_api(client, live_api)
    assert check.status == UP
    assert check.detail.startswith("serving model ")
