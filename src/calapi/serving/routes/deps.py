"""What route handlers share: the service, and JSON answers rendered by orjson."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from fastapi.responses import Response

from calapi.serving.service import Service


def get_service(request: Request) -> Service:
    """The app's service, built by create_app."""
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


def json_response(content: Any, status_code: int = 200) -> Response:
    """A JSON answer; orjson writes NaN as null, never as invalid JSON."""
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status_code,
        media_type="application/json",
    )


def problem(status_code: int, detail: str) -> Response:
    """An error answer with one sentence."""
    return json_response({"detail": detail}, status_code)


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route may give."""
    from calapi.serving.schemas import Problem

    return {code: {"model": Problem} for code in codes}
