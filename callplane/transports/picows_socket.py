"""One picows connection as an awaitable message socket, for both ends of the bridge.

picows delivers frames by callback on the event loop; the bridge's code reads messages with
``await receive()`` and writes with ``await send_text()``. This listener is that adapter:
whole messages (fragmented ones put together) queue in arrival order, the peer's close is
answered and its code kept, and a send waits while the kernel's buffer is full. The Realtime
client (``callplane.realtime.client``) and the media-stream server (``functions.stream_server``)
both use it, so the two sides of a call share one implementation.
"""

from __future__ import annotations

import asyncio
from collections import deque

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport


class PicowsSocket(WSListener):
    """A picows listener that queues messages for :meth:`receive` (see the module docstring)."""

    def __init__(self) -> None:
        self.transport: WSTransport | None = None
        self.messages: deque[str | bytes] = deque()
        self.arrived = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.disconnected = False
        self.close_code: int | None = None
        self.close_reason = ""
        self._parts: list[bytes] | None = None  # a fragmented message being put together
        self._parts_text = False

    # ---- picows callbacks (on the event loop) ------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT or kind == WSMsgType.BINARY:
            text = kind == WSMsgType.TEXT
            if frame.fin:
                self._deliver(
                    frame.get_payload_as_utf8_text() if text else frame.get_payload_as_bytes()
                )
            else:
                self._parts, self._parts_text = [frame.get_payload_as_bytes()], text
        elif kind == WSMsgType.CONTINUATION and self._parts is not None:
            self._parts.append(frame.get_payload_as_bytes())
            if frame.fin:
                whole = b"".join(self._parts)
                self._parts = None
                self._deliver(whole.decode("utf-8") if self._parts_text else whole)
        elif kind == WSMsgType.CLOSE:
            self.close_code = frame.get_close_code().value
            self.close_reason = (frame.get_close_message() or b"").decode("utf-8", "replace")
            if not transport.is_close_frame_sent:
                transport.send_close(WSCloseCode.OK)
            transport.disconnect()
        # pings are answered by picows itself (enable_auto_pong)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.disconnected = True
        self.arrived.set()
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def _deliver(self, message: str | bytes) -> None:
        self.messages.append(message)
        self.arrived.set()

    # ---- the socket, for coroutines ------------------------------------------------------

    async def receive(self) -> str | bytes | None:
        """The next message, or None once the connection is gone and the queue is empty."""
        while not self.messages:
            if self.disconnected:
                return None
            self.arrived.clear()
            await self.arrived.wait()
        return self.messages.popleft()

    def send_now(self, text: str) -> bool:
        """Queue a text message on the connection; False if it is gone."""
        if self.disconnected or self.transport is None:
            return False
        self.transport.send(WSMsgType.TEXT, text.encode())
        return True

    async def send_text(self, text: str) -> None:
        """Send, then wait while the kernel's buffer is full; a closed connection drops it."""
        if self.send_now(text) and not self.writable.is_set():
            await self.writable.wait()

    async def close(self, code: int = 1000, timeout_s: float = 2.0) -> None:
        """Close with ``code`` (4000-4999 for the application's reasons) and wait a moment for
        the peer's answer."""
        transport = self.transport
        if transport is None or self.disconnected:
            return
        if not transport.is_close_frame_sent:
            transport.send_close(WSCloseCode(code))
        try:
            await asyncio.wait_for(transport.wait_disconnected(), timeout_s)
        except TimeoutError:
            transport.disconnect(graceful=False)
