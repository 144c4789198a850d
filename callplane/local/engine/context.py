"""What all sessions of one engine process share: settings, script, voice and recognisers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from callplane.audio import AudioFormat
from callplane.local.engine.recognition import PhraseRecognizer
from callplane.local.engine.script import Script, load_script
from callplane.local.engine.speech import Synthesizer

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


@dataclass
class EngineContext:
    settings: EngineSettings
    script: Script
    synthesizer: Synthesizer
    recognizers: RecognizerPool
    observer: EventObserver | None = None
    sessions: set[object] = field(default_factory=set)

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
