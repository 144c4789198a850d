"""Show a room what the agent is doing: its state attribute and live transcripts.

Follows LiveKit agents' conventions, so that any LiveKit front end (callplane's playground
included) can show them:

* the agent participant's attribute ``lk.agent.state`` is ``initializing`` (set in its token),
  then ``listening``, ``thinking`` or ``speaking``;
* transcripts are text streams on topic ``lk.transcription``. One *segment* is one Realtime item
  (``lk.segment_id``). While it grows, one stream with ``lk.transcription_final="false"``
  carries it incrementally (each chunk appends to the text); once complete, one more stream with
  ``lk.transcription_final="true"`` carries the whole final text, which replaces what came
  before. ``lk.transcribed_track_id`` is the agent's track for agent text and, for user text,
  the track of the human who most likely spoke (the loudest in the mix; absent if unknown).
  ``callplane.speaker`` is ``agent`` or ``user``; ``callplane.participant`` names the human's
  identity when known.

The conversation core calls the observer methods synchronously; they only queue work, and one
worker task does the room I/O in order, so a slow signalling round trip never holds up audio.
State changes that pile up are coalesced to the latest. Failures (the room going away) are
logged once and the call goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from callplane.conversation import AgentState, Speaker

log = logging.getLogger("callplane.rooms.publisher")

STATE_ATTRIBUTE = "lk.agent.state"
TRANSCRIPTION_TOPIC = "lk.transcription"
SEGMENT_ID = "lk.segment_id"
TRANSCRIPTION_FINAL = "lk.transcription_final"
TRANSCRIBED_TRACK_ID = "lk.transcribed_track_id"
SPEAKER = "callplane.speaker"
PARTICIPANT = "callplane.participant"

RoomState = Literal["initializing", "listening", "thinking", "speaking"]


class TextWriter(Protocol):
    """What this module needs of ``rtc.TextStreamWriter``."""

    async def write(self, text: str) -> None: ...

    async def aclose(self) -> None: ...


class Participant(Protocol):
    """What this module needs of ``rtc.LocalParticipant`` (a test can pass its own)."""

    async def set_attributes(self, attributes: dict[str, str]) -> None: ...

    async def stream_text(self, *, topic: str, attributes: dict[str, str]) -> TextWriter: ...

    async def send_text(self, text: str, *, topic: str, attributes: dict[str, str]) -> object: ...


@dataclass(frozen=True, slots=True)
class _Text:
    speaker: Speaker
    text: str
    final: bool
    item_id: str
    track_id: str | None
    identity: str | None


class _StateChanged:
    """Queue marker: ``RoomPublisher._pending_state`` holds the newest state to publish."""


_STATE_CHANGED = _StateChanged()


class RoomPublisher:
    """A :class:`callplane.conversation.ConversationObserver` that publishes to a room.

    ``agent_track`` returns the sid of the agent's audio track; ``speaking_human`` returns
    ``(track sid, identity)`` of the human most likely speaking, or None.
    """

    def __init__(
        self,
        participant: Participant,
        agent_track: Callable[[], str | None],
        speaking_human: Callable[[], tuple[str, str] | None],
    ) -> None:
        self._participant = participant
        self._agent_track = agent_track
        self._speaking_human = speaking_human
        self._work: asyncio.Queue[_StateChanged | _Text | None] = asyncio.Queue()
        self._pending_state: RoomState | None = None
        self._writers: dict[str, tuple[TextWriter, int]] = {}  # item_id -> (writer, chars sent)
        self._human: dict[str, tuple[str, str] | None] = {}  # user item_id -> who said it
        self._task: asyncio.Task[None] | None = None
        self._failed = False
        self.state: RoomState = "initializing"

    # --- ConversationObserver -------------------------------------------------------------------

    def on_state(self, state: AgentState) -> None:
        # coalesced: changes that pile up before the worker gets to them publish only the last
        if self._pending_state is None:
            self._work.put_nowait(_STATE_CHANGED)
        self._pending_state = state

    def on_transcript(self, speaker: Speaker, text: str, final: bool, item_id: str) -> None:
        track: str | None
        identity: str | None = None
        if speaker == "agent":
            track = self._agent_track()
        else:
            # who spoke is decided at the first sight of the segment and kept for its updates
            if item_id not in self._human:
                self._human[item_id] = self._speaking_human()
            who = self._human[item_id]
            track, identity = who if who is not None else (None, None)
            if final:
                self._human.pop(item_id, None)
        self._work.put_nowait(_Text(speaker, text, final, item_id, track, identity))

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="room-publisher")

    async def aclose(self, timeout: float = 2.0) -> None:
        """Publish what is queued (for at most ``timeout`` seconds), then stop."""
        if self._task is None:
            return
        self._work.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for writer, _ in self._writers.values():
            with contextlib.suppress(Exception):
                await writer.aclose()
        self._writers.clear()

    async def _run(self) -> None:
        while True:
            item = await self._work.get()
            if item is None:
                return
            if isinstance(item, _StateChanged):
                state, self._pending_state = self._pending_state, None
                if state is not None:
                    await self._guard(self._publish_state(state))
            else:
                await self._guard(self._publish_text(item))

    async def _guard(self, work: Awaitable[None]) -> None:
        try:
            await work
        except Exception as exc:
            if not self._failed:
                log.warning("cannot publish to the room (%s); the call goes on without it", exc)
                self._failed = True

    async def _publish_state(self, state: RoomState) -> None:
        if state == self.state:
            return
        self.state = state
        await self._participant.set_attributes({STATE_ATTRIBUTE: state})

    async def _publish_text(self, item: _Text) -> None:
        attributes = {SEGMENT_ID: item.item_id, SPEAKER: item.speaker}
        if item.track_id:
            attributes[TRANSCRIBED_TRACK_ID] = item.track_id
        if item.identity:
            attributes[PARTICIPANT] = item.identity
        if item.final:
            open_ = self._writers.pop(item.item_id, None)
            if open_ is not None:
                await open_[0].aclose()
            await self._participant.send_text(
                item.text,
                topic=TRANSCRIPTION_TOPIC,
                attributes={**attributes, TRANSCRIPTION_FINAL: "true"},
            )
            return
        writer, sent = self._writers.get(item.item_id, (None, 0))
        if writer is None:
            writer = await self._participant.stream_text(
                topic=TRANSCRIPTION_TOPIC, attributes={**attributes, TRANSCRIPTION_FINAL: "false"}
            )
        if len(item.text) > sent:
            await writer.write(item.text[sent:])
        self._writers[item.item_id] = (writer, max(sent, len(item.text)))
