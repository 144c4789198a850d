"""A call's audio in both directions, driven by one 20 ms clock.

Each slot the clock plays one frame of queued bot audio to the caller (echoing marks whose
audio has played) and sends one frame of the caller's speech, or silence, to the media stream.
One clock for both directions keeps the two channels of the recording aligned, and lets the
scripted caller (``caller.py``) hear the bot's audio exactly when it would have been heard.

Bot audio played after a ``clear`` is gone is never heard; the recording's right channel is
what the caller heard, not what the bot sent.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from callplane.audio import ulaw_decode
from callplane_standins.twilio_simulator.control import HangupRequest, PendingControl
from callplane_standins.twilio_simulator.media_stream import (
    BotClear,
    BotMark,
    BotMedia,
    BotMessage,
    StreamSession,
    dtmf_message,
    mark_message,
    media_message,
)
from callplane_standins.twilio_simulator.playback import (
    FRAME_BYTES,
    FRAME_MS,
    SILENCE,
    PlaybackQueue,
)
from callplane_standins.twilio_simulator.recording import write_stereo_wav
from callplane_standins.twilio_simulator.timeline import (
    CallLog,
    ChunkRecord,
    ClearRecord,
    MarkRecord,
)

__all__ = ["CallAudio", "CallerLine"]

# µ-law codes within ±64 of zero: a frame made only of these is silence to the caller's ear.
_QUIET_CODES = bytes(
    c for c in range(256) if abs(int(ulaw_decode(np.array([c], dtype=np.uint8))[0])) < 64
)


class CallAudio:
    """The playback queue, the caller's uplink, the attached stream and the recording."""

    def __init__(self, log: CallLog, control: PendingControl) -> None:
        self._log = log
        self._control = control
        self._loop = asyncio.get_running_loop()
        self._playback = PlaybackQueue()
        self._due: list[MarkRecord] = []
        self.uplink = bytearray()
        self.dtmf: deque[str] = deque()
        self.stream: StreamSession | None = None
        self._left = bytearray()
        self._right = bytearray()
        self.tick = 0
        self._slot_waiter: asyncio.Future[None] = self._loop.create_future()
        self.bot_played_bytes = 0
        self.bot_voiced_bytes = 0
        self.bot_last_audio_ms: float | None = None
        # Held while the playback queue changes and marks are echoed, so echoes always leave
        # in queue order whether playback, a mark or a clear caused them.
        self._play_lock = asyncio.Lock()
        self._say_chunks = 0

    # ---- the clock ----------------------------------------------------------------------

    async def next_slot(self) -> None:
        """Until the next 20 ms slot has been played (cancelled once the call has ended)."""
        if self._control.ended:
            raise asyncio.CancelledError
        await asyncio.shield(self._slot_waiter)

    def release(self) -> None:
        """Wake nothing more: anything waiting on a slot is cancelled (the call is over)."""
        if not self._slot_waiter.done():
            self._slot_waiter.cancel()

    async def slots(self, ms: float) -> None:
        """Let ``ms`` of call time pass, in whole slots."""
        for _ in range(max(round(ms / FRAME_MS), 0)):
            await self.next_slot()

    async def run_clock(self) -> None:
        """Play one slot every 20 ms of the event loop's clock until the call ends."""
        loop = self._loop
        start = loop.time()
        k = 0
        while not self._control.ended:
            await self._on_tick()
            k += 1
            delay = start + k * FRAME_MS / 1000 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.2:
                # More than 10 slots behind (a stalled loop): resync instead of bursting.
                self._log.note("clock_resync", behind_ms=round(-delay * 1000))
                start = loop.time() - k * FRAME_MS / 1000

    async def _on_tick(self) -> None:
        now = self._log.now_ms()
        stream = self.stream
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
            self.bot_played_bytes += len(frame)
            if frame.translate(None, _QUIET_CODES):
                self.bot_voiced_bytes += len(frame)
                self.bot_last_audio_ms = now + len(frame) / 8
        self._right += frame + SILENCE[len(frame) :]

        # Caller -> bot: speech or silence, every slot.
        up = bytes(self.uplink[:FRAME_BYTES])
        del self.uplink[:FRAME_BYTES]
        up += SILENCE[len(up) :]
        self._left += up
        if stream is not None and not stream.closed:
            stream.chunk += 1
            ts = str((self.tick - stream.start_tick) * FRAME_MS)
            await stream.send(media_message(stream.stream_sid, str(stream.chunk), ts, up))
            stream.record.media_frames_sent += 1
        while self.dtmf:
            digit = self.dtmf.popleft()
            self._log.note("dtmf", digit=digit)
            if stream is not None:
                await stream.send(dtmf_message(stream.stream_sid, digit))
        self.tick += 1
        waiter, self._slot_waiter = self._slot_waiter, self._loop.create_future()
        if not waiter.done():  # release() cancels it once the call is over
            waiter.set_result(None)

    # ---- bot audio ----------------------------------------------------------------------

    async def _echo(self, stream: StreamSession, mark: MarkRecord, cleared: bool) -> None:
        mark.echoed_ms = self._log.now_ms()
        mark.played_ms = stream.played_bytes / 8
        mark.cleared = cleared
        await stream.send(mark_message(stream.stream_sid, mark.name))

    async def on_bot_message(self, stream: StreamSession, msg: BotMessage) -> None:
        """Act on a valid ``media``, ``mark`` or ``clear`` from the stream's server."""
        if isinstance(msg, BotMedia):
            stream.chunks_received += 1
            chunk = ChunkRecord(
                stream.chunks_received,
                "stream",
                stream.stream_sid,
                self._log.now_ms(),
                len(msg.ulaw),
            )
            self._log.timeline.chunks.append(chunk)
            async with self._play_lock:
                self._playback.push_audio(msg.ulaw, chunk)
        elif isinstance(msg, BotMark):
            rec = MarkRecord(msg.name, stream.stream_sid, self._log.now_ms())
            self._log.timeline.marks.append(rec)
            async with self._play_lock:
                if self._playback.empty and not self._due:
                    await self._echo(stream, rec, cleared=False)
                else:
                    self._playback.push_mark(rec)
        elif isinstance(msg, BotClear):
            async with self._play_lock:
                await self._clear(stream)

    async def _clear(self, stream: StreamSession) -> None:
        now = self._log.now_ms()
        dropped, flushed = self._playback.clear()
        due, self._due = self._due, []
        record = ClearRecord(
            at_ms=now,
            stream_sid=stream.stream_sid,
            stream_ms=(self.tick - stream.start_tick) * FRAME_MS,
            played_ms=stream.played_bytes / 8,
            dropped_bytes=dropped,
            marks_flushed=[m.name for m in flushed],
        )
        self._log.timeline.clears.append(record)
        self._log.note("clear", dropped_ms=dropped / 8, marks_flushed=len(flushed))
        for mark in due:  # their audio had finished playing: a normal echo
            await self._echo(stream, mark, cleared=False)
        for mark in flushed:
            await self._echo(stream, mark, cleared=True)

    def queue_say(self, ulaw: bytes) -> None:
        """Queue one play of a ``<Say>``'s audio."""
        self._say_chunks += 1
        chunk = ChunkRecord(self._say_chunks, "say", None, self._log.now_ms(), len(ulaw))
        self._log.timeline.chunks.append(chunk)
        self._playback.push_audio(ulaw, chunk)

    async def until_drained(self) -> None:
        """Until everything queued has played and its marks are echoed."""
        while not self._playback.empty or self._due:
            await self.next_slot()

    def drop_playback(self) -> None:
        """Forget queued audio and marks without echoing (the stream or verb is over)."""
        self._playback.clear()
        self._due = []

    # ---- the recording --------------------------------------------------------------------

    @property
    def recorded(self) -> bool:
        """Whether any slot has been played (there is something to write)."""
        return bool(self._left)

    async def write_recording(self, path: Path) -> None:
        """The stereo WAV of the call so far (left: the caller, right: the bot as heard)."""
        await asyncio.to_thread(write_stereo_wav, path, bytes(self._left), bytes(self._right))

    def forget(self) -> None:
        """The call is over and its WAV is on disk: let go of the audio (16 kB for every
        second of the call), the queue and the stream, so that a simulator that has carried
        thousands of calls holds only their timelines."""
        self._left = bytearray()
        self._right = bytearray()
        self.uplink = bytearray()
        self.drop_playback()
        self.stream = None


class CallerLine:
    """The caller's end of a call, as a script sees it (:class:`caller.Line`)."""

    def __init__(self, audio: CallAudio, control: PendingControl, log: CallLog) -> None:
        self._audio = audio
        self._control = control
        self._log = log

    def speak(self, ulaw: bytes) -> None:
        self._audio.uplink.extend(ulaw)

    @property
    def speaking(self) -> bool:
        return bool(self._audio.uplink)

    def dtmf(self, digit: str) -> None:
        self._audio.dtmf.append(digit)

    def hang_up(self) -> None:
        self._control.request(HangupRequest("caller", "script hung up"))

    async def next_slot(self) -> None:
        await self._audio.next_slot()

    @property
    def bot_played_bytes(self) -> int:
        return self._audio.bot_played_bytes

    @property
    def bot_voiced_bytes(self) -> int:
        return self._audio.bot_voiced_bytes

    @property
    def bot_quiet_ms(self) -> float:
        last = self._audio.bot_last_audio_ms
        return math.inf if last is None else self._log.now_ms() - last

    def note(self, kind: str, detail: Mapping[str, object]) -> None:
        self._log.note(kind, **detail)

    def error(self, message: str) -> None:
        self._log.error(message)
