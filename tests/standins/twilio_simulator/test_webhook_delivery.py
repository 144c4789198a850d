"""How the simulator delivers webhooks when the connection fails, as Twilio does: one retry on a
connection failure (Twilio's default retry count), none on an HTTP error or a timeout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from callplane_standins.twilio_simulator.carrier import Carrier
from callplane_standins.twilio_simulator.state import StateStore
from callplane_standins.twilio_simulator.webhooks import WebhookError

Answer = Callable[[int], bytes | None]
"""Given the connection's number (0, 1, ...), the raw HTTP answer, or None to hang up."""


@asynccontextmanager
async def raw_server(answer: Answer) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A loopback HTTP server that answers (or drops) each connection's first request as told,
    then closes the connection, and keeps every request line it read."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = len(seen)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        sizes = [int(h.split(b":")[1]) for h in lines if h.lower().startswith(b"content-length")]
        length = sizes[0] if sizes else 0
        await reader.readexactly(length)
        seen.append(lines[0])
        reply = answer(number)
        if reply is not None:
            writer.write(reply)
            await writer.drain()
        writer.close()  # no answer: the peer sees the server disconnect, as on a stale keep-alive

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/status", seen
    finally:
        server.close()
        await server.wait_closed()


NO_CONTENT = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
SERVER_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\nConnection: close\r\n\r\noops"
)


@pytest.fixture
async def carrier(tmp_path: Path) -> AsyncIterator[Carrier]:
    c = Carrier(StateStore(tmp_path / "state.json"), {}, tmp_path, webhook_timeout_s=2)
    yield c
    await c.close()


async def test_a_dropped_connection_is_retried_once_and_the_callback_arrives(
    carrier: Carrier,
) -> None:
    async with raw_server(lambda n: None if n == 0 else NO_CONTENT) as (url, seen):
        body = await carrier.http_request(url, "POST", {"CallStatus": "completed"}, "token")
    assert body == ""
    assert seen == [b"POST /status HTTP/1.1"] * 2


async def test_a_connection_that_fails_twice_is_an_error_naming_the_url(carrier: Carrier) -> None:
    async with raw_server(lambda n: None) as (url, seen):
        with pytest.raises(WebhookError, match=r"POST http://127\.0\.0\.1:\d+/status failed"):
            await carrier.http_request(url, "POST", {"CallStatus": "completed"}, "token")
    assert len(seen) == 2  # the first try and one retry, no more


async def test_an_http_error_is_not_retried(carrier: Carrier) -> None:
    async with raw_server(lambda n: SERVER_ERROR) as (url, seen):
        with pytest.raises(WebhookError, match="returned HTTP 500"):
            await carrier.http_request(url, "POST", {"CallStatus": "completed"}, "token")
    assert len(seen) == 1
