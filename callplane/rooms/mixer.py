"""Hear every human in a room: each participant's audio buffered, summed into one stream.

Both ends of callplane's rooms need one mono stream out of many speakers: the agent's
Realtime session (24 kHz PCM16, :class:`~callplane.rooms.agent_transport.LiveKitRoomTransport`)
and a phone caller in a hybrid room (48 kHz, then downsampled to the line's 8 kHz by
:class:`~callplane.rooms.phone.PhoneRoomBridge`). Each remote audio track is a *source*: its
PCM16 frames are pushed into a :class:`JitterBuffer` as they arrive, and a clock pulls one
fixed-size frame at a time, summing what every source has ready and clipping to 16 bits
(summation keeps overlapping speakers audible, as a conference bridge does; clipping only bites
when two people shout at once).

A source plays once it holds ``prime_ms`` of audio (one frame unless told otherwise) and again
after it ran dry, so that a late frame costs one gap rather than a crackle of partial frames; a
source that falls behind is capped at ``max_buffered_ms`` (oldest samples dropped) so that one
bad link cannot add latency for everyone. Pure bookkeeping, no I/O: the transports feed and
drain it.

Why not ``livekit.rtc.AudioMixer``: it mixes int16 at any rate (24 kHz and the phone's 8 kHz
alike), but it reads the streams itself, one asyncio round per output frame in which every
stream's read is awaited (up to ``stream_timeout_ms``, 100 ms by default, when a participant
stalls), so its cadence is the slowest participant's rather than a clock's; and it keeps no
priming and no per-participant level, which the transcript's speaker attribution
(:meth:`Mixer.loudest`) needs. It is also the slower one. ``uv run python bench/mixer.py``
(20 ms frames, every source always ready, best of three 0.2 s runs on a busy 2-core machine,
livekit 1.2.1) gave, for 1 / 2 / 3 / 4 sources, in frames mixed per second:

=========  ===========================  ===========================
rate       this mixer                   ``rtc.AudioMixer``
=========  ===========================  ===========================
24 kHz     71k / 45k / 36k / 26k        14k / 12k / 7.6k / 7.3k
48 kHz     69k / 37k / 30k / 18k        13k / 7.9k / 5.7k / 5.1k
8 kHz      48k / 36k / 39k / 33k        10k / 9.6k / 10k / 7.2k
=========  ===========================  ===========================

A room needs 50 frames per second, so either is cheap enough; the behaviour above decides.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["FRAME_MS", "FRAME_SAMPLES", "SAMPLE_RATE", "JitterBuffer", "Mixer"]

Int16Array = npt.NDArray[np.int16]
Int32Array = npt.NDArray[np.int32]

SAMPLE_RATE = 24000
"""The Realtime API's PCM rate (``audio/pcm``)."""
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000
_INT16_MIN, _INT16_MAX = -32768, 32767


class JitterBuffer:
    """A bounded FIFO of one source's samples, in a preallocated ring.

    Frames from the room arrive in bursts and with gaps; the mixer takes a fixed frame per
    tick. A buffer plays only once it holds ``prime`` samples (and again after it ran dry),
    so that a late frame costs one gap rather than a crackle of partial frames. When the
    producer runs ahead (bursts, clock drift) the oldest samples are dropped so that the
    delay the listener hears stays under ``capacity``.
    """

    def __init__(self, capacity: int, prime: int) -> None:
        if not 0 < prime <= capacity:
            raise ValueError(
                f"jitter buffer: prime={prime} must be between 1 and capacity={capacity}"
            )
        self._ring: Int16Array = np.zeros(capacity, dtype=np.int16)
        self._prime = prime
        self._start = 0
        self._size = 0
        self._primed = False
        self.dropped = 0  # samples dropped on overflow

    def __len__(self) -> int:
        return self._size

    @property
    def primed(self) -> bool:
        return self._primed

    def push(self, samples: Int16Array) -> None:
        """Append samples, dropping the oldest ones beyond capacity."""
        cap = self._ring.size
        n = samples.size
        if n > cap:
            self.dropped += n - cap
            samples = samples[-cap:]
            n = cap
        overflow = self._size + n - cap
        if overflow > 0:
            self._start = (self._start + overflow) % cap
            self._size -= overflow
            self.dropped += overflow
        end = (self._start + self._size) % cap
        first = min(n, cap - end)
        self._ring[end : end + first] = samples[:first]
        self._ring[: n - first] = samples[first:]
        self._size += n
        if self._size >= self._prime:
            self._primed = True

    def add_into(self, acc: Int32Array) -> int:
        """Add the next ``len(acc)`` samples into ``acc``; how many (0 when not primed).

        A buffer that cannot fill the whole frame plays what it has and waits to be primed
        again.
        """
        if not self._primed:
            return 0
        if self._size == 0:
            self._primed = False
            return 0
        cap = self._ring.size
        n = min(acc.size, self._size)
        first = min(n, cap - self._start)
        acc[:first] += self._ring[self._start : self._start + first]
        acc[first:n] += self._ring[: n - first]
        self._start = (self._start + n) % cap
        self._size -= n
        if n < acc.size:
            self._primed = False
        return n


class Mixer:
    """Sources by name, each a :class:`JitterBuffer`, mixed in frames of ``frame_samples``.

    Also keeps a decaying energy per source (half-life ``energy_half_life_s``), so that a
    transcript of the mixed stream can name whose track most likely spoke (:meth:`loudest`).
    """

    def __init__(
        self,
        frame_samples: int = FRAME_SAMPLES,
        *,
        sample_rate: int = SAMPLE_RATE,
        max_buffered_ms: int = 200,
        prime_ms: int | None = None,
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
        prime = frame_samples if prime_ms is None else sample_rate * prime_ms // 1000
        if not 0 < prime <= max_samples:
            raise ValueError(
                f"prime_ms={prime_ms} must be more than zero and at most "
                f"max_buffered_ms={max_buffered_ms}"
            )
        self.frame_samples = frame_samples
        self._capacity = max_samples
        self._prime = prime
        self._buffers: dict[str, JitterBuffer] = {}
        self._energy: dict[str, float] = {}
        self._acc: Int32Array = np.zeros(frame_samples, dtype=np.int32)
        self._one: Int32Array = np.zeros(frame_samples, dtype=np.int32)
        self._decay = 0.5 ** (frame_samples / sample_rate / energy_half_life_s)
        self._dropped_by_removed = 0

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(self._buffers)

    @property
    def dropped_samples(self) -> int:
        """Samples dropped because a source fell more than ``max_buffered_ms`` behind."""
        return self._dropped_by_removed + sum(b.dropped for b in self._buffers.values())

    def add(self, source: str) -> None:
        """Start mixing ``source`` (pushing to an unknown source adds it too)."""
        if source not in self._buffers:
            self._buffers[source] = JitterBuffer(self._capacity, self._prime)
            self._energy[source] = 0.0

    def remove(self, source: str) -> None:
        """Stop mixing ``source``; its buffered samples are dropped."""
        buffer = self._buffers.pop(source, None)
        if buffer is not None:
            self._dropped_by_removed += buffer.dropped
        self._energy.pop(source, None)

    def push(self, source: str, pcm: bytes | bytearray | memoryview | Int16Array) -> None:
        """Buffer mono PCM16 samples (native int16, or little-endian bytes) of ``source``."""
        buffer = self._buffers.get(source)
        if buffer is None:
            self.add(source)
            buffer = self._buffers[source]
        samples = pcm if isinstance(pcm, np.ndarray) else np.frombuffer(pcm, dtype="<i2")
        buffer.push(samples)

    def pull(self) -> bytes | None:
        """One mixed frame (PCM16 little-endian) of every source ready to play; None if none is."""
        acc, one = self._acc, self._one
        acc.fill(0)
        heard = False
        for source, buffer in self._buffers.items():
            one.fill(0)
            n = buffer.add_into(one)
            power = 0.0
            if n:
                heard = True
                acc += one
                played = one[:n].astype(np.float64)
                power = float(played @ played) / self.frame_samples
            self._energy[source] = self._energy[source] * self._decay + power
        if not heard:
            return None
        np.clip(acc, _INT16_MIN, _INT16_MAX, out=acc)
        return acc.astype("<i2").tobytes()

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
