"""One picows connection as an awaitable message socket, for both ends of the bridge.

picows delivers frames by callback on the event loop; the bridge's code reads messages with
``await receive()`` and writes with ``await send_text()``. This listener is that adapter:
whole messages (fragmented ones put together) queue in arrival order, the peer's close is
answered and its code kept, and a send waits while the kernel's buffer is full. The Realtime
client (``callplane.realtime.client``) and the media-stream server (``functions.stream_server``)
both use it, so the two sides of a call share one implementation.

The fast path (:attr:`PicowsSocket.on_text_now`): a call's socket carries 50 media frames a
second, and waking the reading coroutine for each (a future, a task step, the generators
between the socket and the code that forwards the audio) costs more than forwarding it. So a
consumer may take a text message synchronously, in picows's callback, when that is exactly
what the reader would do next: only while a coroutine waits in :meth:`receive` with nothing
queued. Whatever the consumer declines is queued as before, behind which everything later
queues too, so the order of messages never changes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

# Module constants: ``WSMsgType.TEXT`` is an attribute lookup on an enum class per use, and a
# frame's ``msg_type`` is always one of these members (compared with ``is``).
_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONTINUATION = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE


class PicowsSocket(WSListener):
    """A picows listener that queues messages for :meth:`receive` (see the module docstring)."""

    def __init__(self) -> None:
        self.transport: WSTransport | None = None
        self.messages: deque[str | bytes] = deque()
        self.writable = asyncio.Event()
        self.writable.set()
        self.disconnected = False
        self.close_code: int | None = None
        self.close_reason = ""
        # Offered each whole, unfragmented text message as its raw UTF-8 bytes while a
        # coroutine waits in receive() with nothing queued; returns True if it handled the
        # message (which is then not queued). It runs inside picows's callback, so it must not
        # block; if it raises, the message is queued for the reader, which meets the error
        # where errors are handled.
        self.on_text_now: Callable[[bytes], bool] | None = None
        self._reader: asyncio.Future[None] | None = None  # receive() waits on it
        self._parts: list[bytes] | None = None  # a fragmented message being put together
        self._parts_text = False

    # ---- picows callbacks (on the event loop) ------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is _TEXT and frame.fin:  # nearly every frame: first, and with few lookups
            now = self.on_text_now
            if now is not None and self._reader is not None and not self.messages:
                data = frame.get_payload_as_bytes()
                try:
                    if now(data):
                        return
                except Exception:
                    pass  # the reader gets the message, and the error (see __init__)
                self._deliver(data.decode("utf-8"))
            else:
                self._deliver(frame.get_payload_as_utf8_text())
        elif kind is _TEXT or kind is _BINARY:
            if frame.fin:
                self._deliver(frame.get_payload_as_bytes())
            else:
                self._parts, self._parts_text = [frame.get_payload_as_bytes()], kind is _TEXT
        elif kind is _CONTINUATION and self._parts is not None:
            self._parts.append(frame.get_payload_as_bytes())
            if frame.fin:
                whole = b"".join(self._parts)
                self._parts = None
                self._deliver(whole.decode("utf-8") if self._parts_text else whole)
        elif kind is _CLOSE:
            self.close_code = frame.get_close_code().value
            self.close_reason = (frame.get_close_message() or b"").decode("utf-8", "replace")
            if not transport.is_close_frame_sent:
                transport.send_close(WSCloseCode.OK)
            transport.disconnect()
        # pings are answered by picows itself (enable_auto_pong)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.disconnected = True
        self._wake()
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def _deliver(self, message: str | bytes) -> None:
        self.messages.append(message)
        self._wake()

    def _wake(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    # ---- the socket, for coroutines ------------------------------------------------------

    async def receive(self) -> str | bytes | None:
        """The next message, or None once the connection is gone and the queue is empty."""
        messages = self.messages
        while not messages:
            if self.disconnected:
                return None
            # A bare future rather than an asyncio.Event: one reader, and Event.wait's
            # bookkeeping is a measurable part of a frame's cost.
            self._reader = reader = asyncio.get_running_loop().create_future()
            try:
                await reader
            finally:
                self._reader = None
        return messages.popleft()

    def send_now(self, text: str | bytes) -> bool:
        """Queue a text message (``str``, or its UTF-8 bytes) on the connection; False if it
        is gone. picows encodes a ``str`` itself, in C."""
        transport = self.transport
        if self.disconnected or transport is None:
            return False
        transport.send(_TEXT, text)
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
