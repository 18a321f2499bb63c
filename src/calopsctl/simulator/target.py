"""Which API to drive, and whether it can answer before the run starts."""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from pathlib import Path
from typing import Final

from calapi.errors import CalopsError
from calopsctl.services import API, loopback_url
from calopsctl.simulator.transport import TimedOutError, Transport, TransportError

DEFAULT_URL: Final = loopback_url(API.default_port)
# /healthz answers at once when the API is up; waiting longer only delays saying it is not.
CHECK_TIMEOUT_S: Final = 5.0


def resolve_url(explicit: str | None, *, seed_url: str | None, home: Path) -> str:
    """``--url``/``CALOPS_URL``, else ``URL``, else the stack recorded in ``home``, else 8000."""
    for given in (explicit, seed_url):
        if given:
            return given.rstrip("/")
    from calopsctl.state import load_state

    state = load_state(home)
    if state is not None and API.name in state.ports:
        return state.url(API.name)
    return DEFAULT_URL


async def check_api(client: Transport, url: str, *, timeout: float = CHECK_TIMEOUT_S) -> None:
    """Raise CalopsError with one sentence unless the API at ``url`` serves a model."""
    try:
        async with asyncio.timeout(timeout):
            reply = await client.get("/healthz")
    except (TimeoutError, TimedOutError):
        raise CalopsError(
            f"The API at {url} did not answer /healthz within {timeout:g}s; check it with "
            "`calops health`, or pass --url if it is not the API you meant."
        ) from None
    except TransportError:
        raise CalopsError(
            f"Cannot reach the API at {url}; start it with `calops up` (or `calops serve`) "
            "or pass --url."
        ) from None
    if reply.status == HTTPStatus.SERVICE_UNAVAILABLE:
        raise CalopsError(
            f"The API at {url} has no model loaded; train one with `calops train` "
            "(or point CALOPS_MODEL at one for the API) and try again."
        )
    if reply.status != HTTPStatus.OK:
        raise CalopsError(
            f"The API at {url} answered /healthz with HTTP {reply.status}; "
            "check it with `calops health`."
        )
