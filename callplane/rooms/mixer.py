"""Mix every human in a room into the one input stream a Realtime session takes.

The Realtime API hears a single mono stream, but a room has any number of humans (web users, a
phone caller). Each remote audio track is a *source*: its 24 kHz PCM16 frames are buffered here
as they arrive, and a clock pulls one fixed-size frame at a time, summing what every source has
ready and clipping to 16 bits (summation keeps overlapping speakers audible, as a conference
bridge does; clipping only bites when two people shout at once).

A source that has no full frame ready at a pull (network jitter) is simply left out of that
frame and keeps its samples for the next one; a source that falls behind is capped at
``max_buffered_ms`` (oldest samples dropped) so that one bad link cannot add latency for
everyone. Pure bookkeeping, no I/O: the LiveKit transport feeds and drains it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Int16Array = npt.NDArray[np.int16]

SAMPLE_RATE = 24000
"""The Realtime API's PCM rate (``audio/pcm``)."""
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000
_INT16_MIN, _INT16_MAX = -32768, 32767


def mix(frames: Sequence[Int16Array], samples: int) -> Int16Array:
    """Sum ``frames`` sample by sample into one frame of ``samples``, clipped to int16.

    Frames shorter than ``samples`` count as zero-padded; longer ones are cut. No frames give
    silence. The sum runs in int32, so it cannot wrap around before the clip.
    """
    if samples < 0:
        raise ValueError(f"samples must be >= 0, got {samples}")
    if len(frames) == 1 and len(frames[0]) == samples:
        return frames[0].copy()
    acc = np.zeros(samples, dtype=np.int32)
    for frame in frames:
        n = min(len(frame), samples)
        acc[:n] += frame[:n]
    np.clip(acc, _INT16_MIN, _INT16_MAX, out=acc)
    return acc.astype(np.int16)


class Mixer:
    """Per-source FIFOs of PCM16 mixed in frames of ``frame_samples``.

    Also keeps a decaying energy per source (half-life ``energy_half_life_s``), so that a
    transcript of the mixed stream can name whose track most likely spoke (:meth:`loudest`).
    """

    def __init__(
        self,
        frame_samples: int = FRAME_SAMPLES,
        *,
        sample_rate: int = SAMPLE_RATE,
        max_buffered_ms: int = 200,
        energy_half_life_s: float = 1.5,
    ) -> None:
        if frame_samples <= 0:
            raise ValueError(f"frame_samples must be positive, got {frame_samples}")
        max_samples = sample_rate * max_buffered_ms // 1000
        if max_samples < frame_samples:
            raise ValueError(
                f"max_buffered_ms={max_buffered_ms} holds less than one frame of "
                f"{frame_samples} samples at {sample_rate} Hz; raise it"
            )
        self.frame_samples = frame_samples
        self._frame_bytes = frame_samples * 2
        self._max_bytes = max_samples * 2
        self._buffers: dict[str, bytearray] = {}
        self._energy: dict[str, float] = {}
        frame_s = frame_samples / sample_rate
        self._decay = 0.5 ** (frame_s / energy_half_life_s)
        self.dropped_samples = 0

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(self._buffers)

    def add(self, source: str) -> None:
        """Start mixing ``source`` (pushing to an unknown source adds it too)."""
        self._buffers.setdefault(source, bytearray())
        self._energy.setdefault(source, 0.0)

    def remove(self, source: str) -> None:
        """Stop mixing ``source``; its buffered samples are dropped."""
        self._buffers.pop(source, None)
        self._energy.pop(source, None)

    def push(self, source: str, pcm: bytes | bytearray | memoryview) -> None:
        """Buffer PCM16 little-endian mono samples of ``source``."""
        buf = self._buffers.get(source)
        if buf is None:
            self.add(source)
            buf = self._buffers[source]
        buf += pcm
        excess = len(buf) - self._max_bytes
        if excess > 0:
            excess += excess & 1  # keep whole samples
            del buf[:excess]
            self.dropped_samples += excess // 2

    def pull(self) -> bytes | None:
        """One mixed frame of every source that has a full frame ready; None if none has."""
        frames: list[Int16Array] = []
        nbytes = self._frame_bytes
        for source, buf in self._buffers.items():
            if len(buf) < nbytes:
                self._energy[source] *= self._decay
                continue
            frame = np.frombuffer(bytes(buf[:nbytes]), dtype="<i2")
            del buf[:nbytes]
            power = float(np.dot(frame, frame.astype(np.float64))) / len(frame)
            self._energy[source] = self._energy[source] * self._decay + power
            frames.append(frame)
        if not frames:
            return None
        return mix(frames, self.frame_samples).astype("<i2", copy=False).tobytes()

    def loudest(self, min_rms: float = 100.0) -> str | None:
        """The source with the most recent energy, if any is above ``min_rms`` (int16 units)."""
        best: str | None = None
        best_energy = 0.0
        for source, energy in self._energy.items():
            if energy > best_energy:
                best, best_energy = source, energy
        if best is None:
            return None
        # the decayed sum of powers, normalised back to a per-frame mean power
        level = math.sqrt(best_energy * (1.0 - self._decay))
        return best if level >= min_rms else None
