"""A GA Realtime client over ``picows``: the socket, nothing else.

callplane speaks the wire protocol directly rather than through the ``openai`` SDK's
connection so that the per-frame path (``input_audio_buffer.append`` for every 20 ms of a
call) is one string concatenation and one send, with no model construction; the SDK's models
are used where they pay off, in the conformance checks of the tests. The same client talks to
OpenAI and to the local engine: only the URL and the key differ.

Why picows rather than ``websockets``: every call sends 50 appends a second and receives as
many audio deltas, so the WebSocket library's cost per frame is most of what the bridge costs.
picows (Cython, callbacks instead of a task per connection, no per-send coroutine) took the
client's share of a paced relay from 74.8 to 57.3 µs of CPU per frame in ``bench/ws_stacks.py``
(docs/performance.md).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from picows import WSError, ws_connect

from callplane.transports.picows_socket import PicowsSocket

OPENAI_REALTIME_URL = "wss://api.openai.com/v1/realtime"
MAX_FRAME_BYTES = 64 * 1024 * 1024  # a session.update with long instructions is the biggest
HANDSHAKE_TIMEOUT_S = 10.0
_APPEND_HEAD = b'{"type":"input_audio_buffer.append","audio":"'
_APPEND_TAIL = b'"}'


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


class RealtimeClient:
    def __init__(self, settings: RealtimeSettings) -> None:
        self.settings = settings
        self._socket: PicowsSocket | None = None

    async def connect(self) -> None:
        if not self.settings.api_key:
            raise ValueError(
                "RealtimeSettings.api_key is empty: set the OpenAI API key (or any key for the "
                "local engine)."
            )
        url = self.settings.ws_url()
        try:
            _, socket = await ws_connect(
                PicowsSocket,
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
        assert isinstance(socket, PicowsSocket)
        self._socket = socket

    @property
    def connected(self) -> bool:
        return self._socket is not None

    async def send(self, event: dict[str, Any]) -> None:
        await self._send(json.dumps(event))

    async def append_audio(self, payload_b64: str) -> None:
        """Hot path: base64 audio straight into an append event, no JSON encoder."""
        await self._send('{"type":"input_audio_buffer.append","audio":"' + payload_b64 + '"}')

    def append_audio_now(self, payload_b64: bytes) -> bool:
        """The fast path of :meth:`append_audio`, for a caller that cannot wait (a socket
        callback): send the append unless the socket's buffer is full, in which case return
        False and send nothing (the caller then uses :meth:`append_audio`, which waits).
        ``payload_b64`` is base64 as ASCII bytes, checked by the caller."""
        socket = self._socket
        if socket is None:
            raise RealtimeClosed(None, "not connected")
        if not socket.writable.is_set():
            return False
        if not socket.send_now(_APPEND_HEAD + payload_b64 + _APPEND_TAIL):
            raise RealtimeClosed(socket.close_code, socket.close_reason or "disconnected")
        return True

    def can_send_now(self) -> bool:
        """True when :meth:`send_now` would not outrun a congested socket."""
        socket = self._socket
        return socket is not None and not socket.disconnected and socket.writable.is_set()

    def send_now(self, event: dict[str, Any]) -> None:
        """:meth:`send` without the wait for a congested socket to drain, for a caller that
        cannot wait (a socket callback); check :meth:`can_send_now` first."""
        socket = self._socket
        if socket is None or not socket.send_now(json.dumps(event)):
            raise RealtimeClosed(
                None if socket is None else socket.close_code,
                "not connected" if socket is None else socket.close_reason or "disconnected",
            )

    async def _send(self, frame: str) -> None:
        socket = self._socket
        if socket is None:
            raise RealtimeClosed(None, "not connected")
        if not socket.send_now(frame):
            raise RealtimeClosed(socket.close_code, socket.close_reason or "disconnected")
        if not socket.writable.is_set():  # the kernel's buffer is full: wait for it to drain
            await socket.writable.wait()

    def set_event_sink(self, sink: Callable[[dict[str, Any]], bool] | None) -> None:
        """Offer each server event to ``sink`` as it arrives, from the socket's callback, while
        the reader of :meth:`events` waits for the next one (waking that reader per event costs
        more than handling most events). ``sink`` returns False for an event it leaves to
        :meth:`events`; an event it declines and everything after it come from there, in
        order. None stops it."""
        socket = self._socket
        if socket is None:
            return
        if sink is None:
            socket.on_text_now = None
            return

        def event_now(data: bytes) -> bool:
            event = json.loads(data.decode("utf-8"))  # exactly what events() would decode
            return not isinstance(event, dict) or sink(event)  # events() skips non-objects

        socket.on_text_now = event_now

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Server events until the socket closes; then RealtimeClosed."""
        socket = self._socket
        if socket is None:
            raise RealtimeClosed(None, "not connected")
        while (message := await socket.receive()) is not None:
            event = json.loads(message)  # a binary frame is not Realtime protocol: fails here
            if isinstance(event, dict):
                yield event
        raise RealtimeClosed(socket.close_code, socket.close_reason or "closed")

    async def close(self) -> None:
        socket, self._socket = self._socket, None
        if socket is not None:
            await socket.close()
