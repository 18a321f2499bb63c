"""The ASGI app uvicorn runs: POST /predict straight to its handler, the rest to FastAPI.

FastAPI's middleware stack, routing, request object and dependency machinery cost
~160-190 us a request, about four times what reading, validating and answering a
/predict body costs. So ``FastPathApp`` wraps the plain FastAPI app: POST /predict goes
to ``handlers.PredictHandler`` (the same handler the documented route calls), counted and
timed by the same recorder as ``MetricsMiddleware``; everything else (docs, the other
routes, lifespan) goes to FastAPI untouched.

The price is that /predict skips whatever middleware or exception handler is added to the
FastAPI app later. ``check_nothing_skipped`` runs at start-up and refuses such an app
instead of letting /predict silently miss it.
"""

from __future__ import annotations

import time
from typing import Final

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from calapi.serving.handlers import PREDICT_PATH, PredictHandler
from calapi.serving.metrics import RequestRecorder

JSON_HEADER: Final = (b"content-type", b"application/json")


class FastPathApp:
    """Answers ``POST /predict`` over plain ASGI; hands every other request to ``app``."""

    def __init__(self, app: FastAPI, handler: PredictHandler, recorder: RequestRecorder) -> None:
        self.app = app
        self._handler = handler
        self._recorder = recorder
        # What /predict stands in for: the metrics middleware and FastAPI's own handlers.
        self._middleware = list(app.user_middleware)
        self._exception_handlers = dict(app.exception_handlers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and _path(scope) == PREDICT_PATH:
            await self._predict(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def check_nothing_skipped(self) -> None:
        """Raise at start-up when the app gained middleware or handlers /predict would skip."""
        added = [
            getattr(middleware.cls, "__name__", repr(middleware.cls))
            for middleware in self.app.user_middleware
            if not any(middleware is known for known in self._middleware)
        ]
        added += [
            f"an exception handler for {key!r}"
            for key, handler in self.app.exception_handlers.items()
            if self._exception_handlers.get(key) is not handler
        ]
        if added:
            raise RuntimeError(
                f"The app gained {', '.join(added)} after create_app; POST /predict is answered "
                "before FastAPI's middleware and handlers and would skip it. Add it inside "
                "create_app and to FastPathApp."
            )

    async def _predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        status = 500
        try:
            status, body = await self._handler(scope, receive)
            headers = [(b"content-length", str(len(body)).encode()), JSON_HEADER]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            self._recorder.record(PREDICT_PATH, "POST", status, time.perf_counter() - start)


def _path(scope: Scope) -> str:
    """The path the router would match: without the root path the app is mounted under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path
