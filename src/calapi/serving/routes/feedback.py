"""POST /feedback: the true value for an earlier prediction."""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import Response

from calapi.serving.handlers import (
    SMALL_BODY_ADVICE,
    SMALL_BODY_BYTES,
    BodyTooLargeError,
    read_limited,
    too_large,
)
from calapi.serving.parsing import BadRequestError, parse_feedback_body
from calapi.serving.predlog import AlreadyAnsweredError, LogUnavailableError, UnknownIdError
from calapi.serving.responses import documented_errors, echo, json_response, problem
from calapi.serving.routes.deps import FeedbackDep
from calapi.serving.schemas import FeedbackIn, FeedbackOut

FEEDBACK_PATH: Final = "/feedback"
router = APIRouter(tags=["feedback"])


@router.post(
    FEEDBACK_PATH,
    summary="Send the true Calories of an earlier prediction",
    response_model=FeedbackOut,
    responses=documented_errors(404, 409, 413, 415, 422, 503),
)
async def feedback(request: Request, matcher: FeedbackDep) -> Response:
    """Match ground truth with its prediction, made by any API process: 404 unknown or expired
    id, 409 already answered, 503 when the prediction log cannot be written now. The id must
    have the type it was predicted with: ``1`` and ``"1"`` are different ids."""
    try:
        body = await _read(request)
    except BodyTooLargeError:
        return problem(413, too_large(SMALL_BODY_BYTES, SMALL_BODY_ADVICE))
    except BadRequestError as exc:
        return problem(exc.status, exc.detail)
    try:
        outcome = await matcher.answer(body.id, body.Calories)
    except UnknownIdError:
        detail = f"No prediction with id {echo(body.id)} awaits feedback (unknown or expired)."
        return problem(404, detail)
    except AlreadyAnsweredError:
        return problem(409, f"Feedback for id {echo(body.id)} was already received.")
    except LogUnavailableError as exc:
        return problem(503, str(exc))
    return json_response(
        {
            "id": body.id,
            "Calories": outcome.actual,
            "predicted": outcome.predicted,
            "error": outcome.predicted - outcome.actual,
            "squared_log_error": outcome.squared_log_error,
            "lag_seconds": outcome.lag_seconds,
            "model_version": outcome.model_version,
        }
    )


async def _read(request: Request) -> FeedbackIn:
    """The body, read up to SMALL_BODY_BYTES (the guard refuses a larger declared length)."""
    raw = await read_limited(request.scope, request.receive, SMALL_BODY_BYTES)
    return parse_feedback_body(raw)
