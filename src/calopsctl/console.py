"""Terminal output: rich on a TTY, plain lines otherwise, JSON on request, one-line errors."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from enum import Enum
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from calapi.errors import CalopsError

P = ParamSpec("P")
R = TypeVar("R")
E = TypeVar("E", bound=Enum)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def interactive() -> bool:
    """True when stdout is a terminal: rich tables and progress bars, else plain lines."""
    return out.is_terminal and sys.stdout.isatty()


def print_json(data: Any) -> None:
    """Write ``data`` as JSON on stdout (no colour, no wrapping) for scripts."""
    sys.stdout.write(json.dumps(data, indent=2, default=str, allow_nan=True) + "\n")


def fail(message: str) -> None:
    """Print one error sentence on stderr, as written: brackets in it are text, not markup."""
    err.print(f"[bold red]Error:[/] {escape(message)}")


def one_of(kind: type[E]) -> Callable[[str | E], E]:
    """A Typer ``parser=`` for an enum option: a member, or a usage error listing the choices.

    Typer validates enum options with pydantic, whose error text starts "Value error, ";
    parsing here keeps the message to the one sentence a user needs.
    """

    def parse(value: str | E) -> E:
        if isinstance(value, kind):
            return value
        for member in kind:
            if member.value == value:
                return member
        choices = ", ".join(str(member.value) for member in kind)
        raise typer.BadParameter(f"{value!r} is not one of {choices}.")

    return parse


def expected_failures(command: Callable[P, R]) -> Callable[P, R]:
    """Turn a ``CalopsError`` from ``command`` into one line on stderr and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except CalopsError as exc:
            fail(str(exc))
            raise typer.Exit(code=1) from None
        except KeyboardInterrupt:
            err.print("Interrupted.")
            raise typer.Exit(code=130) from None

    return wrapper
