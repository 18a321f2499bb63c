"""`calops train` for real: the CLI in a subprocess against file, SQLite and server stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from calapi.model.config import TrainConfig, flatten
from calopsctl.services import DEFAULT_PORTS
from calopsctl.state import StackState
from calopsctl.training import numeric_metrics
from conftest import small_config
from support import free_port
from support import mlflow_server as start_mlflow_server

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
LOGGED_FILES = {
    "model.skops",
    "model.joblib",
    "config.yaml",
    "metrics.json",
    "model_card.json",
    "train.log",
}
NAME, ALIAS = "calories", "champion"


@dataclass(frozen=True)
class Server:
    url: str
    artifacts: Path


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real `mlflow server --serve-artifacts` on a free loopback port for this module."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with start_mlflow_server(root) as url:
        yield Server(url, root / "artifacts")


def project(folder: Path, *, max_iter: int = 60) -> TrainConfig:
    """A tiny config written as ``folder``/config.yaml; returned as the trainer will read it."""
    config = small_config(Path("artifacts"), rows=2000, max_iter=max_iter)
    folder.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config.model_dump(mode="json"))
    (folder / "config.yaml").write_text(text, encoding="utf-8")
    return config


def calops_train(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed `calops train --json ARGS` in ``folder`` with its own CALOPS_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["CALOPS_HOME"] = str(folder / ".calops")
    return subprocess.run(
        [str(BIN / "calops"), "train", "--json", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def succeeded(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def assert_logged(uri: str, summary: dict[str, Any], config: TrainConfig, folder: Path) -> Any:
    """Params, metrics, artifacts and the registered version read back with MlflowClient."""
    mlflow = client(uri)
    run = mlflow.get_run(summary["run_id"])
    expected = flatten(config.model_dump(mode="json"))
    assert run.data.params == {key: str(value) for key, value in expected.items()}
    run_folder = Path(summary["run_folder"])
    assert run_folder.parent == folder / "artifacts" / "runs"
    assert run_folder.name == summary["run_id"]
    metrics = json.loads((run_folder / "metrics.json").read_text())
    assert run.data.metrics == numeric_metrics(metrics)
    assert run.data.metrics["baseline_rmsle"] > run.data.metrics["rmsle"]  # Keytel's, logged
    assert run.data.tags["calops.data.synthetic"] == "true"
    assert {item.path for item in mlflow.list_artifacts(run.info.run_id)} >= LOGGED_FILES
    version = mlflow.get_model_version(NAME, summary["model_version"])
    assert version.run_id == run.info.run_id
    return run


def alias_target(uri: str) -> str | None:
    version = client(uri).get_registered_model(NAME).aliases.get(ALIAS)
    return None if version is None else str(version)  # stores differ: int or str


def test_file_store_alias_moves_only_when_no_worse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """file:./mlruns: a full readback; a worse run keeps the alias; --promote moves it."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for reading back in this process
    uri = (tmp_path / "mlruns").as_uri()
    config = project(tmp_path)
    first = succeeded(calops_train(tmp_path, "--tracking", "file:./mlruns"))
    assert first["tracking_uri"] == uri
    assert_logged(uri, first, config, tmp_path)
    assert first["promoted"]
    assert alias_target(uri) == first["model_version"]

    worse = project(tmp_path, max_iter=2)
    second = succeeded(calops_train(tmp_path, "--tracking", "file:./mlruns"))
    assert_logged(uri, second, worse, tmp_path)
    assert not second["promoted"]
    assert ": worse;" in second["promotion_reason"]
    assert alias_target(uri) == first["model_version"]

    forced = succeeded(calops_train(tmp_path, "--tracking", "file:./mlruns", "--promote"))
    assert forced["promoted"]
    assert alias_target(uri) == forced["model_version"]


PREDICT_CHAMPION = """
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model("models:/calories@champion")
row = dict(Sex="male", Age=25.0, Height=180.0, Weight=75.0, Duration=30.0, Heart_Rate=120.0,
           Body_Temp=40.0)
print(float(model.predict(pd.DataFrame([row]))[0]))
"""


def test_sqlite_store_registers_a_loadable_champion(tmp_path: Path) -> None:
    """sqlite:///PATH.db: the run reads back, files sit beside the .db, @champion predicts."""
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    config = project(tmp_path)
    summary = succeeded(calops_train(tmp_path, "--tracking", uri))
    run = assert_logged(uri, summary, config, tmp_path)
    assert run.info.artifact_uri.startswith((tmp_path / "store" / "mlartifacts").as_uri())
    assert alias_target(uri) == summary["model_version"]
    predicted = subprocess.run(
        [sys.executable, "-c", PREDICT_CHAMPION],
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert 50.0 < float(predicted.stdout.strip().splitlines()[-1]) < 400.0


def test_server_store_logs_through_the_server(mlflow_server: Server, tmp_path: Path) -> None:
    """http://…: artifacts go through the server (mlflow-artifacts:/), none land locally."""
    config = project(tmp_path)
    summary = succeeded(calops_train(tmp_path, "--tracking", mlflow_server.url))
    run = assert_logged(mlflow_server.url, summary, config, tmp_path)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert any(mlflow_server.artifacts.rglob("model_card.json"))
    assert not (tmp_path / "mlruns").exists()
    assert not (tmp_path / "mlartifacts").exists()
    assert alias_target(mlflow_server.url) is not None


def test_running_stack_server_is_the_default(mlflow_server: Server, tmp_path: Path) -> None:
    """With no --tracking, the stack recorded in CALOPS_HOME is used when its /health answers."""
    port = int(mlflow_server.url.rsplit(":", 1)[1])
    state = StackState(runtime="local", ports={**DEFAULT_PORTS, "mlflow": port})
    home = tmp_path / ".calops"
    home.mkdir()
    (home / "stack.json").write_text(json.dumps(asdict(state)), encoding="utf-8")
    project(tmp_path, max_iter=2)
    summary = succeeded(calops_train(tmp_path))
    assert summary["tracking_uri"] == mlflow_server.url
    assert summary["tracking_origin"] == f"the MLflow server of the stack in {home}"
    assert client(mlflow_server.url).get_run(summary["run_id"]).info.status == "FINISHED"


def test_failing_script_exits_1_in_one_line_and_logs_nothing(tmp_path: Path) -> None:
    """A --script that fails: exit 1, one 'Error:' line with its exit code, no run logged."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    project(tmp_path)
    (tmp_path / "train.py").write_text("raise SystemExit('cannot read data.csv')\n")
    result = calops_train(tmp_path, "--tracking", uri, "--script", "train.py")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert "exit code 1" in errors[0]
    assert "cannot read data.csv" in errors[0]
    assert "Traceback" not in result.stderr
    assert client(uri).search_experiments(filter_string="name = 'calops'") == []


def test_unreachable_server_exits_1_before_training(tmp_path: Path) -> None:
    """An http tracking URI that does not answer: exit 1, one line, no artifacts written."""
    project(tmp_path)
    result = calops_train(tmp_path, "--tracking", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "does not answer" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "artifacts").exists()


# -- a server that answers /health and fails or hangs on its API ---------------------------------

NOT_FOUND = b'{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "not found"}'
BROKEN = b'{"error_code": "INTERNAL_ERROR", "message": "No space left on device"}'
GIVE_UP_SECONDS = 30.0


@contextmanager
def broken_mlflow(*, reads_work: bool, hang: bool) -> Iterator[tuple[str, list[float]]]:
    """A real HTTP server on loopback: /health 200; with ``reads_work`` the calls calops makes
    before training answer as an empty MLflow would; every other call answers 500 (or, with
    ``hang``, never answers while the server runs). Yields its URL and the times it failed."""
    stop = threading.Event()
    failed: list[float] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            code, body = self._decide()
            if code == 0:
                stop.wait()
                return
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _decide(self) -> tuple[int, bytes]:
            if self.path.startswith("/health"):
                return 200, b"OK"
            if reads_work and "experiments/search" in self.path:
                return 200, b'{"experiments": []}'
            if reads_work and self.command == "GET" and "/get" in self.path:
                return 404, NOT_FOUND
            failed.append(time.monotonic())
            return (0, b"") if hang else (500, BROKEN)

        def log_message(self, *args: object) -> None:
            pass

    for method in ("GET", "POST", "PATCH", "DELETE"):
        setattr(Handler, f"do_{method}", Handler._answer)

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", failed
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("reads_work", "hang", "said"),
    [
        (False, False, "answers /health but its API failed"),
        (True, False, "failed while logging the run"),
        (True, True, "failed while logging the run"),
    ],
    ids=["api-500", "writes-500", "writes-hang"],
)
def test_train_gives_up_on_a_broken_server_within_30_s(
    tmp_path: Path, reads_work: bool, hang: bool, said: str
) -> None:
    """Exit 1 within 30 s of the first failed call, with one line naming the server and the
    reason; the progress said it was logging; nothing of the run is left to serve."""
    project(tmp_path, max_iter=5)
    with broken_mlflow(reads_work=reads_work, hang=hang) as (url, failed):
        result = calops_train(tmp_path, "--tracking", url)
        elapsed = time.monotonic() - failed[0]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.returncode == 1, result.stderr
    assert elapsed < GIVE_UP_SECONDS, f"gave up {elapsed:.0f} s after the first failed call"
    assert len(errors) == 1
    assert url in errors[0]
    assert said in errors[0]
    assert "Traceback" not in result.stderr
    if reads_work:
        assert f"Logging the run to {url}" in result.stderr
    assert not (tmp_path / "artifacts" / "current").exists()
