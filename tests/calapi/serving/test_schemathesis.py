"""Acceptance: ``schemathesis run`` with every check but auth, over every operation of the real
API under uvicorn, finds nothing in at least 2,000 generated cases."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import api_argv, free_port, running

pytestmark = pytest.mark.integration

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
MIN_CASES = 2000
# A batch over max_batch_rows is a documented 413 (not a 422): still a rejection.
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "404", "405", "406", "409", "413", "415", "422"]
"""


@pytest.fixture(scope="module")
def api(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """uvicorn serving the trained model, with its own prediction log."""
    port = free_port()
    folder = tmp_path_factory.mktemp("schemathesis-api")
    url = f"http://127.0.0.1:{port}"
    env = {"CALOPS_MODEL": str(trained_model_dir), "CALOPS_RELOAD_INTERVAL_SECONDS": "0"}
    with running(api_argv(port), ready_url=f"{url}/readyz", env=env, log=folder / "api.log"):
        yield url


@pytest.mark.skipif(not SCHEMATHESIS.exists(), reason="schemathesis is not installed")
def test_schemathesis_finds_nothing_in_2000_cases(api: str, tmp_path: Path) -> None:
    """Examples, coverage and fuzzing phases, deterministic: 0 failures, 0 errors."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    report = tmp_path / "report.json"
    argv = [
        str(SCHEMATHESIS), "--config-file", str(config), "run", f"{api}/openapi.json",
        "--checks", "all", "--exclude-checks", "ignored_auth", "--max-examples", "600",
        # One worker: Python 3.11's ast.parse, which Hypothesis calls, is not thread-safe.
        "--workers", "1", "--generation-deterministic", "--no-color",
        "--report", "json", "--report-json-path", str(report),
    ]  # fmt: skip
    result = subprocess.run(
        argv, check=False, capture_output=True, text=True, cwd=tmp_path, timeout=240
    )
    summary = json.loads(report.read_text())
    cases = summary["test_cases"]
    assert result.returncode == 0, result.stdout[-6000:]
    assert summary["operations"]["tested"] == summary["operations"]["total"]
    assert (cases["with_failures"], cases["errored"]) == (0, 0)
    assert cases["generated"] >= MIN_CASES, cases
