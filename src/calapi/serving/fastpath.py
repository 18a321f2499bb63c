"""POST /predict answered before the framework: the hot path of the API.

FastAPI's middleware stack, routing, request object and dependency machinery cost
~160-190 us a request, about four times what reading, validating and answering the body
costs. ``FastPathApi`` is the FastAPI app itself (docs, every other route, lifespan,
state), except that it sends POST /predict straight to ``routes.predict.answer``: the
same code the documented FastAPI route calls. The request is counted and timed by the
same recorder as ``MetricsMiddleware``, under the route's template.
"""

from __future__ import annotations

import time

from fastapi import FastAPI
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from calapi.serving.metrics import RequestRecorder
from calapi.serving.routes.predict import PATH, answer
from calapi.serving.service import Service

JSON_HEADER = (b"content-type", b"application/json")


class PredictFastPath:
    """Answers ``POST /predict`` over plain ASGI."""

    def __init__(self, service: Service, route: BaseRoute, recorder: RequestRecorder) -> None:
        self.service = service
        self.route = route
        self.recorder = recorder

    def handles(self, scope: Scope) -> bool:
        """True for POST /predict, the one request this path answers."""
        return scope["type"] == "http" and scope["method"] == "POST" and _route_path(scope) == PATH

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        status = 500
        # Like the router: the metrics label the request by the route's template.
        scope["route"] = self.route
        try:
            status, body = await answer(self.service, scope, receive)
            headers = [(b"content-length", str(len(body)).encode()), JSON_HEADER]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            self.recorder.record(scope, status, time.perf_counter() - start)


class FastPathApi(FastAPI):
    """FastAPI, with ``POST /predict`` answered before its middleware and routing."""

    fast_path: PredictFastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast_path = self.fast_path
        if fast_path is not None and fast_path.handles(scope):
            scope["app"] = self
            await fast_path(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path the router would match: without the root path the app is mounted under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path
