"""The object the root callback puts on ``ctx.obj``: what every command of one run shares."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from calopsctl.settings import CliSettings


class Application:
    """One per invocation; the settings are read on first use, so `--help` never reads them."""

    @cached_property
    def settings(self) -> CliSettings:
        from calopsctl.settings import CliSettings, build

        return build(CliSettings)


def settings(ctx: typer.Context) -> CliSettings:
    """The invocation's settings, from the ``Application`` on ``ctx.obj``."""
    return ctx.ensure_object(Application).settings
