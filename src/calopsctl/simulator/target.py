"""Which API to drive, and whether it can answer before the run starts."""

from __future__ import annotations

import os
from typing import Final

from calapi.errors import CalopsError
from calopsctl.simulator.transport import Transport, TransportError

DEFAULT_URL: Final = "http://127.0.0.1:8000"
# The seed's `URL=... make simulate-stream` passed the target this way.
SEED_URL_ENV: Final = "URL"


def resolve_url(explicit: str | None) -> str:
    """``--url``/``CALOPS_URL``, else ``URL``, else the running stack's API, else the default."""
    if explicit:
        return explicit.rstrip("/")
    if os.environ.get(SEED_URL_ENV):
        return os.environ[SEED_URL_ENV].rstrip("/")
    from calopsctl.state import load_state

    state = load_state()
    if state is not None and "api" in state.ports:
        return state.url("api")
    return DEFAULT_URL


async def check_api(client: Transport, url: str) -> None:
    """Raise CalopsError with one sentence unless the API at ``url`` serves a model."""
    try:
        reply = await client.get("/healthz")
    except TransportError:
        raise CalopsError(
            f"Cannot reach the API at {url}; start it with `calops up` (or `calops serve`) "
            "or pass --url."
        ) from None
    if reply.status == 503:
        raise CalopsError(
            f"The API at {url} has no model loaded; train one with `calops train` "
            "(or point CALOPS_MODEL at one for the API) and try again."
        )
    if reply.status != 200:
        raise CalopsError(
            f"The API at {url} answered /healthz with HTTP {reply.status}; "
            "check it with `calops health`."
        )
