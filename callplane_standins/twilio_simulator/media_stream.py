"""The client side of a Media Stream: Twilio's WebSocket to the application, on the wire.

``<Connect><Stream>`` makes Twilio open a WebSocket to the stream URL, signed on the upgrade
request over the URL alone, and send ``connected``, ``start``, one ``media`` frame every 20 ms
(160 bytes µ-law; ``sequenceNumber``/``chunk``/``timestamp`` as strings), ``dtmf`` and finally
``stop``; the application sends ``media``, ``mark`` and ``clear``. This module holds that wire
format, in both directions, and nothing about what a call does with it
(https://www.twilio.com/docs/voice/media-streams/websocket-messages).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from callplane_standins.twilio_simulator.timeline import StreamRecord
from callplane_standins.twilio_simulator.webhooks import USER_AGENT, sign

__all__ = [
    "BotClear",
    "BotMark",
    "BotMedia",
    "BotMessage",
    "StreamMessageError",
    "StreamSession",
    "dtmf_message",
    "mark_message",
    "media_message",
    "open_stream",
    "parse_bot_message",
    "start_message",
    "stop_message",
]

Message = Callable[[str], dict[str, object]]
"""Builds one outgoing event from its sequence number (assigned when it is queued)."""


async def open_stream(url: str, auth_token: str) -> ClientConnection:
    """Connect to ``url`` as Twilio does: signed over the URL alone, no compression.

    Raises what the handshake raises (``OSError``, ``InvalidHandshake``, ``InvalidURI``,
    ``TimeoutError``); the caller turns it into Twilio's error 31920.
    """
    return await connect(
        url,
        additional_headers={"X-Twilio-Signature": sign(auth_token, url)},
        user_agent_header=USER_AGENT,
        open_timeout=10,
        ping_interval=None,
        compression=None,
        max_size=2**22,
    )


class StreamSession:
    """The WebSocket of one ``<Connect><Stream>`` and its frame counters."""

    def __init__(
        self, ws: ClientConnection, stream_sid: str, record: StreamRecord, start_tick: int
    ) -> None:
        self.ws = ws
        self.stream_sid = stream_sid
        self.record = record
        self.start_tick = start_tick
        self.seq = 0
        self.chunk = 0
        self.played_bytes = 0
        self.chunks_received = 0
        self.closed = False
        # Frames leave through one writer task, so that a slow reader at the far end never
        # blocks the call's clock or its playback lock: a blocked send there, with the far
        # end itself blocked sending to us, deadlocked both sides under load. Twilio does not
        # stop playing a call because its socket backs up either.
        self._outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write())

    async def send_connected(self) -> None:
        """The first message, which carries no sequence number; sent before the writer's."""
        try:
            await self.ws.send(
                json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
            )
        except ConnectionClosed:
            self.closed = True

    async def send(self, build: Message) -> None:
        """Queue one event; ``build`` gets the next sequence number (wire order and sequence
        order always agree: one queue, one writer). Never waits on the network."""
        if self.closed:
            return
        self.seq += 1
        self._outbox.put_nowait(json.dumps(build(str(self.seq)), separators=(",", ":")))

    async def _write(self) -> None:
        while True:
            frame = await self._outbox.get()
            if frame is None:
                return
            try:
                await self.ws.send(frame)
            except ConnectionClosed:
                self.closed = True
                return

    def abandon(self) -> None:
        """Stop the writer, dropping what is still queued (the stream is over)."""
        if not self._writer.done():
            self._writer.cancel()

    async def flush(self, timeout_s: float = 2.0) -> None:
        """Send what is queued (at most ``timeout_s``), then stop the writer."""
        self._outbox.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._writer), timeout_s)
        except TimeoutError:
            self._writer.cancel()


# ---- Twilio -> application ------------------------------------------------------------


def start_message(
    account_sid: str, call_sid: str, stream_sid: str, custom_parameters: dict[str, str]
) -> Message:
    def build(seq: str) -> dict[str, object]:
        return {
            "event": "start",
            "sequenceNumber": seq,
            "start": {
                "accountSid": account_sid,
                "streamSid": stream_sid,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "customParameters": dict(custom_parameters),
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
            "streamSid": stream_sid,
        }

    return build


def media_message(stream_sid: str, chunk: str, timestamp: str, ulaw: bytes) -> Message:
    payload = base64.b64encode(ulaw).decode("ascii")

    def build(seq: str) -> dict[str, object]:
        return {
            "event": "media",
            "sequenceNumber": seq,
            "media": {
                "track": "inbound",
                "chunk": chunk,
                "timestamp": timestamp,
                "payload": payload,
            },
            "streamSid": stream_sid,
        }

    return build


def dtmf_message(stream_sid: str, digit: str) -> Message:
    def build(seq: str) -> dict[str, object]:
        return {
            "event": "dtmf",
            "streamSid": stream_sid,
            "sequenceNumber": seq,
            "dtmf": {"track": "inbound_track", "digit": digit},
        }

    return build


def mark_message(stream_sid: str, name: str) -> Message:
    def build(seq: str) -> dict[str, object]:
        return {
            "event": "mark",
            "sequenceNumber": seq,
            "streamSid": stream_sid,
            "mark": {"name": name},
        }

    return build


def stop_message(account_sid: str, call_sid: str, stream_sid: str) -> Message:
    def build(seq: str) -> dict[str, object]:
        return {
            "event": "stop",
            "sequenceNumber": seq,
            "streamSid": stream_sid,
            "stop": {"accountSid": account_sid, "callSid": call_sid},
        }

    return build


# ---- application -> Twilio ------------------------------------------------------------


class StreamMessageError(ValueError):
    """A message from the application Twilio would reject; the text starts with its code."""


@dataclass(frozen=True, slots=True)
class BotMedia:
    """Audio to play: decoded µ-law bytes (never empty)."""

    ulaw: bytes


@dataclass(frozen=True, slots=True)
class BotMark:
    """A mark to echo once the audio queued before it has played."""

    name: str


@dataclass(frozen=True, slots=True)
class BotClear:
    """Drop queued audio and echo pending marks now."""


BotMessage = BotMedia | BotMark | BotClear


def parse_bot_message(text: str, stream_sid: str) -> BotMessage | None:
    """One text frame from the application; None for media with an empty payload (ignored).

    Raises :class:`StreamMessageError` with Twilio's code (31950 malformed, 31951 invalid).
    """
    try:
        msg = json.loads(text)
    except ValueError:
        raise StreamMessageError(f"31950: malformed message - not JSON: {text[:80]!r}") from None
    if not isinstance(msg, dict):
        raise StreamMessageError(f"31951: invalid message - not a JSON object: {text[:80]!r}")
    event = msg.get("event")
    if event not in ("media", "mark", "clear"):
        raise StreamMessageError(f"31951: invalid message - unknown event {event!r}")
    if msg.get("streamSid") != stream_sid:
        raise StreamMessageError(
            f"31951: invalid message - {event} for streamSid {msg.get('streamSid')!r}, "
            f"expected {stream_sid}"
        )
    if event == "media":
        media = msg.get("media")
        payload = media.get("payload") if isinstance(media, dict) else None
        if not isinstance(payload, str):
            raise StreamMessageError("31951: invalid message - media without media.payload")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise StreamMessageError(
                f"31951: invalid message - media.payload is not base64: {payload[:40]!r}"
            ) from None
        return BotMedia(data) if data else None
    if event == "mark":
        mark_obj = msg.get("mark")
        name = mark_obj.get("name") if isinstance(mark_obj, dict) else None
        if not isinstance(name, str):
            raise StreamMessageError("31951: invalid message - mark without mark.name")
        return BotMark(name)
    return BotClear()
