"""PicowsSocket as a MessageSocket: text frames go straight to the listener (held, in order,
while there is none), a failing listener does not stop the socket, and sends are held in order
while the kernel's buffer is full."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from picows import (
    WSCloseCode,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    ws_connect,
    ws_create_server,
)
from picows.picows import _make_test_ws_frame

from callplane.transports.picows_socket import PicowsSocket
from callplane_standins.serving import bind_loopback
from tests.doubles import until


class _Transport:
    """picows's WSTransport as the socket uses it: what was sent, and the close handshake."""

    is_close_frame_sent = False

    def __init__(self) -> None:
        self.sent: list[tuple[Any, Any]] = []
        self.closed_with: list[tuple[int, bytes]] = []
        self.disconnected = False
        self.close_handshake: Any = None

    def send(self, kind: Any, data: Any) -> None:
        self.sent.append((kind, data))

    def send_close(self, code: Any, reason: bytes = b"") -> None:
        self.closed_with.append((int(code), reason))
        if not self.is_close_frame_sent:
            self.is_close_frame_sent = True
            sent = SimpleNamespace(code=code, reason=reason.decode())
            self.close_handshake = SimpleNamespace(sent=sent, recv=None)

    def disconnect(self, graceful: bool = True) -> None:
        self.disconnected = True


class _Listener:
    def __init__(self, fail_on: bytes | None = None) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.fail_on = fail_on
        self.closed: list[tuple[int | None, str]] = []

    def on_text(self, data: bytes) -> None:
        if data == self.fail_on:
            raise ValueError("not this one")
        self.got.append(("text", data))

    def on_binary(self, data: bytes) -> None:
        self.got.append(("binary", data))

    def on_close(self, code: int | None, reason: str) -> None:
        self.closed.append((code, reason))


def _frame(
    socket: PicowsSocket,
    kind: WSMsgType,
    data: bytes,
    fin: bool = True,
    transport: _Transport | None = None,
) -> None:
    frame = _make_test_ws_frame(kind, data, fin, False)
    socket.on_ws_frame(cast(WSTransport, transport or _Transport()), frame)


def _text(socket: PicowsSocket, text: str) -> None:
    _frame(socket, WSMsgType.TEXT, text.encode())


def test_messages_are_held_until_a_listener_comes_then_delivered_in_order() -> None:
    socket = PicowsSocket()
    _text(socket, "one")
    _frame(socket, WSMsgType.BINARY, b"\x00two")
    listener = _Listener()
    socket.listen(listener)
    _text(socket, "three")
    assert listener.got == [("text", b"one"), ("binary", b"\x00two"), ("text", b"three")]
    socket.listen(None)
    _text(socket, "four")  # held for the next listener
    assert len(listener.got) == 3
    other = _Listener()
    socket.listen(other)
    assert other.got == [("text", b"four")]


def test_fragments_are_put_together_and_the_close_comes_after_every_message() -> None:
    socket = PicowsSocket()
    transport = _Transport()
    socket.on_ws_connected(cast(WSTransport, transport))
    _frame(socket, WSMsgType.TEXT, b'{"a":', fin=False)
    _frame(socket, WSMsgType.CONTINUATION, b"1}")
    socket.on_ws_disconnected(cast(WSTransport, transport))
    listener = _Listener()
    socket.listen(listener)  # late: the message first, then the close
    assert listener.got == [("text", b'{"a":1}')]
    assert listener.closed == [(None, "")]
    assert socket.closed


def test_a_text_message_that_is_not_utf8_fails_the_connection_with_1007() -> None:
    """RFC 6455 section 8.1: the listener hears the close (code 1007) after what came before,
    and nothing after it; the peer gets a close frame with 1007 and is disconnected."""
    socket = PicowsSocket()
    transport = _Transport()
    socket.on_ws_connected(cast(WSTransport, transport))
    listener = _Listener()
    socket.listen(listener)
    _frame(socket, WSMsgType.TEXT, "héllo".encode(), transport=transport)
    _frame(socket, WSMsgType.TEXT, b'{"event":"media"}\xff', transport=transport)
    _frame(socket, WSMsgType.TEXT, b"after", transport=transport)  # still in picows's buffer
    assert listener.got == [("text", "héllo".encode())]
    assert listener.closed == [(1007, "a text message was not UTF-8")]
    assert transport.closed_with == [(1007, b"a text message was not UTF-8")]
    assert transport.disconnected and socket.closed and not socket.send("late")
    socket.on_ws_disconnected(cast(WSTransport, transport))
    assert len(listener.closed) == 1


def test_utf8_is_judged_on_the_whole_message_and_binary_messages_are_opaque() -> None:
    """A fragment may end inside a character (RFC 6455 section 5.6): only the reassembled
    message must be UTF-8. A binary message is not checked at all."""
    socket = PicowsSocket()
    transport = _Transport()
    socket.on_ws_connected(cast(WSTransport, transport))
    listener = _Listener()
    socket.listen(listener)
    e_acute = "é".encode()
    _frame(socket, WSMsgType.TEXT, b"caf" + e_acute[:1], fin=False, transport=transport)
    _frame(socket, WSMsgType.CONTINUATION, e_acute[1:], transport=transport)
    _frame(socket, WSMsgType.BINARY, b"\xff\xfe", transport=transport)
    assert listener.got == [("text", "café".encode()), ("binary", b"\xff\xfe")]
    assert listener.closed == [] and transport.closed_with == []
    _frame(socket, WSMsgType.TEXT, b"caf" + e_acute[:1], fin=False, transport=transport)
    _frame(socket, WSMsgType.CONTINUATION, b"!", transport=transport)  # the character is cut
    assert listener.closed == [(1007, "a text message was not UTF-8")]
    assert transport.closed_with[0][0] == 1007


def test_a_connection_picows_failed_ends_with_the_code_it_sent() -> None:
    """A frame over the size limit: picows sends 1009 and disconnects; with no close from the
    peer, the listener hears 1009 (and why), not an unexplained end."""
    socket = PicowsSocket()
    transport = _Transport()
    socket.on_ws_connected(cast(WSTransport, transport))
    listener = _Listener()
    socket.listen(listener)
    transport.send_close(WSCloseCode.MESSAGE_TOO_BIG, b"2000000 > 1048576")
    socket.on_ws_disconnected(cast(WSTransport, transport))
    assert listener.closed == [(1009, "2000000 > 1048576")]


def test_a_listener_that_raises_does_not_stop_the_socket() -> None:
    socket = PicowsSocket()
    listener = _Listener(fail_on=b"bad")
    socket.listen(listener)
    _text(socket, "bad")
    _text(socket, "good")
    assert listener.got == [("text", b"good")]


def test_send_takes_text_or_bytes_and_refuses_once_disconnected() -> None:
    socket = PicowsSocket()
    transport = _Transport()
    socket.on_ws_connected(cast(WSTransport, transport))
    assert socket.send("a") and socket.send(b"b")
    assert transport.sent == [(WSMsgType.TEXT, "a"), (WSMsgType.TEXT, b"b")]
    socket.on_ws_disconnected(cast(WSTransport, transport))
    assert not socket.send("c")
    assert socket.closed


def test_sends_while_the_peer_is_paused_are_held_and_written_in_order_on_resume() -> None:
    socket = PicowsSocket()
    transport = _Transport()
    socket.on_ws_connected(cast(WSTransport, transport))
    socket.send("1")
    socket.pause_writing()
    for n in ("2", "3", "4"):
        assert socket.send(n)
    assert [data for _, data in transport.sent] == ["1"]
    assert socket.flow.buffered == 3 and socket.flow.pauses == 1
    socket.resume_writing()
    socket.send("5")
    assert [data for _, data in transport.sent] == ["1", "2", "3", "4", "5"]
    assert socket.flow.buffered == 0 and socket.flow.open


def test_a_pause_during_the_flush_keeps_the_rest_held() -> None:
    socket = PicowsSocket()

    class Pausing(_Transport):
        def send(self, kind: Any, data: Any) -> None:
            super().send(kind, data)
            if data == "2":  # this write fills the kernel's buffer again
                socket.pause_writing()

    transport = Pausing()
    socket.on_ws_connected(cast(WSTransport, transport))
    socket.pause_writing()
    for n in ("1", "2", "3"):
        socket.send(n)
    socket.resume_writing()
    assert [data for _, data in transport.sent] == ["1", "2"]
    socket.send("4")
    socket.resume_writing()
    assert [data for _, data in transport.sent] == ["1", "2", "3", "4"]


async def test_a_peer_that_stops_reading_gets_everything_in_order_once_it_reads_again() -> None:
    """On real loopback sockets: the kernel's buffers fill, picows pauses the socket's writes,
    FlowControl holds the rest, and a resumed reader gets every message, in order."""
    served: list[PicowsSocket] = []

    def upgrade(request: WSUpgradeRequest) -> PicowsSocket:
        socket = PicowsSocket()
        served.append(socket)
        return socket

    sock = bind_loopback()
    server = await ws_create_server(upgrade, sock=sock)
    transport, client = await ws_connect(PicowsSocket, f"ws://127.0.0.1:{sock.getsockname()[1]}/")
    assert isinstance(client, PicowsSocket)
    listener = _Listener()
    client.listen(listener)
    try:
        await asyncio.sleep(0.05)
        peer = served[0]
        transport.underlying_transport.pause_reading()  # the client stops reading
        body = "x" * 300
        total = 20_000
        for n in range(total):
            assert peer.send(f"{n:06d}{body}")
        assert peer.flow.pauses >= 1 and peer.flow.buffered > 0
        transport.underlying_transport.resume_reading()
        await until(lambda: len(listener.got) >= total, "every message", timeout=10)
        assert [int(data[:6]) for _, data in listener.got] == list(range(total))
        assert peer.flow.buffered == 0 and peer.flow.open
    finally:
        transport.disconnect()
        server.close()
        await server.wait_closed()


def test_fragments_out_of_order_or_past_the_limit_fail_the_connection() -> None:
    """RFC 6455: a continuation with no message begun, or a new message inside a fragmented
    one, is a protocol error (1002); fragments adding up past the socket's limit are a message
    too big (1009). Nothing of such a message reaches the listener."""
    cases: list[tuple[list[tuple[WSMsgType, bytes, bool]], int]] = [
        ([(WSMsgType.CONTINUATION, b"x", True)], 1002),
        ([(WSMsgType.TEXT, b"a", False), (WSMsgType.TEXT, b"b", True)], 1002),
        ([(WSMsgType.TEXT, b"a", False), (WSMsgType.BINARY, b"b", False)], 1002),
        ([(WSMsgType.TEXT, b"a" * 6, False), (WSMsgType.CONTINUATION, b"b" * 5, False)], 1009),
    ]
    for frames, code in cases:
        socket = PicowsSocket()
        socket.max_message_bytes = 10
        transport = _Transport()
        socket.on_ws_connected(cast(WSTransport, transport))
        listener = _Listener()
        socket.listen(listener)
        for kind, data, fin in frames:
            _frame(socket, kind, data, fin=fin, transport=transport)
        assert listener.got == [], frames
        assert [c for c, _ in listener.closed] == [code], frames
        assert transport.closed_with[0][0] == code and transport.disconnected
