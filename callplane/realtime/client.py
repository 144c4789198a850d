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
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from picows import WSError, ws_connect

from callplane.transports.picows_socket import PicowsSocket
from callplane.transports.socket import MessageSocket

log = logging.getLogger("callplane.realtime")

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
    # How long a call waits on hold for a lost session to come back (reconnecting with capped
    # exponential backoff) before it ends as realtime_unavailable. Long enough to ride out a
    # deploy or a brief network partition; short enough that nobody holds for minutes.
    outage_budget_s: float = 30.0

    def ws_url(self) -> str:
        return f"{self.url}?{urlencode({'model': self.model})}"


class RealtimeClosed(Exception):
    """The Realtime socket closed; ``code`` is the WebSocket close code if one was received."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"Realtime socket closed (code {code}): {reason}")
        self.code = code


# Opens the WebSocket: (url, request headers) -> a connected socket. The default dials with
# picows; tests pass one that returns a fake socket.
Dial = Callable[[str, dict[str, str]], Awaitable[MessageSocket]]
EventHandler = Callable[[dict[str, Any]], None]
CloseHandler = Callable[[RealtimeClosed], None]


async def dial_picows(url: str, headers: dict[str, str]) -> MessageSocket:
    """Open ``url`` with picows (TLS for ``wss:``)."""
    try:
        _, socket = await ws_connect(
            PicowsSocket,
            url,
            ssl_context=ssl.create_default_context() if url.startswith("wss:") else None,
            extra_headers=headers,
            websocket_handshake_timeout=HANDSHAKE_TIMEOUT_S,
            max_frame_size=MAX_FRAME_BYTES,
        )
    except WSError as exc:  # refused upgrade (401, 404, ...) or a malformed handshake
        raise RealtimeClosed(None, f"handshake with {url.split('?')[0]} failed: {exc}") from exc
    except TimeoutError as exc:
        raise RealtimeClosed(None, f"no handshake answer from {url.split('?')[0]}") from exc
    assert isinstance(socket, PicowsSocket)
    return socket


class RealtimeClient:
    """One Realtime session's socket: events in through a handler, events out without a wait.

    :meth:`listen` registers the handler that gets every server event, synchronously, as the
    socket delivers it, and the handler told once the socket has closed (unless this side
    closed it with :meth:`close`). :meth:`send` and :meth:`append_audio` never wait: while the
    server does not keep up, the socket's flow control holds what is sent, in order. Both
    raise :class:`RealtimeClosed` once the socket is gone.
    """

    def __init__(self, settings: RealtimeSettings, dial: Dial | None = None) -> None:
        self.settings = settings
        self._dial = dial or dial_picows
        self._socket: MessageSocket | None = None
        self._on_event: EventHandler | None = None
        self._on_close: CloseHandler | None = None

    async def connect(self) -> None:
        if not self.settings.api_key:
            raise ValueError(
                "RealtimeSettings.api_key is empty: set the OpenAI API key (or any key for the "
                "local engine)."
            )
        headers = {"Authorization": f"Bearer {self.settings.api_key}"}
        self._socket = socket = await self._dial(self.settings.ws_url(), headers)
        if self._on_event is not None:
            socket.listen(self)

    @property
    def connected(self) -> bool:
        return self._socket is not None

    @property
    def socket(self) -> MessageSocket | None:
        """The session's socket once connected (its flow control shows congestion)."""
        return self._socket

    def listen(self, on_event: EventHandler, on_close: CloseHandler) -> None:
        """Hand every server event to ``on_event`` (those that came before too) and the
        socket's end to ``on_close``."""
        self._on_event = on_event
        self._on_close = on_close
        if self._socket is not None:
            self._socket.listen(self)

    def send(self, event: dict[str, Any]) -> None:
        """Send a client event (held in order while the socket is congested)."""
        socket = self._socket
        if socket is None or not socket.send(json.dumps(event)):
            raise self._closed()

    def append_audio(self, payload_b64: bytes) -> None:
        """The per-frame path: base64 audio (ASCII bytes, checked by the transport) straight
        into an append event, no JSON encoder."""
        socket = self._socket
        if socket is None or not socket.send(_APPEND_HEAD + payload_b64 + _APPEND_TAIL):
            raise self._closed()

    def _closed(self) -> RealtimeClosed:
        socket = self._socket
        if socket is None:
            return RealtimeClosed(None, "not connected")
        return RealtimeClosed(socket.close_code, socket.close_reason or "disconnected")

    # ---- SocketListener ------------------------------------------------------------------------

    def on_text(self, data: bytes) -> None:
        event = json.loads(data)
        if isinstance(event, dict):  # anything else is not Realtime protocol: skipped
            on_event = self._on_event
            if on_event is not None:
                on_event(event)

    def on_binary(self, data: bytes) -> None:
        log.warning("Realtime server sent a binary frame (%d bytes); ignored", len(data))

    def on_close(self, code: int | None, reason: str) -> None:
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close(RealtimeClosed(code, reason or "closed"))

    async def close(self) -> None:
        """Close the socket; the close handler is not called for a close this side asked for."""
        self._on_close = None
        socket, self._socket = self._socket, None
        if socket is not None:
            await socket.close()
