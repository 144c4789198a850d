"""The Twilio Media Streams transport: a call's WebSocket plus Twilio's REST call control.

Audio stays µ-law both ways (the Realtime session uses ``audio/pcmu``), so payloads are passed
through as base64 without decoding. Hanging up and transferring go through Twilio's REST API
(``Calls(sid).update``), which is what ends or redirects a ``<Connect><Stream>`` call.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from twilio.rest import Client
from twilio.twiml.voice_response import VoiceResponse

from callplane.transports import twilio_protocol as tp
from callplane.transports.base import (
    AudioIn,
    AudioSink,
    CallEnded,
    DtmfIn,
    EventSink,
    MarkIn,
    TransportEvent,
)
from callplane.transports.picows_socket import PicowsSocket

log = logging.getLogger("callplane.twilio")
T = TypeVar("T")


class TextSocket(Protocol):
    """The little the transport needs from a WebSocket (FastAPI's, or a test's)."""

    async def receive(self) -> str | bytes | None:
        """The next frame, or None when the peer closed."""
        ...

    async def send_text(self, text: str) -> None: ...


@dataclass(frozen=True)
class TwilioRestSettings:
    """Twilio's REST API; ``base_url`` points the SDK at the simulator offline."""

    account_sid: str
    auth_token: str
    base_url: str | None = None

    def client(self) -> Client:
        client = Client(self.account_sid, self.auth_token)
        if self.base_url:
            client.api.base_url = self.base_url.rstrip("/")
        return client


# Twilio's SDK blocks; its calls run on a pool of their own so that a burst of them (fifty
# outbound calls placed at once) cannot take every thread of the event loop's default
# executor, which espeak-ng, SQLite and tools also use.
_REST_POOL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="twilio-rest")


async def run_rest(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run a blocking Twilio SDK call on the REST pool."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_REST_POOL, functools.partial(fn, *args, **kwargs))


class CallControl:
    """Hang up and transfer a live call with the REST API (blocking SDK, run in a thread)."""

    def __init__(self, settings: TwilioRestSettings, call_sid: str) -> None:
        self._settings = settings
        self.call_sid = call_sid

    async def hang_up(self) -> None:
        await run_rest(self._update, status="completed")

    async def transfer(self, to: str) -> None:
        twiml = VoiceResponse()
        twiml.dial(to)
        await run_rest(self._update, twiml=str(twiml))

    def _update(self, **fields: str) -> None:
        self._settings.client().calls(self.call_sid).update(**fields)


class TwilioMediaStream:
    """A Transport over one Twilio media stream whose ``start`` has already been read."""

    audio_format: Literal["audio/pcmu"] = "audio/pcmu"
    bytes_per_ms = 8.0

    def __init__(
        self,
        socket: TextSocket,
        start: tp.Start,
        control: CallControl | None,
        on_invalid: Callable[[str], None] | None = None,
    ) -> None:
        self.socket = socket
        self.start = start
        self.control = control
        self.dropped: Counter[str] = Counter()
        self._on_invalid = on_invalid
        self._sid = start.stream_sid

    async def events(self) -> AsyncIterator[TransportEvent]:
        while True:
            frame = await self.socket.receive()
            if frame is None:
                yield CallEnded("stream_closed")
                return
            if isinstance(frame, bytes):
                self._drop("binary_frame")
                continue
            parsed = tp.parse(frame)
            if isinstance(parsed, tp.Media):
                yield AudioIn(parsed.payload)
            elif isinstance(parsed, tp.Mark):
                yield MarkIn(parsed.name)
            elif isinstance(parsed, tp.Dtmf):
                yield DtmfIn(parsed.digit)
            elif isinstance(parsed, tp.Stop):
                yield CallEnded("caller_hung_up")
                return
            elif isinstance(parsed, tp.Invalid):
                self._drop(parsed.reason)

    def set_sinks(self, audio: AudioSink | None, event: EventSink | None) -> None:
        """Frames straight to the sinks from the socket's callback (see
        :class:`~callplane.transports.base.DirectAudio`): on a picows socket only; on any
        other socket everything keeps coming from :meth:`events`."""
        socket = self.socket
        if isinstance(socket, PicowsSocket):
            socket.on_text_now = None if audio is None else self._frame_now(audio, event)

    @staticmethod
    def _frame_now(audio: AudioSink, event: EventSink | None) -> Callable[[bytes], bool]:
        media_payload = tp.media_payload

        def frame_now(data: bytes) -> bool:
            # What events() would do with this frame, minus waking its reader: a compact
            # media frame (nearly all of them) is audio for the sink, read from the bytes;
            # a mark is offered as MarkIn. Anything else (DTMF, stop, an invalid frame or
            # one the sinks decline) is queued and parsed again in events().
            payload = media_payload(data)
            if payload is not None:
                return audio(payload)
            if event is None:
                return False
            frame = tp.parse(data.decode("utf-8"))
            return isinstance(frame, tp.Mark) and event(MarkIn(frame.name))

        return frame_now

    def play_ready(self) -> bool:
        socket = self.socket
        return (
            isinstance(socket, PicowsSocket)
            and not socket.disconnected
            and socket.writable.is_set()
        )

    def play_now(self, payload_b64: str, mark: str) -> None:
        socket = self.socket
        assert isinstance(socket, PicowsSocket)
        sid = self._sid
        socket.send_now(tp.media_frame(sid, payload_b64))
        socket.send_now(tp.mark_frame(sid, mark))

    def clear_now(self) -> None:
        socket = self.socket
        assert isinstance(socket, PicowsSocket)
        socket.send_now(tp.clear_frame(self._sid))

    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1
        if self._on_invalid is not None:
            self._on_invalid(reason)

    async def play(self, payload_b64: str, mark: str) -> None:
        await self.socket.send_text(tp.media_frame(self._sid, payload_b64))
        await self.socket.send_text(tp.mark_frame(self._sid, mark))

    async def clear(self) -> None:
        await self.socket.send_text(tp.clear_frame(self._sid))

    async def hang_up(self) -> None:
        await self._control("hang_up", lambda c: c.hang_up())

    async def transfer(self, to: str) -> None:
        await self._control("transfer", lambda c: c.transfer(to))

    async def _control(self, what: str, action: Callable[[CallControl], Awaitable[None]]) -> None:
        if self.control is None:
            log.error(
                "call %s: cannot %s: no Twilio REST credentials configured",
                self.start.call_sid,
                what,
            )
            return
        try:
            await action(self.control)
        except Exception:
            log.exception("call %s: %s through Twilio's REST API failed", self.start.call_sid, what)
