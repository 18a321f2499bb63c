"""`calops simulate` against the real API under uvicorn, as a user runs it."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import api_argv, free_port, running, stop

pytestmark = pytest.mark.integration

CALOPS = str(Path(sys.executable).with_name("calops"))


def environment(home: Path) -> dict[str, str]:
    """The user's environment without any target set, and a private state folder."""
    env = {k: v for k, v in os.environ.items() if k not in {"CALOPS_URL", "URL"}}
    return {**env, "CALOPS_HOME": str(home / ".calops"), "NO_COLOR": "1"}


def simulate(home: Path, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CALOPS, "simulate", *args],
        env=environment(home),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def report(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def metric(url: str, sample: str, **labels: str) -> float:
    """One sample of the API's /metrics (0 when absent, as a counter not yet touched)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def predictions_ok(url: str) -> float:
    return metric(url, "app_requests_total", route="/predict", method="POST", status="200")


def feedback_ok(url: str) -> float:
    return metric(url, "app_requests_total", route="/feedback", method="POST", status="200")


@pytest.fixture
def fresh_api(trained_model_dir: Path, tmp_path: Path) -> Any:
    """A private API process, for tests that read its rolling window or kill it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"CALOPS_MODEL": str(trained_model_dir)}
    with running(api_argv(port), ready_url=f"{url}/readyz", env=env, log=tmp_path / "api.log") as p:
        yield url, p


def test_summary_agrees_with_the_servers_counters(live_api: str, tmp_path: Path) -> None:
    """100 req/s for 10 s: ~1000 predictions and their feedback reach the API, RMSLE is a number."""
    before_predict, before_feedback = predictions_ok(live_api), feedback_ok(live_api)
    done = simulate(
        tmp_path, "--url", live_api, "--rps", "100", "--duration", "10",
        "--feedback-delay", "1", "--json",
    )  # fmt: skip
    summary = report(done)
    served = predictions_ok(live_api) - before_predict
    answered = feedback_ok(live_api) - before_feedback
    assert 950 <= served <= 1050
    assert summary["ok"] == served
    assert summary["sent"] == summary["ok"] + summary["errors"]
    assert summary["feedback"]["ok"] == answered == summary["ok"]
    gauge = metric(live_api, "app_rolling_rmsle_5m")
    assert math.isfinite(gauge)
    assert math.isfinite(summary["rmsle"])
    assert summary["latency_ms"]["p50"] > 0


@pytest.mark.parametrize("drift", ["concept", "covariate"])
def test_drift_raises_the_rolling_rmsle(fresh_api: Any, tmp_path: Path, drift: str) -> None:
    """After a clean run, a drifted run lifts app_rolling_rmsle_5m above the clean value."""
    url, _ = fresh_api
    common = ["--url", url, "--rps", "100", "--duration", "4", "--feedback-delay", "0.2"]
    clean = report(simulate(tmp_path, *common, "--json"))
    clean_gauge = metric(url, "app_rolling_rmsle_5m")
    drifted = report(simulate(tmp_path, *common, "--drift", drift, "--drift-start", "0", "--json"))
    drifted_gauge = metric(url, "app_rolling_rmsle_5m")
    assert clean["feedback"]["ok"] > 0
    assert drifted["feedback"]["ok"] > 0
    assert drifted_gauge > clean_gauge
    assert drifted["rmsle"] > clean["rmsle"]


def test_covariate_drift_moves_the_out_of_range_counters(fresh_api: Any, tmp_path: Path) -> None:
    """Covariate drift pushes Duration past the training range, so the API counts it."""
    url, _ = fresh_api
    before = metric(url, "app_out_of_range_rows_total", feature="Duration")
    args = ["--url", url, "--count", "200", "--rps", "200", "--drift", "covariate"]
    report(simulate(tmp_path, *args, "--drift-start", "0", "--feedback-fraction", "0", "--json"))
    assert metric(url, "app_out_of_range_rows_total", feature="Duration") > before


def wait_for_predictions(url: str, at_least: float, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predictions_ok(url) >= at_least:
            return
        time.sleep(0.1)
    raise AssertionError(f"fewer than {at_least} predictions reached {url} in {seconds}s")


def test_api_killed_mid_run_stops_the_run_with_one_sentence(fresh_api: Any, tmp_path: Path) -> None:
    """Killing the API mid-run: sending stops within the window, one sentence, exit code 1."""
    url, api = fresh_api
    argv = [
        CALOPS, "simulate", "--url", url, "--rps", "50", "--duration", "60",
        "--feedback-delay", "0.3", "--timeout", "2", "--json",
    ]  # fmt: skip
    with subprocess.Popen(
        argv, env=environment(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as run:
        wait_for_predictions(url, 40)
        stop(api)
        killed = time.monotonic()
        out, err = run.communicate(timeout=60)
        after_kill = time.monotonic() - killed
    assert run.returncode == 1, err
    summary = json.loads(out)
    sentence = (
        f"The API at {url} stopped answering after {summary['ok']} predictions "
        "(connection refused for 3s); check it with `calops health`"
    )
    assert sentence in err
    assert "Traceback" not in err
    assert after_kill < 10.0
    assert summary["api_gone"] == "connection refused"
    assert summary["ok"] >= 40
    assert summary["connection_errors"] > 0
    assert summary["sent"] < summary["planned"] == 3000
    assert summary["ok"] + summary["errors"] + summary["abandoned"] == summary["sent"]


def test_api_down_at_start_is_one_sentence_and_exit_1(tmp_path: Path) -> None:
    """Nothing listening at the URL: one sentence on stderr, exit code 1, no traceback."""
    url = f"http://127.0.0.1:{free_port()}"
    done = simulate(tmp_path, "--url", url, "--count", "5")
    assert done.returncode == 1
    assert f"Cannot reach the API at {url}; start it with `calops up`" in done.stderr
    assert "Traceback" not in done.stderr


def test_csv_without_calories_is_refused(live_api: str, tmp_path: Path) -> None:
    """A CSV with no Calories cannot give feedback: one sentence naming the file, exit 1."""
    csv = tmp_path / "test.csv"
    csv.write_text(
        "id,Sex,Age,Height,Weight,Duration,Heart_Rate,Body_Temp\n1,male,30,180,80,20,100,40\n"
    )
    done = simulate(tmp_path, "--url", live_api, "--data", str(csv), "--count", "5")
    assert done.returncode == 1
    assert "has no Calories column" in done.stderr
    assert "Traceback" not in done.stderr
    args = ["--url", live_api, "--data", str(csv), "--count", "5", "--rps", "50", "--json"]
    replay = report(simulate(tmp_path, *args, "--feedback-fraction", "0"))
    assert replay["ok"] == 5


def test_ctrl_c_stops_and_prints_the_summary_so_far(live_api: str, tmp_path: Path) -> None:
    """SIGINT mid-run: the summary so far on stdout and exit code 130."""
    before = predictions_ok(live_api)
    argv = [CALOPS, "simulate", "--url", live_api, "--rps", "50", "--duration", "60"]
    with subprocess.Popen(
        argv, env=environment(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as run:
        wait_for_predictions(live_api, before + 20)
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=30)
    assert run.returncode == 130, err
    assert "interrupted after" in out
    assert "sent:" in out
    assert "Traceback" not in err


def test_plain_output_and_the_seed_url_variable(live_api: str, tmp_path: Path) -> None:
    """Without a terminal the run prints plain lines; `URL=...` (the seed's way) picks the API."""
    done = subprocess.run(
        [CALOPS, "simulate", "--count", "20", "--rps", "50", "--feedback-delay", "0.1"],
        env={**environment(tmp_path), "URL": live_api},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"to {live_api}" in done.stdout
    assert "sent: 20 of 20 planned" in done.stdout
    assert "feedback: 20 sent, 20 ok" in done.stdout
