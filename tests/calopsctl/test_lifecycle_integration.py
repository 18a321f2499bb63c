"""The registry decides what serves: real `mlflow server`, real uvicorn, the real `calops` CLI.

`calops train` never changes what serves; the pointer (the registry alias with the stack, or
``artifacts/current`` without a tracking server) moves only through the gate, `calops promote`
or `calops rollback`, and the API follows it within its reload interval, without failing a
request while traffic flows.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml

from calopsctl.runtime import processes
from calopsctl.services import NAMES, SERVICES
from calopsctl.training import numeric_metrics
from support import free_port, stop, wait_http

pytestmark = pytest.mark.integration

needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus is not installed"
)

CALOPS = str(Path(sys.executable).parent / "calops")
NAME = "calories"
V1, V2 = f"{NAME}/1", f"{NAME}/2"
RELOAD_SECONDS = 1.0  # CALOPS_RELOAD_INTERVAL_SECONDS given to every API started here
FOLLOW_SLACK_SECONDS = 2.0  # on top of the interval: loading the model (from MLflow) and polling
SIM_RPS = 200
SIM_SECONDS = 120  # an upper bound: Ctrl-C ends the run once both switches are seen
SIM_MIN_SECONDS = 3  # the least traffic a promote-and-rollback run sends
ROW = {
    "Sex": "male", "Age": 25.0, "Height": 180.0, "Weight": 75.0,
    "Duration": 30.0, "Heart_Rate": 120.0, "Body_Temp": 40.0,
}  # fmt: skip
# Inherited settings that would point a command at another stack, store, API or port.
FOREIGN_PREFIXES = ("CALOPS_", "MLFLOW_")
FOREIGN = {"URL", "GRAFANA_ADMIN_PASSWORD", *(service.port_env for service in SERVICES)}


def clean_env(**extra: str) -> dict[str, str]:
    """This environment minus anything naming a stack, store or API (CALOPS_HOME included)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(FOREIGN_PREFIXES) and key not in FOREIGN
    }
    return {**env, **extra}


def tiny_config(folder: Path, name: str = "config.yaml", *, max_iter: int = 30) -> Path:
    """A training config that fits in about a second."""
    path = folder / name
    config = {
        "data": {"source": "synthetic", "synthetic_rows": 2000, "synthetic_seed": 5},
        "model": {"params": {"max_iter": max_iter, "learning_rate": 0.2}},
        "outputs": {"dir": "artifacts"},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def new_project(folder: Path) -> Path:
    """A project folder with config.yaml, weak.yaml and its own `.calops` (so a `.calops` in
    some parent of the temporary folder can never be the one found)."""
    folder = folder.resolve()
    (folder / ".calops").mkdir(parents=True)
    tiny_config(folder)
    tiny_config(folder, "weak.yaml", max_iter=2)
    return folder


# ---------------------------------------------------------------- running the CLI


@dataclass(frozen=True)
class Ran:
    """A finished `calops` command, with each output line and when it arrived."""

    code: int
    stdout: str
    stderr: str
    lines: list[tuple[float, str]]  # (time.monotonic(), line) from stdout and stderr
    started: float
    ended: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> dict[str, Any]:
        assert self.code == 0, self.output
        assert "Traceback" not in self.stderr, self.stderr
        data: dict[str, Any] = json.loads(self.stdout)
        return data

    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("Error:")]

    def arrived(self, prefix: str) -> float:
        """When the first line starting with ``prefix`` arrived."""
        found = [at for at, line in self.lines if line.startswith(prefix)]
        assert found, f"no line starting with {prefix!r} in:\n{self.output}"
        return found[0]


def calops(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """Start the installed `calops ARGS` in its own process group."""
    return subprocess.Popen(
        [CALOPS, *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        start_new_session=True,
    )


def finish(process: subprocess.Popen[str], *, timeout: float = 240.0) -> Ran:
    """Read ``process``'s output line by line as it comes, until it exits."""
    started = time.monotonic()
    lines: list[tuple[float, str]] = []
    out: list[str] = []
    err: list[str] = []

    def pump(stream: Any, sink: list[str]) -> None:
        for line in stream:
            lines.append((time.monotonic(), line.rstrip("\n")))
            sink.append(line)

    readers = [
        threading.Thread(target=pump, args=(process.stdout, out), daemon=True),
        threading.Thread(target=pump, args=(process.stderr, err), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        code = process.wait(timeout=timeout)
        ended = time.monotonic()
    finally:
        if process.poll() is None:  # timed out
            stop(process, grace=5)
        for reader in readers:
            reader.join(timeout=10)
        close_pipes(process)
    lines.sort(key=lambda item: item[0])
    return Ran(code, "".join(out), "".join(err), lines, started, ended)


def run(*args: str, cwd: Path, env: dict[str, str], timeout: float = 240.0) -> Ran:
    return finish(calops(*args, cwd=cwd, env=env), timeout=timeout)


def kill_group(process: subprocess.Popen[Any]) -> None:
    """Stop a process started here and everything it started (its own process group)."""
    if process.poll() is None:
        stop(process, grace=5)
    close_pipes(process)


def close_pipes(process: subprocess.Popen[Any]) -> None:
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


# ---------------------------------------------------------------- watching the API


@dataclass(frozen=True)
class Answer:
    """One /predict answer for ROW (status 0: no answer at all)."""

    at: float
    status: int
    version: str | None
    calories: float | None


def ask(client: httpx.Client, url: str) -> Answer:
    try:
        response = client.post(f"{url}/predict", json=ROW)
    except httpx.HTTPError:
        return Answer(time.monotonic(), 0, None, None)
    body = response.json() if response.status_code == 200 else {}
    return Answer(time.monotonic(), response.status_code, body.get("model_version"),
                  body.get("Calories"))  # fmt: skip


def answers_for(url: str, seconds: float) -> list[Answer]:
    """/predict for ROW, every 50 ms for ``seconds``."""
    found = []
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            found.append(ask(client, url))
            time.sleep(0.05)
    return found


@dataclass
class Poller:
    """Asks /predict for ROW every 50 ms in a thread, keeping every answer."""

    url: str
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        with httpx.Client(timeout=5.0) as client:
            while not self._stop.is_set():
                self.answers.append(ask(client, self.url))
                self._stop.wait(0.05)

    @contextmanager
    def running(self) -> Iterator[Poller]:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=10)

    def first(self, version: str, after: float, wait: float = 5.0) -> Answer:
        """The first answer with ``version`` after ``after`` (waiting up to ``wait`` s)."""
        deadline = time.monotonic() + wait
        while True:
            found = [a for a in list(self.answers) if a.at >= after and a.version == version]
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert found, f"the API never answered with {version} after the move"
        return found[0]


def rows_predicted(url: str) -> float:
    """The API's count of predicted rows (app_pred_calories_count on /metrics)."""
    text = httpx.get(f"{url}/metrics", timeout=5.0).text
    for line in text.splitlines():
        if line.startswith("app_pred_calories_count "):
            return float(line.split()[1])
    return 0.0


def failed_reloads(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5.0).text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("app_model_reloads_total") and 'result="failed"' in line
    )


def wait_for_traffic(url: str, rows: int, timeout: float = 30.0) -> None:
    """Until the API has predicted ``rows`` more rows than now (the simulator is sending)."""
    start = rows_predicted(url)
    deadline = time.monotonic() + timeout
    while rows_predicted(url) < start + rows:
        assert time.monotonic() < deadline, "the simulator sent nothing"
        time.sleep(0.1)


def holds(url: str, answer: Answer, seconds: float) -> list[Answer]:
    """Every /predict answer for ``seconds`` is ``answer``'s version and value."""
    seen = answers_for(url, seconds)
    assert len(seen) >= seconds * 5  # about 20 a second; never a handful
    expected = (200, answer.version, answer.calories)
    wrong = [a for a in seen if (a.status, a.version, a.calories) != expected]
    assert not wrong, f"expected only {answer.version} ({answer.calories}); got {wrong[:5]}"
    return seen


# ---------------------------------------------------------------- a promotion under load


@dataclass(frozen=True)
class Switches:
    """What a promote-then-rollback under simulated traffic measured."""

    promote_seconds: float  # from the pointer moving to the API answering with v2
    rollback_seconds: float
    simulated: dict[str, Any]
    answers: list[Answer]


def switch_under_load(
    cli: Callable[..., Ran],
    sim: Callable[..., subprocess.Popen[str]],
    api: str,
    v1: Answer,
    url_args: Sequence[str] = (),
) -> Switches:
    """Start `calops simulate` at SIM_RPS, then promote 2 and roll back while it runs."""
    simulator = sim(
        "simulate", *url_args, "--rps", str(SIM_RPS), "--duration", str(SIM_SECONDS),
        "--feedback-fraction", "0", "--json",
    )  # fmt: skip
    try:
        wait_for_traffic(api, rows=100)
        poller = Poller(api)
        with poller.running():
            promoted = cli("promote", "2", *url_args, "--json")
            moved = promoted.arrived("Moved ")
            assert promoted.json()["api"]["followed"] is True, promoted.output
            to_v2 = poller.first(V2, after=moved)
            rolled = cli("rollback", *url_args, "--json")
            back = rolled.arrived("Moved ")
            assert rolled.json()["api"]["followed"] is True, rolled.output
            to_v1 = poller.first(V1, after=back)
            assert simulator.poll() is None, "the simulator ended before both switches were done"
            time.sleep(0.5)  # a few answers after the rollback, to see it holds
        simulator.send_signal(signal.SIGINT)  # Ctrl-C: stop sending, then print the summary
        interrupted = finish(simulator, timeout=60)
        assert interrupted.code == 130, interrupted.output
        simulated = json.loads(interrupted.stdout)
    finally:
        kill_group(simulator)
    answers = poller.answers
    assert all(a.status == 200 for a in answers), [a for a in answers if a.status != 200][:5]
    values = {(a.version, a.calories) for a in answers}
    v2 = next(a for a in answers if a.version == V2)
    assert v2.calories != v1.calories
    assert values == {(V1, v1.calories), (V2, v2.calories)}, values
    # One model at a time, in order: v1 until the move, v2 once seen (no flapping), v1 again.
    assert all(a.version == V1 for a in answers if a.at < moved)
    assert all(a.version == V2 for a in answers if to_v2.at <= a.at < back)
    assert all(a.version == V1 for a in answers if a.at >= to_v1.at)
    return Switches(to_v2.at - moved, to_v1.at - back, simulated, answers)


def assert_no_failed_request(simulated: dict[str, Any]) -> None:
    """The simulator's summary: every request answered 2xx, at about SIM_RPS."""
    failures = ("status_4xx", "status_5xx", "status_other", "connection_errors", "timeouts")
    assert {key: simulated[key] for key in failures} == dict.fromkeys(failures, 0), simulated
    assert simulated["errors"] == 0
    assert simulated["interrupted"] is True
    assert simulated["sent"] >= SIM_RPS * SIM_MIN_SECONDS, simulated["sent"]
    assert simulated["ok"] + simulated["abandoned"] == simulated["sent"], simulated
    assert simulated["abandoned"] <= 0.01 * simulated["sent"], simulated  # in flight at Ctrl-C
    assert abs(simulated["achieved_rps"] - SIM_RPS) <= 0.05 * SIM_RPS, simulated["achieved_rps"]
    assert simulated["model_versions"] == [V1, V2]


def report(title: str, switches: Switches) -> None:
    simulated = switches.simulated
    print(  # shown with -s; the numbers the report quotes
        f"\n[{title}] API followed promote in {switches.promote_seconds:.2f} s, rollback in "
        f"{switches.rollback_seconds:.2f} s (reload interval {RELOAD_SECONDS:g} s); simulator "
        f"sent {simulated['sent']} at {simulated['achieved_rps']}/s, errors "
        f"{simulated['errors']}, p99 {simulated['latency_ms']['p99']} ms"
    )


# ---------------------------------------------------------------- the stack (1-3)


@dataclass
class Stack:
    """A local stack brought up by the real CLI in a project folder (CALOPS_HOME unset)."""

    folder: Path
    env: dict[str, str]
    ports: dict[str, int]
    up: Ran | None = None

    def cli(self, *args: str, cwd: Path | None = None) -> Ran:
        return run(*args, cwd=cwd or self.folder, env=self.env)

    def start(self, *args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
        return calops(*args, cwd=cwd or self.folder, env=self.env)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def pids(self) -> dict[str, int]:
        path = self.folder / ".calops" / "stack.json"
        return dict(json.loads(path.read_text()).get("pids", {})) if path.is_file() else {}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`calops up --runtime local` on free ports; it trains and registers v1 as champion."""
    folder = new_project(tmp_path_factory.mktemp("lifecycle-stack"))
    env = clean_env(CALOPS_RELOAD_INTERVAL_SECONDS=str(RELOAD_SECONDS))
    handle = Stack(folder, env, {name: free_port() for name in NAMES})
    ports = [arg for s in SERVICES for arg in (s.port_flag, str(handle.ports[s.name]))]
    pids: dict[str, int] = {}
    try:
        handle.up = handle.cli("up", "--runtime", "local", *ports, "--json")
        pids = handle.pids()
        assert handle.up.code == 0, handle.up.output
        yield handle
    finally:
        pids |= handle.pids()
        handle.cli("down")
        for pid in pids.values():
            processes.stop_group(pid, grace=2)


@pytest.fixture(scope="module")
def champion_answer(stack: Stack) -> Answer:
    """The API's answer for ROW right after `calops up`, before any other training."""
    with httpx.Client(timeout=5.0) as client:
        answer = ask(client, stack.url("api"))
    assert (answer.status, answer.version) == (200, V1)
    return answer


@pytest.fixture(scope="module")
def weak(stack: Stack, champion_answer: Answer) -> tuple[dict[str, Any], float]:
    """`calops train --config weak.yaml --json` (max_iter 2): registers v2; when it ended."""
    trained = stack.cli("train", "--config", "weak.yaml", "--json")
    return trained.json(), trained.ended


@needs_prometheus
def test_up_registers_v1_as_champion_and_the_api_serves_it(
    stack: Stack, champion_answer: Answer
) -> None:
    """A fresh stack trains, registers and serves version 1 from the registry alias."""
    assert stack.up is not None
    assert f"Registered {NAME} version 1" in stack.up.stderr
    info = httpx.get(f"{stack.url('api')}/info", timeout=5.0).json()
    assert info["model"]["source"] == f"models:/{NAME}@champion"
    assert info["model"]["version"] == V1
    # The local runtime hands its environment to the API: the interval used below is real.
    assert info["serving"]["reload_interval_seconds"] == RELOAD_SECONDS


@needs_prometheus
def test_training_a_worse_model_never_changes_what_serves(
    stack: Stack, champion_answer: Answer, weak: tuple[dict[str, Any], float]
) -> None:
    """v2 is registered but not promoted; for 2 reload intervals every answer is v1's."""
    summary, ended = weak
    assert summary["model_version"] == "2"
    assert summary["promoted"] is False
    assert summary["champion"] == "1"
    assert "worse" in summary["promotion_reason"]
    assert summary["tracking_uri"] == stack.url("mlflow")
    # Any move would have been made before the command ended: watch two full intervals.
    assert time.monotonic() - ended < RELOAD_SECONDS
    holds(stack.url("api"), champion_answer, 2 * RELOAD_SECONDS)


@needs_prometheus
def test_promote_and_rollback_switch_the_api_without_failing_a_request(
    stack: Stack, champion_answer: Answer, weak: tuple[dict[str, Any], float]
) -> None:
    """Under 200 req/s: promote 2 -> the API answers calories/2 within the reload interval;
    rollback -> calories/1 again; the simulator counts no failed request."""
    switches = switch_under_load(stack.cli, stack.start, stack.url("api"), champion_answer)
    report("stack", switches)
    limit = RELOAD_SECONDS + FOLLOW_SLACK_SECONDS
    assert switches.promote_seconds <= limit
    assert switches.rollback_seconds <= limit
    assert_no_failed_request(switches.simulated)
    assert switches.simulated["url"] == stack.url("api")
    assert failed_reloads(stack.url("api")) == 0


@needs_prometheus
def test_models_lists_both_versions_and_marks_the_serving_champion(
    stack: Stack, weak: tuple[dict[str, Any], float]
) -> None:
    """`calops models --json`: v1 and v2 with their RMSLE; v1 holds the alias and serves."""
    listed = stack.cli("models", "--json").json()
    rows = {row["version"]: row for row in listed["versions"]}
    assert {"1", "2"} <= set(rows)
    summary, _ = weak
    assert rows["2"]["rmsle"] == pytest.approx(summary["metrics"]["rmsle"])
    v1_metrics = json.loads(
        (stack.folder / "artifacts" / "runs" / rows["1"]["run_id"] / "metrics.json").read_text()
    )
    assert rows["1"]["rmsle"] == pytest.approx(v1_metrics["rmsle"])
    assert rows["1"]["rmsle"] < rows["2"]["rmsle"]
    assert (rows["1"]["champion"], rows["1"]["serving"], rows["1"]["aliases"]) == (
        True, True, ["champion"],
    )  # fmt: skip
    assert (rows["2"]["champion"], rows["2"]["serving"], rows["2"]["aliases"]) == (False, False, [])
    assert listed["champion"] == "1"
    assert listed["api"]["url"] == stack.url("api")
    assert listed["api"]["model_version"] == V1


@needs_prometheus
def test_a_subfolder_reaches_the_stack(stack: Stack, weak: tuple[dict[str, Any], float]) -> None:
    """From project/sub with CALOPS_HOME unset, health, train and simulate use the stack."""
    sub = stack.folder / "sub"
    sub.mkdir(exist_ok=True)
    assert "CALOPS_HOME" not in stack.env
    found = f"Stack: {stack.folder / '.calops'} (found from {sub})."

    health = stack.cli("health", cwd=sub)
    assert health.code == 0, health.output
    assert health.stderr.splitlines()[0] == found

    trained = stack.cli("train", "--config", "../weak.yaml", "--json", cwd=sub)
    summary = trained.json()
    assert trained.stderr.splitlines()[0] == found
    assert summary["tracking_uri"] == stack.url("mlflow")
    assert Path(summary["run_folder"]).parent == stack.folder / "artifacts" / "runs"
    assert summary["promoted"] is False  # weak again: the champion stays

    simulated = stack.cli("simulate", "--count", "20", "--rps", "20", "--json", cwd=sub)
    result = simulated.json()
    assert simulated.stderr.splitlines()[0] == found
    assert result["url"] == stack.url("api")
    assert (result["sent"], result["ok"], result["errors"]) == (20, 20, 0)
    assert result["model_versions"] == [V1]

    assert not (sub / ".calops").exists()
    assert not (sub / "artifacts").exists()


@needs_prometheus
def test_the_api_is_scraped_by_name_and_keeps_its_port(stack: Stack) -> None:
    """The real Prometheus labels the API target instance="api-1" (its port only in the scrape
    URL, so another port after `down`/`up` continues the same series); `up` asking for another
    API port while the stack runs is refused in one sentence, exit 1."""
    body = httpx.get(f"{stack.url('prometheus')}/api/v1/targets?state=active", timeout=10).json()
    api = [t for t in body["data"]["activeTargets"] if t["labels"]["job"] == "api"]
    assert [(t["labels"]["instance"], t["scrapeUrl"]) for t in api] == [
        ("api-1", f"{stack.url('api')}/metrics")
    ]
    moved = stack.cli("up", "--host-port", str(free_port()), "--no-wait")
    assert moved.code == 1
    assert moved.errors() == [
        f"Error: The stack already runs with the API on {stack.ports['api']}; run `calops down` "
        "first to change ports."
    ]


# ---------------------------------------------------------------- no tracking server (4)


@contextmanager
def serving(folder: Path, port: int, env: dict[str, str]) -> Iterator[str]:
    """`calops serve --port PORT --model artifacts` in ``folder`` until the block ends."""
    url = f"http://127.0.0.1:{port}"
    log = (folder / "serve.log").open("wb")
    process = subprocess.Popen(
        [CALOPS, "serve", "--port", str(port), "--model", "artifacts"],
        cwd=folder,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        try:
            wait_http(f"{url}/readyz", timeout=60)
        except TimeoutError:
            raise AssertionError((folder / "serve.log").read_text(errors="replace")) from None
        yield url
    finally:
        stop(process)
        log.close()


def test_folder_pointer_moves_only_by_promote_and_rollback(tmp_path: Path) -> None:
    """No stack: train logs to the local SQLite store and moves artifacts/current; a worse run
    leaves it; promote/rollback --url switch `calops serve` under 200 req/s, nothing fails."""
    folder = new_project(tmp_path / "project")
    env = clean_env()
    current = folder / "artifacts" / "current"

    first = run("train", "--json", cwd=folder, env=env).json()
    assert first["tracking_uri"] == f"sqlite:///{folder / '.calops' / 'mlflow.db'}"
    assert (first["model_version"], first["promoted"]) == ("1", True)
    v1_folder = Path(first["run_folder"])
    assert current.resolve() == v1_folder

    port = free_port()
    api = f"http://127.0.0.1:{port}"
    url_args = ("--url", api)
    with serving(folder, port, clean_env(CALOPS_RELOAD_INTERVAL_SECONDS=str(RELOAD_SECONDS))):
        info = httpx.get(f"{api}/info", timeout=5.0).json()
        assert info["serving"]["reload_interval_seconds"] == RELOAD_SECONDS
        with httpx.Client(timeout=5.0) as client:
            v1 = ask(client, api)
        assert (v1.status, v1.version) == (200, V1)

        weak = run("train", "--config", "weak.yaml", "--json", cwd=folder, env=env)
        summary = weak.json()
        assert (summary["model_version"], summary["promoted"]) == ("2", False)
        assert summary["serving_pointer"] == str(current)
        holds(api, v1, 2 * RELOAD_SECONDS)
        assert current.resolve() == v1_folder

        def cli(*args: str) -> Ran:
            return run(*args, cwd=folder, env=env)

        def sim(*args: str) -> subprocess.Popen[str]:
            return calops(*args, cwd=folder, env=env)

        switches = switch_under_load(cli, sim, api, v1, url_args)
        report("serve --model artifacts", switches)
        assert failed_reloads(api) == 0
    limit = RELOAD_SECONDS + FOLLOW_SLACK_SECONDS
    assert switches.promote_seconds <= limit
    assert switches.rollback_seconds <= limit
    assert_no_failed_request(switches.simulated)
    assert current.resolve() == v1_folder
    history = (folder / "artifacts" / "promotions.jsonl").read_text(encoding="utf-8")
    moves = [json.loads(line) for line in history.splitlines()]
    assert [(m["version"], m["how"]) for m in moves] == [
        ("1", "gate"), ("2", "promote"), ("1", "rollback"),
    ]  # fmt: skip


# ---------------------------------------------------------------- a hand-out script (5)


def sibling(name: str) -> ModuleType:
    """tests/calopsctl/<name>.py, loaded by path (that folder is not on sys.path)."""
    spec = importlib.util.spec_from_file_location(
        f"lifecycle_{name}", Path(__file__).with_name(f"{name}.py")
    )
    assert spec is not None
    assert spec.loader is not None
    if spec.name in sys.modules:
        return sys.modules[spec.name]
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_handout_script_is_logged_with_its_own_params_and_output(tmp_path: Path) -> None:
    """`calops train --script train.py -- --config config.yaml`: the run holds the script's
    params, metrics and data source; its printed lines are shown and kept in train.log."""
    from mlflow import MlflowClient

    folder = tmp_path / "handout"
    sibling("test_scripts").write_handout(folder)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ("train", "--script", "train.py", "--tracking", uri, "--json")
    trained = run(*args, "--", "--config", "config.yaml", cwd=folder, env=clean_env())
    summary = trained.json()
    shown = [line for _, line in trained.lines]
    assert "loaded 400 rows" in shown
    assert any(line.startswith("rmsle ") for line in shown)

    run_folder = Path(summary["run_folder"])
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    logged = client.get_run(summary["run_id"])
    params = logged.data.params
    assert params["model.type"] == "random_forest"
    assert params["model.params.n_estimators"] == "20"
    assert params["estimator.n_estimators"] == "20"
    assert "model.params.max_iter" not in params
    metrics = json.loads((run_folder / "metrics.json").read_text())
    assert logged.data.metrics == numeric_metrics(metrics)
    assert logged.data.tags["calops.data.source"] == "data.csv"

    log = (run_folder / "train.log").read_text(encoding="utf-8").splitlines()
    assert "loaded 400 rows" in log
    assert any(line.startswith("rmsle ") for line in log)
    assert [line for line in shown if line in log] == log  # every logged line was shown, in order
    assert "train.log" in {item.path for item in client.list_artifacts(summary["run_id"])}
    copy = client.download_artifacts(summary["run_id"], "train.log", str(tmp_path))
    assert Path(copy).read_text(encoding="utf-8").splitlines() == log


LIVE_SCRIPT = """
import time
print("first line")
time.sleep(2)
print("second line")
save_model()
save_metrics({"rmsle": 0.5})
"""


def test_script_output_is_shown_live(tmp_path: Path) -> None:
    """A line the script prints before sleeping 2 s reaches calops's output before the sleep
    ends, not when the script exits."""
    sibling("test_scripts").write_script(tmp_path, LIVE_SCRIPT)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trained = run("train", "--script", "train.py", "--tracking", uri, cwd=tmp_path, env=clean_env())
    assert trained.code == 0, trained.output
    first, second = trained.arrived("first line"), trained.arrived("second line")
    print(f"\n[live] first line {second - first:.2f} s before the second, "
          f"{trained.ended - first:.2f} s before calops ended")  # fmt: skip
    assert second - first >= 1.5
    assert trained.ended - first >= 1.5


# ---------------------------------------------------------------- failing fast (6)


class BrokenMlflow(BaseHTTPRequestHandler):
    """Answers GET /health with 200 OK and everything else with 500, like a proxy in front of
    an MLflow whose database is gone."""

    def _answer(self) -> None:
        ok = self.command == "GET" and self.path == "/health"
        body = b"OK" if ok else b"internal error"
        self.send_response(200 if ok else 500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def broken_mlflow() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BrokenMlflow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def nothing_trained(folder: Path) -> bool:
    runs = folder / "artifacts" / "runs"
    return not runs.exists() or not any(runs.iterdir())


def test_a_tracking_server_whose_api_fails_stops_train_before_training(tmp_path: Path) -> None:
    """/health answers but the API does not: exit 1 fast, one Error: line, nothing trained."""
    folder = new_project(tmp_path / "project")
    with broken_mlflow() as url:
        failed = run("train", "--tracking", url, cwd=folder, env=clean_env(), timeout=60)
    assert failed.code == 1, failed.output
    assert failed.ended - failed.started < 30
    errors = failed.errors()
    assert len(errors) == 1, failed.stderr
    assert url in errors[0]
    assert "its API failed" in errors[0]
    assert "Traceback" not in failed.output
    assert nothing_trained(folder)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--config", "broken.yaml"), "is not valid YAML"),
        (("--config", "unknown.yaml"), "unknown.yaml"),
        (("--data", "missing.csv"), "missing.csv does not exist"),
    ],
    ids=["yaml-syntax", "unknown-key", "missing-data"],
)
def test_bad_inputs_fail_before_any_store_exists(
    tmp_path: Path, args: tuple[str, ...], said: str
) -> None:
    """A config that does not parse or a missing --data file: exit 1, no mlflow.db, no run."""
    folder = new_project(tmp_path / "project")
    (folder / "broken.yaml").write_text("data: [unclosed\n", encoding="utf-8")
    (folder / "unknown.yaml").write_text("model:\n  max_iters: 30\n", encoding="utf-8")
    failed = run("train", *args, cwd=folder, env=clean_env(), timeout=60)
    assert failed.code == 1, failed.output
    assert failed.errors(), failed.stderr
    assert said in failed.stderr
    assert "Traceback" not in failed.output
    assert not (folder / ".calops" / "mlflow.db").exists()
    assert nothing_trained(folder)


def test_a_bad_model_param_fails_before_any_store_exists(tmp_path: Path) -> None:
    """config.yaml with model.params.max_iter: lots is an input error like any other."""
    folder = new_project(tmp_path / "project")
    bad = tiny_config(folder, "bad.yaml")
    bad.write_text(bad.read_text().replace("max_iter: 30", "max_iter: lots"), encoding="utf-8")
    failed = run("train", "--config", "bad.yaml", cwd=folder, env=clean_env(), timeout=120)
    assert failed.code == 1, failed.output
    assert "Traceback" not in failed.output
    assert len(failed.errors()) == 1
    assert not (folder / ".calops" / "mlflow.db").exists()
