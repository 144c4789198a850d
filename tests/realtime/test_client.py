"""The Realtime client's socket handling against a real WebSocket server on loopback: whole
and fragmented messages, the server's close code, a refused handshake, and sends in order;
and over the tests' fake socket, sends held in order while the server does not keep up."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from callplane.realtime.client import RealtimeClient, RealtimeClosed, RealtimeSettings
from tests.doubles import FakeRealtime

Handler = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def server(handler: Handler, refuse: int | None = None) -> AsyncIterator[str]:
    def check(conn: ServerConnection, request: Request) -> Response | None:
        assert request.headers["Authorization"] == "Bearer sk-test"
        return conn.respond(refuse, "no\n") if refuse else None

    async with serve(handler, "127.0.0.1", 0, process_request=check) as srv:
        port = next(iter(srv.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/realtime"


def settings(url: str) -> RealtimeSettings:
    return RealtimeSettings(url=url, api_key="sk-test")


async def collect(client: RealtimeClient) -> tuple[list[dict[str, Any]], RealtimeClosed]:
    """Every event the client's handler gets until the socket closes, and the close."""
    got: list[dict[str, Any]] = []
    closed: asyncio.Future[RealtimeClosed] = asyncio.get_running_loop().create_future()
    client.listen(got.append, closed.set_result)
    return got, await asyncio.wait_for(closed, 5)


async def test_whole_and_fragmented_messages_arrive_in_order_then_the_close_code() -> None:
    big = {"type": "session.updated", "session": {"instructions": "x" * 200_000}}

    async def handler(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "session.created"}))
        text = json.dumps(big)
        await ws.send([text[:1000], text[1000:150_000], text[150_000:]])  # three frames
        await ws.send(json.dumps({"type": "response.done"}))
        await ws.close(4000, "session expired")

    async with server(handler) as url:
        client = RealtimeClient(settings(url))
        await client.connect()
        got, closed = await collect(client)
        await client.close()
    assert [e["type"] for e in got] == ["session.created", "session.updated", "response.done"]
    assert got[1] == big
    assert closed.code == 4000 and "session expired" in str(closed)


async def test_sends_arrive_in_order_and_a_send_after_the_close_raises() -> None:
    received: list[str] = []
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            assert isinstance(message, str)
            received.append(message)
            if len(received) == 1001:
                done.set()
                await ws.close(1000)

    async with server(handler) as url:
        client = RealtimeClient(settings(url))
        await client.connect()
        client.send({"type": "session.update", "session": {"type": "realtime"}})
        for i in range(1000):
            client.append_audio(f"AAAA{i:04d}".encode())
        await asyncio.wait_for(done.wait(), 5)
        _, closed = await collect(client)
        assert closed.code == 1000
        with pytest.raises(RealtimeClosed):
            client.append_audio(b"AAAA")
        await client.close()
    assert json.loads(received[0])["type"] == "session.update"
    appends = [json.loads(m) for m in received[1:]]
    assert [a["audio"] for a in appends] == [f"AAAA{i:04d}" for i in range(1000)]
    assert {a["type"] for a in appends} == {"input_audio_buffer.append"}


async def test_a_refused_handshake_is_a_realtime_closed_naming_the_url() -> None:
    async def handler(ws: ServerConnection) -> None:
        raise AssertionError("never upgraded")

    async with server(handler, refuse=401) as url:
        client = RealtimeClient(settings(url))
        refused = r"handshake with ws://127\.0\.0\.1:\d+/v1/realtime failed"
        with pytest.raises(RealtimeClosed, match=refused):
            await client.connect()
        assert not client.connected


async def test_nobody_listening_is_an_os_error_the_reconnect_loop_retries() -> None:
    async with server(lambda ws: asyncio.sleep(0)) as url:
        pass  # the port is free again
    with pytest.raises(ConnectionRefusedError):
        await RealtimeClient(settings(url)).connect()


async def test_an_empty_key_is_refused_before_connecting() -> None:
    with pytest.raises(ValueError, match="api_key is empty"):
        await RealtimeClient(RealtimeSettings(url="ws://127.0.0.1:9/")).connect()


async def test_events_that_come_before_the_handler_are_handed_to_it_in_order() -> None:
    async def handler(ws: ServerConnection) -> None:
        for i in range(6):
            await ws.send(json.dumps({"type": "server.event", "i": i}))
        await asyncio.sleep(0.05)
        await ws.send(json.dumps(["not", "an", "object"]))  # skipped
        await ws.send(json.dumps({"type": "server.event", "i": 6}))
        await ws.close(1000)

    async with server(handler) as url:
        client = RealtimeClient(settings(url))
        await client.connect()
        await asyncio.sleep(0.03)  # the first events arrive before anyone listens
        got, closed = await collect(client)
        await client.close()
    assert [e["i"] for e in got] == list(range(7))
    assert closed.code == 1000


def recorder(received: list[str], close_after: int) -> Handler:
    """A server that records the text messages it gets and closes after ``close_after``."""

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            assert isinstance(message, str)
            received.append(message)
            if len(received) == close_after:
                await ws.close(1000)

    return handler


async def test_append_audio_sends_the_append_and_raises_once_closed() -> None:
    received: list[str] = []

    async with server(recorder(received, close_after=2)) as url:
        client = RealtimeClient(settings(url))
        await client.connect()
        client.append_audio(b"AAAA")
        client.append_audio(b"BBBB")
        _, closed = await collect(client)
        assert closed.code == 1000
        with pytest.raises(RealtimeClosed):
            client.append_audio(b"CCCC")
        await client.close()
    assert [json.loads(m) for m in received] == [
        {"type": "input_audio_buffer.append", "audio": "AAAA"},
        {"type": "input_audio_buffer.append", "audio": "BBBB"},
    ]


async def test_send_keeps_order_with_appends_and_raises_before_connecting_and_once_closed() -> None:
    received: list[str] = []

    async with server(recorder(received, close_after=3)) as url:
        client = RealtimeClient(settings(url))
        with pytest.raises(RealtimeClosed, match="not connected"):
            client.send({"type": "response.cancel"})
        await client.connect()
        client.send({"type": "conversation.item.truncate", "item_id": "item_1"})
        client.append_audio(b"AAAA")
        client.send({"type": "response.create"})
        _, closed = await collect(client)
        assert closed.code == 1000
        with pytest.raises(RealtimeClosed):
            client.send({"type": "response.cancel"})
        await client.close()
    assert [json.loads(m)["type"] for m in received] == [
        "conversation.item.truncate",
        "input_audio_buffer.append",
        "response.create",
    ]


async def test_sends_to_a_congested_server_are_held_and_flushed_in_order() -> None:
    realtime = FakeRealtime()
    client = RealtimeClient(settings("ws://realtime.test/v1/realtime"), realtime.dial)
    await client.connect()
    socket = realtime.session
    client.append_audio(b"AAAA")
    socket.congest()
    for payload in (b"BBBB", b"CCCC", b"DDDD"):
        client.append_audio(payload)
    client.send({"type": "response.cancel"})
    assert len(socket.written) == 1 and socket.flow.buffered == 4
    socket.drain()
    sent = realtime.received(appends=True)
    assert [e.get("audio", e["type"]) for e in sent] == [
        "AAAA",
        "BBBB",
        "CCCC",
        "DDDD",
        "response.cancel",
    ]
    await client.close()
    assert socket.closed_with == 1000
