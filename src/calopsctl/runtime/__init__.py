"""Ways to run the stack (Docker Compose or local processes) behind one interface."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from calapi.errors import CalopsError
from calopsctl.runtime.base import Runtime
from calopsctl.runtime.docker import DockerRuntime, engine_answers
from calopsctl.runtime.local import LocalRuntime
from calopsctl.services import RuntimeChoice

if TYPE_CHECKING:
    from calopsctl.settings import CliSettings


@dataclass(frozen=True)
class Selection:
    """The runtime chosen and the reason, which `calops up` tells the user."""

    runtime: Runtime
    reason: str


def runtime_named(name: str, settings: CliSettings) -> Runtime:
    """The runtime recorded in a stack state ("docker" or "local")."""
    if name == "docker":
        return DockerRuntime(settings.home, overrides=settings.compose_files)
    return LocalRuntime(settings.home)


def select_runtime(
    choice: RuntimeChoice, settings: CliSettings, *, answers: Callable[[], bool] = engine_answers
) -> Selection:
    """``auto``: Docker when an engine answers, else local processes; explicit choices checked."""
    if choice == RuntimeChoice.LOCAL:
        return Selection(runtime_named("local", settings), "asked for with --runtime local")
    engine = settings.docker_host
    if answers():
        reason = (
            "asked for with --runtime docker"
            if choice == RuntimeChoice.DOCKER
            else f"a Docker engine answers at {engine}"
        )
        return Selection(runtime_named("docker", settings), reason)
    if choice == RuntimeChoice.DOCKER:
        raise CalopsError(
            f"Docker was asked for but no engine answers at {engine}; "
            "start Docker or use --runtime local."
        )
    return Selection(runtime_named("local", settings), f"no Docker engine answers at {engine}")
