"""`calops serve` takes its defaults from ApiSettings; options override only when given."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from calapi.serving import server
from calapi.serving.settings import ApiSettings
from calopsctl.cli import app

runner = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[ApiSettings]:
    """The settings `calops serve` would run the API with (nothing is started)."""
    seen: list[ApiSettings] = []
    monkeypatch.setattr(server, "serve", seen.append)
    for name in ("CALOPS_HOST", "CALOPS_PORT", "CALOPS_MODEL", "CALOPS_RELOAD_INTERVAL_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    return seen


def test_no_options_serve_with_the_api_settings(served: list[ApiSettings]) -> None:
    """Without options the API runs with exactly ApiSettings() (its own defaults)."""
    assert runner.invoke(app, ["serve"]).exit_code == 0
    assert served == [ApiSettings()]


def test_environment_then_options(
    served: list[ApiSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """CALOPS_* set what options leave alone; a given option wins over its variable."""
    monkeypatch.setenv("CALOPS_PORT", "8123")
    monkeypatch.setenv("CALOPS_MODEL", "models:/calories@champion")
    result = runner.invoke(app, ["serve", "--port", "8010", "--reload-interval", "0"])
    assert result.exit_code == 0, result.output
    (settings,) = served
    assert (settings.port, settings.model) == (8010, "models:/calories@champion")
    assert settings.reload_interval_seconds == 0
    assert settings.host == ApiSettings().host


def test_allow_pickle_reaches_the_api_settings(
    served: list[ApiSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--allow-pickle turns pickles on; without it CALOPS_ALLOW_PICKLE (default off) decides."""
    monkeypatch.delenv("CALOPS_ALLOW_PICKLE", raising=False)
    assert runner.invoke(app, ["serve"]).exit_code == 0
    assert runner.invoke(app, ["serve", "--allow-pickle"]).exit_code == 0
    monkeypatch.setenv("CALOPS_ALLOW_PICKLE", "true")
    assert runner.invoke(app, ["serve", "--no-allow-pickle"]).exit_code == 0
    assert [settings.allow_pickle for settings in served] == [False, True, False]


def test_invalid_port_is_one_sentence(served: list[ApiSettings]) -> None:
    """A port ApiSettings refuses is one 'Error:' line and exit 1, with no traceback."""
    result = runner.invoke(app, ["serve", "--port", "70000"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: Invalid setting port:")
    assert "Traceback" not in result.output
    assert served == []


def test_help_points_at_the_api_settings_without_restating_them() -> None:
    """--help names each variable; the default numbers live only in ApiSettings."""
    text = runner.invoke(app, ["serve", "--help"]).output
    for variable in ("CALOPS_HOST", "CALOPS_PORT", "CALOPS_MODEL"):
        assert variable in text
    assert str(ApiSettings().port) not in text
