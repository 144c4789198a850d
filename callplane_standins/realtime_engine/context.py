"""What all sessions of one engine process share: settings, script, voice and recognisers."""

from __future__ import annotations

import asyncio
import struct
import time
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from callplane.audio import AudioFormat
from callplane_standins.realtime_engine.recognition import PhraseRecognizer
from callplane_standins.realtime_engine.script import Script, load_script
from callplane_standins.realtime_engine.speech import Synthesizer

EngineMode = Literal["script", "load"]
Direction = Literal["in", "out"]
# Sees every event a session receives ("in", parsed) and sends ("out"): the test suite's
# conformance checks hang here. Called synchronously on the event loop; keep it cheap.
EventObserver = Callable[[Direction, Mapping[str, Any]], None]

LOAD_REPLY_TRANSCRIPT = "Load test reply."
LOAD_REPLY_MS = 1000


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """How an engine process behaves. Defaults suit tests and demos."""

    mode: EngineMode = "script"
    script_path: Path | None = None
    api_key: str | None = None
    # Output audio is streamed in chunks of this size, ``pace`` times faster than real time
    # (OpenAI also streams faster than real time; clients own playback and truncation).
    chunk_ms: int = 100
    pace: float = 4.0
    # ``--mode load`` only: record the stamps a load generator embeds in its audio (see
    # :class:`LoadProbe`) and stamp the reply clip's chunks. Off by default; ``bench/relay.py``.
    load_probe: bool = False


@dataclass
class EngineContext:
    settings: EngineSettings
    script: Script
    synthesizer: Synthesizer
    recognizers: RecognizerPool
    observer: EventObserver | None = None
    sessions: set[object] = field(default_factory=set)
    probe: LoadProbe | None = None

    @classmethod
    def create(
        cls, settings: EngineSettings, observer: EventObserver | None = None
    ) -> EngineContext:
        script = load_script(settings.script_path)
        return cls(
            settings=settings,
            script=script,
            synthesizer=Synthesizer(),
            recognizers=RecognizerPool(script.patterns),
            observer=observer,
            probe=LoadProbe() if settings.load_probe and settings.mode == "load" else None,
        )


class RecognizerPool:
    """Recognisers are costly to build (~0.1 s CPU) and not thread-safe: a session borrows one
    for each turn and gives it back, so N concurrent sessions build at most N of them."""

    def __init__(self, patterns: list[str]) -> None:
        self._patterns = patterns
        self._idle: list[PhraseRecognizer] = []
        self.created = 0

    async def acquire(self) -> PhraseRecognizer:
        if self._idle:
            return self._idle.pop()
        self.created += 1
        return await asyncio.to_thread(PhraseRecognizer, self._patterns)

    def release(self, recognizer: PhraseRecognizer) -> None:
        self._idle.append(recognizer)

    def text_matcher(self) -> PhraseRecognizer | None:
        """An idle recogniser for typed-text matching (no audio work), if one exists."""
        return self._idle[-1] if self._idle else None


@cache
def load_reply_clip(fmt: AudioFormat) -> bytes:
    """The fixed reply of ``--mode load``: a 440 Hz tone at -12 dBFS, encoded once per format."""
    t = np.arange(fmt.rate * LOAD_REPLY_MS // 1000) / fmt.rate
    pcm = (np.sin(2 * np.pi * 440.0 * t) * 0.25 * 32767).astype(np.int16)
    return fmt.encode(pcm)


# --- the load probe: latency stamps carried inside µ-law audio ----------------------------------
#
# A stamp is 4 marker bytes and 16 bytes of data (stream id, sequence number, CLOCK_MONOTONIC
# nanoseconds) written as 32 nibbles. Every byte of it is a µ-law code of the lowest segment
# (|sample| <= 30 of 8159, about -48 dBFS), so a stamped silent frame stays silent for the VAD.
# CLOCK_MONOTONIC is one clock for all processes of a Linux machine.

STAMP_MARKER = b"\x7a\x75\x7a\x75"
STAMP_BYTES = len(STAMP_MARKER) + 32
STAMP_FRAME_BYTES = 160  # stamps sit at the start of each 20 ms µ-law frame
_TO_ULAW = bytes.maketrans(b"0123456789abcdef", bytes(range(0xF0, 0x100)))
_FROM_ULAW = bytes.maketrans(bytes(range(0xF0, 0x100)), b"0123456789abcdef")


def encode_stamp(stream: int, seq: int, t_ns: int) -> bytes:
    """``STAMP_BYTES`` of quiet µ-law naming a stream, a sequence number and a send time."""
    return STAMP_MARKER + struct.pack(">IIq", stream, seq, t_ns).hex().encode().translate(_TO_ULAW)


def decode_stamp(data: bytes | bytearray, offset: int = 0) -> tuple[int, int, int] | None:
    """(stream, seq, t_ns) of the stamp at ``offset``, or None when there is none."""
    end = offset + STAMP_BYTES
    if len(data) < end or data[offset : offset + len(STAMP_MARKER)] != STAMP_MARKER:
        return None
    digits = bytes(data[offset + len(STAMP_MARKER) : end]).translate(_FROM_ULAW)
    try:
        stream, seq, t_ns = struct.unpack(">IIq", bytes.fromhex(digits.decode("ascii")))
    except (ValueError, UnicodeDecodeError):
        return None
    return stream, seq, t_ns


class ProbeSession:
    """One session's part: the stream its stamps name, and its outbound sequence."""

    __slots__ = ("out_seq", "stream")

    def __init__(self) -> None:
        self.stream = -1
        self.out_seq = 0


class LoadProbe:
    """What ``--mode load`` with ``load_probe`` records: when each stamped input frame arrived,
    when each speech_started left, how many stamped output chunks left. Appends to flat arrays
    only; the load generator reads :meth:`snapshot` at the end and does the statistics."""

    def __init__(self) -> None:
        self.sessions: list[ProbeSession] = []
        self.reset()

    def reset(self) -> None:
        self.in_stream = array("q")
        self.in_seq = array("q")
        self.in_sent_ns = array("q")
        self.in_recv_ns = array("q")
        self.ss_stream = array("q")
        self.ss_sent_ns = array("q")

    def session(self) -> ProbeSession:
        ps = ProbeSession()
        self.sessions.append(ps)
        return ps

    def on_append(self, ps: ProbeSession, data: bytes) -> None:
        now = time.monotonic_ns()
        for offset in range(0, len(data) - STAMP_BYTES + 1, STAMP_FRAME_BYTES):
            stamp = decode_stamp(data, offset)
            if stamp is None:
                continue
            stream, seq, sent = stamp
            ps.stream = stream
            self.in_stream.append(stream)
            self.in_seq.append(seq)
            self.in_sent_ns.append(sent)
            self.in_recv_ns.append(now)

    def on_speech_started(self, ps: ProbeSession) -> None:
        self.ss_stream.append(ps.stream)
        self.ss_sent_ns.append(time.monotonic_ns())

    def stamp_out(self, ps: ProbeSession, piece: bytes) -> bytes:
        """The chunk with a stamp (this session's next output sequence number, now) in front."""
        stamp = encode_stamp(max(ps.stream, 0), ps.out_seq, time.monotonic_ns())
        ps.out_seq += 1
        return stamp + piece[STAMP_BYTES:] if len(piece) >= STAMP_BYTES else piece

    def snapshot(self) -> dict[str, list[int]]:
        out: dict[int, int] = {}
        for ps in self.sessions:
            out[ps.stream] = out.get(ps.stream, 0) + ps.out_seq
        return {
            "in_stream": self.in_stream.tolist(),
            "in_seq": self.in_seq.tolist(),
            "in_sent_ns": self.in_sent_ns.tolist(),
            "in_recv_ns": self.in_recv_ns.tolist(),
            "ss_stream": self.ss_stream.tolist(),
            "ss_sent_ns": self.ss_sent_ns.tolist(),
            "out_stream": list(out),
            "out_sent": list(out.values()),
        }
