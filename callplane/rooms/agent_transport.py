"""The LiveKit room transport: the conversation core as one agent participant in a room.

Audio is 24 kHz PCM16 mono both ways, which is the Realtime API's ``audio/pcm``, so nothing is
transcoded between the room and the session (LiveKit's own stream resamples what the room's
Opus decoder gives).

* In: every human in the room is heard. Each remote audio track of a participant that is not an
  agent (identity without :data:`~callplane.livekit_settings.AGENT_IDENTITY_PREFIX`, kind not
  agent) is read with ``rtc.AudioStream`` in 20 ms frames into a :class:`~callplane.rooms.mixer.
  Mixer`; a 20 ms clock pulls the mixed frame and hands it to the handler's ``on_audio``,
  from the clock's task, without a queue. Tracks that appear or go away mid-call join or leave
  the mix.
* Out: one ``AudioSource`` and its ``LocalAudioTrack``, published as the agent's microphone.
  :meth:`play` queues PCM and its mark in a :class:`~callplane.rooms.playout.PlayoutQueue`; a
  playout task feeds the source 20 ms frames (``capture_frame`` paces in real time once the
  source's small queue is full) and every mark is echoed to the handler's ``on_mark`` when the
  audio before it has been played out, which is what the core's barge-in truncation relies on.
  :meth:`clear` drops the queue, clears the source and echoes the pending marks right after it
  returns (as Twilio does on ``clear``; the core treats them as void).
* End: the handler's ``on_end`` when the room disconnects, when :meth:`hang_up` makes the agent
  leave, or when the job calls :meth:`leave` (the room emptied, the job was stopped).
* Transfer: only a phone caller bridged into the room (``phone:+E164``) has a line to move;
  :meth:`transfer` asks that caller's phone bridge to move it (:data:`~callplane.
  livekit_settings.TRANSFER_RPC`) and the agent stays for everyone else.

Hot paths (a frame in, a frame out) do no validation, no logging and nothing blocking.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections import deque
from typing import Literal

from livekit import rtc

from callplane.livekit_settings import AGENT_IDENTITY_PREFIX, PHONE_IDENTITY_PREFIX, TRANSFER_RPC
from callplane.rooms.mixer import FRAME_MS, SAMPLE_RATE, Mixer
from callplane.rooms.playout import PlayoutQueue
from callplane.tools import TransferFailed
from callplane.transports.base import (
    AudioIn,
    CallEnded,
    MarkIn,
    TransferOutcome,
    TransportEvent,
    TransportHandler,
)

log = logging.getLogger("callplane.livekit")

BYTES_PER_MS = SAMPLE_RATE * 2 // 1000  # 48: PCM16 mono at 24 kHz
FRAME_BYTES = BYTES_PER_MS * FRAME_MS
# How far ahead of the listener the agent's audio source may run. Small, so that a barge-in
# has little queued audio to drop; a few frames, so that event-loop jitter never starves it.
SOURCE_QUEUE_MS = 100
AGENT_TRACK_NAME = "agent-voice"
# The phone bridge lets the caller hear the goodbye, then waits for Twilio's REST API.
TRANSFER_RPC_TIMEOUT_S = 30.0


def is_human(participant: rtc.Participant) -> bool:
    """A participant callplane answers: not an agent (by identity prefix or by kind)."""
    return not participant.identity.startswith(AGENT_IDENTITY_PREFIX) and (
        participant.kind != rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    )


def is_phone_caller(participant: rtc.Participant) -> bool:
    """A phone caller bridged into the room by callplane (``phone:+E164``): the participants
    whose call a transfer can move. The edge never lets a web user take such an identity."""
    return participant.identity.startswith(PHONE_IDENTITY_PREFIX) and is_human(participant)


class LiveKitRoomTransport:
    """A Transport over a connected ``rtc.Room``; :meth:`start` publishes the agent's track.

    Use ``async with LiveKitRoomTransport(room) as transport`` (or :meth:`start` and
    :meth:`aclose`). The room stays the caller's: :meth:`aclose` does not disconnect it, but
    :meth:`hang_up` does, because hanging up is how an agent leaves a room.
    """

    audio_format: Literal["audio/pcm"] = "audio/pcm"
    bytes_per_ms = float(BYTES_PER_MS)

    def __init__(self, room: rtc.Room) -> None:
        self.room = room
        self.mixer = Mixer()
        self.playout = PlayoutQueue(FRAME_BYTES, SAMPLE_RATE * 2)
        self._handler: TransportHandler | None = None
        # events that came while no handler listened, for the next one (in order)
        self._held: deque[TransportEvent] = deque()
        self._ended = False
        self._source: rtc.AudioSource | None = None
        self._track: rtc.LocalAudioTrack | None = None
        self.track_sid: str | None = None
        # track sid -> (reader task, participant identity)
        self._readers: dict[str, tuple[asyncio.Task[None], str]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._audio_ready = asyncio.Event()  # pulsed by play()
        self._marks_changed = asyncio.Event()  # pulsed when a mark is scheduled or cleared
        self.reader_errors = 0

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Publish the agent's audio track and start hearing the room's humans."""
        self._source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=SOURCE_QUEUE_MS)
        self._track = rtc.LocalAudioTrack.create_audio_track(AGENT_TRACK_NAME, self._source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        publication = await self.room.local_participant.publish_track(self._track, options)
        self.track_sid = publication.sid
        self.room.on("track_subscribed", self._on_track_subscribed)
        self.room.on("track_unsubscribed", self._on_track_unsubscribed)
        self.room.on("participant_disconnected", self._on_participant_disconnected)
        self.room.on("disconnected", self._on_disconnected)
        for participant in self.room.remote_participants.values():
            for publication_ in participant.track_publications.values():
                if publication_.track is not None:
                    self._on_track_subscribed(publication_.track, publication_, participant)
        self._tasks = [
            asyncio.create_task(self._mix_clock(), name="livekit-mix"),
            asyncio.create_task(self._playout_loop(), name="livekit-playout"),
            asyncio.create_task(self._mark_clock(), name="livekit-marks"),
        ]
        if not self.room.isconnected():
            self.leave("room_disconnected")

    async def aclose(self) -> None:
        """Stop hearing and playing. The agent's track stays published until the room is
        disconnected, which is the room owner's call (the agent job's)."""
        self.room.off("track_subscribed", self._on_track_subscribed)
        self.room.off("track_unsubscribed", self._on_track_unsubscribed)
        self.room.off("participant_disconnected", self._on_participant_disconnected)
        self.room.off("disconnected", self._on_disconnected)
        tasks = self._tasks + [task for task, _ in self._readers.values()]
        self._readers.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._source is not None:
            await self._source.aclose()
            self._source = None

    async def __aenter__(self) -> LiveKitRoomTransport:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def leave(self, reason: str) -> None:
        """End the call with ``reason`` (the job decided to leave); idempotent."""
        if not self._ended:
            self._ended = True
            self._emit(CallEnded(reason))

    # --- who is heard ----------------------------------------------------------------------------

    def humans_heard(self) -> dict[str, str]:
        """Track sid -> identity of every human track in the mix."""
        return {sid: identity for sid, (_, identity) in self._readers.items()}

    def speaking_human(self) -> tuple[str, str] | None:
        """(track sid, identity) of the human who spoke most recently and loudest, if any; with
        a single human in the mix, that one."""
        heard = self.humans_heard()
        sid = self.mixer.loudest()
        if sid is None and len(heard) == 1:
            sid = next(iter(heard))
        if sid is None or sid not in heard:
            return None
        return sid, heard[sid]

    def _on_track_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if track.kind != rtc.TrackKind.KIND_AUDIO or not is_human(participant):
            return
        sid = publication.sid
        if sid in self._readers:
            return
        self.mixer.add(sid)
        task = asyncio.create_task(self._read_track(sid, track), name=f"livekit-read-{sid}")
        self._readers[sid] = (task, participant.identity)
        log.info("room %s: hearing %s (track %s)", self.room.name, participant.identity, sid)

    def _on_track_unsubscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        self._drop_track(publication.sid)

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        for sid in [s for s, (_, who) in self._readers.items() if who == participant.identity]:
            self._drop_track(sid)

    def _drop_track(self, sid: str) -> None:
        entry = self._readers.pop(sid, None)
        self.mixer.remove(sid)
        if entry is not None:
            entry[0].cancel()
            log.info("room %s: no longer hearing %s (track %s)", self.room.name, entry[1], sid)

    def _on_disconnected(self, reason: rtc.DisconnectReason.ValueType) -> None:
        self.leave("room_disconnected")

    async def _read_track(self, sid: str, track: rtc.Track) -> None:
        stream = rtc.AudioStream(
            track, sample_rate=SAMPLE_RATE, num_channels=1, frame_size_ms=FRAME_MS
        )
        try:
            async for event in stream:
                self.mixer.push(sid, event.frame.data.cast("B"))
        except Exception:
            self.reader_errors += 1
            log.exception("room %s: reading track %s failed", self.room.name, sid)
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def _mix_clock(self) -> None:
        """Every 20 ms, the mixed frame of everyone heard (on an absolute schedule, so that
        the period does not drift with the loop's latency)."""
        period = FRAME_MS / 1000.0
        next_tick = time.monotonic()
        while True:
            next_tick += period
            delay = next_tick - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -5 * period:
                next_tick = time.monotonic()  # the loop stalled: restart the schedule
            frame = self.mixer.pull()
            if frame is not None and not self._ended:
                handler = self._handler
                if handler is not None and not self._held:
                    handler.on_audio(base64.b64encode(frame))
                else:
                    self._emit(AudioIn(base64.b64encode(frame)))

    # --- the agent's audio -----------------------------------------------------------------------

    def listen(self, handler: TransportHandler | None) -> None:
        self._handler = handler
        held = self._held
        while handler is not None and held and self._handler is handler:
            _dispatch(handler, held.popleft())

    def _emit(self, event: TransportEvent) -> None:
        """An event to the handler, or held for the next one."""
        handler = self._handler
        if handler is None or self._held:
            self._held.append(event)
        else:
            _dispatch(handler, event)

    def play(self, payload_b64: str, mark: str) -> None:
        self.playout.push(base64.b64decode(payload_b64), mark)
        self._audio_ready.set()

    def clear(self) -> None:
        voided = self.playout.clear(time.monotonic())
        if self._source is not None:
            self._source.clear_queue()
        # The echoes go out after this returns: the core forgets its queue after it cleared,
        # and must not see these echoes before it has (they would count as played).
        if voided:
            asyncio.get_running_loop().call_soon(self._echo_voided, voided)
        self._marks_changed.set()

    def _echo_voided(self, marks: list[str]) -> None:
        for mark in marks:
            self._emit(MarkIn(mark))

    async def hang_up(self) -> None:
        """The agent leaves the room."""
        self.leave("agent_hung_up")
        await self.room.disconnect()

    def phone_callers(self) -> list[str]:
        """Identities of the phone callers in the room now."""
        return [p.identity for p in self.room.remote_participants.values() if is_phone_caller(p)]

    async def transfer(self, to: str) -> TransferOutcome:
        """Move a phone caller's call to the number ``to``; the agent stays in the room.

        The caller is the room's only phone caller, or, with several, the one who spoke last
        (who asked for it). Their phone bridge lets them hear what the agent said, redirects
        the call through Twilio and answers once Twilio took it; anything else is a
        :class:`~callplane.tools.TransferFailed` with the reason.
        """
        who = self._caller_to_transfer()
        try:
            await self.room.local_participant.perform_rpc(
                destination_identity=who,
                method=TRANSFER_RPC,
                payload=json.dumps({"to": to}),
                response_timeout=TRANSFER_RPC_TIMEOUT_S,
            )
        except rtc.RpcError as exc:
            log.warning(
                "room %s: transfer of %s to %s failed: %s", self.room.name, who, to, exc.message
            )
            raise TransferFailed(f"{who} was not transferred: {exc.message}") from None
        log.info("room %s: %s transferred to %s", self.room.name, who, to)
        return "participant_moved"

    def _caller_to_transfer(self) -> str:
        callers = self.phone_callers()
        if not callers:
            raise TransferFailed(
                "nobody in this room is on a phone line, so there is no call to transfer"
            )
        if len(callers) == 1:
            return callers[0]
        speaking = self.speaking_human()
        if speaking is not None and speaking[1] in callers:
            return speaking[1]
        raise TransferFailed(
            f"{len(callers)} phone callers are in the room ({', '.join(sorted(callers))}) and "
            "none of them spoke last; ask the one who wants the transfer to say so"
        )

    async def _playout_loop(self) -> None:
        while True:
            frame = self.playout.next_frame()
            if frame is None:
                self._audio_ready.clear()
                await self._audio_ready.wait()
                continue
            source = self._source
            if frame.pcm and source is not None:
                samples = len(frame.pcm) // 2
                await source.capture_frame(rtc.AudioFrame(frame.pcm, SAMPLE_RATE, 1, samples))
            self.playout.captured(frame, time.monotonic())
            if frame.marks:
                self._marks_changed.set()

    async def _mark_clock(self) -> None:
        """Echo each mark when its audio has been played out."""
        while True:
            now = time.monotonic()
            for mark in self.playout.due(now):
                self._emit(MarkIn(mark))
            due = self.playout.next_due()
            self._marks_changed.clear()
            timeout = None if due is None else max(0.0, due - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._marks_changed.wait(), timeout)


def _dispatch(handler: TransportHandler, event: TransportEvent) -> None:
    if isinstance(event, AudioIn):
        handler.on_audio(event.payload)
    elif isinstance(event, MarkIn):
        handler.on_mark(event.name)
    elif isinstance(event, CallEnded):
        handler.on_end(event.reason)
