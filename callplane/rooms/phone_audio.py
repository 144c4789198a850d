"""A phone line's audio as a LiveKit room hears it, and back.

Twilio carries a call as base64 µ-law at 8 kHz in 20 ms frames (160 samples); a room carries
48 kHz PCM (960 samples per 20 ms). This module converts between the two, one frame at a time:
:func:`decode_payload` and :func:`encode_payload` for the µ-law payloads, :class:`Upsampler`
and :class:`Downsampler` for the rates.

Why a hand-written resampler: soxr's streaming resampler (also behind ``rtc.AudioResampler``)
releases output in blocks at its medium and high qualities (nothing for 60-140 ms, then a
burst), and its low-delay "quick" recipe aliases when downsampling. The 8 kHz <-> 48 kHz ratio
is the integer 6, so a polyphase windowed-sinc FIR does both directions with 3 ms of delay,
exact frame lengths (160 <-> 960 samples) and 58 dB of stop-band rejection. (The one-shot
:func:`callplane.audio.resample` stays the tool for whole clips.)
"""

from __future__ import annotations

import base64

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from callplane.audio import ulaw_decode, ulaw_encode

__all__ = [
    "FRAME_S",
    "PHONE_FRAME",
    "PHONE_RATE",
    "ROOM_FRAME",
    "ROOM_RATE",
    "Downsampler",
    "Upsampler",
    "decode_payload",
    "encode_payload",
]

Int16Array = npt.NDArray[np.int16]
Float32Array = npt.NDArray[np.float32]

PHONE_RATE = 8000
ROOM_RATE = 48000
_RATIO = ROOM_RATE // PHONE_RATE
FRAME_S = 0.020
PHONE_FRAME = 160  # samples in 20 ms at 8 kHz: one Twilio media frame
ROOM_FRAME = 960  # samples in 20 ms at 48 kHz


def decode_payload(payload_b64: str) -> Int16Array:
    """A Twilio media payload (base64 µ-law) as 8 kHz int16 samples."""
    return ulaw_decode(np.frombuffer(base64.b64decode(payload_b64), dtype=np.uint8))


def encode_payload(pcm: Int16Array) -> str:
    """8 kHz int16 samples as a Twilio media payload (base64 µ-law)."""
    return base64.b64encode(ulaw_encode(pcm).tobytes()).decode("ascii")


def _lowpass(taps: int, cutoff_hz: float, rate: int, beta: float) -> npt.NDArray[np.float64]:
    """A Kaiser-windowed sinc low-pass with unity gain at DC."""
    n = np.arange(taps) - (taps - 1) / 2
    fc = cutoff_hz / rate
    h = 2 * fc * np.sinc(2 * fc * n) * np.kaiser(taps, beta)
    return np.asarray(h / h.sum(), dtype=np.float64)


# 288 taps (48 per polyphase branch) at 48 kHz: pass band to 3.4 kHz, stop band from 4 kHz (the
# 8 kHz Nyquist) at -58 dB, pass-band ripple 0.01 dB (Kaiser beta 5.65). Group delay 143.5
# samples = 3 ms.
_TAPS = 288
_FILTER = _lowpass(_TAPS, 3700.0, ROOM_RATE, 5.65)


class Upsampler:
    """Streaming 8 kHz -> 48 kHz: every input sample gives exactly six output samples.

    Polyphase interpolation: output sample ``6m + p`` is branch ``p`` of the low-pass applied
    to the input around ``m``, so nothing is zero-stuffed and nothing is buffered beyond the
    filter's memory (47 input samples).
    """

    def __init__(self) -> None:
        branch = _TAPS // _RATIO
        # bank[j, p] = h[6 * (branch - 1 - j) + p], times 6 for the energy lost to interpolation.
        h = (_FILTER * _RATIO).astype(np.float32)
        self._bank: Float32Array = np.ascontiguousarray(h.reshape(branch, _RATIO)[::-1])
        self._branch = branch
        self._history: Float32Array = np.zeros(branch - 1, dtype=np.float32)

    def process(self, pcm: Int16Array) -> Int16Array:
        """48 kHz samples for ``pcm`` (8 kHz int16), ``6 * len(pcm)`` of them."""
        if pcm.size == 0:
            return np.zeros(0, dtype=np.int16)
        buf = np.concatenate((self._history, pcm.astype(np.float32)))
        windows = sliding_window_view(buf, self._branch)  # (len(pcm), branch), a view
        out = windows @ self._bank  # (len(pcm), 6): out[m, p] is output sample 6m + p
        self._history = buf[-(self._branch - 1) :]
        return _to_int16(out.reshape(-1))


class Downsampler:
    """Streaming 48 kHz -> 8 kHz: low-pass, then keep every sixth sample.

    Any input length is accepted; whole output samples are returned as soon as their input is
    there (960 in gives exactly 160 out), the remainder waits for the next call.
    """

    def __init__(self) -> None:
        self._taps: Float32Array = np.ascontiguousarray(_FILTER[::-1].astype(np.float32))
        self._pending: Float32Array = np.zeros(_TAPS - 1, dtype=np.float32)

    def reset(self) -> None:
        """Forget the filter's memory (after a gap, so that stale audio does not leak in)."""
        self._pending = np.zeros(_TAPS - 1, dtype=np.float32)

    def process(self, pcm: Int16Array) -> Int16Array:
        """8 kHz samples for ``pcm`` (48 kHz int16)."""
        buf = np.concatenate((self._pending, pcm.astype(np.float32)))
        if buf.size < _TAPS:
            self._pending = buf
            return np.zeros(0, dtype=np.int16)
        windows = sliding_window_view(buf, _TAPS)[::_RATIO]
        out = windows @ self._taps
        self._pending = buf[out.size * _RATIO :]
        return _to_int16(out)


def _to_int16(x: Float32Array) -> Int16Array:
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)
