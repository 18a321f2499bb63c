"""The simulator's lean HTTP/1.1 client against a scripted in-process socket server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from calopsctl.simulator.http1 import Http1Transport
from calopsctl.simulator.transport import ConnectionFailedError, HttpxTransport, TimedOutError
from support import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def answer(status: int, body: bytes, *extra: bytes) -> bytes:
    head = b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n" % (status, len(body))
    return head + b"".join(h + b"\r\n" for h in extra) + b"\r\n" + body


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


async def serving(handler: Handler, work: Callable[[str], Awaitable[None]]) -> None:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        await work(f"http://127.0.0.1:{port}")


def test_keep_alive_reuses_one_connection_and_posts_json() -> None:
    """Sequential requests share one connection; the POST carries its body and JSON type."""
    connections: list[int] = []
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while not reader.at_eof():
                seen.append(await read_request(reader))
                writer.write(answer(200, b'{"ok":1}'))
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    async def work(url: str) -> None:
        client = Http1Transport(url + "/api", connections=4, timeout=5)
        for _ in range(3):
            reply = await client.post("/predict", b'{"a":1}')
            assert (reply.status, reply.body) == (200, b'{"ok":1}')
        await client.aclose()

    asyncio.run(serving(handler, work))
    assert len(connections) == 1
    assert seen[0].startswith(b"POST /api/predict HTTP/1.1\r\n")
    assert b"Content-Type: application/json" in seen[0]
    assert seen[0].endswith(b'\r\n\r\n{"a":1}')


def test_chunked_answers_and_connection_close_are_handled() -> None:
    """A chunked body is reassembled; "Connection: close" makes the next request reconnect."""
    connections: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    async def work(url: str) -> None:
        client = Http1Transport(url, connections=4, timeout=5)
        for _ in range(2):
            reply = await client.get("/x")
            assert (reply.status, reply.body) == (201, b"abcde")
        await client.aclose()

    asyncio.run(serving(handler, work))
    assert len(connections) == 2


def test_idle_connection_closed_by_the_server_is_retried_once() -> None:
    """A kept-alive connection the server dropped while idle is replaced without an error."""
    served: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        served.append(1)
        writer.write(answer(200, b"{}"))  # no "connection: close", then hang up anyway
        await writer.drain()
        writer.close()

    async def work(url: str) -> None:
        client = Http1Transport(url, connections=4, timeout=5)
        assert (await client.get("/a")).status == 200
        await asyncio.sleep(0.05)
        assert (await client.get("/b")).status == 200
        await client.aclose()

    asyncio.run(serving(handler, work))
    assert len(served) == 2


def test_refused_and_silent_servers_raise_the_transport_errors() -> None:
    """Nobody listening is ConnectionFailedError; a server that never answers is TimedOutError."""

    async def refused() -> None:
        client = Http1Transport(f"http://127.0.0.1:{free_port()}", connections=1, timeout=2)
        with pytest.raises(ConnectionFailedError) as failure:
            await client.get("/healthz")
        assert failure.value.reason == "connection refused"

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.sleep(5)
        finally:
            writer.close()

    async def work(url: str) -> None:
        client = Http1Transport(url, connections=1, timeout=0.2)
        with pytest.raises(TimedOutError):
            await client.get("/healthz")
        await client.aclose()

    asyncio.run(refused())
    asyncio.run(serving(silent, work))


def test_server_hanging_up_mid_answer_is_a_connection_error() -> None:
    """An answer cut short (the API dying) is a ConnectionFailedError, not a hang."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{")
        await writer.drain()
        writer.close()

    async def work(url: str) -> None:
        client = Http1Transport(url, connections=1, timeout=5)
        with pytest.raises(ConnectionFailedError):
            await client.post("/predict", b"{}")
        await client.aclose()

    asyncio.run(serving(handler, work))


def test_only_plain_http_is_accepted() -> None:
    """https URLs are refused (the simulator hands them to httpx instead)."""
    with pytest.raises(ValueError, match="plain http"):
        Http1Transport("https://example.org", connections=1, timeout=1)


def test_httpx_transport_names_a_refused_connection() -> None:
    """The https path (httpx) gives the same short reason as the lean client for a refusal."""

    async def refused() -> None:
        client = HttpxTransport(f"http://127.0.0.1:{free_port()}", connections=1, timeout=2)
        with pytest.raises(ConnectionFailedError) as failure:
            await client.post("/predict", b"{}")
        assert failure.value.reason == "connection refused"
        await client.aclose()

    asyncio.run(refused())
