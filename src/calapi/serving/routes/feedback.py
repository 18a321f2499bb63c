"""POST /feedback: the true value for an earlier prediction."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from calapi.serving.predlog import AlreadyAnsweredError, LogUnavailableError, UnknownIdError
from calapi.serving.responses import documented_errors, json_response, problem
from calapi.serving.routes.deps import FeedbackDep
from calapi.serving.schemas import FeedbackIn, FeedbackOut

router = APIRouter(tags=["feedback"])


@router.post(
    "/feedback",
    summary="Send the true Calories of an earlier prediction",
    response_model=FeedbackOut,
    responses=documented_errors(404, 409, 503),
)
async def feedback(body: FeedbackIn, matcher: FeedbackDep) -> Response:
    """Match ground truth with its prediction, made by any API process: 404 unknown or expired
    id, 409 already answered, 503 when the prediction log cannot be written now."""
    try:
        outcome = await matcher.answer(body.id, body.Calories)
    except UnknownIdError:
        detail = f"No prediction with id {body.id!r} awaits feedback (unknown or expired)."
        return problem(404, detail)
    except AlreadyAnsweredError:
        return problem(409, f"Feedback for id {body.id!r} was already received.")
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
