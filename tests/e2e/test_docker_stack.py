"""`calops up --runtime docker --replicas 3` works as written, driven through the CLI like a user
would: images build, services become healthy, the gateway spreads fresh connections over every
API replica, which share one prediction log (feedback joins wherever it lands, exactly once),
Prometheus scrapes each replica inside the compose network and its sums are exact, the API and
the host both reach MLflow, training logs artifacts through the server, and
`calops down --volumes` leaves nothing behind.

Where no registry can be reached, run `bash stack/offline/prepare.sh` first and set
CALOPS_COMPOSE_FILES=stack/compose.offline.yaml (the `e2e` nox session does both).
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import small_config
from stacktools import instant_query, unanswered_panels, wait_for_query
from support import free_port

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1200)]

PROJECT = "calops"
PREDICTIONS = 150
REPLICAS = 3
REPLICA_PREDICTIONS = 600  # each with its feedback and a duplicate, over fresh connections
REPLICA_HEADER = "X-Calops-Replica"  # set by the gateway: the replica's address
CALOPS = str(Path(sys.executable).with_name("calops"))


@dataclass(frozen=True)
class Stack:
    """A running stack: where the user works and the URLs `calops up` recorded."""

    workdir: Path
    env: dict[str, str]
    urls: dict[str, str]

    def calops(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run `calops ARGS` as a user would, in the workspace."""
        return run_calops(self.workdir, self.env, *args, timeout=timeout)


def run_calops(
    workdir: Path, env: dict[str, str], *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """`calops ARGS` in ``workdir`` with ``env``; the output is kept for failure messages."""
    return subprocess.run(
        [CALOPS, *args], cwd=workdir, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def succeeded(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """Assert a CLI call exited 0, showing everything it printed when it did not."""
    shown = " ".join(result.args[1:])
    assert result.returncode == 0, (
        f"`calops {shown}` exited {result.returncode}\n"
        f"--- stdout (end) ---\n{result.stdout[-1500:]}\n--- stderr ---\n{result.stderr}"
    )
    return result


def docker_lines(*args: str) -> list[str]:
    """Non-empty output lines of a docker CLI command."""
    out = subprocess.run(["docker", *args], capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if line.strip()]


def leftovers() -> dict[str, list[str]]:
    """Containers, networks and volumes still labelled with the compose project."""
    label = f"label=com.docker.compose.project={PROJECT}"
    return {
        "containers": docker_lines("ps", "-aq", "--filter", label),
        "networks": docker_lines("network", "ls", "-q", "--filter", label),
        "volumes": docker_lines("volume", "ls", "-q", "--filter", label),
    }


@pytest.fixture(scope="module")
def engine() -> None:
    """Skip, with the reason, when no Docker engine answers."""
    from calopsctl.runtime.docker import engine_answers

    if not engine_answers():
        pytest.skip("no Docker engine answers (start one: bash stack/offline/prepare.sh)")
    if leftovers()["containers"]:
        pytest.skip(f"a Compose project named {PROJECT!r} already runs on this engine")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """An empty working folder with a small training config and its own CALOPS_HOME."""
    workdir = tmp_path_factory.mktemp("user")
    config = small_config(workdir / "artifacts").model_dump(mode="json")
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env.update(CALOPS_HOME=str(workdir / ".calops"), NO_COLOR="1", COLUMNS="200")
    return workdir, env


@pytest.fixture(scope="module")
def stack(engine: None, workspace: tuple[Path, dict[str, str]]) -> Iterator[Stack]:
    """`calops up --runtime docker --replicas 3` on free ports; `calops down --volumes` at the
    end."""
    workdir, env = workspace
    ports = {name: free_port() for name in ("api", "prometheus", "grafana", "mlflow")}
    args = [
        "up", "--runtime", "docker", "--host-port", str(ports["api"]),
        "--prometheus-port", str(ports["prometheus"]), "--grafana-port", str(ports["grafana"]),
        "--mlflow-port", str(ports["mlflow"]), "--timeout", "300", "--replicas", str(REPLICAS),
    ]  # fmt: skip
    try:
        succeeded(run_calops(workdir, env, *args, timeout=900))
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        yield Stack(workdir, env, urls)
    finally:
        run_calops(workdir, env, "down", "--volumes", timeout=300)


def test_health_is_green(stack: Stack) -> None:
    """`calops health` exits 0 once the stack is up, and the API answers on the chosen port."""
    succeeded(stack.calops("health", "--wait", "60"))
    assert httpx.get(f"{stack.urls['api']}/readyz", timeout=5).status_code == 200


# ---------------------------------------------------------------- replicas


@dataclass(frozen=True)
class Exchange:
    """One row's prediction, its feedback and a duplicate of it, through the gateway."""

    predict_status: int
    predicted: float
    actual: float
    feedback_status: int
    feedback: dict[str, Any]
    duplicate_status: int
    replicas: tuple[str, str, str]  # which replica answered each of the three

    @property
    def squared_log_error(self) -> float:
        return (math.log1p(self.predicted) - math.log1p(self.actual)) ** 2


def exchange(client: httpx.Client, row: dict[str, Any]) -> Exchange:
    """POST /predict, then /feedback twice for the same id: each on a connection of its own."""
    features = {key: value for key, value in row.items() if key != "Calories"}
    predicted = client.post("/predict", json=features)
    truth = {"id": row["id"], "Calories": row["Calories"]}
    feedback = client.post("/feedback", json=truth)
    duplicate = client.post("/feedback", json=truth)
    return Exchange(
        predict_status=predicted.status_code,
        predicted=float(predicted.json().get("Calories", math.nan)),
        actual=float(row["Calories"]),
        feedback_status=feedback.status_code,
        feedback=feedback.json(),
        duplicate_status=duplicate.status_code,
        replicas=(replica_of(predicted), replica_of(feedback), replica_of(duplicate)),
    )


def replica_of(response: httpx.Response) -> str:
    """The replica that answered, as the gateway names it (its address)."""
    return str(response.headers.get(REPLICA_HEADER, ""))


def replica_rows(count: int) -> list[dict[str, Any]]:
    """Synthetic rows with their true calories and ids unique to this run."""
    from calapi.model.synthetic import generate

    frame = generate(count, seed=23)
    run = uuid.uuid4().hex[:8]
    frame["id"] = [f"replica-{run}-{i}" for i in range(count)]
    return list(frame.to_dict("records"))


def send_through_gateway(url: str, rows: list[dict[str, Any]]) -> list[Exchange]:
    """Every row's exchange, 8 at a time; no connection is reused, so the gateway balances
    each request by itself."""
    fresh = httpx.Limits(max_keepalive_connections=0)
    with (
        httpx.Client(base_url=url, timeout=30, limits=fresh) as client,
        ThreadPoolExecutor(8) as pool,
    ):
        return list(pool.map(lambda row: exchange(client, row), rows))


def total(prometheus: str, expr: str) -> float:
    """The sum of an instant query's values (0 when it has none)."""
    return sum(float(sample["value"][1]) for sample in instant_query(prometheus, expr))


def by_instance(prometheus: str, expr: str) -> dict[str, float]:
    """An instant query's values by their `instance` label."""
    return {s["metric"]["instance"]: float(s["value"][1]) for s in instant_query(prometheus, expr)}


def api_targets(prometheus: str) -> list[dict[str, Any]]:
    targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]
    return [t for t in targets["activeTargets"] if t["labels"]["job"] == "api"]


def wait_for_api_targets(prometheus: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    """The `api` targets once ``count`` of them are up; fail with what Prometheus has."""
    deadline = time.monotonic() + timeout
    while True:
        targets = api_targets(prometheus)
        if sum(t["health"] == "up" for t in targets) == count or time.monotonic() > deadline:
            return targets
        time.sleep(1)


def wait_for_total(prometheus: str, expr: str, expected: float, timeout: float = 60) -> float:
    """Poll until the query's total reaches ``expected``; the total then."""
    deadline = time.monotonic() + timeout
    value = total(prometheus, expr)
    while value < expected and time.monotonic() < deadline:
        time.sleep(1)
        value = total(prometheus, expr)
    return value


PREDICTED = 'sum(app_requests_total{route="/predict", status="200"})'
ERROR_SUM = "sum(app_feedback_squared_log_error_sum)"
ERROR_COUNT = "sum(app_feedback_squared_log_error_count)"
PER_REPLICA = 'sum by (instance) (app_requests_total{route="/predict", status="200"})'


def test_every_replica_is_a_healthy_prometheus_target(stack: Stack) -> None:
    """Prometheus finds the three replicas through Docker's DNS, at the addresses the docker
    runtime reports for the api containers api-1..api-3."""
    from calopsctl.runtime.docker import DockerRuntime
    from calopsctl.state import load_state

    targets = wait_for_api_targets(stack.urls["prometheus"], REPLICAS)
    assert [t["health"] for t in targets] == ["up"] * REPLICAS, targets
    home = Path(stack.env["CALOPS_HOME"])
    state = load_state(home)
    assert state is not None
    overrides = [Path(f) for f in stack.env.get("CALOPS_COMPOSE_FILES", "").split(os.pathsep) if f]
    replicas = DockerRuntime(home, overrides=overrides).replicas(state)
    assert [(r.name, r.running) for r in replicas] == [(f"api-{n}", True) for n in (1, 2, 3)]
    assert {r.address for r in replicas} == {t["labels"]["instance"] for t in targets}
    assert all(t["scrapeUrl"] == f"http://{t['labels']['instance']}/metrics" for t in targets)


def test_replicas_share_the_traffic_and_the_prediction_log(stack: Stack) -> None:
    """Fresh connections through the API's one address reach every replica; feedback joins its
    prediction on whichever replica it lands, once (a duplicate is 409 everywhere); Prometheus's
    sums over the replicas count every prediction and give the client's RMSLE exactly."""
    prometheus = stack.urls["prometheus"]
    targets = wait_for_api_targets(prometheus, REPLICAS)
    before = {expr: total(prometheus, expr) for expr in (PREDICTED, ERROR_SUM, ERROR_COUNT)}
    per_replica_before = by_instance(prometheus, PER_REPLICA)
    started = time.monotonic()
    done = send_through_gateway(stack.urls["api"], replica_rows(REPLICA_PREDICTIONS))
    took = time.monotonic() - started

    assert Counter(e.predict_status for e in done) == {200: REPLICA_PREDICTIONS}
    assert Counter(e.feedback_status for e in done) == {200: REPLICA_PREDICTIONS}, [
        e.feedback for e in done if e.feedback_status != 200
    ][:3]
    assert Counter(e.duplicate_status for e in done) == {409: REPLICA_PREDICTIONS}
    for e in done:
        assert e.feedback["predicted"] == e.predicted
        assert e.feedback["squared_log_error"] == pytest.approx(e.squared_log_error, rel=1e-12)
    instances = {t["labels"]["instance"] for t in targets}
    answered_by = Counter(replica for e in done for replica in e.replicas)
    assert set(answered_by) == instances, answered_by
    crossed = sum(e.replicas[0] != e.replicas[1] for e in done)
    assert crossed > 0, "every feedback reached the replica that made the prediction"

    expected = before[PREDICTED] + REPLICA_PREDICTIONS
    assert wait_for_total(prometheus, PREDICTED, expected) == expected, "predictions lost/extra"
    count = wait_for_total(prometheus, ERROR_COUNT, before[ERROR_COUNT] + REPLICA_PREDICTIONS)
    assert count == before[ERROR_COUNT] + REPLICA_PREDICTIONS
    served = by_instance(prometheus, PER_REPLICA)
    gained = {i: served.get(i, 0) - per_replica_before.get(i, 0) for i in instances}
    assert all(n > 0 for n in gained.values()), gained
    assert sum(gained.values()) == REPLICA_PREDICTIONS
    server = math.sqrt((total(prometheus, ERROR_SUM) - before[ERROR_SUM]) / REPLICA_PREDICTIONS)
    client = math.sqrt(sum(e.squared_log_error for e in done) / REPLICA_PREDICTIONS)
    assert server == pytest.approx(client, rel=1e-6)
    print(
        f"\n{REPLICA_PREDICTIONS} exchanges in {took:.1f} s; per replica {gained}; "
        f"{crossed} feedbacks on another replica; RMSLE {client:.6f}"
    )


def test_traffic_export_reads_the_replicas_shared_log(stack: Stack) -> None:
    """`calops traffic export` reads the labelled traffic out of the compose Redis (through an
    API container): every exchange of the replica test once, in the trainer's CSV layout."""
    out = stack.workdir / "traffic.csv"
    said = succeeded(stack.calops("traffic", "export", "--since", "1h", "--out", str(out)))
    assert "labelled rows" in said.stdout + said.stderr
    with out.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "id", "Sex", "Age", "Height", "Weight", "Duration", "Heart_Rate", "Body_Temp", "Calories",
    ]  # fmt: skip
    replica = [r for r in rows if r["id"].startswith("replica-")]
    assert len(replica) == len({r["id"] for r in replica}) == REPLICA_PREDICTIONS
    assert all(r["Sex"] in {"male", "female"} and float(r["Calories"]) > 0 for r in replica)


def test_prometheus_scrapes_the_api_and_counts_the_traffic(stack: Stack) -> None:
    """After `calops simulate --count N`, the compose Prometheus has every `api` replica UP and
    N more predictions summed over them."""
    prometheus = stack.urls["prometheus"]
    predicted = 'sum(app_requests_total{route="/predict", status=~"2.."})'
    before = total(prometheus, predicted)
    simulate = ["simulate", "--count", str(PREDICTIONS), "--rps", "15", "--feedback-delay", "1"]
    # Two rows per request: enough rows for the API's drift window to report a value.
    succeeded(stack.calops(*simulate, "--batch-size", "2", "--feedback-fraction", "1"))
    wait_for_query(prometheus, predicted, at_least=before + PREDICTIONS, attempts=90, pause=1)
    api = api_targets(prometheus)
    assert [t["health"] for t in api] == ["up"] * REPLICAS


def test_every_dashboard_panel_has_data(stack: Stack) -> None:
    """Every panel of the provisioned dashboard answers from the compose Prometheus."""
    prometheus = stack.urls["prometheus"]
    wait_for_query(prometheus, "sum(app_feedback_lag_seconds_count)", at_least=1, pause=1)
    wait_for_query(prometheus, "app_drift_window_rows", at_least=200, pause=1)
    assert unanswered_panels(prometheus) == []


def test_api_container_reaches_mlflow(stack: Stack) -> None:
    """Inside the compose network the api container calls MLflow's REST API as `mlflow:5000`."""
    container = docker_lines(
        "ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}",
        "--filter", "label=com.docker.compose.service=api",
    )  # fmt: skip
    probe = (
        "import json, urllib.request; "
        "url = 'http://mlflow:5000/api/2.0/mlflow/experiments/search?max_results=5'; "
        "print(json.load(urllib.request.urlopen(url, timeout=10)))"
    )
    result = subprocess.run(
        ["docker", "exec", container[0], "python", "-c", probe],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "experiments" in result.stdout


def test_train_logs_through_the_compose_mlflow(stack: Stack, tmp_path: Path) -> None:
    """`calops train` logs to the stack's MLflow by default: artifacts served, model registered."""
    from mlflow.tracking import MlflowClient

    succeeded(stack.calops("train", "--json"))
    client = MlflowClient(tracking_uri=stack.urls["mlflow"])
    versions = client.search_model_versions("name = 'calories'")
    assert versions, "no registered version of model 'calories'"
    run_id = versions[0].run_id
    assert run_id, "the registered version names no run"
    run = client.get_run(run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    logged = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "model.skops", "model.joblib"} <= logged
    metrics = client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path))
    assert json.loads(Path(metrics).read_text())["rmsle"] == pytest.approx(
        run.data.metrics["rmsle"]
    )


def test_api_container_follows_promote_and_rollback(stack: Stack) -> None:
    """The api containers serve the registry alias: `promote 1` and `rollback` move what every
    replica answers with, without a rebuild or a restart."""
    trained = json.loads(succeeded(stack.calops("train", "--json")).stdout)
    newest = trained["model_version"]
    promoted = json.loads(succeeded(stack.calops("promote", "1", "--json")).stdout)
    assert promoted["api"]["followed"], promoted
    assert every_replica_answers(stack.urls["api"], "calories/1")
    rolled = json.loads(succeeded(stack.calops("rollback", "--json")).stdout)
    assert rolled["to"] != "1", rolled
    assert rolled["api"]["followed"], rolled
    assert every_replica_answers(stack.urls["api"], f"calories/{rolled['to']}")
    assert int(newest) >= int(rolled["to"])


ROW = {"Sex": "male", "Age": 30, "Height": 180, "Weight": 80, "Duration": 20, "Heart_Rate": 110,
       "Body_Temp": 39.5}  # fmt: skip


def every_replica_answers(url: str, version: str, within: float = 15) -> bool:
    """True once predictions from every replica answer with ``version`` (each replica follows
    the alias on its own reload timer: 2 s by default)."""
    fresh = httpx.Limits(max_keepalive_connections=0)
    started = time.monotonic()
    deadline = started + within
    with httpx.Client(base_url=url, timeout=10, limits=fresh) as client:
        while True:
            answers = [client.post("/predict", json=ROW) for _ in range(2 * REPLICAS)]
            seen = {a.headers.get(REPLICA_HEADER): a.json()["model_version"] for a in answers}
            if len(seen) == REPLICAS and set(seen.values()) == {version}:
                print(f"\nevery replica answers {version} {time.monotonic() - started:.1f} s on")
                return True
            if time.monotonic() > deadline:
                print(f"after {within} s the replicas answer with {seen}, not {version}")
                return False
            time.sleep(0.25)


def test_info_shows_the_stack(stack: Stack) -> None:
    """`calops info --json` reports the docker runtime and the URLs of the running services."""
    info = json.loads(succeeded(stack.calops("info", "--json")).stdout)
    text = json.dumps(info)
    assert "docker" in text
    for name in ("api", "prometheus", "mlflow"):
        assert stack.urls[name] in text, name


def test_down_with_volumes_leaves_nothing(stack: Stack) -> None:
    """`calops down --volumes` removes every container, network and volume of the project."""
    succeeded(stack.calops("down", "--volumes", timeout=300))
    assert leftovers() == {"containers": [], "networks": [], "volumes": []}


BROKEN_HEALTHCHECK = """
services:
  api:
    healthcheck:
      test: ["CMD", "python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9/')"]
      interval: 2s
      timeout: 2s
      retries: 2
      start_period: 5s
"""


def test_a_failing_healthcheck_names_the_service_and_its_log(
    engine: None, workspace: tuple[Path, dict[str, str]]
) -> None:
    """With a broken api healthcheck, `calops up` fails naming `api` and showing its log tail."""
    workdir, env = workspace
    broken = workdir / "broken-healthcheck.yaml"
    broken.write_text(BROKEN_HEALTHCHECK)
    extra = [f for f in env.get("CALOPS_COMPOSE_FILES", "").split(os.pathsep) if f]
    env = {**env, "CALOPS_COMPOSE_FILES": os.pathsep.join([*extra, str(broken)])}
    ports = [str(free_port()) for _ in range(4)]
    args = [
        "up", "--runtime", "docker", "--host-port", ports[0], "--prometheus-port", ports[1],
        "--grafana-port", ports[2], "--mlflow-port", ports[3], "--timeout", "240",
    ]  # fmt: skip
    try:
        result = run_calops(workdir, env, *args, timeout=600)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "api" in result.stderr
        assert "Started server process" in result.stderr, result.stderr
    finally:
        succeeded(run_calops(workdir, env, "down", "--volumes", timeout=300))
    assert leftovers() == {"containers": [], "networks": [], "volumes": []}
