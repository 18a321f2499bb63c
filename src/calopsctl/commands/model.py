"""Model commands: train."""

from __future__ import annotations

from calapi.errors import CalopsError


def train() -> None:
    """Not built yet."""
    raise CalopsError("`calops train` is not built yet.")
