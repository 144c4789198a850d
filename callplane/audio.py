"""Audio formats, G.711 codecs and resampling shared by the local engine and the simulators.

Everything here works on mono int16 numpy arrays. The three wire formats are the ones the
OpenAI Realtime API accepts: ``audio/pcm`` (16-bit little-endian at 24 kHz) and the two
G.711 telephone codecs ``audio/pcmu`` (µ-law) and ``audio/pcma`` (A-law) at 8 kHz.

The G.711 codecs are hand-written in numpy because :mod:`audioop` is deprecated since
Python 3.11 and removed in 3.13. They follow the ITU-T G.711 segment/mantissa algorithm in
the 14-bit (µ-law) and 13-bit (A-law) forms CPython's ``audioop`` used, so the output is
bit-exact with ``audioop`` (the tests compare every int16 value and every code). Encoding
goes through a 65536-entry lookup table built once at import, which makes it a single
numpy indexing operation per call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

import numpy as np
import numpy.typing as npt
import soxr

__all__ = [
    "PCM24K",
    "PCMA",
    "PCMU",
    "AudioFormat",
    "AudioKind",
    "alaw_decode",
    "alaw_encode",
    "resample",
    "rms",
    "ulaw_decode",
    "ulaw_encode",
]

AudioKind = Literal["audio/pcm", "audio/pcmu", "audio/pcma"]

Int16Array = npt.NDArray[np.int16]
UInt8Array = npt.NDArray[np.uint8]

_KINDS: tuple[str, ...] = get_args(AudioKind)
_PCM_RATE = 24000
_G711_RATE = 8000


# --------------------------------------------------------------------------------------
# G.711 µ-law
# --------------------------------------------------------------------------------------

_ULAW_BIAS = 0x84  # 132: added to the magnitude so every segment starts on a power of two
_ULAW_CLIP = 8159  # largest 14-bit magnitude that still fits once the bias is added
# Upper bound (inclusive) of each of the eight µ-law segments, on the biased 14-bit scale.
_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)


def _ulaw_encode_values(pcm: npt.NDArray[np.int32]) -> UInt8Array:
    """Run the µ-law segment search on int32-held int16 samples (vectorised)."""
    v = pcm >> 2  # 16-bit -> 14-bit, rounding towards minus infinity like audioop
    negative = v < 0
    magnitude = np.minimum(np.abs(v), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    segment = np.searchsorted(_ULAW_SEG_END, magnitude, side="left").astype(np.int32)
    seg = np.minimum(segment, 7)
    code = (seg << 4) | ((magnitude >> (seg + 1)) & 0x0F)
    code = np.where(segment >= 8, 0x7F, code)
    # Codes are transmitted inverted; the sign bit is set for positive samples.
    return (code ^ np.where(negative, 0x7F, 0xFF)).astype(np.uint8)


def _ulaw_decode_values(codes: npt.NDArray[np.int32]) -> Int16Array:
    u = ~codes & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + _ULAW_BIAS) << exponent) - _ULAW_BIAS
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


# --------------------------------------------------------------------------------------
# G.711 A-law
# --------------------------------------------------------------------------------------

# Upper bound (inclusive) of each A-law segment on the 13-bit magnitude scale.
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _alaw_encode_values(pcm: npt.NDArray[np.int32]) -> UInt8Array:
    v = pcm >> 3  # 16-bit -> 13-bit
    negative = v < 0
    magnitude = np.where(negative, -v - 1, v)  # one's-complement magnitude for negatives
    segment = np.searchsorted(_ALAW_SEG_END, magnitude, side="left").astype(np.int32)
    seg = np.minimum(segment, 7)
    shift = np.maximum(seg, 1)  # segments 0 and 1 share the same step size
    code = (seg << 4) | ((magnitude >> shift) & 0x0F)
    code = np.where(segment >= 8, 0x7F, code)
    # Even bits are inverted on the wire (0x55); the sign bit is set for positive samples.
    return (code ^ np.where(negative, 0x55, 0xD5)).astype(np.uint8)


def _alaw_decode_values(codes: npt.NDArray[np.int32]) -> Int16Array:
    a = codes ^ 0x55
    segment = (a >> 4) & 0x07
    magnitude = ((a & 0x0F) << 4) + 8  # mid-point of the quantisation step
    magnitude = np.where(segment > 0, (magnitude + 0x100) << np.maximum(segment - 1, 0), magnitude)
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.int16)


# Lookup tables: index an encoder table with the int16 sample reinterpreted as uint16, a
# decoder table with the uint8 code.
_ALL_INT16 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)
_ALL_CODES = np.arange(256, dtype=np.int32)
_ULAW_ENCODE_TABLE: UInt8Array = _ulaw_encode_values(_ALL_INT16)
_ALAW_ENCODE_TABLE: UInt8Array = _alaw_encode_values(_ALL_INT16)
_ULAW_DECODE_TABLE: Int16Array = _ulaw_decode_values(_ALL_CODES)
_ALAW_DECODE_TABLE: Int16Array = _alaw_decode_values(_ALL_CODES)
for _table in (_ULAW_ENCODE_TABLE, _ALAW_ENCODE_TABLE, _ULAW_DECODE_TABLE, _ALAW_DECODE_TABLE):
    _table.flags.writeable = False


def _as_int16(pcm: npt.ArrayLike) -> Int16Array:
    arr = np.asarray(pcm)
    if arr.dtype != np.int16:
        raise TypeError(f"expected int16 PCM samples, got dtype {arr.dtype}")
    return cast(Int16Array, arr.reshape(-1))


def _as_uint8(codes: npt.ArrayLike) -> UInt8Array:
    arr = np.asarray(codes)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected uint8 G.711 codes, got dtype {arr.dtype}")
    return cast(UInt8Array, arr.reshape(-1))


def ulaw_encode(pcm: npt.NDArray[np.int16]) -> UInt8Array:
    """Encode int16 PCM to G.711 µ-law codes; bit-exact with ``audioop.lin2ulaw``."""
    return _ULAW_ENCODE_TABLE[_as_int16(pcm).view(np.uint16)]


def ulaw_decode(codes: npt.NDArray[np.uint8]) -> Int16Array:
    """Decode G.711 µ-law codes to int16 PCM; bit-exact with ``audioop.ulaw2lin``."""
    return _ULAW_DECODE_TABLE[_as_uint8(codes)]


def alaw_encode(pcm: npt.NDArray[np.int16]) -> UInt8Array:
    """Encode int16 PCM to G.711 A-law codes; bit-exact with ``audioop.lin2alaw``."""
    return _ALAW_ENCODE_TABLE[_as_int16(pcm).view(np.uint16)]


def alaw_decode(codes: npt.NDArray[np.uint8]) -> Int16Array:
    """Decode G.711 A-law codes to int16 PCM; bit-exact with ``audioop.alaw2lin``."""
    return _ALAW_DECODE_TABLE[_as_uint8(codes)]


# --------------------------------------------------------------------------------------
# Resampling and levels
# --------------------------------------------------------------------------------------


def resample(pcm: npt.NDArray[np.int16], src_rate: int, dst_rate: int) -> Int16Array:
    """Resample int16 mono PCM with soxr (deterministic, no dither).

    Used to move between the wire rates (24 kHz PCM, 8 kHz G.711), espeak-ng's 22.05 kHz and
    pocketsphinx's 16 kHz. This is a one-shot resampler: call it on a whole utterance or
    clip, not on 20 ms frames of a stream (each call has its own filter edges). Returns a
    copy of the input when the rates are equal.
    """
    if src_rate <= 0 or dst_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {src_rate} -> {dst_rate}")
    arr = _as_int16(pcm)
    if src_rate == dst_rate or arr.size == 0:
        return arr.copy()
    out = soxr.resample(arr, src_rate, dst_rate, quality="HQ")
    return np.asarray(out, dtype=np.int16)


def rms(pcm: npt.NDArray[np.int16]) -> float:
    """Root-mean-square level of int16 PCM as a fraction of full scale (0.0 for no samples).

    Used for level checks (is anything audible?) without caring about the sample rate.
    """
    arr = _as_int16(pcm)
    if arr.size == 0:
        return 0.0
    x = arr.astype(np.float64)
    return float(math.sqrt(float(np.mean(x * x)))) / 32768.0


# --------------------------------------------------------------------------------------
# Wire formats
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """One of the Realtime API's audio formats: how bytes on the wire map to int16 samples.

    Sessions negotiate a format per direction; the engine decodes what it receives into
    int16 at ``rate`` and encodes what it sends from int16 at ``rate``, so everything
    between (VAD, recognition, synthesis) only deals with numpy arrays.
    """

    kind: AudioKind
    rate: int

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown audio format type {self.kind!r}; expected one of {_KINDS}")
        expected = _PCM_RATE if self.kind == "audio/pcm" else _G711_RATE
        if self.rate != expected:
            raise ValueError(f"{self.kind} is carried at {expected} Hz, not {self.rate!r}")

    @property
    def sample_width(self) -> int:
        """Bytes per sample: 2 for 16-bit PCM, 1 for G.711."""
        return 2 if self.kind == "audio/pcm" else 1

    def duration_ms(self, nbytes: int) -> float:
        """Playback time of ``nbytes`` of this format, in milliseconds."""
        return nbytes / self.sample_width * 1000.0 / self.rate

    def nbytes_for_ms(self, ms: float) -> int:
        """Byte count of ``ms`` milliseconds of audio, rounded down to whole samples."""
        # The epsilon keeps e.g. 20 ms at 8 kHz at 160 samples despite float error.
        samples = math.floor(ms * self.rate / 1000.0 + 1e-9)
        return max(samples, 0) * self.sample_width

    def decode(self, data: bytes) -> Int16Array:
        """Wire bytes -> int16 mono samples at ``self.rate``.

        Raises ValueError for PCM data that is not a whole number of 16-bit samples.
        """
        if self.kind == "audio/pcm":
            if len(data) % 2:
                raise ValueError(
                    f"audio/pcm data must be whole 16-bit samples, got {len(data)} bytes"
                )
            return np.frombuffer(data, dtype="<i2").astype(np.int16)
        codes = np.frombuffer(data, dtype=np.uint8)
        return ulaw_decode(codes) if self.kind == "audio/pcmu" else alaw_decode(codes)

    def encode(self, pcm: npt.NDArray[np.int16]) -> bytes:
        """int16 mono samples at ``self.rate`` -> wire bytes in this format."""
        arr = _as_int16(pcm)
        if self.kind == "audio/pcm":
            return arr.astype("<i2").tobytes()
        codes = ulaw_encode(arr) if self.kind == "audio/pcmu" else alaw_encode(arr)
        return codes.tobytes()

    @classmethod
    def from_session(cls, fmt: Mapping[str, Any]) -> AudioFormat:
        """Parse a Realtime session audio format object.

        Accepts ``{"type": "audio/pcm", "rate": 24000}`` (rate may be omitted),
        ``{"type": "audio/pcmu"}`` and ``{"type": "audio/pcma"}`` (an explicit rate must be
        8000). Raises ValueError naming the offending value otherwise.
        """
        if not isinstance(fmt, Mapping):
            raise ValueError(f"audio format must be an object, got {fmt!r}")
        kind = fmt.get("type")
        if kind not in _KINDS:
            raise ValueError(f"unsupported audio format type {kind!r}; expected one of {_KINDS}")
        expected = _PCM_RATE if kind == "audio/pcm" else _G711_RATE
        rate = fmt.get("rate", expected)
        if isinstance(rate, bool) or not isinstance(rate, int) or rate != expected:
            raise ValueError(f"unsupported rate {rate!r} for {kind}; only {expected} is supported")
        return cls(cast(AudioKind, kind), rate)

    def to_session(self) -> dict[str, Any]:
        """The Realtime session object for this format (inverse of :meth:`from_session`)."""
        if self.kind == "audio/pcm":
            return {"type": self.kind, "rate": self.rate}
        return {"type": self.kind}


PCM24K = AudioFormat("audio/pcm", _PCM_RATE)
PCMU = AudioFormat("audio/pcmu", _G711_RATE)
PCMA = AudioFormat("audio/pcma", _G711_RATE)


def hold_chime(rate: int = _G711_RATE, level: float = 0.12) -> Int16Array:
    """A soft two-note chime (about 0.7 s) that tells a caller the line is alive.

    Played while the Realtime socket is re-opened, so the caller hears that someone is there
    rather than dead air. Synthesised here instead of shipped as a recording so every
    deployment has it without an asset; the level stays well below speech so that the
    server VAD does not take it for the caller.
    """
    notes = ((660.0, 0.22), (880.0, 0.30))
    parts: list[npt.NDArray[np.float64]] = []
    for freq, seconds in notes:
        t = np.arange(int(rate * seconds)) / rate
        envelope = np.sin(np.pi * t / seconds) ** 2  # smooth onset and decay, no clicks
        parts.append(np.sin(2 * np.pi * freq * t) * envelope)
        parts.append(np.zeros(int(rate * 0.08)))
    wave = np.concatenate(parts) * level * 32767
    return wave.astype(np.int16)
