"""`calops traffic export`: labelled traffic as the trainer's CSV, from a log or a real API."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from python_on_whales.exceptions import DockerException
from typer.testing import CliRunner

from calapi.errors import CalopsError
from calapi.model.config import TrainConfig
from calapi.model.data import load_training_data, raw_matrix
from calapi.model.features import FEATURES, TARGET
from calapi.model.synthetic import generate
from calapi.serving.predlog import Retention
from calapi.serving.predlog.sqlite import SqliteLog
from calopsctl.cli import app
from calopsctl.runtime.docker import DockerRuntime
from calopsctl.state import StackState, save_state
from calopsctl.trafficdata import labelled_traffic, parse_duration
from support import free_port, running

runner = CliRunner(env={"COLUMNS": "200"})
TRAINER_COLUMNS = ["id", *FEATURES, TARGET]


def fill_log(path: Path, rows: int, *, answered: int) -> pd.DataFrame:
    """Record ``rows`` synthetic predictions through the real log, answer the first
    ``answered`` with their true Calories; the rows sent."""
    frame = generate(rows, 3).reset_index(drop=True)
    log = SqliteLog(path, Retention(), flush_seconds=0.005)
    log.start()
    keys = [f"r{i}" for i in range(rows)]
    log.record(keys, list(frame[TARGET] * 0.9), raw_matrix(frame), "v7")

    async def answer() -> None:
        await asyncio.sleep(log.settle_seconds)
        await asyncio.gather(*(log.answer(k, float(frame[TARGET][i])) for i, k in
                               enumerate(keys[:answered])))  # fmt: skip

    asyncio.run(answer())
    log.close()
    return frame


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90.0), ("30m", 1800.0), ("1h", 3600.0), ("2d", 172_800.0), ("45", 45.0),
     (" 1.5H ", 5400.0)],
)  # fmt: skip
def test_durations_in_seconds(text: str, seconds: float) -> None:
    """90s, 30m, 1h, 2d and bare seconds all read as seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "1w", "h", "-5m", "1h30m", "inf"])
def test_other_durations_are_refused(text: str) -> None:
    """Anything else is a ValueError naming the accepted forms."""
    with pytest.raises(ValueError, match=r"use e\.g\. 90s, 30m, 1h or 2d"):
        parse_duration(text)


def test_export_writes_the_trainer_layout_that_the_trainer_reads(
    isolated_home: Path,
) -> None:
    """Exactly the trainer's columns, answered rows only, values as sent; the trainer's loader
    reads the file and training on it succeeds."""
    sent = fill_log(isolated_home / "log.db", 400, answered=300)
    result = runner.invoke(
        app, ["traffic", "export", "--log", str(isolated_home / "log.db"), "--out", "t.csv"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Wrote 300 labelled rows (predicted 20")
    written = pd.read_csv(isolated_home / "t.csv")
    assert list(written.columns) == TRAINER_COLUMNS
    assert list(written["id"]) == [f"r{i}" for i in range(300)]
    np.testing.assert_array_equal(written[list(FEATURES[1:])], sent[list(FEATURES[1:])][:300])
    assert list(written["Sex"]) == list(sent["Sex"][:300])
    np.testing.assert_array_equal(written[TARGET], sent[TARGET][:300])

    loaded = load_training_data(isolated_home / "t.csv")
    assert len(loaded.frame) == 300
    from calapi.model.train import run

    config = TrainConfig.model_validate(
        {
            "data": {"source": str(isolated_home / "t.csv")},
            "model": {"params": {"max_iter": 30}},
            "outputs": {"dir": str(isolated_home / "artifacts")},
        }
    )
    metrics = run(config).metrics
    assert metrics["n_train"] + metrics["n_holdout"] == 300
    assert math.isfinite(metrics["rmsle"])


def test_all_columns_adds_prediction_and_times(isolated_home: Path) -> None:
    """--all-columns keeps the trainer's columns first, then what the API said and when."""
    fill_log(isolated_home / "log.db", 5, answered=5)
    argv = ["traffic", "export", "--log", str(isolated_home / "log.db"), "--out", "-",
            "--all-columns"]  # fmt: skip
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[0].split(",")
    assert header == [*TRAINER_COLUMNS, "predicted_at", "answered_at", "model_version",
                      "predicted"]  # fmt: skip
    assert "Wrote 5 labelled rows" in result.stderr


def test_an_empty_window_is_one_sentence_and_exit_1(isolated_home: Path) -> None:
    """Nothing answered in the window: exit 1, says what to do, no file written."""
    fill_log(isolated_home / "log.db", 5, answered=0)
    argv = ["traffic", "export", "--since", "30m", "--log", str(isolated_home / "log.db"),
            "--out", "t.csv"]  # fmt: skip
    result = runner.invoke(app, argv)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: No labelled predictions in the last 30m;")
    assert "calops simulate" in result.stderr
    assert "Traceback" not in result.output
    assert not (isolated_home / "t.csv").exists()


def test_an_unwritable_output_is_one_sentence(isolated_home: Path) -> None:
    """--out in a folder that does not exist: exit 1 naming the file, no traceback."""
    fill_log(isolated_home / "log.db", 2, answered=2)
    argv = ["traffic", "export", "--log", str(isolated_home / "log.db"), "--out", "no/t.csv"]
    result = runner.invoke(app, argv)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: Cannot write no/t.csv (")
    assert "check that its folder exists" in result.stderr
    assert "Traceback" not in result.output


def test_no_stack_and_no_log_is_one_sentence(isolated_home: Path) -> None:
    """Without a stack, a log in home or --log: exit 1 naming `calops up` and --log."""
    result = runner.invoke(app, ["traffic", "export", "--out", "t.csv"])
    assert result.exit_code == 1
    assert "No stack was started from" in result.stderr
    assert "--log" in result.stderr
    with pytest.raises(CalopsError, match="There is no prediction log at"):
        labelled_traffic(isolated_home, None, str(isolated_home / "missing.db"))


def test_a_bad_duration_is_a_usage_error(isolated_home: Path) -> None:
    """--since 1w: exit 2 with the accepted forms."""
    result = runner.invoke(app, ["traffic", "export", "--since", "1w", "--out", "t.csv"])
    assert result.exit_code == 2
    assert "90s, 30m, 1h or 2d" in result.output


def test_simulate_stays_a_top_level_command() -> None:
    """`calops simulate` still exists beside the new `calops traffic` group."""
    assert runner.invoke(app, ["simulate", "--help"]).exit_code == 0
    assert "export" in runner.invoke(app, ["traffic", "--help"]).output


@pytest.mark.integration
def test_export_from_a_real_calops_serve_then_calops_train(
    trained_model_dir: Path, isolated_home: Path
) -> None:
    """Predictions and feedback through a real `calops serve`; `calops traffic export` (from
    the home's log, and from --log) writes them; `calops train --data` trains on the file."""
    home = isolated_home / ".calops"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    calops = str(Path(sys.executable).with_name("calops"))
    env = {**os.environ, "CALOPS_PREDICTION_LOG": str(home / "predictions.db")}
    rows = generate(60, 11)
    instances = [{"id": i, **{name: row[name] for name in FEATURES}} for i, row in rows.iterrows()]
    argv = [calops, "serve", "--port", str(port), "--model", str(trained_model_dir)]
    with running(argv, ready_url=f"{url}/readyz", env=env, log=isolated_home / "serve.log"):
        answer = httpx.post(f"{url}/predict", json={"instances": instances}, timeout=30)
        assert answer.status_code == 200, answer.text
        for i in range(50):
            truth = {"id": i, "Calories": float(rows[TARGET][i])}
            assert httpx.post(f"{url}/feedback", json=truth, timeout=10).status_code == 200
        export = [calops, "traffic", "export", "--since", "10m", "--out", "traffic.csv"]
        done = run(export, env)
        explicit = [*export[:-1], "given.csv", "--log", str(home / "predictions.db")]
        again = run(explicit, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Wrote 50 labelled rows")
    assert again.returncode == 0, again.stderr
    written = pd.read_csv(isolated_home / "traffic.csv")
    assert list(written.columns) == TRAINER_COLUMNS
    assert list(written["id"]) == [f"#{i}" for i in range(50)]
    np.testing.assert_allclose(written[TARGET], rows[TARGET][:50])
    pd.testing.assert_frame_equal(written, pd.read_csv(isolated_home / "given.csv"))

    train = [calops, "train", "--data", "traffic.csv", "--json"]
    trained = run(train, env)
    assert trained.returncode == 0, trained.stderr
    summary = json.loads(trained.stdout)
    assert summary["data_source"].endswith("traffic.csv")
    assert summary["metrics"]["n_train"] + summary["metrics"]["n_holdout"] == 50


def test_a_local_stack_is_read_from_its_home_log(isolated_home: Path) -> None:
    """A stack recorded as local: its `<home>/predictions.db` is the log read."""
    home = isolated_home / ".calops"
    fill_log(home / "predictions.db", 4, answered=3)
    save_state(home, StackState(runtime="local", ports={}))
    assert list(labelled_traffic(home, None)["id"]) == ["r0", "r1", "r2"]


class FakeCompose:
    """What `docker compose exec` would answer: the module's CSV, or its failure."""

    def __init__(self, answer: str | DockerException) -> None:
        self.answer = answer
        self.calls: list[tuple[str, list[str], bool]] = []

    def execute(self, service: str, command: list[str], *, tty: bool) -> str:
        self.calls.append((service, command, tty))
        if isinstance(self.answer, DockerException):
            raise self.answer
        return self.answer


def docker_stack(home: Path, monkeypatch: pytest.MonkeyPatch, compose: FakeCompose) -> None:
    save_state(home, StackState(runtime="docker", ports={}))
    client = type("Client", (), {"compose": compose})()
    monkeypatch.setattr(DockerRuntime, "client", property(lambda _self: client))


def test_a_docker_stack_is_read_inside_its_api_container(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Docker: the labelled module runs in the api service (no TTY) and its CSV is the frame."""
    home = isolated_home / ".calops"
    fill_log(isolated_home / "log.db", 3, answered=2)
    expected = labelled_traffic(home, 3600, str(isolated_home / "log.db"))
    compose = FakeCompose(expected.to_csv(index=False))
    docker_stack(home, monkeypatch, compose)
    pd.testing.assert_frame_equal(labelled_traffic(home, 3600, compose_files=[]), expected)
    argv = ["python", "-m", "calapi.serving.predlog.labelled", "--since", "3600.0"]
    assert compose.calls == [("api", argv, False)]


def test_a_docker_failure_is_one_sentence(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The module's own error line comes back as the reason, without its 'Error:' prefix."""
    home = isolated_home / ".calops"
    stderr = b"Error: The prediction log at redis://redis:6379/0 could not be read.\n"
    docker_stack(home, monkeypatch, FakeCompose(DockerException(["docker"], 1, b"", stderr)))
    with pytest.raises(CalopsError) as caught:
        labelled_traffic(home, None, compose_files=[])
    assert str(caught.value) == (
        "The Docker stack's API could not read its prediction log: The prediction log at "
        "redis://redis:6379/0 could not be read."
    )
