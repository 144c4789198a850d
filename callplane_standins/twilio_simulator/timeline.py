"""What a simulated call leaves behind: its timeline and its result.

A test checks a call afterwards through these records rather than by watching it live, so they
hold everything observable on the wire: when each bot chunk played, when each ``clear`` arrived,
the played position of each mark and each media stream's life. All times are milliseconds since
the call was placed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

__all__ = [
    "CallLog",
    "CallResult",
    "ChunkRecord",
    "ClearRecord",
    "HungUpBy",
    "MarkRecord",
    "StreamRecord",
    "Timeline",
    "TimelineEvent",
]

HungUpBy = Literal["caller", "remote", "rest"]


class CallLog(Protocol):
    """Where the parts of a call write what happened (a :class:`LiveCall` is one).

    The audio path, the stream client and the verbs report through this rather than through
    the call itself, so they depend on the call's log, not on its state machine.
    """

    timeline: Timeline

    def now_ms(self) -> float:
        """Milliseconds since the call was placed."""
        ...

    def note(self, kind: str, **detail: object) -> None:
        """Add a timeline event at the current call time."""
        ...

    def error(self, message: str) -> None:
        """Record a problem in the call's result."""
        ...


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
