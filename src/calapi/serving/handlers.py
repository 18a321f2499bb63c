"""POST /predict as one plain-ASGI handler: read, validate, predict, answer.

The running app calls it before FastAPI's routing (``calapi.serving.fastpath``); the
documented FastAPI route calls the same handler, so both give the same answers.
"""

from __future__ import annotations

from typing import Any, Final

from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope

from calapi.serving.batching import ModelUnavailableError
from calapi.serving.holder import ModelHolder
from calapi.serving.parsing import BadRequestError, parse_predict_body
from calapi.serving.responses import json_bytes, problem_bytes
from calapi.serving.service import Predictions, Served

PREDICT_PATH: Final = "/predict"
# The body limit of every POST but /predict's (settings.max_body_bytes): a /feedback body
# is under 200 bytes, /reload takes none.
SMALL_BODY_BYTES: Final = 64 * 1024
SMALL_BODY_ADVICE: Final = "this endpoint takes one small JSON object"
BATCH_ADVICE: Final = "send smaller batches"
# What a request whose client left before the answer is counted as (nginx's code): it is no
# server error, so it must not feed the 5xx error-rate alert.
CLIENT_CLOSED_REQUEST: Final = 499
Answer = tuple[int, bytes]


class BodyTooLargeError(Exception):
    """The body exceeds the configured limit."""


class PredictHandler:
    """The status and JSON body answering one /predict request."""

    def __init__(
        self, predictions: Predictions, holder: ModelHolder, *, max_body_bytes: int,
        max_batch_rows: int,
    ) -> None:  # fmt: skip
        self._predictions = predictions
        self._holder = holder
        self._max_body_bytes = max_body_bytes
        self._max_batch_rows = max_batch_rows

    async def __call__(self, scope: Scope, receive: Receive) -> Answer:
        limit = self._max_body_bytes
        try:
            body = await read_limited(scope, receive, limit)
            rows = parse_predict_body(body, self._max_batch_rows)
        except BodyTooLargeError:
            return 413, problem_bytes(too_large(limit, BATCH_ADVICE))
        except BadRequestError as exc:
            return exc.status, problem_bytes(exc.detail)
        if self._holder.current is None:
            return self._no_model()
        try:
            served = await self._predictions.predict(rows)
        except ModelUnavailableError:
            return self._no_model()
        return 200, json_bytes(_shape(served, single=rows.single))

    def _no_model(self) -> Answer:
        return 503, problem_bytes(f"No model is loaded: {self._holder.problem}")


def _shape(served: Served, *, single: bool) -> dict[str, Any]:
    if single:
        return {"id": served.ids[0], "Calories": served.calories[0],
                "model_version": served.model_version}  # fmt: skip
    predictions = [
        {"id": row_id, "Calories": kcal}
        for row_id, kcal in zip(served.ids, served.calories, strict=True)
    ]
    return {"predictions": predictions, "model_version": served.model_version}


def too_large(limit: int, advice: str) -> str:
    """The 413 sentence."""
    return f"The body exceeds {limit} bytes; {advice}."


async def read_limited(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes before and while reading."""
    declared = _content_length(scope)
    if declared is not None and declared > limit:
        raise BodyTooLargeError
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None
