"""Offline speech synthesis with espeak-ng.

The local engine answers with scripted phrases, so synthesis is a small, repetitive job:
the same few sentences in the same voice at the same rate. espeak-ng is fast, needs no
model download and is deterministic (identical text and voice give identical samples),
which keeps tests and benches reproducible. Each call runs ``espeak-ng --stdout`` as a
subprocess, parses the 22.05 kHz WAV it writes in memory and resamples it with soxr (no
dither, unlike sox's default, so the output stays deterministic). Results are cached per
(text, voice, rate) because a script repeats its phrases on every call.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
import subprocess
import threading
from collections import OrderedDict

import numpy as np
import numpy.typing as npt

from callplane.audio import resample

__all__ = [
    "DEFAULT_ESPEAK_VOICE",
    "VOICES",
    "SpeechSynthesisError",
    "Synthesizer",
    "espeak_voice",
    "speak",
]

Int16Array = npt.NDArray[np.int16]

ESPEAK = "espeak-ng"
DEFAULT_ESPEAK_VOICE = "en-us"
INSTALL_HINT = (
    "install it with `apt-get install espeak-ng` (Debian/Ubuntu) or run the project's setup script"
)
_TIMEOUT_S = 30.0

#: OpenAI Realtime voice names -> espeak-ng voice specs. espeak-ng has no equivalent of
#: the OpenAI voices; the mapping only gives each name a distinct, stable sound (base
#: language + a male "mN" or female "fN" variant) so two agents can be told apart.
VOICES: dict[str, str] = {
    "alloy": "en-us",
    "ash": "en-us+m3",
    "ballad": "en+m1",
    "coral": "en-us+f3",
    "echo": "en-us+m1",
    "sage": "en-us+f2",
    "shimmer": "en-us+f4",
    "verse": "en+m3",
    "marin": "en-us+f5",
    "cedar": "en-us+m7",
}


class SpeechSynthesisError(RuntimeError):
    """espeak-ng is missing, failed, or produced something that is not a WAV stream."""


def espeak_voice(openai_voice: str) -> str:
    """The espeak-ng voice spec for an OpenAI voice name; unknown names get the default.

    Falling back instead of failing keeps sessions working when a client asks for a voice
    added to the OpenAI API after this table was written.
    """
    return VOICES.get(openai_voice.strip().lower(), DEFAULT_ESPEAK_VOICE)


def _clean_text(text: str) -> str:
    # espeak-ng pauses at line breaks; one line keeps the prosody of a single utterance.
    return " ".join(text.split())


def _espeak_args(voice_spec: str, wpm: int | None) -> list[str]:
    # The text goes through stdin, so a leading "-" cannot be taken for an option.
    args = [ESPEAK, "-v", voice_spec, "--stdout"]
    if wpm is not None:
        if wpm <= 0:
            raise ValueError(f"words per minute must be positive, got {wpm}")
        args += ["-s", str(wpm)]
    return args


def _missing_error() -> SpeechSynthesisError:
    return SpeechSynthesisError(f"{ESPEAK} was not found on PATH; {INSTALL_HINT}")


def _check_result(returncode: int, stdout: bytes, stderr: bytes, voice_spec: str) -> None:
    if returncode != 0 or not stdout:
        detail = stderr.decode(errors="replace").strip() or f"exit status {returncode}"
        raise SpeechSynthesisError(f"{ESPEAK} failed for voice {voice_spec!r}: {detail}")


def parse_wav(data: bytes) -> tuple[Int16Array, int]:
    """Parse a 16-bit mono PCM WAV held in memory into (samples, sample rate).

    espeak-ng writes its WAV to a pipe, so the RIFF and data sizes in the header are
    placeholders (0x7fffffff-ish); the data chunk is therefore read to the end of the
    buffer rather than trusted.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise SpeechSynthesisError("espeak-ng output is not a RIFF/WAVE stream")
    pos = 12
    rate: int | None = None
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body = pos + 8
        if chunk_id == b"fmt ":
            fmt_tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
            if fmt_tag != 1 or channels != 1 or bits != 16:
                raise SpeechSynthesisError(
                    f"unexpected WAV format (tag {fmt_tag}, {channels} ch, {bits} bit)"
                )
        elif chunk_id == b"data":
            if rate is None:
                raise SpeechSynthesisError("WAV data chunk before fmt chunk")
            end = min(body + size, len(data))
            end -= (end - body) % 2
            return np.frombuffer(data[body:end], dtype="<i2").astype(np.int16), rate
        pos = body + size + (size & 1)
    raise SpeechSynthesisError("WAV stream has no data chunk")


def _to_rate(wav: bytes, rate: int) -> Int16Array:
    samples, src_rate = parse_wav(wav)
    return resample(samples, src_rate, rate)


def _check_rate(rate: int) -> None:
    if rate <= 0:
        raise ValueError(f"sample rate must be positive, got {rate}")


def _run_espeak_sync(text: str, voice_spec: str, wpm: int | None) -> bytes:
    args = _espeak_args(voice_spec, wpm)
    try:
        proc = subprocess.run(
            args, input=text.encode(), capture_output=True, timeout=_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise _missing_error() from None
    _check_result(proc.returncode, proc.stdout, proc.stderr, voice_spec)
    return proc.stdout


async def _run_espeak_async(text: str, voice_spec: str, wpm: int | None) -> bytes:
    args = _espeak_args(voice_spec, wpm)
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        raise _missing_error() from None
    try:
        async with asyncio.timeout(_TIMEOUT_S):
            stdout, stderr = await proc.communicate(text.encode())
    except BaseException:
        # Cancelled (the response was interrupted) or timed out: don't leave espeak behind.
        if proc.returncode is None:
            proc.kill()
            await asyncio.shield(proc.wait())
        raise
    assert proc.returncode is not None
    _check_result(proc.returncode, stdout, stderr, voice_spec)
    return stdout


def speak(text: str, espeak_voice_spec: str, rate: int, wpm: int | None = None) -> Int16Array:
    """Synthesize ``text`` with a raw espeak-ng voice spec; blocking and uncached.

    For tests and benches that need "caller" speech in voices and speeds the OpenAI voice
    table does not cover (e.g. ``"en"`` at 130 wpm). Returns int16 mono at ``rate``; empty
    text gives an empty array.
    """
    _check_rate(rate)
    text = _clean_text(text)
    if not text:
        return np.zeros(0, dtype=np.int16)
    return _to_rate(_run_espeak_sync(text, espeak_voice_spec, wpm), rate)


class Synthesizer:
    """Text to int16 audio in an OpenAI voice, cached, usable from async and sync code.

    One instance can be shared by all sessions of an engine: the LRU cache is guarded by a
    lock, and the async path only awaits the subprocess, so the event loop keeps serving
    other sessions while espeak-ng runs. Returned arrays are read-only because they are
    shared with the cache; copy one before modifying it in place.
    """

    def __init__(self, cache_size: int = 256) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str, int], Int16Array] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def available() -> bool:
        """Whether the espeak-ng binary is on PATH (for a clear start-up check)."""
        return shutil.which(ESPEAK) is not None

    def _lookup(self, key: tuple[str, str, int]) -> Int16Array | None:
        with self._lock:
            pcm = self._cache.get(key)
            if pcm is not None:
                self._cache.move_to_end(key)
            return pcm

    def _store(self, key: tuple[str, str, int], pcm: Int16Array) -> Int16Array:
        pcm.flags.writeable = False
        if self._cache_size == 0:
            return pcm
        with self._lock:
            self._cache[key] = pcm
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return pcm

    @staticmethod
    def _key(text: str, voice: str, rate: int) -> tuple[str, str, int]:
        _check_rate(rate)
        return (_clean_text(text), espeak_voice(voice), rate)

    async def synthesize(self, text: str, voice: str, rate: int) -> Int16Array:
        """Speak ``text`` in OpenAI voice ``voice`` as int16 mono at ``rate`` Hz.

        Never blocks the event loop: espeak-ng runs as an asyncio subprocess; the WAV
        parse and soxr resample of one phrase take around a millisecond. Raises
        SpeechSynthesisError if espeak-ng is missing or fails.
        """
        key = self._key(text, voice, rate)
        cached = self._lookup(key)
        if cached is not None:
            return cached
        clean, spec, _ = key
        if not clean:
            return self._store(key, np.zeros(0, dtype=np.int16))
        wav = await _run_espeak_async(clean, spec, None)
        return self._store(key, _to_rate(wav, rate))

    def synthesize_sync(self, text: str, voice: str, rate: int) -> Int16Array:
        """Blocking twin of :meth:`synthesize` (same cache), for benches, tests and threads."""
        key = self._key(text, voice, rate)
        cached = self._lookup(key)
        if cached is not None:
            return cached
        clean, spec, _ = key
        if not clean:
            return self._store(key, np.zeros(0, dtype=np.int16))
        return self._store(key, _to_rate(_run_espeak_sync(clean, spec, None), rate))
