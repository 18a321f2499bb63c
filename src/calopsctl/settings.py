"""What ``calops`` reads from the environment, typed and read once per invocation.

Everything has the ``CALOPS_`` prefix except names other tools already define (``DOCKER_HOST``,
``GRAFANA_ADMIN_PASSWORD`` shared with stack/compose.yaml, and the hand-out's ``URL``).
Imported only when a command runs (pydantic-settings would slow down ``calops --help``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Self, TypeVar

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from calapi.errors import CalopsError, validation_reason
from calopsctl.project import DIRNAME, Home, locate

AnySettings = TypeVar("AnySettings", bound=BaseSettings)


class CliSettings(BaseSettings):
    """The CLI's settings; commands get them from ``ctx.obj`` and pass them down.

    ``home`` is CALOPS_HOME when set, else the nearest ``.calops`` folder up from the working
    directory (as git finds ``.git``), else ``./.calops``; ``home_info`` says which it was.
    """

    # An empty variable counts as unset, so `CALOPS_HOME= calops health` searches again.
    model_config = SettingsConfigDict(
        env_prefix="CALOPS_",
        extra="ignore",
        validate_by_name=True,
        validate_by_alias=True,
        env_ignore_empty=True,
    )

    home: Path = Field(
        default=Path(DIRNAME),  # replaced by the folder found from the working directory
        description="State folder: stack record, logs, secrets, the default MLflow store.",
    )
    compose_files: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Compose files applied over stack/compose.yaml, separated like PATH.",
    )
    docker_host: str = Field(
        default="unix:///var/run/docker.sock",
        validation_alias="DOCKER_HOST",
        description="Where the Docker engine is looked for (named in messages).",
    )
    grafana_admin_password: SecretStr | None = Field(
        default=None,
        validation_alias="GRAFANA_ADMIN_PASSWORD",
        description="Grafana's admin password; generated and kept under home when unset.",
    )
    seed_url: str | None = Field(
        default=None,
        validation_alias="URL",
        description="The hand-out's `URL=... make simulate-stream` target for `calops simulate`.",
    )

    _home_info: Home = PrivateAttr()

    @model_validator(mode="after")
    def _locate_home(self) -> Self:
        """Resolve ``home`` once, keeping how it was found for the line that names the stack."""
        explicit = self.home if "home" in self.model_fields_set else None
        self._home_info = locate(explicit, Path.cwd())
        self.home = self._home_info.path
        return self

    @property
    def home_info(self) -> Home:
        """The state folder with its origin (CALOPS_HOME, found above, or new)."""
        return self._home_info

    @field_validator("compose_files", mode="before")
    @classmethod
    def _split_paths(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [Path(part) for part in value.split(os.pathsep) if part]
        return value

    @field_validator("grafana_admin_password", "seed_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip() or None
        return value


def build(settings_class: type[AnySettings], **given: Any) -> AnySettings:
    """``settings_class(**given)`` (which also reads the environment); one sentence if invalid."""
    try:
        return settings_class(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or settings_class.__name__
        raise CalopsError(f"Invalid setting {where}: {validation_reason(first)}.") from None
