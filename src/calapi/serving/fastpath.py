"""The ASGI app uvicorn runs: every request through the guard, POST /predict straight to its
handler, the rest to FastAPI.

FastAPI's middleware stack, routing, request object and dependency machinery cost
~160-190 us a request, about four times what reading, validating and answering a
/predict body costs. So ``FastPathApp`` wraps the plain FastAPI app: POST /predict goes
to ``handlers.PredictHandler`` (the same handler the documented route calls), counted and
timed by the same recorder as ``MetricsMiddleware``; everything else (docs, the other
routes, lifespan) goes to FastAPI untouched.

The guard (``calapi.serving.guard``) checks every request here, before either path, and
its refusals are counted by the same recorder. A client that leaves before its body is
read is counted as 499 (client closed request), not as a server error.

The price is that /predict skips whatever middleware or exception handler is added to the
FastAPI app later. ``check_nothing_skipped`` runs at start-up and refuses such an app
instead of letting /predict silently miss it.
"""

from __future__ import annotations

import time
from typing import Final

from fastapi import FastAPI
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from calapi.serving.guard import RequestGuard
from calapi.serving.handlers import CLIENT_CLOSED_REQUEST, PREDICT_PATH, PredictHandler
from calapi.serving.metrics import UNMATCHED_ROUTE, RequestRecorder

JSON_HEADER: Final = (b"content-type", b"application/json")


class FastPathApp:
    """Refuses what ``guard`` refuses, answers ``POST /predict`` over plain ASGI and hands
    every other request to ``app``."""

    def __init__(
        self, app: FastAPI, handler: PredictHandler, recorder: RequestRecorder,
        guard: RequestGuard, *, route_paths: frozenset[str],
    ) -> None:  # fmt: skip
        self.app = app
        self._handler = handler
        self._recorder = recorder
        self._guard = guard
        self._paths = route_paths  # what a refusal is counted under; others are "unmatched"
        # What /predict stands in for: the metrics middleware and FastAPI's own handlers.
        self._middleware = list(app.user_middleware)
        self._exception_handlers = dict(app.exception_handlers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = _path(scope)
            refusal = self._guard.refusal(scope, path)
            if refusal is not None:
                await _answer(send, *refusal)
                route = path if path in self._paths else UNMATCHED_ROUTE
                self._recorder.record(route, scope["method"], refusal[0], 0.0)
                return
            if path == PREDICT_PATH and scope["method"] == "POST":
                await self._predict(scope, receive, send)
                return
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
            await _answer(send, status, body)
        except ClientDisconnect:
            status = CLIENT_CLOSED_REQUEST  # nobody to answer
        finally:
            self._recorder.record(PREDICT_PATH, "POST", status, time.perf_counter() - start)


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-length", str(len(body)).encode()), JSON_HEADER]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _path(scope: Scope) -> str:
    """The path the router would match: without the root path the app is mounted under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path
