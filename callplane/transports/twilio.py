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
    delivers it (:func:`twilio_protocol.read`, whose fast branch reads a compact media frame,
    nearly all of them, without the JSON decoder) and goes on to the handler at once. Any
    :class:`~callplane.transports.socket.MessageSocket` will do: picows's, the media app's
    ASGI adapter, a test's.

    Hostile or broken frames never end the call: the parser raises nothing, and a frame it
    cannot vouch for is dropped and counted (:attr:`dropped`, ``on_invalid``). What ends it:
    Twilio's ``stop`` (``caller_hung_up``), the socket closing (``stream_closed``, or what its
    close code says: ``invalid_utf8``, ``message_too_big``, ``protocol_error``, see
    :data:`_CLOSE_REASONS`), or an exception while a frame is handled, which is a fault of this
    side: it is logged once, with its traceback, and the call ends as ``internal_error``.
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
        try:
            frame = _read(data)
            if isinstance(frame, bytes):
                self._audio(frame)
            else:
                self._other(frame)
        except Exception as exc:  # from the handler or this class, never from the parser
            self._failed(exc)

    def on_binary(self, data: bytes) -> None:
        # Twilio sends text only; a binary message is a protocol error at its level, not at
        # the WebSocket's (RFC 6455 puts no constraint on binary payloads), so it is dropped.
        self._drop("binary_frame")

    def on_close(self, code: int | None, reason: str) -> None:
        self._end(_CLOSE_REASONS.get(code, "stream_closed"))

    def _other(self, frame: tp.Frame) -> None:
        """A frame that is not compact media, already parsed."""
        handler = self._handler
        if handler is None or self._ended:
            return
        if isinstance(frame, tp.Media):
            handler.on_audio(frame.payload.encode("ascii"))  # checked to be base64
        elif isinstance(frame, tp.Mark):
            handler.on_mark(frame.name)
        elif isinstance(frame, tp.Dtmf):
            handler.on_dtmf(frame.digit)
        elif isinstance(frame, tp.Stop):
            self._end("caller_hung_up")
        elif isinstance(frame, tp.Invalid):
            self._drop(frame.reason, frame.detail)
        elif isinstance(frame, tp.Start):
            self._drop("repeated_start")  # the stream's start was read before this transport

    def _failed(self, exc: Exception) -> None:
        """Handling a frame raised: log it once and end the call as ``internal_error``."""
        if self._ended:
            return
        log.error(
            "call %s: handling a frame from Twilio failed; the call ends",
            self.start.call_sid,
            exc_info=exc,
        )
        self._end("internal_error")

    def _end(self, reason: str) -> None:
        handler = self._handler
        if handler is not None and not self._ended:
            self._ended = True
            self._audio = _ignore
            handler.on_end(reason)

    def _drop(self, reason: str, detail: str = "") -> None:
        self.dropped[reason] += 1
        if detail and self.dropped[reason] == 1:  # a frame the parser did not foresee: once
            log.warning(
                "call %s: dropped a frame from Twilio (%s): %s; such frames are only counted "
                "from now on",
                self.start.call_sid,
                reason,
                detail,
            )
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


_read = tp.read

# What a socket's close code says about the end of the call (any other code, or none, is
# ``stream_closed``): the connection failed, whichever side saw why (RFC 6455 section 7.4.1):
# 1002, a malformed frame; 1007, a text message was not UTF-8 (section 8.1 requires failing
# the connection); 1009, a message over the server's frame limit; 1011, an endpoint failed
# (ours logs why).
_CLOSE_REASONS: dict[int | None, str] = {
    1002: "protocol_error",
    1007: "invalid_utf8",
    1009: "message_too_big",
    1011: "internal_error",
}


def _ignore(payload: bytes) -> None:
    """Caller audio with nobody to take it (the call has ended)."""
