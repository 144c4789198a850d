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
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from twilio.rest import Client
from twilio.twiml.voice_response import VoiceResponse

from callplane.tools import TransferFailed
from callplane.transports import twilio_protocol as tp
from callplane.transports.base import TransferOutcome, TransportHandler
from callplane.transports.socket import MessageSocket

log = logging.getLogger("callplane.twilio")
T = TypeVar("T")


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
    """A Transport over one Twilio media stream whose ``start`` has already been read.

    It is its socket's listener: each text frame is parsed where the socket's callback
    delivers it and goes on to the handler at once. A compact media frame (nearly all of
    them) is read from the bytes without the JSON decoder (:func:`twilio_protocol.
    media_payload`); anything else goes through the full parser. Any
    :class:`~callplane.transports.socket.MessageSocket` will do: picows's, the media app's
    ASGI adapter, a test's.
    """

    audio_format: Literal["audio/pcmu"] = "audio/pcmu"
    bytes_per_ms = 8.0

    def __init__(
        self,
        socket: MessageSocket,
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
        self._handler: TransportHandler | None = None
        self._audio: Callable[[bytes], None] = _ignore
        self._ended = False

    # ---- Transport ---------------------------------------------------------------------------

    def listen(self, handler: TransportHandler | None) -> None:
        self._handler = handler
        if handler is None:
            self.socket.listen(None)  # frames wait in the socket for the next handler
            return
        self._audio = handler.on_audio
        self.socket.listen(self)

    def play(self, payload_b64: str, mark: str) -> None:
        send = self.socket.send
        sid = self._sid
        send(tp.media_frame(sid, payload_b64))
        send(tp.mark_frame(sid, mark))

    def send_media(self, payload_b64: str) -> None:
        """Audio without a mark (the phone bridge paces its own frames and needs no echo)."""
        self.socket.send(tp.media_frame(self._sid, payload_b64))

    def send_mark(self, name: str) -> None:
        """A mark after the media sent so far: Twilio echoes it once the caller has heard
        that media (the phone bridge's way to know the caller heard the agent out)."""
        self.socket.send(tp.mark_frame(self._sid, name))

    def clear(self) -> None:
        self.socket.send(tp.clear_frame(self._sid))

    async def hang_up(self) -> None:
        await self._control("hang_up", lambda c: c.hang_up())

    async def transfer(self, to: str) -> TransferOutcome:
        """Redirect the call to ``<Dial>to</Dial>``; Twilio then ends this stream. Unlike a
        hang-up, a transfer that Twilio refused must not pass for one: the caller is still on
        the line and the model has to say so."""
        if self.control is None:
            raise TransferFailed(
                "this line cannot transfer calls: no Twilio REST credentials are configured"
            )
        try:
            await self.control.transfer(to)
        except Exception as exc:
            log.warning(
                "call %s: transfer to %s through Twilio's REST API failed: %s",
                self.start.call_sid,
                to,
                exc,
            )
            raise TransferFailed(f"the phone network refused the transfer to {to}") from exc
        return "line_moved"

    # ---- SocketListener ------------------------------------------------------------------------

    def on_text(self, data: bytes) -> None:
        payload = _media_payload(data)
        if payload is not None:
            self._audio(payload)
        else:
            self._other(data)

    def on_binary(self, data: bytes) -> None:
        self._drop("binary_frame")

    def on_close(self, code: int | None, reason: str) -> None:
        self._end("stream_closed")

    def _other(self, data: bytes) -> None:
        """A frame that is not compact media: the full parser judges it."""
        handler = self._handler
        if handler is None or self._ended:
            return
        parsed = tp.parse(data.decode("utf-8", "replace"))
        if isinstance(parsed, tp.Media):
            handler.on_audio(parsed.payload.encode("ascii"))  # checked to be base64
        elif isinstance(parsed, tp.Mark):
            handler.on_mark(parsed.name)
        elif isinstance(parsed, tp.Dtmf):
            handler.on_dtmf(parsed.digit)
        elif isinstance(parsed, tp.Stop):
            self._end("caller_hung_up")
        elif isinstance(parsed, tp.Invalid):
            self._drop(parsed.reason)

    def _end(self, reason: str) -> None:
        handler = self._handler
        if handler is not None and not self._ended:
            self._ended = True
            self._audio = _ignore
            handler.on_end(reason)

    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1
        if self._on_invalid is not None:
            self._on_invalid(reason)

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


_media_payload = tp.media_payload


def _ignore(payload: bytes) -> None:
    """Caller audio with nobody to take it (the call has ended)."""
