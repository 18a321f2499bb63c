"""Stack lifecycle commands: up, down, health, info, logs."""

from __future__ import annotations

from calapi.errors import CalopsError


def up() -> None:
    """Not built yet."""
    raise CalopsError("`calops up` is not built yet.")


def down() -> None:
    """Not built yet."""
    raise CalopsError("`calops down` is not built yet.")


def health() -> None:
    """Not built yet."""
    raise CalopsError("`calops health` is not built yet.")


def info() -> None:
    """Not built yet."""
    raise CalopsError("`calops info` is not built yet.")


def logs() -> None:
    """Not built yet."""
    raise CalopsError("`calops logs` is not built yet.")

