"""JSON answers, written by orjson, for the routes and the /predict handler alike."""

from __future__ import annotations

from typing import Any, Final

import orjson
from fastapi.responses import Response

JSON_MEDIA_TYPE: Final = "application/json"
# The longest piece of a request an error message repeats: ids are at most this long.
ECHO_CHARS: Final = 128
FIELD_ERRORS_STATUS: Final = 422  # its detail is a list of messages, one per field
ERROR_MEANINGS: Final = {
    400: "The Host header is not one this API answers (DNS rebinding guard).",
    404: "No such prediction awaits feedback: unknown or expired id.",
    409: "Feedback for this id was already received.",
    413: "The body is larger than this endpoint accepts, or the batch has too many rows.",
    415: "The body is not declared as application/json (Content-Type).",
    422: "The body is not valid JSON or a field is missing or impossible (one message per field).",
    503: "No model is loaded, or the prediction log cannot be written now.",
}


def json_bytes(content: Any) -> bytes:
    """``content`` as JSON; orjson writes NaN as null, never as invalid JSON."""
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def problem_bytes(detail: Any) -> bytes:
    """An error body: one sentence, or FastAPI's list of errors per field."""
    return json_bytes({"detail": detail})


def json_response(content: Any, status_code: int = 200) -> Response:
    """A JSON answer."""
    return Response(json_bytes(content), status_code=status_code, media_type=JSON_MEDIA_TYPE)


def problem(status_code: int, detail: Any) -> Response:
    """An error answer: one sentence, or FastAPI's list of errors per field."""
    return Response(problem_bytes(detail), status_code=status_code, media_type=JSON_MEDIA_TYPE)


def echo(value: object, limit: int = ECHO_CHARS) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters with an ellipsis."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def documented_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route may give."""
    from calapi.serving.schemas import FieldProblems, Problem  # schemas use ``echo``

    return {
        code: {
            "model": FieldProblems if code == FIELD_ERRORS_STATUS else Problem,
            "description": ERROR_MEANINGS.get(code, "Error"),
        }
        for code in codes
    }
