"""The CLI's settings (calopsctl.settings), the application object and the services table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from calapi.errors import CalopsError
from calopsctl.application import Application
from calopsctl.services import DEFAULT_PORTS, NAMES, SERVICES, by_name, loopback_url
from calopsctl.settings import CliSettings, build

VARIABLES = (
    "CALOPS_HOME",
    "CALOPS_COMPOSE_FILES",
    "DOCKER_HOST",
    "GRAFANA_ADMIN_PASSWORD",
    "URL",
)


@pytest.fixture
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder and none of the variables the CLI reads."""
    monkeypatch.chdir(tmp_path)
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_defaults_without_any_variable(clean_environment: Path) -> None:
    """With nothing set: ./.calops (absolute), no overrides, the default socket, no password."""
    settings = CliSettings()
    assert settings.home == clean_environment / ".calops"
    assert settings.home.is_absolute()
    assert settings.home_info.origin == "new"
    assert settings.compose_files == []
    assert settings.docker_host == "unix:///var/run/docker.sock"
    assert settings.grafana_admin_password is None
    assert settings.seed_url is None


def test_each_variable_is_read(clean_environment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CALOPS_HOME, CALOPS_COMPOSE_FILES (PATH-style), DOCKER_HOST, the password and URL."""
    monkeypatch.setenv("CALOPS_HOME", "state")
    monkeypatch.setenv("CALOPS_COMPOSE_FILES", os.pathsep.join(["a.yaml", "", "b/c.yaml"]))
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.2:2375")
    monkeypatch.setenv("GRAFANA_ADMIN_PASSWORD", " s3cret ")
    monkeypatch.setenv("URL", "http://127.0.0.1:8010/")
    settings = CliSettings()
    assert settings.home == clean_environment / "state"
    assert settings.home_info.origin == "CALOPS_HOME"
    assert settings.compose_files == [Path("a.yaml"), Path("b/c.yaml")]
    assert settings.docker_host == "tcp://10.0.0.2:2375"
    assert settings.grafana_admin_password is not None
    assert settings.grafana_admin_password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert settings.seed_url == "http://127.0.0.1:8010/"


def test_blank_password_and_url_count_as_unset(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty GRAFANA_ADMIN_PASSWORD or URL is treated as not set, as before."""
    monkeypatch.setenv("GRAFANA_ADMIN_PASSWORD", "  ")
    monkeypatch.setenv("URL", "")
    settings = CliSettings()
    assert settings.grafana_admin_password is None
    assert settings.seed_url is None


def test_empty_variables_count_as_unset(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`CALOPS_HOME= calops ...` searches for the stack; an empty DOCKER_HOST is the default."""
    (clean_environment / ".calops").mkdir()
    sub = clean_environment / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    monkeypatch.setenv("CALOPS_HOME", "")
    monkeypatch.setenv("DOCKER_HOST", "")
    settings = CliSettings()
    assert settings.home == clean_environment / ".calops"
    assert settings.home_info.origin == "found"
    assert settings.docker_host == "unix:///var/run/docker.sock"


def test_invalid_setting_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value the settings refuse becomes a CalopsError naming the setting."""
    from calapi.serving.settings import ApiSettings

    monkeypatch.setenv("CALOPS_PORT", "eighty")
    with pytest.raises(CalopsError, match=r"^Invalid setting port: .*integer"):
        build(ApiSettings)


class _Checked(BaseSettings):
    """Settings whose validator refuses a value in its own words."""

    model_config = SettingsConfigDict(env_prefix="CALOPS_TEST_")
    mode: str = "fast"

    @field_validator("mode")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in ("fast", "safe"):
            raise ValueError(f"{value!r} is not one of fast, safe")
        return value


def test_a_validators_sentence_comes_without_pydantics_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ValueError from a validator reads as its own words, not "Value error, ..."."""
    monkeypatch.setenv("CALOPS_TEST_MODE", "sideways")
    with pytest.raises(CalopsError) as caught:
        build(_Checked)
    assert str(caught.value) == "Invalid setting mode: 'sideways' is not one of fast, safe."


def test_application_reads_the_settings_once(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings are read on first use and kept for the rest of the invocation."""
    application = Application()
    monkeypatch.setenv("CALOPS_HOME", "first")
    first = application.settings
    monkeypatch.setenv("CALOPS_HOME", "second")
    assert application.settings is first
    assert first.home == clean_environment / "first"


# What `--help` never needs: each is imported by the code that uses it, when a command runs.
HEAVY_FOR_HELP = (
    "pydantic_settings",
    "calopsctl.settings",
    "calapi.serving.settings",
    "calapi.serving.schemas",
    "httpx",
    "numpy",
    "pandas",
    "orjson",
    "yaml",
    "mlflow",
    "python_on_whales",
    "rich.live",
    "calopsctl.simulator.run",
    "calopsctl.simulator.engine",
)


@pytest.mark.parametrize(
    "args",
    [["--help"], ["up", "--help"], ["serve", "--help"], ["simulate", "--help"], ["--version"]],
)
def test_help_imports_neither_settings_nor_schemas(args: list[str]) -> None:
    """`calops --help` stays fast: settings, the API's modules and data libraries stay out."""
    script = (
        "import sys; from typer.testing import CliRunner; from calopsctl.cli import app; "
        f"result = CliRunner().invoke(app, {args!r}); assert result.exit_code == 0; "
        f"print([name for name in {HEAVY_FOR_HELP!r} if name in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_services_table_has_one_distinct_row_per_service() -> None:
    """Names, ports, flags and variables are distinct, so no two services can collide."""
    assert NAMES == ("api", "prometheus", "grafana", "mlflow")
    for column in ("default_port", "port_flag", "port_env", "label"):
        values = [getattr(service, column) for service in SERVICES]
        assert len(set(values)) == len(values), column
    assert DEFAULT_PORTS == {"api": 8000, "prometheus": 9090, "grafana": 3000, "mlflow": 5000}
    assert by_name("api").port_env == "HOST_PORT"


def test_loopback_url() -> None:
    """Every service is reached on 127.0.0.1 at its port."""
    assert loopback_url(8010) == "http://127.0.0.1:8010"
