"""One picows connection as a :class:`~callplane.transports.socket.MessageSocket`, for both ends
of the bridge: the Realtime client (``callplane.realtime.client``) and the media-stream server
(``functions.stream_server``) both use it, so the two sides of a call share one implementation.

picows delivers frames by callback on the event loop, and the bridge's code is synchronous per
frame, so a text frame goes from picows's callback straight to the listener's ``on_text``, as
the UTF-8 bytes picows read: no queue, no future, no coroutine woken per frame. Fragmented
messages are put together first; the peer's close is answered and its code kept. A text message
that is not UTF-8 fails the connection with 1007, fragments that do not make one message in
order fail it with 1002, and a message put together past ``max_message_bytes`` with 1009, as
RFC 6455 requires or allows (see :mod:`callplane.transports.socket`); picows itself checks
frame sizes, close frames and the rest of the framing. Sends go to
picows's transport at once unless the kernel's buffer is full, when the socket's
:class:`~callplane.transports.socket.FlowControl` holds them in order until it drains.
"""

from __future__ import annotations

import asyncio
import logging

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from callplane.transports.socket import (
    CLOSE_INVALID_TEXT,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_PROTOCOL_ERROR,
    SocketBase,
    is_utf8,
)

log = logging.getLogger("callplane.socket")

# Module constants: ``WSMsgType.TEXT`` is an attribute lookup on an enum class per use, and a
# frame's ``msg_type`` is always one of these members (compared with ``is``).
_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONTINUATION = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE


class PicowsSocket(WSListener, SocketBase):
    """A picows listener that is a :class:`~callplane.transports.socket.MessageSocket`.

    ``max_message_bytes`` bounds a message put together from fragments (picows bounds each
    frame, not their sum): a larger one fails the connection with 1009, so that a peer cannot
    make the socket hold an endless message."""

    max_message_bytes = 64 * 1024 * 1024

    def __init__(self) -> None:
        SocketBase.__init__(self, self._write)
        self.transport: WSTransport | None = None
        self._parts: list[bytes] | None = None  # a fragmented message being put together
        self._parts_size = 0
        self._parts_text = False

    # ---- MessageSocket -------------------------------------------------------------------

    def send(self, text: str | bytes) -> bool:
        """Send a text message now, or hold it while the peer does not keep up; False once
        the connection is gone. picows encodes a ``str`` itself, in C."""
        transport = self.transport
        if self._gone or transport is None:
            return False
        flow = self._flow
        if flow.open:
            transport.send(_TEXT, text)
        else:
            flow.hold(text)
        return True

    async def close(self, code: int = 1000, timeout_s: float = 2.0) -> None:
        """Close with ``code`` and wait a moment for the peer's answer."""
        transport = self.transport
        if transport is None or self._gone:
            return
        if not transport.is_close_frame_sent:
            transport.send_close(WSCloseCode(code))
        try:
            await asyncio.wait_for(transport.wait_disconnected(), timeout_s)
        except TimeoutError:
            transport.disconnect(graceful=False)

    def _write(self, text: str | bytes) -> None:
        transport = self.transport
        if transport is not None and not self._gone:
            transport.send(_TEXT, text)

    # ---- picows callbacks (on the event loop) ------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        # nearly every frame: first, and with few lookups
        if kind is _TEXT and frame.fin and self._parts is None:
            data = frame.get_payload_as_bytes()
            # isascii is one C pass and settles nearly every message; the rest are decoded
            if not data.isascii() and not is_utf8(data):
                self._fail(transport, CLOSE_INVALID_TEXT, "a text message was not UTF-8")
                return
            on_text = self.inbox.on_text
            if on_text is None:
                self.inbox.text(data)
                return
            try:
                on_text(data)
            except Exception:
                log.exception("a socket listener failed on a message; the socket goes on")
        elif (kind is _TEXT or kind is _BINARY) and self._parts is not None:
            # a new message before the fragmented one ended (RFC 6455 section 5.4)
            self._fail(transport, CLOSE_PROTOCOL_ERROR, "fragments of two messages interleaved")
        elif kind is _TEXT or kind is _BINARY:
            if frame.fin:
                self.inbox.binary(frame.get_payload_as_bytes())
            else:
                first = frame.get_payload_as_bytes()
                self._parts, self._parts_text = [first], kind is _TEXT
                self._parts_size = len(first)
        elif kind is _CONTINUATION and self._parts is None:
            self._fail(transport, CLOSE_PROTOCOL_ERROR, "a continuation frame began no message")
        elif kind is _CONTINUATION and self._parts is not None:
            part = frame.get_payload_as_bytes()
            self._parts.append(part)
            self._parts_size += len(part)
            if self._parts_size > self.max_message_bytes:
                self._parts = None
                self._fail(
                    transport,
                    CLOSE_MESSAGE_TOO_BIG,
                    f"a message was over {self.max_message_bytes} bytes",
                )
            elif frame.fin:
                whole = b"".join(self._parts)
                self._parts = None
                if not self._parts_text:
                    self.inbox.binary(whole)
                elif whole.isascii() or is_utf8(whole):  # a fragment may split a character
                    self.inbox.text(whole)
                else:
                    self._fail(transport, CLOSE_INVALID_TEXT, "a text message was not UTF-8")
        elif kind is _CLOSE:
            inbox = self.inbox
            inbox.close_code = frame.get_close_code().value
            inbox.close_reason = (frame.get_close_message() or b"").decode("utf-8", "replace")
            if not transport.is_close_frame_sent:
                transport.send_close(WSCloseCode.OK)
            transport.disconnect()
        # pings are answered by picows itself (enable_auto_pong)

    def _fail(self, transport: WSTransport, code: int, why: str) -> None:
        """Fail the connection (RFC 6455 section 7.1.7): close with ``code`` and disconnect.
        The listener hears the close at once, with ``code`` and ``why``, after any message
        held for it; nothing that arrives later reaches it."""
        log.warning("closing a WebSocket with %d: %s", code, why)
        self._gone = True  # no data frame may follow the close frame
        self._flow.discard()
        self.inbox.peer_gone(code, why)
        if not transport.is_close_frame_sent:
            transport.send_close(WSCloseCode(code), why.encode())
        transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._gone = True
        self._flow.discard()
        inbox = self.inbox
        code, reason = inbox.close_code, inbox.close_reason
        handshake = transport.close_handshake
        if code is None and handshake is not None and handshake.sent is not None:
            # The peer sent no close, this side did: picows itself fails a connection whose
            # frame is too large (1009) or malformed (1002), and that code says why it ended.
            code, reason = handshake.sent.code.value, handshake.sent.reason or ""
        inbox.peer_gone(code, reason)

    def pause_writing(self) -> None:
        self._flow.pause_writing()

    def resume_writing(self) -> None:
        self._flow.resume_writing()
