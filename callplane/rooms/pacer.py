"""Sending fixed-length frames on a real-time schedule.

A far end that plays what it receives (Twilio's media stream) must get audio no faster than
real time, or its buffer fills with audio the listener hears seconds late; a sender on an
event loop wakes up late now and then. :class:`FramePacer` says how many frames are due.
"""

from __future__ import annotations

__all__ = ["FramePacer"]


class FramePacer:
    """The real-time schedule of fixed-length frames: how many are due at a given time.

    Frames are due at ``origin + k * period``. A sender that wakes up late sends the frames it
    owes back to back, up to ``max_burst``; beyond that (the process stalled) the backlog is
    skipped and the schedule restarts from now, so the far end never gets a flood.
    """

    def __init__(self, period_s: float, start: float, max_burst: int = 3) -> None:
        if period_s <= 0 or max_burst < 1:
            raise ValueError(
                f"frame pacer: period_s={period_s} must be > 0 and max_burst={max_burst} >= 1"
            )
        self.period_s = period_s
        self.max_burst = max_burst
        self._origin = start
        self._sent = 0
        self.skipped = 0  # frames dropped from the schedule after stalls

    @property
    def next_at(self) -> float:
        """When the next frame is due."""
        return self._origin + self._sent * self.period_s

    def due(self, now: float) -> int:
        """Frames to send now (0 if the next one is not due yet); the schedule moves on."""
        owed = int((now - self._origin) / self.period_s + 1e-9) + 1 - self._sent
        if owed <= 0:
            return 0
        if owed > self.max_burst:
            self.skipped += owed - self.max_burst
            self._origin = now - (self.max_burst - 1) * self.period_s
            self._sent = self.max_burst
            return self.max_burst
        self._sent += owed
        return owed
