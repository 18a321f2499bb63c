"""The `calops` entry point: the CLI when its extra is installed, one sentence when not."""

from __future__ import annotations

import subprocess
import sys

LAUNCH = (
    "import sys; sys.argv = ['calops', *sys.argv[1:]]; from calopsctl.launcher import main; main()"
)


def _calops(*args: str, hide: str | None = None) -> subprocess.CompletedProcess[str]:
    hiding = f"import sys; sys.modules[{hide!r}] = None; " if hide else ""
    return subprocess.run(
        [sys.executable, "-c", hiding + LAUNCH, *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_the_entry_point_runs_the_cli() -> None:
    """With every extra installed, the entry point is the Typer app."""
    result = _calops("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("calops ")


def test_without_the_cli_extra_it_says_how_to_get_it() -> None:
    """Without typer (a base or [serve] install) it prints one sentence naming the extra."""
    result = _calops("--help", hide="typer")
    assert result.returncode == 1
    assert "pip install 'calops[cli]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_module_runs_the_cli_too() -> None:
    """`python -m calopsctl.launcher` is `calops` (how a checkout runs it without installing)."""
    result = subprocess.run(
        [sys.executable, "-m", "calopsctl.launcher", "--version"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("calops ")
