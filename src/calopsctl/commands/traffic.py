"""Traffic commands: simulate."""

from __future__ import annotations

from calapi.errors import CalopsError


def simulate() -> None:
    """Not built yet."""
    raise CalopsError("`calops simulate` is not built yet.")

