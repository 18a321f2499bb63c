"""The serve command: run the inference API in the foreground."""

from __future__ import annotations

from calapi.errors import CalopsError


def serve() -> None:
    """Not built yet."""
    raise CalopsError("`calops serve` is not built yet.")
