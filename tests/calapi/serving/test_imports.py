"""The API imports only what serving needs: the command line's libraries stay out of it."""

from __future__ import annotations

import subprocess
import sys

import pytest

CLI_ONLY = ("mlflow", "typer", "python_on_whales", "rich", "httpx")


@pytest.mark.parametrize("module", ["calapi.serving.app", "calapi.serving.server"])
def test_importing_the_api_leaves_the_cli_libraries_out(module: str) -> None:
    """Building the app on a folder source imports no MLflow, Typer, python-on-whales or rich."""
    code = (
        f"import sys, {module}; from calapi.serving.app import create_app; create_app(); "
        f"print(','.join(m for m in {CLI_ONLY!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == ""
