"""`calops models`, `promote` and `rollback` through the CLI on a folder (no tracking server)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from calapi.model.artifact import file_sha256
from calapi.model.runrecord import RunInfo
from calopsctl.cli import app
from calopsctl.runs import RunFolders
from support import api_argv, free_port, running

runner = CliRunner()
NAME = "calories"


def add_run(root: Path, run_id: str, version: str, model: Path, rmsle: float) -> Path:
    """A complete run folder holding a copy of ``model``'s files."""
    folders = RunFolders(root)
    staging = folders.staging()
    for name in ("model.skops", "model_card.json", "metrics.json"):
        shutil.copy2(model / name, staging / name)
    info = RunInfo(
        run_id=run_id,
        model_name=NAME,
        version=version,
        created=f"2026-01-0{version}T00:00:00+00:00",
        data_source="synthetic",
        synthetic=True,
        evaluated_on="holdout",
        rmsle=rmsle,
        sha256=file_sha256(staging / "model.skops"),
    )
    return folders.finish(staging, info)


@pytest.fixture
def project(isolated_home: Path, trained_model_dir: Path) -> Path:
    """Two runs in ./artifacts, version 1 served through `current`."""
    artifacts = isolated_home / "artifacts"
    first = add_run(artifacts, "a" * 32, "1", trained_model_dir, 0.05)
    add_run(artifacts, "b" * 32, "2", trained_model_dir, 0.09)
    RunFolders(artifacts).point(first)
    return artifacts


def test_models_json_lists_runs_and_the_champion_without_an_api(project: Path) -> None:
    """Newest first, with RMSLE; `current` marks version 1; no API answers at the given URL."""
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["models", "--json", "--url", url])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["kind"] == "folder"
    assert data["champion"] == "1"
    assert [(v["version"], v["rmsle"], v["champion"]) for v in data["versions"]] == [
        ("2", 0.09, False),
        ("1", 0.05, True),
    ]
    assert data["versions"][1]["aliases"] == ["current"]
    assert data["api"] == {"url": url, "answered": False, "model_version": None, "source": None}
    assert result.stderr.splitlines()[0].startswith("Stack: ")


def test_promote_without_waiting_exits_0_and_says_when_it_applies(
    project: Path, tmp_path: Path
) -> None:
    """`promote 2 --wait 0` moves the pointer and, with an API up, says it takes it next check."""
    port = free_port()
    env = {"CALOPS_MODEL": str(project), "CALOPS_RELOAD_INTERVAL_SECONDS": "60"}
    url = f"http://127.0.0.1:{port}"
    with running(api_argv(port), ready_url=f"{url}/readyz", env=env, log=tmp_path / "api.log"):
        result = runner.invoke(app, ["promote", "2", "--wait", "0", "--url", url])
    assert result.exit_code == 0, result.output
    assert RunFolders(project).served() == (project / "runs" / ("b" * 32)).resolve()
    assert "takes calories/2 at its next check (--wait 0: not waited for)" in result.stderr


def test_promote_unknown_version_lists_the_known_ones(project: Path) -> None:
    """An unknown version: one sentence naming what exists, exit 1, nothing moved."""
    result = runner.invoke(app, ["promote", "7", "--wait", "0"])
    assert result.exit_code == 1
    assert "No version '7'" in result.stderr
    assert "known: 1, 2" in result.stderr
    assert RunFolders(project).served() == (project / "runs" / ("a" * 32)).resolve()


def test_promote_then_rollback_with_no_api_running(project: Path) -> None:
    """Without an API the move still happens and the command says who will pick it up."""
    url = f"http://127.0.0.1:{free_port()}"
    promoted = runner.invoke(app, ["promote", "2", "--url", url, "--json"])
    assert promoted.exit_code == 0, promoted.output
    body = json.loads(promoted.stdout)
    assert (body["from"], body["to"], body["api"]["answered"]) == ("1", "2", False)
    assert "No API answers at" in promoted.stderr
    rolled = runner.invoke(app, ["rollback", "--url", url, "--json"])
    assert rolled.exit_code == 0, rolled.output
    assert json.loads(rolled.stdout)["to"] == "1"
    again = runner.invoke(app, ["rollback", "--url", url])
    assert again.exit_code == 1
    assert "There is no earlier champion to roll back to" in again.stderr
