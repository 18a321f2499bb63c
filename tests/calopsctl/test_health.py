"""Health probes: answers of each service turned into up/down rows with a reason."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from calopsctl import health
from calopsctl.health import ABSENT, DOWN, UNKNOWN, UP, Check, ReplicaCheck
from calopsctl.runtime.base import Replica
from stacktools import serve_json

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


def _target(
    job: str, state: str, error: str = "", instance: str = "127.0.0.1:8000"
) -> dict[str, Any]:
    return {
        "labels": {"job": job, "instance": instance},
        "health": state,
        "lastError": error,
        "scrapeUrl": f"http://{instance}/metrics",
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


def test_api_target_counts_every_replica() -> None:
    """Several api targets: up only when every one is, naming how many are down and why."""
    targets = [_target("api", "up", instance=f"127.0.0.1:900{i}") for i in (1, 2, 3)]
    ready = {"/-/ready": lambda: httpx.Response(200)}
    client = _client({**ready, "/api/v1/targets": _targets(*targets)})
    target = health.probe_prometheus(client, URL)[1]
    assert target.status == UP
    assert target.detail.startswith("all 3 UP (http://127.0.0.1:9001/metrics, ")
    targets[1] = _target("api", "down", "connection refused", instance="127.0.0.1:9002")
    client = _client({**ready, "/api/v1/targets": _targets(*targets)})
    target = health.probe_prometheus(client, URL)[1]
    assert target.status == DOWN
    assert target.detail == (
        "1 of 3 targets down; http://127.0.0.1:9002/metrics: connection refused"
    )


def _by_port(answers: dict[int, Callable[[], httpx.Response]]) -> httpx.Client:
    """A client where each loopback port answers /healthz its own way (refused when absent)."""

    def answer(request: httpx.Request) -> httpx.Response:
        route = answers.get(request.url.port or 0)
        if route is None or request.url.path != "/healthz":
            raise httpx.ConnectError("connection refused", request=request)
        return route()

    return httpx.Client(transport=httpx.MockTransport(answer))


def _local(name: str, port: int, *, running: bool = True) -> Replica:
    return Replica(name, running, f"127.0.0.1:{port}", f"http://127.0.0.1:{port}")


def test_replicas_with_a_url_answer_for_themselves() -> None:
    """A replica with a URL is judged by its own /healthz: its model version when it serves,
    the reason when it does not, the URL when nothing answers; Prometheus is not asked."""
    client = _by_port(
        {
            9001: _json(200, {"status": "ok", "model_loaded": True, "model_version": "v7"}),
            9003: _json(503, {"status": "unavailable", "model_loaded": False, "reason": "none"}),
        }
    )
    replicas = [_local("api-1", 9001), _local("api-2", 9002), _local("api-3", 9003)]
    rows = health.probe_replicas(client, replicas, prometheus="http://127.0.0.1:1")
    assert [(r.name, r.status, r.model_version, r.via) for r in rows] == [
        ("api-1", UP, "v7", "/healthz"),
        ("api-2", DOWN, None, "/healthz"),
        ("api-3", DOWN, None, "/healthz"),
    ]
    assert rows[0].detail == "serving model v7"
    assert rows[1].detail == "no answer at http://127.0.0.1:9002/healthz (connection refused)"
    assert rows[2].detail == "HTTP 503: none"
    assert all(r.service == "api" and r.required for r in rows)
    assert not health.healthy(list(rows))


def _in_network(name: str, address: str) -> Replica:
    """A replica as the Docker runtime gives it: reachable only inside the compose network."""
    return Replica(name, running=True, address=address, url=None)


def test_replicas_without_a_url_are_read_from_prometheus_targets() -> None:
    """Without a URL a replica's health is Prometheus's target at its address (up, or down
    with lastError, or missing), its version from app_model_info; Prometheus is asked once."""
    targets = {
        "status": "success",
        "data": {
            "activeTargets": [
                _target("prometheus", "up", instance="localhost:9090"),
                _target("api", "up", instance="172.18.0.5:8000"),
                _target("api", "down", "context deadline exceeded", instance="172.18.0.6:8000"),
            ]
        },
    }
    model_info = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {
                    "metric": {"__name__": "app_model_info", "instance": "172.18.0.5:8000",
                               "job": "api", "version": "calories/3", "alias": "champion"},
                    "value": [1700000000.0, "1"],
                }
            ],
        },
    }  # fmt: skip
    replicas = [
        _in_network("api-1", "172.18.0.5:8000"),
        _in_network("api-2", "172.18.0.6:8000"),
        _in_network("api-3", "172.18.0.7:8000"),
    ]
    routes = {"/api/v1/targets": lambda: (200, targets), "/api/v1/query": lambda: (200, model_info)}
    with serve_json(routes) as (prometheus, asked), httpx.Client(timeout=5) as client:
        rows = health.probe_replicas(client, replicas, prometheus)
    assert asked == ["/api/v1/targets", "/api/v1/query"]
    assert [(r.name, r.status, r.model_version, r.via) for r in rows] == [
        ("api-1", UP, "calories/3", "prometheus"),
        ("api-2", DOWN, None, "prometheus"),
        ("api-3", DOWN, None, "prometheus"),
    ]
    assert rows[0].detail == "serving model calories/3"
    assert rows[1].detail == (
        "Prometheus cannot scrape http://172.18.0.6:8000/metrics: context deadline exceeded"
    )
    assert rows[2].detail == "Prometheus has no scrape target at 172.18.0.7:8000"
    assert [r.url for r in rows] == [None, None, None]


def test_replica_without_a_url_before_its_first_scrape_is_down() -> None:
    """A target Prometheus has not scraped yet (health "unknown") is not taken for up."""
    targets = {"data": {"activeTargets": [_target("api", "unknown", instance="10.0.0.2:8000")]}}
    replica = _in_network("api-1", "10.0.0.2:8000")
    routes = {"/api/v1/targets": lambda: (200, targets)}
    with serve_json(routes) as (prometheus, _asked), httpx.Client(timeout=5) as client:
        [row] = health.probe_replicas(client, [replica], prometheus)
    assert row.status == DOWN
    assert row.detail.endswith(": health unknown")


def test_replica_without_a_url_or_prometheus_is_unknown_not_failing() -> None:
    """No URL and nothing to ask: unknown, which does not fail the stack by itself; when
    Prometheus does not answer, the replica row says why."""
    [row] = health.probe_replicas(_client({}), [_in_network("api-1", "10.0.0.2:8000")], None)
    assert (row.status, row.required) == (UNKNOWN, False)
    assert "no Prometheus in the stack" in row.detail
    assert health.healthy([row])
    [row] = health.probe_replicas(_client({}), [_in_network("api-1", "10.0.0.2:8000")], URL)
    assert row.status == UNKNOWN
    assert row.detail == f"no answer at {URL}/api/v1/targets?state=active (connection refused)"


def test_report_lists_checks_and_replicas_apart() -> None:
    """`health --json`: service checks under checks, one entry per replica under replicas;
    a replica down makes the stack unhealthy."""
    replica = ReplicaCheck(
        "api", "api-2", DOWN, "exited", address="127.0.0.1:9002", url="http://127.0.0.1:9002",
        via="/healthz",
    )  # fmt: skip
    report = health.report([Check("api", "/healthz", UP, "serving"), replica])
    assert report["healthy"] is False
    assert report["reason"] == "api api-2: exited"
    assert [c["check"] for c in report["checks"]] == ["/healthz"]
    assert report["replicas"] == [
        {
            "name": "api-2",
            "status": DOWN,
            "address": "127.0.0.1:9002",
            "url": "http://127.0.0.1:9002",
            "model_version": None,
            "via": "/healthz",
            "detail": "exited",
        }
    ]


def test_report_of_a_healthy_stack_has_no_reason() -> None:
    """Healthy: reason is None; an absent service or an optional row never makes one up."""
    checks = [
        Check("api", "/healthz", UP, "serving"),
        Check("grafana", "-", ABSENT, "not installed", required=False),
        Check("api", "api-2", DOWN, "not required", required=False),
    ]
    report = health.report(checks)
    assert (report["healthy"], report["reason"]) == (True, None)


def test_unchecked_report_has_the_keys_of_a_checked_one() -> None:
    """Nothing to check (no stack): the same keys as a real report, unhealthy with the reason."""
    report = health.unchecked("Nothing is up; run `calops up`.")
    assert report.keys() == health.report([]).keys()
    assert report == {
        "healthy": False, "reason": "Nothing is up; run `calops up`.", "checks": [], "replicas": [],
    }  # fmt: skip


def test_replica_scraped_under_its_name_is_found() -> None:
    """The local runtime labels each api target with the replica's name (api-1), not its
    address: a replica read from Prometheus is found by either, with its model version."""
    targets = _targets(_target("api", "up", instance="api-1"))
    versions = _json(
        200,
        {"status": "success", "data": {"result": [
            {"metric": {"instance": "api-1", "version": "calories/3"}, "value": [0, "1"]},
        ]}},
    )  # fmt: skip
    client = _client({"/api/v1/targets": targets, "/api/v1/query": versions})
    [row] = health.probe_replicas(client, [_in_network("api-1", "127.0.0.1:40001")], URL)
    assert (row.status, row.model_version) == (UP, "calories/3")


@pytest.mark.integration
def test_replica_probe_against_the_real_api(live_api: str) -> None:
    """A real API process checked as a replica by its URL answers up with its version."""
    address = live_api.removeprefix("http://")
    with httpx.Client(timeout=5) as client:
        [row] = health.probe_replicas(client, [Replica("api-1", True, address, live_api)], None)
    assert row.status == UP
    assert row.model_version
    assert row.detail == f"serving model {row.model_version}"
