"""A GA Realtime client over ``websockets``: the socket, nothing else.

callplane speaks the wire protocol directly rather than through the ``openai`` SDK's
connection so that the per-frame path (``input_audio_buffer.append`` for every 20 ms of a
call) is one string concatenation and one send, with no model construction; the SDK's models
are used where they pay off, in the conformance checks of the tests. The same client talks to
OpenAI and to the local engine: only the URL and the key differ.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

OPENAI_REALTIME_URL = "wss://api.openai.com/v1/realtime"


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
        self._ws: ClientConnection | None = None

    async def connect(self) -> None:
        if not self.settings.api_key:
            raise ValueError(
                "RealtimeSettings.api_key is empty: set the OpenAI API key (or any key for the "
                "local engine)."
            )
        self._ws = await connect(
            self.settings.ws_url(),
            additional_headers={"Authorization": f"Bearer {self.settings.api_key}"},
            max_size=None,
            compression=None,
        )

    @property
    def connected(self) -> bool:
        return self._ws is not None

    async def send(self, event: dict[str, Any]) -> None:
        await self._send(json.dumps(event))

    async def append_audio(self, payload_b64: str) -> None:
        """Hot path: base64 audio straight into an append event, no JSON encoder."""
        await self._send('{"type":"input_audio_buffer.append","audio":"' + payload_b64 + '"}')

    async def _send(self, frame: str) -> None:
        if self._ws is None:
            raise RealtimeClosed(None, "not connected")
        try:
            await self._ws.send(frame)
        except ConnectionClosed as exc:
            raise RealtimeClosed(exc.rcvd.code if exc.rcvd else None, str(exc)) from None

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Server events until the socket closes; then RealtimeClosed."""
        if self._ws is None:
            raise RealtimeClosed(None, "not connected")
        try:
            async for frame in self._ws:
                event = json.loads(frame)
                if isinstance(event, dict):
                    yield event
        except ConnectionClosed as exc:
            raise RealtimeClosed(exc.rcvd.code if exc.rcvd else None, str(exc)) from None
        raise RealtimeClosed(self._ws.close_code, "closed")

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
