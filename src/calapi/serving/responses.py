"""JSON answers, written by orjson, for the routes and the /predict handler alike."""

from __future__ import annotations

from typing import Any, Final

import orjson
from fastapi.responses import Response

from calapi.serving.schemas import Problem

JSON_MEDIA_TYPE: Final = "application/json"


def json_bytes(content: Any) -> bytes:
    """``content`` as JSON; orjson writes NaN as null, never as invalid JSON."""
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def problem_bytes(detail: Any) -> bytes:
    """An error body: one sentence, or FastAPI's list of errors per field."""
    return json_bytes({"detail": detail})


def json_response(content: Any, status_code: int = 200) -> Response:
    """A JSON answer."""
    return Response(json_bytes(content), status_code=status_code, media_type=JSON_MEDIA_TYPE)


def problem(status_code: int, detail: str) -> Response:
    """An error answer with one sentence."""
    return Response(problem_bytes(detail), status_code=status_code, media_type=JSON_MEDIA_TYPE)


def documented_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route may give."""
    return {code: {"model": Problem} for code in codes}
