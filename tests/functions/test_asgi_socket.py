"""The media app's ASGI adapter: messages reach the listener from its reader task, sends keep
their order, and a writer that falls behind pauses the socket's flow control until it has
caught up."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from starlette.websockets import WebSocket, WebSocketState

from functions.asgi_socket import HIGH_WATER, LOW_WATER, AsgiSocket
from tests.doubles import until


class FakeWebSocket:
    """Starlette's WebSocket as the adapter uses it; ``gate`` holds every send while clear."""

    application_state = WebSocketState.CONNECTED

    def __init__(self) -> None:
        self.inbound: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.closed_with: int | None = None

    async def receive(self) -> dict[str, Any]:
        return await self.inbound.get()

    async def send_text(self, text: str) -> None:
        await self.gate.wait()
        self.sent.append(text)

    async def close(self, code: int = 1000) -> None:
        self.closed_with = code
        self.application_state = WebSocketState.DISCONNECTED


class Listener:
    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.closed: list[int | None] = []

    def on_text(self, data: bytes) -> None:
        self.got.append(data)

    def on_binary(self, data: bytes) -> None:
        self.got.append(b"binary:" + data)

    def on_close(self, code: int | None, reason: str) -> None:
        self.closed.append(code)


async def test_messages_reach_the_listener_and_the_disconnect_is_the_close() -> None:
    ws = FakeWebSocket()
    socket = AsgiSocket(cast(WebSocket, ws))
    listener = Listener()
    socket.listen(listener)
    socket.start()
    await ws.inbound.put({"type": "websocket.receive", "text": "héllo"})
    await ws.inbound.put({"type": "websocket.receive", "bytes": b"\x01"})
    await ws.inbound.put({"type": "websocket.disconnect", "code": 1001})
    await until(lambda: bool(listener.closed), "the close")
    assert listener.got == ["héllo".encode(), b"binary:\x01"]
    assert listener.closed == [1001] and socket.closed
    assert not socket.send("late")
    await socket.close()


async def test_a_writer_that_falls_behind_pauses_the_flow_until_it_caught_up() -> None:
    ws = FakeWebSocket()
    socket = AsgiSocket(cast(WebSocket, ws))
    socket.start()
    ws.gate.clear()  # the peer reads nothing
    total = HIGH_WATER + 40
    for n in range(total):
        assert socket.send(f"{n}")
    await asyncio.sleep(0.01)
    assert socket.flow.write_paused and socket.flow.pauses == 1
    assert socket.flow.buffered == total - HIGH_WATER
    ws.gate.set()
    await until(lambda: len(ws.sent) == total, "every message")
    assert ws.sent == [f"{n}" for n in range(total)]
    assert not socket.flow.write_paused and socket.flow.buffered == 0
    assert LOW_WATER < HIGH_WATER
    await socket.close(4000)
    assert ws.closed_with == 4000


async def test_a_reader_that_fails_unexpectedly_ends_the_socket_as_an_internal_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A message the adapter cannot read (here an ASGI event without a type) is this side's
    fault: logged once, the listener hears 1011, and the socket closes with 1011."""
    ws = FakeWebSocket()
    socket = AsgiSocket(cast(WebSocket, ws))
    listener = Listener()
    socket.listen(listener)
    socket.start()
    await ws.inbound.put({"text": "no type"})
    await until(lambda: bool(listener.closed), "the close")
    assert listener.closed == [1011] and socket.closed
    assert len([r for r in caplog.records if r.exc_info is not None]) == 1
    await socket.close()
    assert ws.closed_with == 1011
