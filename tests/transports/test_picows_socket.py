"""PicowsSocket's fast path: a synchronous consumer gets a text message only while a reader
waits with nothing queued, and whatever it declines (or fails on) reaches the reader in order."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from picows import WSMsgType, WSTransport
from picows.picows import _make_test_ws_frame

from callplane.transports.picows_socket import PicowsSocket


class _Transport:
    is_close_frame_sent = False

    def __init__(self) -> None:
        self.sent: list[tuple[Any, Any]] = []

    def send(self, kind: Any, data: Any) -> None:
        self.sent.append((kind, data))


def _text(socket: PicowsSocket, text: str) -> None:
    frame = _make_test_ws_frame(WSMsgType.TEXT, text.encode(), True, False)
    socket.on_ws_frame(cast(WSTransport, _Transport()), frame)


async def test_the_consumer_is_offered_messages_only_while_a_reader_waits() -> None:
    socket = PicowsSocket()
    taken: list[bytes] = []

    def now(data: bytes) -> bool:
        taken.append(data)
        return data.startswith(b"take")

    socket.on_text_now = now
    _text(socket, "take 1")  # nobody reading: queued, not offered
    assert taken == [] and list(socket.messages) == ["take 1"]
    assert await socket.receive() == "take 1"

    reader = asyncio.ensure_future(socket.receive())
    await asyncio.sleep(0)  # the reader now waits
    _text(socket, "take 2")  # taken at once
    _text(socket, "keep 3")  # declined: queued, and wakes the reader
    _text(socket, "take 4")  # something is queued: behind it, not offered
    assert taken == [b"take 2", b"keep 3"]
    assert await reader == "keep 3"
    assert await socket.receive() == "take 4"


async def test_a_consumer_that_raises_leaves_the_message_to_the_reader() -> None:
    socket = PicowsSocket()

    def now(data: bytes) -> bool:
        raise ValueError("not now")

    socket.on_text_now = now
    reader = asyncio.ensure_future(socket.receive())
    await asyncio.sleep(0)
    _text(socket, "hello")
    assert await reader == "hello"


async def test_send_now_takes_text_or_bytes_and_refuses_once_disconnected() -> None:
    socket = PicowsSocket()
    transport = _Transport()
    socket.on_ws_connected(cast(WSTransport, transport))
    assert socket.send_now("a") and socket.send_now(b"b")
    assert transport.sent == [(WSMsgType.TEXT, "a"), (WSMsgType.TEXT, b"b")]
    socket.on_ws_disconnected(cast(WSTransport, transport))
    assert not socket.send_now("c")
    assert await socket.receive() is None
