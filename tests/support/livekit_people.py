"""Simulated people in a LiveKit room, as Python ``livekit.rtc`` participants.

* :func:`join`: a participant in a room of a test's livekit-server.
* :func:`publish_microphone`: an audio track to capture frames into.
* :class:`Human`: a web user who speaks espeak-ng phrases into a microphone that is silent
  otherwise, and follows the agent: its audio, its ``lk.agent.state`` attribute and the
  ``lk.transcription`` text streams. :func:`humans` brings several into a room and out again.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from livekit import rtc

from callplane_standins.realtime_engine.speech import speak
from tests.livekit_server import LiveKitServer

RATE = 24_000  # the humans' microphones and ears
FRAME = 480  # 20 ms at 24 kHz
LOUD = 1000  # a frame whose peak is above this is not silence
AGENT_PREFIX = "agent-"

Grant = Callable[[str], Awaitable[tuple[str, str]]]
"""An identity's way into a room: ``(url, token)``."""


async def join(
    server: LiveKitServer,
    identity: str,
    room_name: str,
    *,
    kind: Literal["standard", "sip", "agent"] = "standard",
    room: rtc.Room | None = None,
) -> rtc.Room:
    """Connect ``room`` (a new one unless given, e.g. with its handlers already registered)
    to ``room_name`` as ``identity``, with a token minted by ``server``."""
    room = rtc.Room() if room is None else room
    await room.connect(server.url, server.token(identity, room_name, kind=kind))
    return room


async def publish_microphone(
    room: rtc.Room, rate: int = RATE, name: str = "mic"
) -> tuple[rtc.AudioSource, rtc.LocalTrackPublication]:
    """Publish a mono microphone track at ``rate``; capture frames into the source."""
    source = rtc.AudioSource(rate, 1)
    track = rtc.LocalAudioTrack.create_audio_track(name, source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    publication = await room.local_participant.publish_track(track, options)
    return source, publication


def is_agent(participant: rtc.Participant) -> bool:
    return (
        participant.identity.startswith(AGENT_PREFIX)
        or participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    )


@dataclass
class Transcript:
    """One ``lk.transcription`` text stream: its attributes, its text and who sent it."""

    attributes: dict[str, str]
    text: str
    sender: str

    @property
    def speaker(self) -> str:
        """``agent`` or ``user``."""
        return self.attributes.get("callplane.speaker", "")

    @property
    def final(self) -> bool:
        return self.attributes.get("lk.transcription_final") == "true"

    @property
    def participant(self) -> str:
        """The human a ``user`` transcript came from."""
        return self.attributes.get("callplane.participant", "")


@dataclass
class Human:
    """A web user: a microphone that sends silence unless it is saying something, and ears on
    every audio track, the agents' state attribute and the transcripts."""

    identity: str
    room: rtc.Room = field(default_factory=rtc.Room)
    state_changes: list[tuple[str, str]] = field(default_factory=list)
    """Every ``lk.agent.state`` change seen: (the participant's identity, the new state)."""
    transcripts: list[Transcript] = field(default_factory=list)
    loud_frames_from: dict[str, int] = field(default_factory=dict)
    """Non-silent 10 ms frames heard, by the identity of the participant sending them."""
    mic_sid: str = ""
    _speech: list[bytes] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def join(self, url: str, token: str) -> None:
        self.room.on("track_subscribed", self._on_track)
        self.room.on("participant_attributes_changed", self._on_attributes)
        self.room.register_text_stream_handler("lk.transcription", self._on_text)
        await self.room.connect(url, token)
        source, publication = await publish_microphone(self.room)
        self.mic_sid = publication.sid
        self._tasks.append(asyncio.create_task(self._microphone(source)))

    async def leave(self) -> None:
        """Stop listening and speaking and leave the room (again is a no-op)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.room.isconnected():
            await self.room.disconnect()

    def say(self, text: str) -> None:
        pcm = speak(text, "en-us", RATE).astype("<i2").tobytes()
        self._speech.extend(pcm[i : i + FRAME * 2] for i in range(0, len(pcm), FRAME * 2))

    @property
    def saying(self) -> bool:
        return bool(self._speech)

    @property
    def states(self) -> list[str]:
        """Every ``lk.agent.state`` value seen, in order."""
        return [state for _, state in self.state_changes]

    def states_of(self, identity: str) -> list[str]:
        return [state for who, state in self.state_changes if who == identity]

    @property
    def loud_frames(self) -> int:
        """Non-silent frames heard from anyone."""
        return sum(self.loud_frames_from.values())

    @property
    def agent_loud_frames(self) -> int:
        """Non-silent frames heard from agents."""
        return sum(n for who, n in self.loud_frames_from.items() if who.startswith(AGENT_PREFIX))

    def finals(self, speaker: str) -> list[Transcript]:
        """Final transcripts of ``speaker`` (``agent`` or ``user``), in order."""
        return [t for t in self.transcripts if t.final and t.speaker == speaker]

    def said(self, identity: str, speaker: str, text: str | None = None) -> list[str]:
        """Final texts of ``speaker`` sent by the agent ``identity`` (only ``text``, if given)."""
        return [
            t.text
            for t in self.finals(speaker)
            if t.sender == identity and (text is None or t.text == text)
        ]

    def agents(self) -> list[str]:
        """Identities of the agents in the room."""
        return [p.identity for p in self.room.remote_participants.values() if is_agent(p)]

    def agent_identity(self) -> str | None:
        return next(iter(self.agents()), None)

    def agent_state(self, identity: str | None = None) -> str | None:
        """The ``lk.agent.state`` of agent ``identity`` (of the first agent if None); None
        while no such agent is in the room."""
        for participant in self.room.remote_participants.values():
            if participant.identity == identity or (identity is None and is_agent(participant)):
                return participant.attributes.get("lk.agent.state")
        return None

    async def _microphone(self, source: rtc.AudioSource) -> None:
        silence = bytes(FRAME * 2)
        while True:
            chunk = self._speech.pop(0) if self._speech else silence
            chunk = chunk.ljust(FRAME * 2, b"\0")
            await source.capture_frame(rtc.AudioFrame(chunk, RATE, 1, FRAME))

    def _on_track(
        self, track: rtc.Track, _: rtc.RemoteTrackPublication, who: rtc.RemoteParticipant
    ) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            self._tasks.append(asyncio.create_task(self._listen(track, who.identity)))

    async def _listen(self, track: rtc.Track, sender: str) -> None:
        async for event in rtc.AudioStream(track, sample_rate=RATE, num_channels=1):
            data = np.frombuffer(event.frame.data, dtype=np.int16)
            if len(data) and int(np.abs(data).max()) > LOUD:
                self.loud_frames_from[sender] = self.loud_frames_from.get(sender, 0) + 1

    def _on_attributes(self, changed: dict[str, str], participant: rtc.Participant) -> None:
        if "lk.agent.state" in changed:
            self.state_changes.append((participant.identity, changed["lk.agent.state"]))

    def _on_text(self, reader: rtc.TextStreamReader, sender: str) -> None:
        async def read() -> None:
            text = await reader.read_all()
            self.transcripts.append(Transcript(dict(reader.info.attributes or {}), text, sender))

        self._tasks.append(asyncio.create_task(read()))


def minted(server: LiveKitServer, room: str) -> Grant:
    """Ways into ``room`` with tokens ``server`` mints."""

    async def grant(identity: str) -> tuple[str, str]:
        return server.url, server.token(identity, room)

    return grant


@contextlib.asynccontextmanager
async def humans(grant: Grant, *names: str) -> AsyncIterator[list[Human]]:
    """Humans that join one after another (``grant`` lets them in) and leave at the end."""
    people = [Human(name) for name in names]
    try:
        for person in people:
            await person.join(*await grant(person.identity))
        yield people
    finally:
        for person in people:
            await person.leave()


def fresh_room(prefix: str) -> str:
    """A room name no other test uses: ``prefix`` and a random suffix."""
    return f"{prefix}-{secrets.token_hex(3)}"
