"""The simulated carrier: rings a number, follows its TwiML and plays the media stream.

This is the part of Twilio a phone voice agent actually meets on a call, reproduced closely
enough that the bridge code under test cannot tell the difference on the wire:

* the voice webhook is a form POST (or GET) with Twilio's parameters, signed with
  ``X-Twilio-Signature`` (HMAC-SHA1 with the account's auth token over the exact URL + params);
* ``<Connect><Stream>`` opens a WebSocket to the stream URL, signed on the upgrade request over
  the URL alone, then sends ``connected``, ``start`` and one ``media`` frame every 20 ms in real
  time (160 bytes µ-law; ``sequenceNumber``/``chunk``/``timestamp`` as strings), ``dtmf`` when the
  caller presses keys and ``stop`` when the caller or the REST API ends the call;
* audio the bot sends is queued and "played" in real time (160 bytes per 20 ms). A ``mark`` is
  echoed once everything queued before it has played; ``clear`` empties the queue at once and
  echoes every pending mark right away, as Twilio does;
* status callbacks (initiated, ringing, in-progress, completed with ``CallDuration``) are
  POSTed, signed, in order.

Everything a test wants to check afterwards is in the :class:`CallResult`: a stereo WAV of the
call (left: the caller, right: the bot as heard, i.e. after clears), and a :class:`Timeline`
with when each bot chunk played, when each ``clear`` arrived and the played position of each
mark. All times are milliseconds since the call was placed.

One 20 ms clock per call drives both directions, so the two WAV channels stay aligned and
the caller script (``caller.py``) sees the bot's audio exactly when it would have been heard.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import math
import wave
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import aiohttp
import numpy as np
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from callplane.audio import ulaw_decode
from callplane_standins.twilio_simulator import caller as caller_mod
from callplane_standins.twilio_simulator.callee import AMD_DECISION_S, BEEP_MS, Callee
from callplane_standins.twilio_simulator.caller import Step
from callplane_standins.twilio_simulator.inventory import country_of
from callplane_standins.twilio_simulator.state import (
    CallResource,
    PhoneNumberRecord,
    StateStore,
    new_sid,
    utcnow,
)
from callplane_standins.twilio_simulator.twiml import (
    Dial,
    Hangup,
    Instruction,
    Pause,
    Reject,
    Say,
    Stream,
    TwimlError,
    parse_twiml,
)

__all__ = [
    "CallResult",
    "Carrier",
    "ChunkRecord",
    "ClearRecord",
    "HungUpBy",
    "LiveCall",
    "MarkRecord",
    "StreamRecord",
    "Timeline",
    "TimelineEvent",
    "sign",
]

log = logging.getLogger("callplane.twilio")

API_VERSION = "2010-04-01"
FRAME_MS = 20
FRAME_BYTES = 160
SILENCE = b"\xff" * FRAME_BYTES
# µ-law codes within ±64 of zero: a frame made only of these is silence to the caller's ear.
_QUIET_CODES = bytes(
    c for c in range(256) if abs(int(ulaw_decode(np.array([c], dtype=np.uint8))[0])) < 64
)
USER_AGENT = "TwilioProxy/1.1"
MAX_ERRORS = 50
MAX_FINISHED_CALLS = 1000
# Status callback events (Twilio's StatusCallbackEvent names). The simulator sends all four to
# a number's StatusCallback; outbound-api calls send those requested (default: completed).
INBOUND_STATUS_EVENTS = frozenset({"initiated", "ringing", "answered", "completed"})

HungUpBy = Literal["caller", "remote", "rest"]


WEBHOOK_RETRIES = 1
"""Retries of a webhook whose connection failed (Twilio's default retry count)."""
KEEPALIVE_S = 2.0
"""How long an idle webhook connection is kept for reuse."""


def sign(auth_token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """``X-Twilio-Signature`` for a request to ``url`` with form ``params``.

    Uses the ``twilio`` SDK's own algorithm so what the simulator signs is exactly what the
    SDK's ``RequestValidator`` (and therefore production code) accepts.
    """
    signature: str = RequestValidator(auth_token).compute_signature(url, dict(params or {}))
    return signature


# --------------------------------------------------------------------------------------
# What a call leaves behind
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class TimelineEvent:
    """Something that happened on the call, ``at_ms`` after it was placed."""

    at_ms: float
    kind: str
    detail: dict[str, object] = field(default_factory=dict)


@dataclass(slots=True)
class ChunkRecord:
    """One piece of bot audio (a ``media`` message, or a ``<Say>``) and when it played."""

    index: int
    source: Literal["stream", "say"]
    stream_sid: str | None
    received_ms: float
    nbytes: int
    started_ms: float | None = None
    finished_ms: float | None = None
    played_bytes: int = 0
    dropped_bytes: int = 0


@dataclass(slots=True)
class MarkRecord:
    """A mark the bot sent and its echo.

    ``played_ms`` is the bot audio played on the stream when the mark was echoed (what a
    bridge should truncate at); ``segment_ms`` is the audio queued between the previous mark
    and this one; ``cleared`` says the echo was caused by a ``clear``, not by playback.
    """

    name: str
    stream_sid: str
    sent_ms: float
    echoed_ms: float | None = None
    played_ms: float = 0.0
    segment_ms: float = 0.0
    cleared: bool = False


@dataclass(slots=True)
class ClearRecord:
    """A ``clear`` from the bot: when it arrived and what it dropped."""

    at_ms: float
    stream_sid: str
    stream_ms: float
    played_ms: float
    dropped_bytes: int
    marks_flushed: list[str] = field(default_factory=list)


@dataclass(slots=True)
class StreamRecord:
    """One ``<Connect><Stream>`` session."""

    stream_sid: str
    url: str
    custom_parameters: dict[str, str]
    started_ms: float
    ended_ms: float | None = None
    ended_by: str = ""
    media_frames_sent: int = 0
    played_ms: float = 0.0


@dataclass(slots=True)
class Timeline:
    """Everything observable about a call, in call time (ms since the call was placed)."""

    events: list[TimelineEvent] = field(default_factory=list)
    chunks: list[ChunkRecord] = field(default_factory=list)
    marks: list[MarkRecord] = field(default_factory=list)
    clears: list[ClearRecord] = field(default_factory=list)
    streams: list[StreamRecord] = field(default_factory=list)
    answered_ms: float | None = None
    ended_ms: float | None = None

    def of_kind(self, kind: str) -> list[TimelineEvent]:
        """Events of one kind, in order."""
        return [e for e in self.events if e.kind == kind]

    def mark(self, name: str) -> MarkRecord | None:
        """The (last) mark called ``name``."""
        for rec in reversed(self.marks):
            if rec.name == name:
                return rec
        return None

    def played_ms_per_mark(self) -> dict[str, float]:
        """Mark name -> played position (ms of the stream's audio heard) when it echoed."""
        return {m.name: m.played_ms for m in self.marks if m.echoed_ms is not None}

    @property
    def heard_ms(self) -> float:
        """Bot audio the caller heard on the whole call (streams and ``<Say>``)."""
        return sum(c.played_bytes for c in self.chunks) / 8


@dataclass(slots=True)
class CallResult:
    """How a call went: final status, who hung up, the recording and the timeline."""

    call_sid: str
    status: str
    duration_s: float
    transferred_to: str | None
    hung_up_by: HungUpBy | None
    timeline: Timeline
    wav_path: Path | None
    errors: list[str]
    direction: str = "inbound"
    from_: str = ""
    to: str = ""

    def to_json(self) -> dict[str, object]:
        """Plain JSON data (for the simulator's HTTP endpoint and for saving next to a WAV)."""
        data = dataclasses.asdict(self)
        data["from"] = data.pop("from_")
        data["wav_path"] = None if self.wav_path is None else str(self.wav_path)
        return data


# --------------------------------------------------------------------------------------
# The playback queue (what Twilio holds for the bot's audio)
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Audio:
    data: bytes
    chunk: ChunkRecord
    pos: int = 0


class _Playback:
    """FIFO of bot audio and marks, drained 160 bytes per 20 ms slot."""

    def __init__(self) -> None:
        self.items: deque[_Audio | MarkRecord] = deque()
        self.queued_bytes = 0
        self._since_mark = 0

    @property
    def empty(self) -> bool:
        return not self.items

    def push_audio(self, data: bytes, chunk: ChunkRecord) -> None:
        self.items.append(_Audio(data, chunk))
        self.queued_bytes += len(data)
        self._since_mark += len(data)

    def push_mark(self, mark: MarkRecord) -> None:
        mark.segment_ms = self._since_mark / 8
        self._since_mark = 0
        self.items.append(mark)

    def take(self, now_ms: float) -> tuple[bytes, list[MarkRecord], list[MarkRecord]]:
        """One slot of audio (<= 160 bytes), marks due now (nothing was queued before them)
        and marks due at the end of this slot (reached by this slot's audio)."""
        out = bytearray()
        due_now: list[MarkRecord] = []
        due_after: list[MarkRecord] = []
        while self.items:
            head = self.items[0]
            if isinstance(head, MarkRecord):
                self.items.popleft()
                (due_after if out else due_now).append(head)
                continue
            if len(out) >= FRAME_BYTES:
                break
            n = min(FRAME_BYTES - len(out), len(head.data) - head.pos)
            if head.pos == 0:
                head.chunk.started_ms = now_ms + len(out) / 8
            out += head.data[head.pos : head.pos + n]
            head.pos += n
            head.chunk.played_bytes += n
            self.queued_bytes -= n
            if head.pos >= len(head.data):
                head.chunk.finished_ms = now_ms + len(out) / 8
                self.items.popleft()
        return bytes(out), due_now, due_after

    def clear(self) -> tuple[int, list[MarkRecord]]:
        """Drop all queued audio; return the bytes dropped and the marks flushed."""
        dropped = self.queued_bytes
        marks: list[MarkRecord] = []
        for item in self.items:
            if isinstance(item, MarkRecord):
                marks.append(item)
            else:
                item.chunk.dropped_bytes += len(item.data) - item.pos
        self.items.clear()
        self.queued_bytes = 0
        self._since_mark = 0
        return dropped, marks


# --------------------------------------------------------------------------------------
# One media stream
# --------------------------------------------------------------------------------------


class _StreamSession:
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

    async def send(self, build: Callable[[str], dict[str, object]]) -> None:
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


# --------------------------------------------------------------------------------------
# Control messages for a live call
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _HangupRequest:
    by: HungUpBy
    reason: str


@dataclass(frozen=True, slots=True)
class _RedirectRequest:
    instructions: list[Instruction] | None
    url: str
    method: str


class _CallerLine:
    """The caller's end of a :class:`LiveCall`, as seen by a script (``caller.Line``)."""

    def __init__(self, call: LiveCall) -> None:
        self._call = call

    def speak(self, ulaw: bytes) -> None:
        self._call._uplink.extend(ulaw)

    @property
    def speaking(self) -> bool:
        return bool(self._call._uplink)

    def dtmf(self, digit: str) -> None:
        self._call._dtmf.append(digit)

    def hang_up(self) -> None:
        self._call._request(_HangupRequest("caller", "script hung up"))

    async def next_slot(self) -> None:
        await self._call._next_slot()

    @property
    def bot_played_bytes(self) -> int:
        return self._call._bot_played_bytes

    @property
    def bot_voiced_bytes(self) -> int:
        return self._call._bot_voiced_bytes

    @property
    def bot_quiet_ms(self) -> float:
        last = self._call._bot_last_audio_ms
        return math.inf if last is None else self._call.now_ms() - last

    def note(self, kind: str, detail: Mapping[str, object]) -> None:
        self._call.note(kind, **detail)

    def error(self, message: str) -> None:
        self._call.error(message)


# --------------------------------------------------------------------------------------
# A call
# --------------------------------------------------------------------------------------


class LiveCall:
    """One call in progress (and, once over, its result). Created by :class:`Carrier`.

    ``call_sid`` is known as soon as the call exists, so a test can act on a live call (REST
    update, hang-up) while :meth:`wait` is pending.
    """

    def __init__(
        self,
        carrier: Carrier,
        record: CallResource,
        auth_token: str,
        script: Sequence[Step],
        speech: Mapping[tuple[str, str], bytes],
        *,
        status_callback: str,
        status_callback_method: str,
        status_events: frozenset[str],
        max_duration_s: float,
        number: PhoneNumberRecord | None,
    ) -> None:
        self.carrier = carrier
        self.record = record
        self.call_sid = record.sid
        self._token = auth_token
        self._script = list(script)
        self._speech = speech
        self._status_callback = status_callback
        self._status_callback_method = status_callback_method
        self._status_events = status_events
        self._max_duration_s = max_duration_s
        self._number = number

        loop = asyncio.get_running_loop()
        self._loop = loop
        self._t0 = loop.time()
        self.timeline = Timeline()
        self.errors: list[str] = []
        self._result: asyncio.Future[CallResult] = loop.create_future()
        self._pending: _HangupRequest | _RedirectRequest | None = None
        self._changed = asyncio.Event()

        self._playback = _Playback()
        self._due: list[MarkRecord] = []
        self._uplink = bytearray()
        self._dtmf: deque[str] = deque()
        self._stream: _StreamSession | None = None
        self._left = bytearray()
        self._right = bytearray()
        self._tick = 0
        self._slot_waiter: asyncio.Future[None] = loop.create_future()
        self._bot_played_bytes = 0
        self._bot_voiced_bytes = 0
        self._bot_last_audio_ms: float | None = None
        # Held while the playback queue changes and marks are echoed, so echoes always leave
        # in queue order whether playback, a mark or a clear caused them.
        self._play_lock = asyncio.Lock()
        self._ended_event = asyncio.Event()
        self._say_chunks = 0
        self._ended = False
        self._answered = False
        self._callback_seq = 0
        self._callbacks: asyncio.Queue[tuple[str, str, dict[str, str]] | None] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self.hung_up_by: HungUpBy | None = None
        self._wav_path: Path | None = None

    # ---- public API -------------------------------------------------------------------

    @property
    def placed_at(self) -> float:
        """The event loop's clock (``time.monotonic()`` by default) when the call was placed:
        timeline times are milliseconds after it, so they can be compared with other parts'
        clocks in the same process."""
        return self._t0

    def now_ms(self) -> float:
        """Milliseconds since the call was placed."""
        return round((self._loop.time() - self._t0) * 1000.0, 1)

    @property
    def status(self) -> str:
        return self.record.status

    @property
    def live(self) -> bool:
        return not self._result.done()

    async def wait(self, timeout_s: float | None = None) -> CallResult:
        """The call's result, once it has ended and its status callbacks were delivered."""
        async with asyncio.timeout(timeout_s):
            return await asyncio.shield(self._result)

    async def wait_ended(self, timeout_s: float | None = None) -> None:
        """Until the call has its final status (callbacks may still be in flight)."""
        async with asyncio.timeout(timeout_s):
            await self._ended_event.wait()

    def hang_up(self, by: HungUpBy = "rest", reason: str = "") -> None:
        """End the call (``Status=completed`` from REST, or the caller)."""
        self._request(_HangupRequest(by, reason or f"hung up by {by}"))

    def redirect(
        self, instructions: list[Instruction] | None = None, url: str = "", method: str = "POST"
    ) -> None:
        """Replace the running TwiML (REST ``Calls`` update with ``Twiml`` or ``Url``)."""
        if instructions is None and not url:
            raise ValueError("redirect needs TwiML instructions or a URL")
        self._request(_RedirectRequest(instructions, url, method))

    def note(self, kind: str, **detail: object) -> None:
        """Add a timeline event at the current call time."""
        self.timeline.events.append(TimelineEvent(self.now_ms(), kind, dict(detail)))

    def error(self, message: str) -> None:
        """Record a problem in the result (capped; never raises)."""
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)
        elif len(self.errors) == MAX_ERRORS:
            self.errors.append("… further errors suppressed")
        self.note("error", message=message)
        log.info("call %s: %s", self.call_sid, message)

    # ---- internals: control -----------------------------------------------------------

    def _request(self, req: _HangupRequest | _RedirectRequest) -> None:
        if self._ended:
            return
        # A hang-up wins over a redirect that has not been acted on yet.
        if isinstance(self._pending, _HangupRequest):
            return
        self._pending = req
        self._changed.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _wait_or_interrupt(self, aw: Awaitable[object]) -> object | None:
        """Await ``aw`` unless a control request arrives first (then cancel it, return None)."""
        task = asyncio.ensure_future(aw)
        if self._pending is not None:
            task.cancel()
            return None
        self._changed.clear()
        waiter = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None

    # ---- internals: status and webhooks -----------------------------------------------

    def _call_params(self, status: str) -> dict[str, str]:
        rec = self.record
        to_country = self._number.iso_country if self._number else country_of(rec.to)
        to_city = self._number.locality if self._number else ""
        to_state = self._number.region if self._number else ""
        from_country = country_of(rec.from_number)
        params = {
            "AccountSid": rec.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": rec.sid,
            "CallStatus": status,
            "Direction": rec.direction,
            "From": rec.from_number,
            "To": rec.to,
            "Caller": rec.from_number,
            "Called": rec.to,
            "FromCountry": from_country,
            "FromCity": "",
            "FromState": "",
            "FromZip": "",
            "CallerCountry": from_country,
            "CallerCity": "",
            "CallerState": "",
            "CallerZip": "",
            "ToCountry": to_country,
            "ToCity": to_city,
            "ToState": to_state,
            "ToZip": "",
            "CalledCountry": to_country,
            "CalledCity": to_city,
            "CalledState": to_state,
            "CalledZip": "",
        }
        if rec.answered_by:
            params["AnsweredBy"] = rec.answered_by
        if rec.parent_call_sid:
            params["ParentCallSid"] = rec.parent_call_sid
        return params

    async def _set_status(self, status: str, event: str | None = None) -> None:
        rec = self.record
        now = utcnow()
        updated = rec.model_copy(update={"status": status, "date_updated": now})
        if status == "in-progress" and rec.start_time is None:
            updated.start_time = now
        self.record = updated
        self.carrier.store.put_call(updated)
        self.note("status", status=status)
        await self.carrier.store.save_async()
        if event is not None:
            self._status_callback_event(event, status)

    def _status_callback_event(self, event: str, status: str) -> None:
        if not self._status_callback or event not in self._status_events:
            return
        self._callback_seq += 1
        params = self._call_params(status)
        params.update(
            {
                "Timestamp": format_datetime(utcnow()),
                "CallbackSource": "call-progress-events",
                "SequenceNumber": str(self._callback_seq - 1),
            }
        )
        if status in ("completed", "busy", "no-answer", "canceled", "failed"):
            duration = str(self.record.duration or 0)
            params["CallDuration"] = duration
            params["Duration"] = str(math.ceil((self.record.duration or 0) / 60))
        self._callbacks.put_nowait((self._status_callback, self._status_callback_method, params))

    async def _callback_worker(self) -> None:
        while True:
            item = await self._callbacks.get()
            if item is None:
                return
            url, method, params = item
            try:
                await self.carrier.http_request(url, method, params, self._token)
            except WebhookError as exc:
                self.error(f"15003: status callback to {url} failed: {exc}")

    async def _fetch_twiml(self, url: str, method: str, status: str) -> list[Instruction] | None:
        params = self._call_params(status)
        self.note("webhook", url=url, method=method)
        try:
            body = await self.carrier.http_request(url, method, params, self._token)
        except WebhookError as exc:
            self.error(f"11200: HTTP retrieval failure for {url}: {exc}")
            return None
        try:
            return parse_twiml(body)
        except TwimlError as exc:
            self.error(f"12100: document parse failure for {url}: {exc}")
            return None

    # ---- internals: the 20 ms clock -----------------------------------------------------

    async def _next_slot(self) -> None:
        if self._ended:
            raise asyncio.CancelledError
        await asyncio.shield(self._slot_waiter)

    async def _clock(self) -> None:
        loop = self._loop
        start = loop.time()
        k = 0
        while not self._ended:
            await self._on_tick()
            k += 1
            delay = start + k * FRAME_MS / 1000 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.2:
                # More than 10 slots behind (a stalled loop): resync instead of bursting.
                self.note("clock_resync", behind_ms=round(-delay * 1000))
                start = loop.time() - k * FRAME_MS / 1000

    async def _echo(self, stream: _StreamSession, mark: MarkRecord, cleared: bool) -> None:
        mark.echoed_ms = self.now_ms()
        mark.played_ms = stream.played_bytes / 8
        mark.cleared = cleared
        await stream.send(
            lambda seq: {
                "event": "mark",
                "sequenceNumber": seq,
                "streamSid": stream.stream_sid,
                "mark": {"name": mark.name},
            }
        )

    async def _on_tick(self) -> None:
        now = self.now_ms()
        stream = self._stream
        async with self._play_lock:
            # Bot -> caller: marks whose audio finished in the previous slot, then this slot.
            due, self._due = self._due, []
            frame, due_now, due_after = self._playback.take(now)
            self._due = due_after
            if stream is not None:
                for mark in (*due, *due_now):
                    await self._echo(stream, mark, cleared=False)
                stream.played_bytes += len(frame)
        if frame:
            self._bot_played_bytes += len(frame)
            if frame.translate(None, _QUIET_CODES):
                self._bot_voiced_bytes += len(frame)
                self._bot_last_audio_ms = now + len(frame) / 8
        self._right += frame + SILENCE[len(frame) :]

        # Caller -> bot: speech or silence, every slot.
        up = bytes(self._uplink[:FRAME_BYTES])
        del self._uplink[:FRAME_BYTES]
        up += SILENCE[len(up) :]
        self._left += up
        if stream is not None and not stream.closed:
            stream.chunk += 1
            chunk = str(stream.chunk)
            ts = str((self._tick - stream.start_tick) * FRAME_MS)
            payload = base64.b64encode(up).decode("ascii")
            sid = stream.stream_sid
            await stream.send(
                lambda seq: {
                    "event": "media",
                    "sequenceNumber": seq,
                    "media": {
                        "track": "inbound",
                        "chunk": chunk,
                        "timestamp": ts,
                        "payload": payload,
                    },
                    "streamSid": sid,
                }
            )
            stream.record.media_frames_sent += 1
        while self._dtmf:
            digit = self._dtmf.popleft()
            self.note("dtmf", digit=digit)
            if stream is not None:
                await stream.send(_dtmf_builder(stream.stream_sid, digit))
        self._tick += 1
        waiter, self._slot_waiter = self._slot_waiter, self._loop.create_future()
        waiter.set_result(None)

    # ---- internals: bot frames ----------------------------------------------------------

    async def _read_stream(self, stream: _StreamSession) -> None:
        try:
            async for message in stream.ws:
                if isinstance(message, bytes):
                    self.error("31950: malformed message - binary frame from the stream server")
                    continue
                await self._on_bot_frame(stream, message)
        except ConnectionClosed:
            pass

    async def _on_bot_frame(self, stream: _StreamSession, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            self.error(f"31950: malformed message - not JSON: {text[:80]!r}")
            return
        if not isinstance(msg, dict):
            self.error(f"31951: invalid message - not a JSON object: {text[:80]!r}")
            return
        event = msg.get("event")
        if event not in ("media", "mark", "clear"):
            self.error(f"31951: invalid message - unknown event {event!r}")
            return
        if msg.get("streamSid") != stream.stream_sid:
            self.error(
                f"31951: invalid message - {event} for streamSid {msg.get('streamSid')!r}, "
                f"expected {stream.stream_sid}"
            )
            return
        if event == "media":
            media = msg.get("media")
            payload = media.get("payload") if isinstance(media, dict) else None
            if not isinstance(payload, str):
                self.error("31951: invalid message - media without media.payload")
                return
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                self.error(
                    f"31951: invalid message - media.payload is not base64: {payload[:40]!r}"
                )
                return
            if not data:
                return
            stream.chunks_received += 1
            chunk = ChunkRecord(
                stream.chunks_received, "stream", stream.stream_sid, self.now_ms(), len(data)
            )
            self.timeline.chunks.append(chunk)
            async with self._play_lock:
                self._playback.push_audio(data, chunk)
        elif event == "mark":
            mark_obj = msg.get("mark")
            name = mark_obj.get("name") if isinstance(mark_obj, dict) else None
            if not isinstance(name, str):
                self.error("31951: invalid message - mark without mark.name")
                return
            rec = MarkRecord(name, stream.stream_sid, self.now_ms())
            self.timeline.marks.append(rec)
            async with self._play_lock:
                if self._playback.empty and not self._due:
                    await self._echo(stream, rec, cleared=False)
                else:
                    self._playback.push_mark(rec)
        else:
            async with self._play_lock:
                await self._clear(stream)

    async def _clear(self, stream: _StreamSession) -> None:
        now = self.now_ms()
        dropped, flushed = self._playback.clear()
        due, self._due = self._due, []
        record = ClearRecord(
            at_ms=now,
            stream_sid=stream.stream_sid,
            stream_ms=(self._tick - stream.start_tick) * FRAME_MS,
            played_ms=stream.played_bytes / 8,
            dropped_bytes=dropped,
            marks_flushed=[m.name for m in flushed],
        )
        self.timeline.clears.append(record)
        self.note("clear", dropped_ms=dropped / 8, marks_flushed=len(flushed))
        for mark in due:  # their audio had finished playing: a normal echo
            await self._echo(stream, mark, cleared=False)
        for mark in flushed:
            await self._echo(stream, mark, cleared=True)

    # ---- internals: verbs ---------------------------------------------------------------

    async def _until_drained(self) -> None:
        while not self._playback.empty or self._due:
            await self._next_slot()

    async def _slots(self, ms: float) -> None:
        for _ in range(max(round(ms / FRAME_MS), 0)):
            await self._next_slot()

    async def _run_say(self, say: Say) -> None:
        voice = _espeak_voice(say.voice, say.language)
        try:
            audio = await asyncio.to_thread(caller_mod.synthesize_ulaw, say.text, voice)
        except Exception as exc:  # espeak-ng missing or failing: the call goes on silently
            self.error(f"say: could not synthesise {say.text[:40]!r}: {exc}")
            return
        self.note("say", text=say.text, ms=len(audio) / 8)
        repeats = say.loop if say.loop > 0 else 10_000
        for _ in range(repeats):
            self._say_chunks += 1
            chunk = ChunkRecord(self._say_chunks, "say", None, self.now_ms(), len(audio))
            self.timeline.chunks.append(chunk)
            self._playback.push_audio(audio, chunk)
            await self._wait_or_interrupt(self._until_drained())
            if self._pending is not None:
                self._drop_playback()
                return

    async def _run_stream(self, verb: Stream) -> None:
        url = verb.url
        if urlsplit(url).query:
            self.error(f"31920: stream handshake refused - <Stream url={url!r}> has a query string")
            return
        if verb.track and verb.track != "inbound_track":
            self.error(f"31941: invalid track {verb.track!r} for <Connect><Stream>")
            return
        headers = {"X-Twilio-Signature": sign(self._token, url)}
        try:
            ws = await connect(
                url,
                additional_headers=headers,
                user_agent_header=USER_AGENT,
                open_timeout=10,
                ping_interval=None,
                compression=None,
                max_size=2**22,
            )
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            self.error(f"31920: stream WebSocket handshake to {url} failed: {exc}")
            return
        stream_sid = new_sid("MZ")
        record = StreamRecord(stream_sid, url, dict(verb.parameters), self.now_ms())
        self.timeline.streams.append(record)
        stream = _StreamSession(ws, stream_sid, record, self._tick)
        account_sid = self.record.account_sid
        try:
            await stream.ws.send(
                json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
            )
        except ConnectionClosed:
            stream.closed = True
        await stream.send(
            lambda seq: {
                "event": "start",
                "sequenceNumber": seq,
                "start": {
                    "accountSid": account_sid,
                    "streamSid": stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": dict(verb.parameters),
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
                "streamSid": stream_sid,
            }
        )
        # The first media frame goes out in the next slot, with timestamp 0.
        stream.start_tick = self._tick
        self.note("stream_started", stream_sid=stream_sid, url=url)
        self._stream_callback(verb, stream_sid, "stream-started")
        self._stream = stream
        reader = asyncio.create_task(self._read_stream(stream))
        ended_by = "server"
        while not reader.done():
            if self._pending is not None:
                pending = self._pending
                ended_by = pending.by if isinstance(pending, _HangupRequest) else "redirect"
                break
            await asyncio.wait({reader}, timeout=FRAME_MS / 1000)
        self._stream = None
        if not reader.done():
            await stream.send(
                lambda seq: {
                    "event": "stop",
                    "sequenceNumber": seq,
                    "streamSid": stream_sid,
                    "stop": {"accountSid": account_sid, "callSid": self.call_sid},
                }
            )
            self.note("stream_stop_sent", stream_sid=stream_sid)
            await stream.flush()
            stream.closed = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), timeout=2)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        stream.abandon()
        self._drop_playback()
        record.ended_ms = self.now_ms()
        record.ended_by = ended_by
        record.played_ms = stream.played_bytes / 8
        self.note("stream_ended", stream_sid=stream_sid, ended_by=ended_by)
        self._stream_callback(verb, stream_sid, "stream-stopped")

    def _stream_callback(self, verb: Stream, stream_sid: str, event: str) -> None:
        if not verb.status_callback:
            return
        params = {
            "AccountSid": self.record.account_sid,
            "CallSid": self.call_sid,
            "StreamSid": stream_sid,
            "StreamName": verb.name or stream_sid,
            "StreamEvent": event,
            "StreamError": "",
            "Timestamp": format_datetime(utcnow()),
        }
        self._callbacks.put_nowait((verb.status_callback, verb.status_callback_method, params))

    def _drop_playback(self) -> None:
        self._playback.clear()
        self._due = []

    async def _run_dial(self, verb: Dial) -> None:
        self.record = self.record.model_copy(update={"transferred_to": verb.number})
        child = CallResource(
            sid=new_sid("CA"),
            account_sid=self.record.account_sid,
            from_number=verb.caller_id or self.record.from_number,
            to=verb.number,
            direction="outbound-dial",
            status="completed",
            parent_call_sid=self.call_sid,
            start_time=utcnow(),
            end_time=utcnow(),
            duration=math.ceil(self.carrier.dial_hold_s),
        )
        self.carrier.store.put_call(child)
        self.note("dial", number=verb.number, noun=verb.kind, child_call_sid=child.sid)
        # The dialled party is not simulated: it answers, stays for dial_hold_s, hangs up.
        await self._wait_or_interrupt(self._slots(self.carrier.dial_hold_s * 1000))

    # ---- internals: the call ------------------------------------------------------------

    async def run_inbound(self) -> None:
        """Ring the number: webhook, TwiML, conversation, hang-up."""
        worker = self._spawn(self._callback_worker())
        try:
            number = self._number
            assert number is not None
            self._status_callback_event("initiated", "initiated")
            await self._set_status("ringing", "ringing")
            if number.trunk_sid:
                self.error("the number routes to a SIP trunk, which the simulator does not run")
                await self._finish("failed", "remote")
                return
            if not number.voice_url:
                self.error(f"number {number.phone_number} has no VoiceUrl")
                await self._finish("failed", "remote")
                return
            got = await self._wait_or_interrupt(
                self._fetch_twiml(number.voice_url, number.voice_method, "ringing")
            )
            await self._after_twiml(got)
        except Exception as exc:
            log.exception("call %s crashed", self.call_sid)
            self.error(f"simulator: call crashed: {exc!r}")
            if not self._result.done():
                await self._finish("failed", "remote")
        finally:
            await self._close_callbacks(worker)

    async def run_outbound(
        self,
        url: str,
        method: str,
        instructions: list[Instruction] | None,
        callee: Callee | None,
        ring_timeout_s: float,
        machine_detection: str | None = None,
    ) -> None:
        """An outbound-api call: ring the callee; if it answers, detect a machine when asked
        to, then run the call's TwiML with the callee's script as the far party."""
        worker = self._spawn(self._callback_worker())
        try:
            self._status_callback_event("initiated", "initiated")
            if callee is not None and callee.kind == "busy":
                self.note("busy", to=self.record.to)
                await self._finish("busy", None)
                return
            await self._set_status("ringing", "ringing")
            answers = callee is not None and callee.answers
            rings_s = callee.rings * self.carrier.ring_s if callee is not None else ring_timeout_s
            ring = min(rings_s, ring_timeout_s) if answers else ring_timeout_s
            if answers and rings_s > ring_timeout_s:
                answers = False  # Twilio's Timeout ran out before the pickup
            await self._wait_or_interrupt(asyncio.sleep(ring))
            if self._pending is not None:
                await self._finish("canceled", "rest")
                return
            if not answers or callee is None:
                self.note("no_answer", to=self.record.to)
                await self._finish("no-answer", None)
                return
            self.note("picked_up", callee=callee.kind)
            if machine_detection:
                await self._detect_machine(callee, machine_detection)
            if instructions is None:
                got = await self._wait_or_interrupt(self._fetch_twiml(url, method, "in-progress"))
            else:
                got = instructions
            await self._after_twiml(got)
        except Exception as exc:
            log.exception("call %s crashed", self.call_sid)
            self.error(f"simulator: call crashed: {exc!r}")
            if not self._result.done():
                await self._finish("failed", "remote")
        finally:
            await self._close_callbacks(worker)

    async def _detect_machine(self, callee: Callee, machine_detection: str) -> None:
        """Twilio's AMD: decide who answered before the TwiML is fetched (see callee.py)."""
        if callee.kind == "human":
            said = self._speech.get((callee.answer_with or "", caller_mod.DEFAULT_VOICE), b"")
            await asyncio.sleep(len(said) / 8000 + AMD_DECISION_S)
            answered_by = "human"
        elif machine_detection == "DetectMessageEnd":
            greeting = self._speech.get((callee.greeting, caller_mod.DEFAULT_VOICE), b"")
            await asyncio.sleep(len(greeting) / 8000 + BEEP_MS / 1000)
            answered_by = "machine_end_beep"
        else:
            await asyncio.sleep(AMD_DECISION_S)
            answered_by = "machine_start"
        self.record = self.record.model_copy(update={"answered_by": answered_by})
        self.carrier.store.put_call(self.record)
        self.note("answered_by", answered_by=answered_by)

    async def _close_callbacks(self, worker: asyncio.Task[None]) -> None:
        self._callbacks.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(worker), timeout=20)
        except TimeoutError:
            worker.cancel()
        for task in list(self._tasks):
            task.cancel()
        if not self._result.done():
            self._result.set_result(self._make_result())

    async def _after_twiml(self, got: object) -> None:
        if isinstance(self._pending, _HangupRequest):
            await self._finish("canceled", self._pending.by)
            return
        if not isinstance(got, list):
            await self._finish("failed", "remote")
            return
        instructions: list[Instruction] = got
        if instructions and isinstance(instructions[0], Reject):
            reason = instructions[0].reason
            self.note("reject", reason=reason)
            await self._finish("busy" if reason == "busy" else "no-answer", "remote")
            return
        await self._converse(instructions)

    async def _converse(self, instructions: list[Instruction]) -> None:
        self._answered = True
        self.timeline.answered_ms = self.now_ms()
        await self._set_status("in-progress", "answered")
        clock = self._spawn(self._clock())
        script = self._spawn(self._run_script())
        watchdog = self._spawn(self._watchdog())
        doc: list[Instruction] | None = instructions
        ended_by: HungUpBy = "remote"
        while doc is not None:
            ended_here = False
            for verb in doc:
                if self._pending is not None:
                    break
                if isinstance(verb, Hangup):
                    self.note("hangup_verb")
                    ended_here = True
                    break
                if isinstance(verb, Reject):
                    self.note("reject", reason=verb.reason)
                    ended_here = True
                    break
                await self._run_verb(verb)
            pending, self._pending = self._pending, None
            if isinstance(pending, _HangupRequest):
                ended_by = pending.by
                self.note("hangup", by=pending.by, reason=pending.reason)
                break
            if isinstance(pending, _RedirectRequest) and not ended_here:
                self.note("redirect", url=pending.url, inline=pending.instructions is not None)
                if pending.instructions is not None:
                    doc = pending.instructions
                else:
                    fetched = await self._fetch_twiml(pending.url, pending.method, "in-progress")
                    doc = fetched
                continue
            doc = None
        self._ended = True
        for task in (clock, script, watchdog):
            task.cancel()
        # Release anything waiting on a slot.
        if not self._slot_waiter.done():
            self._slot_waiter.cancel()
        await self._finish("completed", ended_by)

    async def _run_verb(self, verb: Instruction) -> None:
        if isinstance(verb, Stream):
            await self._run_stream(verb)
        elif isinstance(verb, Say):
            await self._run_say(verb)
        elif isinstance(verb, Pause):
            await self._wait_or_interrupt(self._slots(verb.length_s * 1000))
        elif isinstance(verb, Dial):
            await self._run_dial(verb)

    async def _run_script(self) -> None:
        line = _CallerLine(self)
        try:
            hung_up = await caller_mod.run_script(self._script, line, self._speech)
        except asyncio.CancelledError:
            return
        if not hung_up:
            self.note("caller_script_done")

    async def _watchdog(self) -> None:
        await asyncio.sleep(self._max_duration_s)
        self.note("max_duration", seconds=self._max_duration_s)
        self._request(_HangupRequest("caller", f"max_duration_s={self._max_duration_s:g} reached"))

    async def _finish(self, status: str, by: HungUpBy | None) -> None:
        if self._result.done():
            return
        self._ended = True
        self.hung_up_by = by
        self.timeline.ended_ms = self.now_ms()
        rec = self.record
        now = utcnow()
        duration = 0
        if self._answered and self.timeline.answered_ms is not None:
            duration = round((self.timeline.ended_ms - self.timeline.answered_ms) / 1000)
        self.record = rec.model_copy(
            update={
                "end_time": now,
                "duration": duration,
                "hung_up_by": by,
                "transferred_to": rec.transferred_to,
            }
        )
        wav_path: Path | None = None
        if self._answered and self._left:
            wav_path = self.carrier.recordings_dir / f"{self.call_sid}.wav"
            await asyncio.to_thread(_write_wav, wav_path, bytes(self._left), bytes(self._right))
        self._wav_path = wav_path
        await self._set_status(status, "completed")
        self._ended_event.set()

    def _make_result(self) -> CallResult:
        answered = self.timeline.answered_ms
        ended = self.timeline.ended_ms if self.timeline.ended_ms is not None else self.now_ms()
        return CallResult(
            call_sid=self.call_sid,
            status=self.record.status,
            duration_s=0.0 if answered is None else round((ended - answered) / 1000, 3),
            transferred_to=self.record.transferred_to,
            hung_up_by=self.hung_up_by,
            timeline=self.timeline,
            wav_path=self._wav_path,
            errors=list(self.errors),
            direction=self.record.direction,
            from_=self.record.from_number,
            to=self.record.to,
        )


def _dtmf_builder(stream_sid: str, digit: str) -> Callable[[str], dict[str, object]]:
    def build(seq: str) -> dict[str, object]:
        return {
            "event": "dtmf",
            "streamSid": stream_sid,
            "sequenceNumber": seq,
            "dtmf": {"track": "inbound_track", "digit": digit},
        }

    return build


class WebhookError(Exception):
    """A webhook or callback request failed (connection error, timeout or non-2xx)."""


def _espeak_voice(voice: str, language: str) -> str:
    """TwiML ``voice``/``language`` -> an espeak-ng voice spec (best effort)."""
    lang = language.lower()
    if lang.startswith("en-gb"):
        return "en-gb"
    if lang and not lang.startswith("en"):
        return lang.split("-")[0]
    if voice.lower() in ("woman", "alice") or voice.lower().startswith("polly.joanna"):
        return "en-us+f3"
    return "en-us"


def _write_wav(path: Path, left_ulaw: bytes, right_ulaw: bytes) -> None:
    n = min(len(left_ulaw), len(right_ulaw))
    left = ulaw_decode(np.frombuffer(left_ulaw[:n], dtype=np.uint8))
    right = ulaw_decode(np.frombuffer(right_ulaw[:n], dtype=np.uint8))
    stereo = np.column_stack((left, right)).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".wav.tmp")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(stereo.tobytes())
    tmp.replace(path)


# --------------------------------------------------------------------------------------
# The carrier
# --------------------------------------------------------------------------------------


class Carrier:
    """Places calls on the simulator's numbers and keeps the live ones addressable by SID.

    ``tokens`` maps account SIDs to auth tokens (webhooks are signed with the owning account's
    token). The carrier owns one HTTP client session for webhooks and callbacks; call
    :meth:`close` when done.
    """

    def __init__(
        self,
        store: StateStore,
        tokens: Mapping[str, str],
        recordings_dir: Path,
        *,
        ring_s: float = 0.1,
        dial_hold_s: float = 0.5,
        webhook_timeout_s: float = 15.0,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.recordings_dir = recordings_dir
        self.ring_s = ring_s
        self.dial_hold_s = dial_hold_s
        self.webhook_timeout_s = webhook_timeout_s
        self.calls: dict[str, LiveCall] = {}
        self._session: aiohttp.ClientSession | None = None
        self._fresh_session: aiohttp.ClientSession | None = None
        self._runners: set[asyncio.Task[None]] = set()

    # ---- HTTP -------------------------------------------------------------------------

    async def http_request(
        self, url: str, method: str, params: Mapping[str, str], auth_token: str
    ) -> str:
        """A signed webhook request as Twilio makes it; returns the response body.

        POST sends ``params`` form-encoded and signs URL + params; GET appends them to the
        query string and signs the resulting URL alone.
        """
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.webhook_timeout_s)
            # Idle connections are dropped well before servers commonly close them (uvicorn and
            # Node after 5 s), and a retry always opens a fresh connection.
            self._session = aiohttp.ClientSession(
                timeout=timeout, connector=aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_S)
            )
            self._fresh_session = aiohttp.ClientSession(
                timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)
            )
        method = method.upper() or "POST"
        headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
        data: dict[str, str] | None = None
        if method == "GET":
            sep = "&" if urlsplit(url).query else "?"
            url = f"{url}{sep}{urlencode(params)}"
            headers["X-Twilio-Signature"] = sign(auth_token, url)
        else:
            data = dict(params)
            headers["X-Twilio-Signature"] = sign(auth_token, url, data)
        # Twilio retries a webhook once when the connection fails (connection overrides: retry
        # count ``rc`` defaults to 1), never on a timeout or an HTTP error. It matters on a
        # keep-alive connection the server closes just as the next request goes out: without
        # the retry, a status callback sent after ~5 s of quiet (uvicorn's keep-alive) is lost.
        for attempt in range(1 + WEBHOOK_RETRIES):
            try:
                session = self._session if attempt == 0 else self._fresh_session
                assert session is not None
                async with session.request(method, url, data=data, headers=headers) as resp:
                    body = await resp.text()
                    if not 200 <= resp.status < 300:
                        raise WebhookError(
                            f"{method} {url} returned HTTP {resp.status}: {body[:200]!r}"
                        )
                    return body
            except aiohttp.ClientConnectionError as exc:
                if isinstance(exc, TimeoutError) or attempt == WEBHOOK_RETRIES:
                    raise WebhookError(f"{method} {url} failed: {exc!r}") from exc
                log.info("webhook %s %s: connection failed (%r), retrying once", method, url, exc)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise WebhookError(f"{method} {url} failed: {exc!r}") from exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    # ---- calls ------------------------------------------------------------------------

    def _token(self, account_sid: str) -> str:
        token = self.tokens.get(account_sid)
        if token is None:
            raise KeyError(f"no auth token known for account {account_sid}")
        return token

    def _register(self, call: LiveCall, runner: Coroutine[Any, Any, None]) -> None:
        self.calls[call.call_sid] = call
        finished = [sid for sid, c in self.calls.items() if not c.live]
        for sid in finished[: max(len(finished) - MAX_FINISHED_CALLS, 0)]:
            del self.calls[sid]

        task = asyncio.create_task(runner)
        self._runners.add(task)
        task.add_done_callback(self._runners.discard)

    async def start_inbound(
        self,
        number: PhoneNumberRecord,
        from_: str,
        script: Sequence[Step],
        *,
        max_duration_s: float = 60.0,
    ) -> LiveCall:
        """Ring ``number`` from ``from_`` with a scripted caller; returns once the call exists.

        The script's speech is synthesised before the phone rings.
        """
        speech = await caller_mod.render_script(script)
        record = CallResource(
            sid=new_sid("CA"),
            account_sid=number.account_sid,
            from_number=from_,
            to=number.phone_number,
            direction="inbound",
            status="queued",
            phone_number_sid=number.sid,
        )
        self.store.put_call(record)
        call = LiveCall(
            self,
            record,
            self._token(number.account_sid),
            script,
            speech,
            status_callback=number.status_callback,
            status_callback_method=number.status_callback_method,
            status_events=INBOUND_STATUS_EVENTS,
            max_duration_s=max_duration_s,
            number=number,
        )
        call.note("placed", from_=from_, to=number.phone_number)
        self._register(call, call.run_inbound())
        return call

    async def start_outbound(
        self,
        record: CallResource,
        *,
        url: str,
        method: str,
        instructions: list[Instruction] | None,
        callee: Callee | None,
        ring_timeout_s: float,
        max_duration_s: float = 60.0,
        machine_detection: str | None = None,
    ) -> LiveCall:
        """Run an outbound-api call already recorded as ``queued``.

        ``callee`` is the far party; None means nobody answers (``no-answer`` after
        ``ring_timeout_s``). ``machine_detection`` is Twilio's MachineDetection parameter.
        """
        connected = callee.connected_script(machine_detection) if callee else []
        ahead = callee.greeting_steps() if callee else []
        speech = await caller_mod.render_script([*connected, *ahead])
        number = self.store.find_number(record.to)
        call = LiveCall(
            self,
            record,
            self._token(record.account_sid),
            connected,
            speech,
            status_callback=record.status_callback,
            status_callback_method=record.status_callback_method,
            status_events=frozenset(record.status_callback_events),
            max_duration_s=max_duration_s,
            number=number,
        )
        call.note("placed", from_=record.from_number, to=record.to)
        self._register(
            call,
            call.run_outbound(url, method, instructions, callee, ring_timeout_s, machine_detection),
        )
        return call

    def live(self, call_sid: str) -> LiveCall | None:
        """The call if it is still in progress."""
        call = self.calls.get(call_sid)
        return call if call is not None and call.live else None

    async def close(self) -> None:
        """Hang up every live call (as the carrier going away) and close the HTTP session."""
        for call in list(self.calls.values()):
            if call.live:
                call.hang_up("remote", "simulator stopping")
        if self._runners:
            await asyncio.wait(set(self._runners), timeout=10)
        for task in list(self._runners):
            task.cancel()
        for session in (self._session, self._fresh_session):
            if session is not None:
                await session.close()
        self._session = self._fresh_session = None
