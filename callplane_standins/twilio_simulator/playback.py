"""The playback queue: what Twilio holds of the bot's audio until it has played.

Bot audio and marks go in, in order; the call's 20 ms clock takes one 160-byte µ-law frame out
per slot. A mark is due once all audio queued before it has played, and ``clear`` drops queued
audio at once while flushing the pending marks, so a bridge sees the echoes Twilio would send.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from callplane_standins.twilio_simulator.timeline import ChunkRecord, MarkRecord

__all__ = ["FRAME_BYTES", "FRAME_MS", "SILENCE", "PlaybackQueue"]

FRAME_MS = 20
FRAME_BYTES = 160
SILENCE = b"\xff" * FRAME_BYTES


@dataclass(slots=True)
class _Audio:
    data: bytes
    chunk: ChunkRecord
    pos: int = 0


class PlaybackQueue:
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
