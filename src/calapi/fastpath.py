"""POST /predict answered before the framework's routing: the hot path of the API.

FastAPI's routing, request object and dependency machinery cost ~160-190 us a request,
about four times what reading, validating and answering the body costs. This pure-ASGI
middleware sends POST /predict straight to ``routes.predict.answer`` (the same code the
documented FastAPI route calls) and passes everything else on to FastAPI. It sits inside
``MetricsMiddleware`` and sets ``scope["route"]`` like the router does, so the request
is counted and timed under the same route template.
"""

from __future__ import annotations

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from calapi.routes.predict import PATH, answer
from calapi.service import Service

JSON_HEADER = (b"content-type", b"application/json")


class PredictFastPath:
    """Answer ``POST /predict`` directly; hand every other request to ``app``."""

    def __init__(self, app: ASGIApp, service: Service, route: BaseRoute) -> None:
        self.app = app
        self.service = service
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or _route_path(scope) != PATH:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        status, body = await answer(self.service, scope, receive)
        headers = [(b"content-length", str(len(body)).encode()), JSON_HEADER]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _route_path(scope: Scope) -> str:
    """The path the router would match: without the root path the app is mounted under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path
