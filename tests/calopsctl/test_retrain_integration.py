"""Closing the loop on a real local stack: drifted traffic, `calops retrain`, the API follows.

`calops up --runtime local` (uvicorn, `mlflow server`, Prometheus) trains version 1 on a tiny
synthetic config; `calops simulate` sends traffic with ground truth through the real API into
its prediction log; `calops retrain` reads it back, trains, scores both models on the newest
rows and moves the registry alias only when the challenger is better. The tests run in order
against one stack.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from calopsctl.runtime import processes
from calopsctl.services import NAMES
from stacktools import Stack, port_options, small_config, stack_env
from support import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed"),
]

NAME = "calories"
RPS = 150
DRIFT_SECONDS = 20
FULL_DRIFT = ("--drift", "concept", "--drift-start", "0", "--drift-ramp", "0")  # full at once
RECENT_SECONDS = "15s"  # retrain on the drifted predictions only, not the earlier tests' traffic
FEEDBACK_DELAY = "0.5"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One real local stack; `up` trains and serves version 1 (the tiny configured model)."""
    folder = tmp_path_factory.mktemp("retrain-stack")
    (folder / ".calops").mkdir()
    small_config(folder)
    ports = {name: free_port() for name in NAMES}
    env = {**stack_env(), "CALOPS_RELOAD_INTERVAL_SECONDS": "1", "NO_COLOR": "1"}
    handle = Stack(folder, env, ports, up=subprocess.CompletedProcess([], 0, "", ""))
    try:
        handle.up = handle.calops("up", "--runtime", "local", *port_options(ports), "--json")
        assert handle.up.returncode == 0, handle.up.stderr
        yield handle
    finally:
        handle.calops("down")
        processes.stop_groups(handle.pids().values(), grace=2)


def api(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.ports['api']}"


def as_json(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    loaded: dict[str, Any] = json.loads(done.stdout)
    return loaded


def simulate(stack: Stack, seconds: float, *extra: str) -> dict[str, Any]:
    argv = ["simulate", "--rps", str(RPS), "--duration", str(seconds), "--json"]
    return as_json(stack.calops(*argv, "--feedback-delay", FEEDBACK_DELAY, *extra))


def versions(stack: Stack) -> list[str]:
    listed = as_json(stack.calops("models", "--json"))
    return sorted(str(row["version"]) for row in listed["versions"])


def run_folders(stack: Stack) -> list[str]:
    runs = stack.folder / "artifacts" / "runs"
    return sorted(p.name for p in runs.iterdir()) if runs.is_dir() else []


def holdout_rmsle(stack: Stack) -> float:
    """Version 1's holdout RMSLE, as `calops up` trained and registered it."""
    rows = as_json(stack.calops("models", "--json"))["versions"]
    first = next(row for row in rows if str(row["version"]) == "1")
    return float(first["rmsle"])


def rolling_rmsle(stack: Stack) -> float:
    text = httpx.get(f"{api(stack)}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "app_rolling_rmsle_5m":
                return float(sample.value)
    raise AssertionError("app_rolling_rmsle_5m is not on /metrics")


def served_version(stack: Stack, expected: str, timeout: float = 15.0) -> str:
    """The model_version /info names, polled until it is ``expected`` (or the time is up)."""
    deadline = time.monotonic() + timeout
    while True:
        version = str(httpx.get(f"{api(stack)}/info", timeout=5).json()["model"]["version"])
        if version == expected or time.monotonic() > deadline:
            return version
        time.sleep(0.25)


def test_too_few_labelled_rows_is_one_sentence_and_registers_nothing(stack: Stack) -> None:
    """A handful of labelled predictions: one sentence, exit 1, no run and no new version."""
    simulate(stack, 1)
    before = (versions(stack), run_folders(stack))
    done = stack.calops("retrain")
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, done.stderr
    assert "labelled predictions in the last 1h (need 200); send feedback" in errors[0]
    assert "Traceback" not in done.stderr
    assert (versions(stack), run_folders(stack)) == before


def test_without_drift_retrain_keeps_the_champion(stack: Stack) -> None:
    """Traffic like the training data: the challenger is registered but not better; exit 0."""
    simulate(stack, 3)
    summary = as_json(stack.calops("retrain", "--min-rows", "100", "--json"))
    assert summary["promoted"] is False
    assert summary["outcome"].startswith(f"kept {NAME}/1: challenger RMSLE ")
    assert summary["challenger_rmsle"] >= summary["champion_rmsle"]
    assert served_version(stack, f"{NAME}/1", timeout=0) == f"{NAME}/1"


def test_concept_drift_retrain_promotes_and_accuracy_recovers(stack: Stack) -> None:
    """Drifted traffic raises the rolling RMSLE; retrain beats the champion on the same recent
    rows, promotes, the API follows, and the same drift then scores near the holdout level."""
    holdout = holdout_rmsle(stack)
    drifted = simulate(stack, DRIFT_SECONDS, *FULL_DRIFT)
    rolling = rolling_rmsle(stack)
    assert drifted["rmsle"] > 2 * holdout
    assert rolling > 2 * holdout

    started = time.monotonic()
    summary = as_json(stack.calops("retrain", "--since", RECENT_SECONDS, "--json"))
    retrain_seconds = time.monotonic() - started
    assert summary["promoted"] is True, summary["promotion_reason"]
    assert summary["champion"] == "1"
    assert summary["challenger_rmsle"] < summary["champion_rmsle"] / 2
    assert summary["outcome"].startswith(f"promoted {NAME}/3 (was {NAME}/1): challenger RMSLE")
    assert summary["rows_evaluated"] >= 200
    assert summary["rows_base"] <= summary["rows_traffic"] / 4
    assert served_version(stack, f"{NAME}/3") == f"{NAME}/3"

    after = simulate(stack, 20, *FULL_DRIFT)
    assert after["model_versions"] == [f"{NAME}/3"]
    assert after["rmsle"] < 1.5 * holdout
    print(  # the numbers the README quotes (pytest -s)
        f"holdout {holdout:.4f}; drifted run {drifted['rmsle']:.4f} (rolling {rolling:.4f}); "
        f"retrain {retrain_seconds:.1f}s on {summary['rows_traffic']}+{summary['rows_base']} rows: "
        f"challenger {summary['challenger_rmsle']:.4f} vs champion {summary['champion_rmsle']:.4f} "
        f"on {summary['rows_evaluated']} rows; next drifted run {after['rmsle']:.4f}"
    )
