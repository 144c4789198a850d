"""A Starlette/FastAPI WebSocket as a :class:`~callplane.transports.socket.MessageSocket`.

ASGI only offers ``await receive()`` and ``await send()``, while the bridge's code is
synchronous per frame. So a reader task awaits each message and hands it to the socket's
listener, and :meth:`AsgiSocket.send` puts messages on a queue that a writer task sends in
order. The writer's queue is the measure of congestion: past :data:`HIGH_WATER` messages the
socket's :class:`~callplane.transports.socket.FlowControl` counts the peer as paused (it holds
further messages, in order) until the writer has brought the queue down to
:data:`LOW_WATER`. The writer sleeps only while the queue is empty, and one wake-up sends
everything queued by then.

The picows stream server (``functions.stream_server``) serves the same streams without these
tasks; this adapter is for the media app's ``/twilio/media`` route (what Modal's ASGI serving
and uvicorn run).

RFC 6455's UTF-8 rule is the ASGI server's here: it hands the app a text message as ``str``,
so it has decoded it, and it fails the connection with 1007 when it cannot (the disconnect's
code reaches the listener). Either task failing in a way the adapter does not expect is a fault
of this side: it is logged once, the socket is gone with code 1011 (the listener hears it) and
closes with that code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from callplane.transports.socket import SocketBase

log = logging.getLogger("callplane.socket")

CLOSE_INTERNAL_ERROR = 1011
HIGH_WATER = 64  # messages queued for the writer: about a second of a call's audio
LOW_WATER = 16
CLOSE_FLUSH_S = 2.0  # how long close() lets the writer finish what is queued


class AsgiSocket(SocketBase):
    """An accepted Starlette WebSocket; :meth:`start` its tasks, :meth:`close` when done."""

    def __init__(self, ws: WebSocket) -> None:
        super().__init__(self._enqueue)
        self.ws = ws
        self._queue: deque[str] = deque()
        self._writer_waits: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._failed_with: int | None = None  # the close code, when a task failed

    def start(self) -> None:
        """Start reading and writing (call once, after ``accept``)."""
        self._tasks = [
            asyncio.create_task(self._read(), name="asgi-socket-read"),
            asyncio.create_task(self._write(), name="asgi-socket-write"),
        ]

    # ---- MessageSocket -------------------------------------------------------------------

    async def close(self, code: int = 1000) -> None:
        """Send what is queued (for a moment at most), close with ``code``, stop the tasks."""
        if not self._gone and self._tasks:
            deadline = asyncio.get_running_loop().time() + CLOSE_FLUSH_S
            while (self._queue or self._flow.buffered) and not self._gone:
                if asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.01)
        self._mark_gone(None, "")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                await self.ws.close(code=self._failed_with or code)

    # ---- the tasks -------------------------------------------------------------------------

    def _enqueue(self, text: str | bytes) -> None:
        queue = self._queue
        queue.append(text if isinstance(text, str) else text.decode("utf-8"))
        waiting = self._writer_waits
        if waiting is not None and not waiting.done():
            waiting.set_result(None)
        if len(queue) >= HIGH_WATER:
            self._flow.pause_writing()

    async def _write(self) -> None:
        queue = self._queue
        flow = self._flow
        ws = self.ws
        try:
            while True:
                while not queue:
                    self._writer_waits = asyncio.get_running_loop().create_future()
                    try:
                        await self._writer_waits
                    finally:
                        self._writer_waits = None
                await ws.send_text(queue.popleft())
                if flow.write_paused and len(queue) <= LOW_WATER:
                    flow.resume_writing()  # held messages join the queue, in order
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._mark_gone(None, "")
        except Exception as exc:
            self._task_failed("writing", exc)

    async def _read(self) -> None:
        inbox = self.inbox
        code: int | None = None
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    code = message.get("code")
                    break
                text = message.get("text")
                if text is not None:
                    inbox.text(text.encode("utf-8"))
                else:
                    inbox.binary(bytes(message.get("bytes") or b""))
        except (WebSocketDisconnect, RuntimeError):
            pass
        except Exception as exc:
            self._task_failed("reading", exc)
            return
        self._mark_gone(code, "")

    def _task_failed(self, what: str, exc: Exception) -> None:
        log.error("a media socket failed %s; the connection is closed", what, exc_info=exc)
        self._failed_with = CLOSE_INTERNAL_ERROR
        self._mark_gone(CLOSE_INTERNAL_ERROR, f"the socket failed {what}: {exc}")

    def _mark_gone(self, code: int | None, reason: str) -> None:
        if self._gone:
            return
        self._gone = True
        self._queue.clear()
        self._flow.discard()
        self.inbox.peer_gone(code, reason)
