"""The one HTTP interface the simulator uses, so tests can point it at an in-process app."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import httpx


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status code and raw body."""

    status: int
    body: bytes


class TransportError(Exception):
    """The request got no HTTP answer."""


class ConnectionFailedError(TransportError):
    """Refused, reset or closed before an answer: the server is down or went away."""

    def __init__(self, detail: str, *, reason: str = "connection closed") -> None:
        super().__init__(detail)
        self.reason = reason


def failure_reason(exc: BaseException, default: str) -> str:
    """A few words for why no answer came (``connection refused``), from ``exc`` or its causes."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, ConnectionResetError | BrokenPipeError):
            return "connection reset"
        seen = seen.__cause__ or seen.__context__
    text = str(exc).lower()
    return next((f"connection {w}" for w in ("refused", "reset") if w in text), default)


class TimedOutError(TransportError):
    """No answer within the timeout."""


class Transport(Protocol):
    """GET and POST JSON against one base URL."""

    async def get(self, path: str) -> Reply: ...

    async def post(self, path: str, body: bytes) -> Reply: ...

    async def aclose(self) -> None: ...


class HttpxTransport:
    """HTTP/1.1 keep-alive over one pooled ``httpx.AsyncClient``."""

    def __init__(
        self,
        base_url: str,
        *,
        connections: int,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        import httpx

        self._errors = (httpx.TimeoutException, httpx.TransportError)
        self._connect_error = httpx.ConnectError
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._client = httpx.AsyncClient(
            base_url=base_url,
            limits=limits,
            timeout=httpx.Timeout(timeout),
            headers={"content-type": "application/json"},
            transport=transport,
        )

    async def get(self, path: str) -> Reply:
        return await self._send("GET", path, None)

    async def post(self, path: str, body: bytes) -> Reply:
        return await self._send("POST", path, body)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _send(self, method: str, path: str, body: bytes | None) -> Reply:
        timeout_error, transport_error = self._errors
        try:
            response = await self._client.request(method, path, content=body)
        except timeout_error as exc:
            raise TimedOutError(str(exc) or type(exc).__name__) from exc
        except transport_error as exc:
            connecting = isinstance(exc, self._connect_error)
            reason = failure_reason(exc, "cannot connect" if connecting else "connection closed")
            raise ConnectionFailedError(str(exc) or type(exc).__name__, reason=reason) from exc
        return Reply(response.status_code, response.content)
