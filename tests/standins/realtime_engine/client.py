"""A plain WebSocket client for protocol tests: it sends exactly the frames a test writes
(including malformed ones, which the SDK would refuse to build) and reads raw JSON back."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from callplane.audio import AudioFormat
from callplane_standins.realtime_engine.speech import speak

Event = dict[str, Any]


class RawClient:
    def __init__(
        self, url: str, *, key: str | None = "test-key", headers: dict[str, str] | None = None
    ) -> None:
        self.url = url
        self.headers = dict(headers or {})
        if key is not None:
            self.headers["Authorization"] = f"Bearer {key}"
        self.ws: ClientConnection | None = None
        self.received: list[Event] = []
        self._n = 0

    async def __aenter__(self) -> RawClient:
        self.ws = await connect(self.url, additional_headers=self.headers, max_size=None)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.ws is not None
        await self.ws.close()

    async def send(self, event: Event) -> str:
        """Send an event with a fresh client event_id; return that id."""
        assert self.ws is not None
        self._n += 1
        event = {"event_id": f"evt_client_{self._n}", **event}
        await self.ws.send(json.dumps(event))
        return str(event["event_id"])

    async def send_raw(self, frame: str | bytes) -> None:
        assert self.ws is not None
        await self.ws.send(frame)

    async def recv(self, timeout: float = 20.0) -> Event:
        assert self.ws is not None
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        event: Event = json.loads(frame)
        self.received.append(event)
        return event

    async def until(
        self, match: str | Callable[[Event], bool], timeout: float = 20.0
    ) -> tuple[Event, list[Event]]:
        """Read until an event matches (a type or a predicate); return it and all read events."""
        pred = (lambda e: e["type"] == match) if isinstance(match, str) else match
        seen: list[Event] = []
        async with asyncio.timeout(timeout):
            while True:
                event = await self.recv(timeout)
                seen.append(event)
                if pred(event):
                    return event, seen

    async def append_audio(self, audio: bytes, frame_bytes: int = 160) -> None:
        for i in range(0, len(audio), frame_bytes):
            await self.send(
                {
                    "type": "input_audio_buffer.append",
                    "audio": base64.b64encode(audio[i : i + frame_bytes]).decode(),
                }
            )


def spoken(
    text: str, fmt: AudioFormat, voice: str = "en-us", lead_ms: int = 200, trail_ms: int = 800
) -> bytes:
    """``text`` spoken by espeak-ng in ``fmt``, with silence before and after."""
    pcm = speak(text, voice, fmt.rate)
    lead = np.zeros(fmt.rate * lead_ms // 1000, dtype=np.int16)
    trail = np.zeros(fmt.rate * trail_ms // 1000, dtype=np.int16)
    return fmt.encode(np.concatenate((lead, pcm, trail)))


def types(events: Sequence[Event]) -> list[str]:
    return [e["type"] for e in events]
