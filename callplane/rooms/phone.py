"""Hybrid rooms: a phone call joins its profile's LiveKit room as participant ``phone:+E164``.

A profile that names a room (``AgentProfile.room``) does not give each call a Realtime session
of its own: the call becomes one more human in that room, and the room's agent (dispatched by
the join token's room configuration when this join creates the room) hears and answers
everyone. This module is the bridge between the call's Twilio media stream and the room:

* caller -> room: µ-law 8 kHz from Twilio, decoded, upsampled to 48 kHz and published as the
  participant's microphone track;
* room -> caller: every other participant's audio, each through its own bounded jitter buffer,
  mixed at 48 kHz (:class:`~callplane.rooms.mixer.Mixer`), downsampled to 8 kHz, µ-law encoded
  and sent to Twilio as 20 ms ``media`` frames on a real-time schedule (never faster, so
  Twilio's buffer never fills with audio the caller hears seconds late);
* hang-up either way: the stream ending disconnects the participant; the room going away (or
  the server removing the participant) ends the call through Twilio's REST API;
* transfer: the room's agent asks this participant (RPC :data:`~callplane.livekit_settings.
  TRANSFER_RPC`) to move the call; the bridge lets the caller hear what was said, redirects the
  call to ``<Dial>`` through Twilio's REST API under the profile's transfer rule
  (:func:`~callplane.profiles.transfer_target`), answers, and leaves once Twilio ends the stream.

Barge-in is the room agent's job: the bridge never clears what Twilio is playing.

The audio pieces are pure and live next door: payloads and resampling in
:mod:`callplane.rooms.phone_audio`, the mixer in :mod:`callplane.rooms.mixer`, the real-time
schedule in :mod:`callplane.rooms.pacer`; this module is the thin adapter over ``livekit.rtc``
and the Twilio transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from livekit import api, rtc

from callplane.livekit_settings import (
    AGENT_IDENTITY_PREFIX,
    PHONE_IDENTITY_PREFIX,
    TRANSFER_RPC,
    LiveKitSettings,
)
from callplane.profiles import AgentProfile, transfer_target
from callplane.records import CallRecord
from callplane.rooms.mixer import Mixer
from callplane.rooms.pacer import FramePacer
from callplane.rooms.phone_audio import (
    FRAME_S,
    ROOM_FRAME,
    ROOM_RATE,
    Downsampler,
    Upsampler,
    decode_payload,
    encode_payload,
)
from callplane.tools import TransferFailed
from callplane.transports.base import AudioIn, CallEnded, DtmfIn, EventQueue, MarkIn
from callplane.transports.twilio import TwilioMediaStream

__all__ = [
    "BridgeTuning",
    "PhoneRoomBridge",
    "join_token",
    "person_on_the_line",
    "phone_identity",
]

log = logging.getLogger("callplane.rooms.phone")

_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
# RFC 4733 event codes, which is what LiveKit's SIP DTMF carries.
_DTMF_CODES = {**{str(d): d for d in range(10)}, "*": 10, "#": 11}
# Before a transfer, wait at most this long for Twilio to echo that the caller heard the room.
HEARD_WAIT_S = 3.0
# After Twilio took a transfer, stay this long so that the agent gets the answer before this
# participant leaves (a leaving participant's pending answers are lost).
ANSWER_GRACE_S = 1.0
# A call that ends while Twilio is taking its transfer waits this long for the answer.
TRANSFER_SETTLE_S = 15.0
# A request from a participant this side has not seen join yet waits this long for them.
PARTICIPANT_WAIT_S = 3.0


# --------------------------------------------------------------------------------------
# Joining the room
# --------------------------------------------------------------------------------------


def person_on_the_line(record: CallRecord) -> str:
    """The number of the person the call connects: the caller of an inbound call, the callee
    of one the agent placed (its From is the stack's own number)."""
    return record.to if record.direction == "outbound" else record.from_


def phone_identity(number: str, call_sid: str) -> str:
    """The caller's identity in the room: ``phone:+E164``.

    A caller without a usable number (withheld, "anonymous") still needs an identity of its
    own, so it becomes ``phone:unknown-<CallSid>``. Two calls from one number in one room share
    an identity, and LiveKit then keeps only the newer one (the older call is hung up).
    """
    if _E164.match(number):
        return PHONE_IDENTITY_PREFIX + number
    return f"{PHONE_IDENTITY_PREFIX}unknown-{call_sid}"


def join_token(
    settings: LiveKitSettings,
    *,
    room: str,
    identity: str,
    profile: str,
    call_sid: str,
    phone: str,
) -> str:
    """A join token for the caller; a join that creates the room dispatches the room's agent.

    Kind ``sip``: to the room and its webhooks the caller looks like a SIP participant, which
    is what it is.
    """
    dispatch = api.RoomAgentDispatch(
        agent_name=settings.agent_name, metadata=json.dumps({"profile": profile})
    )
    return (
        api.AccessToken(settings.api_key, settings.api_secret)
        .with_identity(identity)
        .with_name(phone or identity)
        .with_kind("sip")
        .with_grants(
            api.VideoGrants(
                room_join=True,
                room=room,
                can_publish=True,
                can_subscribe=True,
                can_publish_data=True,
            )
        )
        .with_attributes(
            {"callplane.phone": phone, "callplane.call_sid": call_sid, "callplane.profile": profile}
        )
        .with_room_config(api.RoomConfiguration(agents=[dispatch]))
        .with_ttl(datetime.timedelta(seconds=settings.token_ttl_s))
        .to_jwt()
    )


@dataclass(frozen=True)
class BridgeTuning:
    """Latency and robustness knobs of the room -> caller path (defaults suit production)."""

    # A participant's audio plays once this much is buffered (absorbs delivery jitter).
    prime_ms: int = 40
    # At most this much of one participant's audio waits; older audio is dropped.
    max_buffer_ms: int = 200
    # A late sender catches up at most this many frames at once, then skips the rest.
    max_burst: int = 3
    # Caller audio queued in the published track at most (bounds mouth-to-ear delay).
    publish_queue_ms: int = 200
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not 20 <= self.prime_ms <= self.max_buffer_ms:
            raise ValueError(
                f"BridgeTuning: prime_ms={self.prime_ms} must be at least one frame (20) and at "
                f"most max_buffer_ms={self.max_buffer_ms}"
            )


@dataclass
class _Source:
    identity: str
    stream: rtc.AudioStream
    task: asyncio.Task[None]


class PhoneRoomBridge:
    """Runs one phone call as participant ``phone:+E164`` of its profile's LiveKit room.

    ``stream`` is the call's Twilio media stream (its ``start`` already read); its call
    control hangs the call up when the room goes away. ``record`` is filled (end reason,
    DTMF) and closed; saving it is the caller's job, as for a Conversation.
    """

    def __init__(
        self,
        stream: TwilioMediaStream,
        settings: LiveKitSettings,
        profile: AgentProfile,
        record: CallRecord,
        tuning: BridgeTuning | None = None,
    ) -> None:
        if profile.room is None:
            raise ValueError(
                f"profile {profile.name!r} has no room: hybrid calls need AgentProfile.room"
            )
        self.stream = stream
        self.settings = settings
        self.profile = profile
        self.room_name = profile.room
        self.record = record
        self.tuning = tuning or BridgeTuning()
        self.identity = phone_identity(person_on_the_line(record), record.call_sid)
        self.stats: Counter[str] = Counter()
        self.mixer = Mixer(
            ROOM_FRAME,
            sample_rate=ROOM_RATE,
            max_buffered_ms=self.tuning.max_buffer_ms,
            prime_ms=self.tuning.prime_ms,
        )
        self.room = rtc.Room()
        self._sources: dict[str, _Source] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._room_gone = asyncio.Event()
        self._room_reason = "UNKNOWN_REASON"
        self._leaving = False
        self._source: rtc.AudioSource | None = None
        self._marks: dict[str, asyncio.Future[None]] = {}  # marks sent, until Twilio echoes
        self._mark_numbers = itertools.count(1)
        self._transfer_settled: asyncio.Event | None = None  # set once Twilio answered
        self.transferred_to: str | None = None

    # --- public ------------------------------------------------------------------------------

    async def run(self) -> CallRecord:
        """Bridge until either side hangs up; returns the closed record."""
        reason = "bridge_error"
        try:
            reason = await self._run()
        finally:
            await self._leave()
            self.record.close(reason)
            log.info(
                "call %s left room %r as %s: %s (to room %d frames, to caller %d frames)",
                self.record.call_sid,
                self.room_name,
                self.identity,
                reason,
                self.stats["frames_to_room"],
                self.stats["frames_to_caller"],
            )
        return self.record

    # --- lifecycle ---------------------------------------------------------------------------

    async def _run(self) -> str:
        self.room.on("track_subscribed", self._on_track_subscribed)
        self.room.on("track_unsubscribed", self._on_track_unsubscribed)
        self.room.on("participant_disconnected", self._on_participant_disconnected)
        self.room.on("disconnected", self._on_disconnected)
        if not await self._join():
            await self.stream.hang_up()
            return "livekit_unavailable"
        caller = asyncio.create_task(self._pump_caller(), name="phone-caller-to-room")
        sender = asyncio.create_task(self._pump_room(), name="phone-room-to-caller")
        gone = asyncio.create_task(self._room_gone.wait(), name="phone-room-gone")
        limit = asyncio.create_task(asyncio.sleep(self.profile.max_call_seconds))
        tasks = (caller, sender, gone, limit)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            await self._settle_transfer()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.transferred_to is not None:
            # The call rings elsewhere now: Twilio ended this stream, and hanging up would
            # end the transferred call.
            return "transferred"
        if caller in done and not caller.cancelled() and caller.exception() is None:
            return caller.result()
        if gone in done:
            reason = f"room_closed ({self._room_reason})"
        elif limit in done:
            reason = "max_call_seconds"
        else:
            failed = next((t for t in done if not t.cancelled() and t.exception()), None)
            exc = failed.exception() if failed is not None else None
            log.error("call %s: room bridge failed: %r", self.record.call_sid, exc, exc_info=exc)
            reason = "bridge_error"
        await self.stream.hang_up()
        return reason

    async def _join(self) -> bool:
        token = join_token(
            self.settings,
            room=self.room_name,
            identity=self.identity,
            profile=self.profile.name,
            call_sid=self.record.call_sid,
            phone=person_on_the_line(self.record),
        )
        try:
            async with asyncio.timeout(self.tuning.connect_timeout_s):
                await self.room.connect(
                    self.settings.ws_url, token, rtc.RoomOptions(auto_subscribe=True)
                )
                self._source = rtc.AudioSource(
                    ROOM_RATE, 1, queue_size_ms=self.tuning.publish_queue_ms
                )
                track = rtc.LocalAudioTrack.create_audio_track("phone", self._source)
                await self.room.local_participant.publish_track(
                    track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
                )
        except Exception as exc:  # ConnectError, TimeoutError, a failed publish
            log.error(
                "call %s: cannot join LiveKit room %r at %s as %s: %s; hanging up",
                self.record.call_sid,
                self.room_name,
                self.settings.ws_url,
                self.identity,
                exc,
            )
            return False
        self.room.local_participant.register_rpc_method(TRANSFER_RPC, self._on_transfer)
        # Tracks that were subscribed before our handlers could see them.
        for participant in self.room.remote_participants.values():
            for publication in participant.track_publications.values():
                remote = publication.track
                if isinstance(remote, rtc.RemoteAudioTrack):
                    self._add_source(remote, participant)
        log.info(
            "call %s joined LiveKit room %r as %s",
            self.record.call_sid,
            self.room_name,
            self.identity,
        )
        return True

    async def _settle_transfer(self) -> None:
        """The call is ending: if Twilio is taking a transfer (it ends the stream as it moves
        the call), wait for its answer, and give the agent time to get ours."""
        settled = self._transfer_settled
        if settled is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(settled.wait(), TRANSFER_SETTLE_S)
        if self.transferred_to is not None:
            await asyncio.sleep(ANSWER_GRACE_S)

    async def _leave(self) -> None:
        self._leaving = True
        with contextlib.suppress(Exception):
            self.room.local_participant.unregister_rpc_method(TRANSFER_RPC)
        self.stream.listen(None)
        for sid in list(self._sources):
            self._remove_source(sid)
        await asyncio.gather(*self._closing, return_exceptions=True)
        if self._source is not None:
            with contextlib.suppress(Exception):
                await self._source.aclose()
        with contextlib.suppress(Exception):
            await self.room.disconnect()

    # --- caller -> room ----------------------------------------------------------------------

    async def _pump_caller(self) -> str:
        """Caller audio into the published track; returns why the stream ended."""
        upsampler = Upsampler()
        source = self._source
        assert source is not None  # set by _join
        # LiveKit's capture is a coroutine per frame, so the stream's events are queued for it.
        events = EventQueue()
        self.stream.listen(events)
        async for event in events:
            if isinstance(event, AudioIn):
                pcm = upsampler.process(decode_payload(event.payload.decode("ascii")))
                frame = rtc.AudioFrame(pcm.tobytes(), ROOM_RATE, 1, pcm.size)
                try:
                    await source.capture_frame(frame)
                except Exception as exc:
                    if not self.stats["capture_errors"]:
                        log.warning("call %s: caller audio dropped: %s", self.record.call_sid, exc)
                    self.stats["capture_errors"] += 1
                    continue
                self.stats["frames_to_room"] += 1
            elif isinstance(event, DtmfIn):
                await self._forward_dtmf(event.digit)
            elif isinstance(event, MarkIn):
                heard = self._marks.pop(event.name, None)
                if heard is not None and not heard.done():
                    heard.set_result(None)
            elif isinstance(event, CallEnded):
                return event.reason
        return "stream_closed"

    # --- transfer -----------------------------------------------------------------------------

    async def _on_transfer(self, data: rtc.RpcInvocationData) -> str:
        """The room's agent asks to move this call (:data:`TRANSFER_RPC`).

        Only an agent may ask (a web user must not be able to send the caller anywhere), and
        only for a target the profile's transfer rule allows. Answers once Twilio took the
        transfer; every refusal is an RPC error whose message says why, for the agent to
        pass on.
        """
        asker = await self._participant(data.caller_identity)
        if (
            asker is None
            or asker.kind != rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
            or not asker.identity.startswith(AGENT_IDENTITY_PREFIX)
        ):
            log.warning(
                "call %s: %r asked to transfer the call and is not the room's agent; refused",
                self.record.call_sid,
                data.caller_identity,
            )
            raise _refusal("only the room's agent may transfer a phone caller")
        try:
            wanted = json.loads(data.payload)["to"]
            if not isinstance(wanted, str):
                raise TypeError(f"'to' is {type(wanted).__name__}")
        except (ValueError, KeyError, TypeError) as exc:
            raise _refusal(
                f'the request {data.payload!r} is not {{"to": "<department or number>"}} ({exc})'
            ) from None
        try:
            number = transfer_target(self.profile, wanted)
        except ValueError as exc:
            raise _refusal(str(exc)) from None
        if self._transfer_settled is not None:
            raise _refusal("this call is already being transferred")
        settled = self._transfer_settled = asyncio.Event()
        try:
            await self._caller_heard_the_room()
            await self.stream.transfer(number)
        except TransferFailed as exc:
            self._transfer_settled = None  # the agent may try again
            raise _refusal(str(exc)) from None
        finally:
            settled.set()
        self.transferred_to = self.record.transferred_to = number
        log.info("call %s: transferred to %s by %s", self.record.call_sid, number, asker.identity)
        return json.dumps({"transferred_to": number})

    async def _participant(self, identity: str) -> rtc.RemoteParticipant | None:
        """The remote participant ``identity``; one who just joined may send a request before
        the server told this side that they are here, so wait for them a moment."""
        deadline = asyncio.get_running_loop().time() + PARTICIPANT_WAIT_S
        while (found := self.room.remote_participants.get(identity)) is None:
            if asyncio.get_running_loop().time() > deadline:
                return None
            await asyncio.sleep(0.05)
        return found

    async def _caller_heard_the_room(self) -> None:
        """Return once the caller has heard what the room said up to now: what waits in the
        mix (``max_buffer_ms`` at most), then what Twilio still has to play (a mark's echo),
        or after ``HEARD_WAIT_S``."""
        await asyncio.sleep(self.tuning.max_buffer_ms / 1000)
        name = f"before-transfer-{next(self._mark_numbers)}"
        heard = self._marks[name] = asyncio.get_running_loop().create_future()
        self.stream.send_mark(name)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(heard, HEARD_WAIT_S)
        self._marks.pop(name, None)

    async def _forward_dtmf(self, digit: str) -> None:
        self.record.key_pressed(digit)
        code = _DTMF_CODES.get(digit)
        if code is None:
            return
        try:
            await self.room.local_participant.publish_dtmf(code=code, digit=digit)
        except Exception as exc:
            log.warning("call %s: DTMF %r not forwarded: %s", self.record.call_sid, digit, exc)

    # --- room -> caller ----------------------------------------------------------------------

    async def _pump_room(self) -> None:
        """Mix the room every 20 ms and send it to Twilio on a real-time schedule."""
        loop = asyncio.get_running_loop()
        downsampler = Downsampler()
        send = self.stream.send_media
        pacer = FramePacer(FRAME_S, loop.time(), self.tuning.max_burst)
        silent = True
        while True:
            delay = pacer.next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            for _ in range(pacer.due(loop.time())):
                mixed = self.mixer.pull()
                if mixed is None:
                    # Nobody is talking: send nothing (Twilio plays silence) and start the
                    # filter afresh when someone does.
                    if not silent:
                        downsampler.reset()
                        silent = True
                    continue
                silent = False
                pcm = downsampler.process(np.frombuffer(mixed, dtype="<i2"))
                if pcm.size:
                    send(encode_payload(pcm))
                    self.stats["frames_to_caller"] += 1
            self.stats["frames_skipped"] = pacer.skipped

    def _add_source(self, track: rtc.RemoteAudioTrack, participant: rtc.RemoteParticipant) -> None:
        if self._leaving or track.sid in self._sources:
            return
        frames_per_buffer = self.tuning.max_buffer_ms // 10 + 2
        stream = rtc.AudioStream(
            track, sample_rate=ROOM_RATE, num_channels=1, capacity=frames_per_buffer
        )
        self.mixer.add(track.sid)
        task = asyncio.create_task(
            _read_frames(stream, self.mixer, track.sid), name=f"phone-hears-{track.sid}"
        )
        self._sources[track.sid] = _Source(participant.identity, stream, task)

    def _remove_source(self, track_sid: str) -> None:
        source = self._sources.pop(track_sid, None)
        if source is None:
            return
        self.mixer.remove(track_sid)
        self.stats["samples_dropped"] = self.mixer.dropped_samples
        source.task.cancel()
        closing = asyncio.create_task(_close_source(source))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    # --- room events (synchronous callbacks from the rtc SDK) --------------------------------

    def _on_track_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if isinstance(track, rtc.RemoteAudioTrack):
            self._add_source(track, participant)

    def _on_track_unsubscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        self._remove_source(track.sid)

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        for sid in [s for s, src in self._sources.items() if src.identity == participant.identity]:
            self._remove_source(sid)

    def _on_disconnected(self, reason: Any) -> None:
        if self._leaving:
            return
        with contextlib.suppress(ValueError, TypeError):
            self._room_reason = rtc.DisconnectReason.Name(reason)
        self._room_gone.set()


def _refusal(reason: str) -> rtc.RpcError:
    """An application error for the agent, its message the reason as written."""
    return rtc.RpcError(rtc.RpcError.ErrorCode.APPLICATION_ERROR, reason)


async def _read_frames(stream: rtc.AudioStream, mixer: Mixer, track_sid: str) -> None:
    async for event in stream:
        mixer.push(track_sid, np.frombuffer(event.frame.data, dtype=np.int16))


async def _close_source(source: _Source) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await source.task
    with contextlib.suppress(Exception):
        await source.stream.aclose()
