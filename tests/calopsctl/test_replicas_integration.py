"""`calops up --replicas 3` on the local runtime, with real processes: three API processes on one
port (SO_REUSEPORT) sharing one prediction log, a real Prometheus scraping each of them.

Traffic goes through the one API address over fresh connections, so the kernel spreads it over
the replicas and most feedback reaches a replica other than the one that predicted.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api_support import row
from calapi.serving.server import port_free
from calopsctl.runtime import processes
from calopsctl.services import NAMES
from stacktools import Stack, finite_values, instant_query, port_options, stack_env
from support import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed"),
]

REPLICAS = 3
SENT = 600
DUPLICATES = 30
THREADS = 8


@dataclass
class Traffic:
    """What the test sent through the API address and what came back."""

    predicted: dict[str, float]  # id -> predicted Calories
    truths: dict[str, float]  # id -> the true Calories sent as feedback
    feedback: list[int]  # status of each first feedback
    duplicates: list[int]  # status of feedback sent a second time

    def rmsle(self) -> float:
        terms = [
            (math.log1p(self.predicted[key]) - math.log1p(truth)) ** 2
            for key, truth in self.truths.items()
        ]
        return math.sqrt(sum(terms) / len(terms))


def _own_ports(stack: Stack) -> dict[str, int]:
    ports: dict[str, int] = stack.state()["extra"]["replica_ports"]
    return ports


def _fresh(url: str) -> httpx.Client:
    """A client that opens a new connection per request, so the kernel may pick any replica."""
    return httpx.Client(
        base_url=url, timeout=10.0, limits=httpx.Limits(max_keepalive_connections=0)
    )


def _truth(index: int, predicted: float) -> float:
    """A true value off the prediction by a varying amount."""
    return predicted * (0.8 + (index % 9) / 20)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, trained_model_dir: Path) -> Iterator[Stack]:
    """A real local stack of three API replicas serving a trained folder (nothing to train)."""
    folder = tmp_path_factory.mktemp("replicas")
    shutil.copytree(trained_model_dir, folder / "artifacts")
    ports = {name: free_port() for name in NAMES}
    handle = Stack(folder, stack_env(), ports, up=subprocess.CompletedProcess([], 0, "", ""))
    try:
        handle.up = handle.calops(
            "up", "--runtime", "local", "--replicas", str(REPLICAS),
            "--model", str(folder / "artifacts"), *port_options(ports), "--json",
        )  # fmt: skip
        yield handle
    finally:
        handle.calops("down", "--volumes")
        processes.stop_groups(handle.pids().values(), grace=2)


@pytest.fixture(scope="module")
def traffic(stack: Stack) -> Traffic:
    """SENT predictions through the API address, each followed at once by its feedback (over
    a new connection, so usually to another replica), then some feedback sent twice."""
    assert stack.up.returncode == 0, stack.up.stdout + stack.up.stderr
    url = f"http://127.0.0.1:{stack.ports['api']}"

    def one(index: int) -> tuple[str, float, float, int]:
        key = f"replica-test-{index}"
        with _fresh(url) as client:
            answer = client.post("/predict", json=row(id=key, Duration=1 + index % 30))
            assert answer.status_code == 200, answer.text
            predicted = float(answer.json()["Calories"])
            truth = _truth(index, predicted)
            status = client.post("/feedback", json={"id": key, "Calories": truth}).status_code
        return key, predicted, truth, status

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(one, range(SENT)))
    with _fresh(url) as client:
        duplicates = [
            client.post("/feedback", json={"id": key, "Calories": truth}).status_code
            for key, _, truth, _ in results[:DUPLICATES]
        ]
    return Traffic(
        predicted={key: predicted for key, predicted, _, _ in results},
        truths={key: truth for key, _, truth, _ in results},
        feedback=[status for *_, status in results],
        duplicates=duplicates,
    )


def _requests(port: int, route: str, status: str) -> float:
    """app_requests_total of one replica for ``route`` and ``status``, from its own /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "app_requests_total"
        and sample.labels.get("route") == route
        and sample.labels.get("status") == status
    )


def _api_targets(prometheus: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{prometheus}/api/v1/targets?state=active", timeout=10).json()
    return [t for t in body["data"]["activeTargets"] if t["labels"]["job"] == "api"]


def _settled(prometheus: str, expr: str, expected: float, timeout: float = 30.0) -> float:
    """The value of ``expr`` once Prometheus has scraped every replica after the traffic."""
    deadline = time.monotonic() + timeout
    values: list[float] = []
    while time.monotonic() < deadline:
        values = finite_values(instant_query(prometheus, expr))
        if values and values[0] >= expected:
            return values[0]
        time.sleep(0.5)
    raise AssertionError(f"{expr} never reached {expected} (last: {values})")


def test_up_starts_three_replicas_on_one_address(stack: Stack) -> None:
    """up --replicas 3 starts api-1..api-3, each its own process group with its own log and
    port, all healthy behind the one API address."""
    assert stack.up.returncode == 0, stack.up.stdout + stack.up.stderr
    report = json.loads(stack.up.stdout)
    own = _own_ports(stack)
    assert [(r["name"], r["status"]) for r in report["replicas"]] == [
        ("api-1", "up"),
        ("api-2", "up"),
        ("api-3", "up"),
    ]
    assert [r["url"] for r in report["replicas"]] == [
        f"http://127.0.0.1:{port}" for port in own.values()
    ]
    pids = stack.pids()
    assert len({pids[name] for name in own}) == REPLICAS
    assert all(processes.leader_alive(pids[name]) for name in own)
    logs = stack.folder / ".calops" / "logs"
    assert all((logs / f"{name}.log").is_file() for name in own)
    assert stack.ports["api"] not in own.values()


def test_feedback_joins_on_any_replica(traffic: Traffic) -> None:
    """Every feedback is matched (whichever replica predicted), a second one for the same id
    is refused with 409."""
    assert len(traffic.predicted) == SENT
    assert traffic.feedback == [200] * SENT
    assert traffic.duplicates == [409] * DUPLICATES


def test_every_replica_served_some_of_the_traffic(stack: Stack, traffic: Traffic) -> None:
    """Each replica's own /metrics counts part of the predictions; together exactly all."""
    own = _own_ports(stack)
    served = {name: _requests(port, "/predict", "200") for name, port in own.items()}
    assert all(count > 0 for count in served.values()), served
    assert sum(served.values()) == SENT
    refused = sum(_requests(port, "/feedback", "409") for port in own.values())
    assert refused == DUPLICATES


def test_prometheus_sums_the_replicas_exactly(stack: Stack, traffic: Traffic) -> None:
    """Prometheus scrapes three api targets; summed over them the request count is exactly
    what was sent and the RMSLE of the feedback is the one the client computes."""
    prometheus = f"http://127.0.0.1:{stack.ports['prometheus']}"
    own = _own_ports(stack)
    targets = _api_targets(prometheus)
    assert sorted((t["labels"]["instance"], t["scrapeUrl"]) for t in targets) == sorted(
        (name, f"http://127.0.0.1:{port}/metrics") for name, port in own.items()
    )
    requests = 'sum(app_requests_total{route="/predict",status="200"})'
    assert _settled(prometheus, requests, SENT) == SENT
    count = "sum(app_feedback_squared_log_error_count)"
    assert _settled(prometheus, count, SENT) == SENT
    rmsle = (
        "sqrt(sum(app_feedback_squared_log_error_sum) / sum(app_feedback_squared_log_error_count))"
    )
    [value] = finite_values(instant_query(prometheus, rmsle))
    assert value == pytest.approx(traffic.rmsle(), rel=1e-6)
    assert all(t["health"] == "up" for t in _api_targets(prometheus))


def test_health_lists_three_replicas_up(stack: Stack, traffic: Traffic) -> None:
    """health --json: three replicas up, each with the model version it reports itself, and
    Prometheus's api targets all up."""
    result = stack.calops("health", "--json", "--wait", "30")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    replicas = report["replicas"]
    assert [(r["name"], r["status"], r["via"]) for r in replicas] == [
        (f"api-{i}", "up", "/healthz") for i in (1, 2, 3)
    ]
    assert len({r["model_version"] for r in replicas}) == 1
    assert replicas[0]["model_version"]
    target = next(c for c in report["checks"] if c["check"] == "target api")
    assert target["detail"].startswith("all 3 UP")


def test_logs_show_every_replica(stack: Stack) -> None:
    """logs api prints each replica's lines after its name."""
    result = stack.calops("logs", "api", "--tail", "3")
    assert result.returncode == 0, result.stderr
    prefixes = {line.split(" ", 1)[0] for line in result.stdout.splitlines()}
    assert prefixes == {"api-1", "api-2", "api-3"}


def test_killed_replica_is_down_and_the_address_still_serves(stack: Stack) -> None:
    """A replica killed with SIGKILL shows down (exited) and health exits 1; the API address
    keeps answering from the other two."""
    os.kill(stack.pids()["api-2"], signal.SIGKILL)
    for _ in range(50):
        if not processes.leader_alive(stack.pids()["api-2"]):
            break
        time.sleep(0.1)
    result = stack.calops("health", "--json")
    assert result.returncode == 1, result.stdout
    replicas = {r["name"]: r for r in json.loads(result.stdout)["replicas"]}
    assert [replicas[name]["status"] for name in ("api-1", "api-2", "api-3")] == [
        "up",
        "down",
        "up",
    ]
    assert replicas["api-2"]["detail"].startswith("exited: api-2 is no longer running")
    assert replicas["api-2"]["detail"].endswith("api-2.log")
    with _fresh(f"http://127.0.0.1:{stack.ports['api']}") as client:
        statuses = [client.post("/predict", json=row(id=None)).status_code for _ in range(30)]
    assert statuses == [200] * 30


def test_down_leaves_no_process(stack: Stack) -> None:
    """down stops every replica and service, frees the API port and every replica's own port,
    and clears the record."""
    pids = stack.pids()
    own = _own_ports(stack)
    result = stack.calops("down", "--volumes")
    assert result.returncode == 0, result.stderr
    assert not any(processes.group_alive(pid) for pid in pids.values())
    assert all(port_free(port) for port in [*stack.ports.values(), *own.values()])
    assert stack.state() == {}
    assert not list((stack.folder / ".calops").glob("predictions.db*"))
