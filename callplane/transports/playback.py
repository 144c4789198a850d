"""How much of the assistant's audio the far end has actually played.

The Realtime API streams audio faster than real time and the far end (Twilio, a LiveKit track)
queues it, so "sent" is not "heard". Each chunk sent is followed by a mark; the far end echoes
a mark once everything before it has played. On barge-in the conversation truncates the
assistant item at what was heard, ``floor(min(played, produced))``, so the model's memory
matches the caller's ears.

Marks echoed because of a ``clear`` were never played: after ``clear()`` the marks then pending
are remembered as void and their echoes add nothing.

Between echoes the position is interpolated: the far end plays its queue in real time, so the
chunk at the head of the queue has been playing since the later of its send and the previous
echo. Without that, a barge-in could only be placed on a chunk boundary (100 ms apart with
OpenAI's deltas); with it, the truncation lands within a frame of what was heard. Callers that
pass no ``now`` get the echo-only figure.

Pure bookkeeping, no I/O; one instance per call.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class _Pending:
    item_id: str
    nbytes: int
    sent_at: float | None


class PlaybackTracker:
    """Mark accounting for one call. ``bytes_per_ms`` is 8 for µ-law 8 kHz."""

    def __init__(self, bytes_per_ms: float = 8.0, prefix: str = "m") -> None:
        self.bytes_per_ms = bytes_per_ms
        self._prefix = prefix
        self._seq = 0
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._void: set[str] = set()
        self._played: dict[str, int] = {}
        self._produced: dict[str, int] = {}
        self._last_echo_at: float | None = None

    def sent(self, item_id: str, nbytes: int, now: float | None = None) -> str:
        """Record a chunk sent to the far end at ``now`` (monotonic seconds); return the mark
        name to send right after it."""
        self._seq += 1
        name = f"{self._prefix}{self._seq}"
        self._pending[name] = _Pending(item_id, nbytes, now)
        self._produced[item_id] = self._produced.get(item_id, 0) + nbytes
        return name

    def echoed(self, name: str, now: float | None = None) -> bool:
        """A mark came back (at ``now``); return True if it counted as played audio."""
        if name in self._void:
            self._void.discard(name)
            return False
        pending = self._pending.pop(name, None)
        if pending is None:
            return False  # not ours, or a duplicate echo
        self._last_echo_at = now
        self._played[pending.item_id] = self._played.get(pending.item_id, 0) + pending.nbytes
        return True

    def clear(self) -> None:
        """The far end's queue was dropped: pending marks will echo, but were not played."""
        self._void.update(self._pending)
        self._pending.clear()
        self._last_echo_at = None

    @property
    def playing(self) -> bool:
        """Audio has been sent that the far end has not finished playing."""
        return bool(self._pending)

    def playing_item(self) -> str | None:
        """The item whose audio is being played (the oldest pending chunk's)."""
        return next(iter(self._pending.values())).item_id if self._pending else None

    def played_ms(self, item_id: str, now: float | None = None) -> float:
        """Audio of ``item_id`` played so far: the echoed marks, plus (given ``now``) the part
        of the head chunk that has played since it started."""
        played = self._played.get(item_id, 0) / self.bytes_per_ms
        if now is None or not self._pending:
            return played
        head = next(iter(self._pending.values()))
        if head.item_id != item_id or head.sent_at is None:
            return played
        started = head.sent_at
        if self._last_echo_at is not None and self._last_echo_at > started:
            started = self._last_echo_at
        elapsed_ms = max(0.0, round((now - started) * 1000.0, 3))  # µs: no float dust
        return played + min(elapsed_ms, head.nbytes / self.bytes_per_ms)

    def produced_ms(self, item_id: str) -> float:
        return self._produced.get(item_id, 0) / self.bytes_per_ms

    def truncate_at_ms(self, item_id: str, now: float | None = None) -> int:
        """The integer ``audio_end_ms`` for ``conversation.item.truncate`` (call it before
        :meth:`clear`, which forgets the queue)."""
        return math.floor(min(self.played_ms(item_id, now), self.produced_ms(item_id)))
