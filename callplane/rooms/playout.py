"""The agent's outgoing audio in a room: a queue of PCM chunks, each followed by a mark.

The conversation core learns what a listener has heard from marks (see
:mod:`callplane.transports.playback`): every chunk it plays is followed by a mark, and the
transport echoes the mark once the chunk has been played. Twilio does that at the far end; in a
LiveKit room the agent's own process is the far end's clock. This module keeps that accounting:

* :meth:`PlayoutQueue.push` queues a chunk and its mark;
* :meth:`PlayoutQueue.next_frame` cuts the next fixed-size frame for ``AudioSource``, naming
  the marks whose chunk ends inside it;
* :meth:`PlayoutQueue.captured` is told when the source took the frame and returns when it will
  have been played out (the source plays in real time behind whatever it already holds), and
  those marks become due then;
* :meth:`PlayoutQueue.due` hands out the marks whose audio has been played;
* :meth:`PlayoutQueue.clear` drops everything and returns every mark not yet echoed, in order
  (the core treats marks echoed by a clear as void, as with Twilio's ``clear``).

A frame taken before a clear and captured after it belongs to an older *generation*; its marks
were already returned by the clear and are not scheduled again. Pure bookkeeping, no I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Frame:
    """PCM16 bytes for the audio source and the marks whose chunk ends in them."""

    pcm: bytes
    marks: tuple[str, ...]
    generation: int


@dataclass(slots=True)
class _Chunk:
    pcm: bytes
    offset: int
    mark: str


class PlayoutQueue:
    """Chunks waiting for the audio source, and marks waiting to be echoed."""

    def __init__(self, frame_bytes: int, bytes_per_second: int) -> None:
        if frame_bytes <= 0 or frame_bytes % 2:
            raise ValueError(f"frame_bytes must be a positive even number, got {frame_bytes}")
        if bytes_per_second <= 0:
            raise ValueError(f"bytes_per_second must be positive, got {bytes_per_second}")
        self.frame_bytes = frame_bytes
        self.bytes_per_second = bytes_per_second
        self._chunks: deque[_Chunk] = deque()
        self._in_flight: list[str] = []  # marks of frames handed out, not yet captured
        self._scheduled: deque[tuple[float, str]] = deque()  # (due, mark), due ascending
        self._generation = 0
        self._play_end = 0.0  # when the audio captured so far will have been played
        self.queued_bytes = 0

    @property
    def idle(self) -> bool:
        """Nothing queued, in flight or waiting to echo."""
        return not (self._chunks or self._in_flight or self._scheduled)

    def push(self, pcm: bytes, mark: str) -> None:
        """Queue ``pcm`` (whole PCM16 samples) to be played, then ``mark`` echoed."""
        if len(pcm) % 2:
            raise ValueError(f"PCM16 chunk for mark {mark!r} has an odd length ({len(pcm)})")
        self._chunks.append(_Chunk(pcm, 0, mark))
        self.queued_bytes += len(pcm)

    def next_frame(self) -> Frame | None:
        """The next frame of at most ``frame_bytes`` (shorter only at the end of the queue), or
        None when nothing is queued. A mark whose chunk is empty rides on the frame it ends."""
        if not self._chunks:
            return None
        parts: list[bytes] = []
        marks: list[str] = []
        room = self.frame_bytes
        while self._chunks:
            chunk = self._chunks[0]
            left = len(chunk.pcm) - chunk.offset
            if left and not room:
                break
            take = min(left, room)
            if take:
                parts.append(chunk.pcm[chunk.offset : chunk.offset + take])
                chunk.offset += take
                room -= take
            if chunk.offset == len(chunk.pcm):
                marks.append(chunk.mark)
                self._chunks.popleft()
        pcm = b"".join(parts)
        self.queued_bytes -= len(pcm)
        self._in_flight.extend(marks)
        return Frame(pcm, tuple(marks), self._generation)

    def captured(self, frame: Frame, now: float) -> float:
        """The source took ``frame`` at ``now`` (monotonic seconds); return when it will have
        been played out, and make its marks due then."""
        if frame.generation != self._generation:
            return now  # cleared meanwhile: its marks were echoed by the clear
        self._play_end = max(self._play_end, now) + len(frame.pcm) / self.bytes_per_second
        for mark in frame.marks:
            self._in_flight.remove(mark)
            self._scheduled.append((self._play_end, mark))
        return self._play_end

    def next_due(self) -> float | None:
        """When the next mark is due, if one is waiting."""
        return self._scheduled[0][0] if self._scheduled else None

    def due(self, now: float) -> list[str]:
        """Marks whose audio has been played by ``now``, in order."""
        out: list[str] = []
        while self._scheduled and self._scheduled[0][0] <= now:
            out.append(self._scheduled.popleft()[1])
        return out

    def clear(self, now: float) -> list[str]:
        """Drop all queued audio; return every mark not yet echoed, oldest first."""
        marks = [mark for _, mark in self._scheduled]
        marks += self._in_flight
        marks += [chunk.mark for chunk in self._chunks]
        self._scheduled.clear()
        self._in_flight.clear()
        self._chunks.clear()
        self.queued_bytes = 0
        self._generation += 1
        self._play_end = now
        return marks
