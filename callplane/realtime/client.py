"""A GA Realtime client over ``picows``: the socket, nothing else.

callplane speaks the wire protocol directly rather than through the ``openai`` SDK's
connection so that the per-frame path (``input_audio_buffer.append`` for every 20 ms of a
call) is one string concatenation and one send, with no model construction; the SDK's models
are used where they pay off, in the conformance checks of the tests. The same client talks to
OpenAI and to the local engine: only the URL and the key differ.

Why picows rather than ``websockets``: every call sends 50 appends a second and receives as
many audio deltas, so the WebSocket library's cost per frame is most of what the bridge costs.
picows (Cython, callbacks instead of a task per connection, no per-send coroutine) relays a
paced frame for about a third of the CPU of ``websockets`` in bench/relay.py's setting
(docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from picows import WSCloseCode, WSError, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

OPENAI_REALTIME_URL = "wss://api.openai.com/v1/realtime"
MAX_FRAME_BYTES = 64 * 1024 * 1024  # a session.update with long instructions is the biggest
HANDSHAKE_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class RealtimeSettings:
    """Where the Realtime API is: OpenAI in production, the local engine offline."""

    url: str = OPENAI_REALTIME_URL
    api_key: str = ""
    model: str = "gpt-realtime"
    # A GA session lasts at most 60 minutes; renew comfortably before that.
    session_limit_s: float = 60 * 60
    renew_margin_s: float = 120

    def ws_url(self) -> str:
        return f"{self.url}?{urlencode({'model': self.model})}"


class RealtimeClosed(Exception):
    """The Realtime socket closed; ``code`` is the WebSocket close code if one was received."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"Realtime socket closed (code {code}): {reason}")
        self.code = code


class _Socket(WSListener):
    """picows calls this on the event loop for every frame; it queues whole text messages,
    answers the server's close, and tracks write back-pressure."""

    def __init__(self) -> None:
        self.messages: deque[str] = deque()
        self.arrived = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.disconnected = False
        self.close_code: int | None = None
        self.close_reason = ""
        self._parts: list[bytes] | None = None  # a fragmented text message being put together

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT:
            if frame.fin:
                self.messages.append(frame.get_payload_as_utf8_text())
                self.arrived.set()
            else:
                self._parts = [frame.get_payload_as_bytes()]
        elif kind == WSMsgType.CONTINUATION and self._parts is not None:
            self._parts.append(frame.get_payload_as_bytes())
            if frame.fin:
                self.messages.append(b"".join(self._parts).decode("utf-8"))
                self._parts = None
                self.arrived.set()
        elif kind == WSMsgType.CLOSE:
            self.close_code = frame.get_close_code().value
            self.close_reason = (frame.get_close_message() or b"").decode("utf-8", "replace")
            if not transport.is_close_frame_sent:
                transport.send_close(WSCloseCode.OK)
            transport.disconnect()
        # binary frames are not part of the Realtime protocol; pings are answered by picows

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.disconnected = True
        self.arrived.set()
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


class RealtimeClient:
    def __init__(self, settings: RealtimeSettings) -> None:
        self.settings = settings
        self._transport: WSTransport | None = None
        self._socket: _Socket | None = None

    async def connect(self) -> None:
        if not self.settings.api_key:
            raise ValueError(
                "RealtimeSettings.api_key is empty: set the OpenAI API key (or any key for the "
                "local engine)."
            )
        url = self.settings.ws_url()
        try:
            transport, socket = await ws_connect(
                _Socket,
                url,
                ssl_context=ssl.create_default_context() if url.startswith("wss:") else None,
                extra_headers={"Authorization": f"Bearer {self.settings.api_key}"},
                websocket_handshake_timeout=HANDSHAKE_TIMEOUT_S,
                max_frame_size=MAX_FRAME_BYTES,
            )
        except WSError as exc:  # refused upgrade (401, 404, ...) or a malformed handshake
            raise RealtimeClosed(None, f"handshake with {self.settings.url} failed: {exc}") from exc
        except TimeoutError as exc:
            raise RealtimeClosed(None, f"no handshake answer from {self.settings.url}") from exc
        assert isinstance(socket, _Socket)
        self._transport, self._socket = transport, socket

    @property
    def connected(self) -> bool:
        return self._transport is not None

    async def send(self, event: dict[str, Any]) -> None:
        await self._send(json.dumps(event))

    async def append_audio(self, payload_b64: str) -> None:
        """Hot path: base64 audio straight into an append event, no JSON encoder."""
        await self._send('{"type":"input_audio_buffer.append","audio":"' + payload_b64 + '"}')

    async def _send(self, frame: str) -> None:
        transport, socket = self._transport, self._socket
        if transport is None or socket is None:
            raise RealtimeClosed(None, "not connected")
        if socket.disconnected:
            raise RealtimeClosed(socket.close_code, socket.close_reason or "disconnected")
        transport.send(WSMsgType.TEXT, frame.encode())
        if not socket.writable.is_set():  # the kernel's buffer is full: wait for it to drain
            await socket.writable.wait()

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Server events until the socket closes; then RealtimeClosed."""
        socket = self._socket
        if socket is None:
            raise RealtimeClosed(None, "not connected")
        while True:
            while socket.messages:
                event = json.loads(socket.messages.popleft())
                if isinstance(event, dict):
                    yield event
            if socket.disconnected:
                raise RealtimeClosed(socket.close_code, socket.close_reason or "closed")
            socket.arrived.clear()
            await socket.arrived.wait()

    async def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is None:
            return
        if not transport.is_disconnected:
            if not transport.is_close_frame_sent:
                transport.send_close(WSCloseCode.OK)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(transport.wait_disconnected(), CLOSE_TIMEOUT_S)
            transport.disconnect()
