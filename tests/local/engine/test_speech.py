"""Tests for espeak-ng synthesis (real espeak-ng, no mocks)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from callplane.audio import rms
from callplane.local.engine import speech
from callplane.local.engine.speech import (
    DEFAULT_ESPEAK_VOICE,
    VOICES,
    SpeechSynthesisError,
    Synthesizer,
    espeak_voice,
    parse_wav,
    speak,
)

OPENAI_VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)


def test_every_openai_voice_is_mapped_to_a_distinct_spec() -> None:
    assert set(VOICES) == set(OPENAI_VOICES)
    assert len(set(VOICES.values())) == len(VOICES)
    assert espeak_voice("coral") == VOICES["coral"]
    assert espeak_voice(" Coral ") == VOICES["coral"]


def test_unknown_voice_falls_back_to_default() -> None:
    assert espeak_voice("no-such-voice") == DEFAULT_ESPEAK_VOICE
    synth = Synthesizer()
    fallback = synth.synthesize_sync("hello", "no-such-voice", 8000)
    default = synth.synthesize_sync("hello", "alloy", 8000)
    assert VOICES["alloy"] == DEFAULT_ESPEAK_VOICE
    np.testing.assert_array_equal(fallback, default)


def test_synthesize_sync_returns_speech_at_the_requested_rate() -> None:
    synth = Synthesizer()
    pcm24 = synth.synthesize_sync("hello can you hear me", "alloy", 24000)
    pcm8 = synth.synthesize_sync("hello can you hear me", "alloy", 8000)
    assert pcm24.dtype == np.int16 and pcm24.ndim == 1
    assert 0.5 < pcm24.size / 24000 < 3.0
    assert pcm24.size / pcm8.size == pytest.approx(3.0, rel=0.01)
    assert rms(pcm24) > 0.02


def test_synthesis_is_deterministic_across_instances() -> None:
    a = Synthesizer().synthesize_sync("please transfer me to billing", "ash", 16000)
    b = Synthesizer().synthesize_sync("please transfer me to billing", "ash", 16000)
    np.testing.assert_array_equal(a, b)


def test_voices_sound_different() -> None:
    synth = Synthesizer()
    a = synth.synthesize_sync("goodbye", "alloy", 8000)
    b = synth.synthesize_sync("goodbye", "coral", 8000)
    assert a.size != b.size or not np.array_equal(a, b)


def test_cache_hit_returns_equal_read_only_audio() -> None:
    synth = Synthesizer(cache_size=2)
    first = synth.synthesize_sync("what is the weather like today", "echo", 24000)
    again = synth.synthesize_sync("what is   the weather like today", "echo", 24000)
    assert again is first  # whitespace-normalised key, served from the cache
    assert not first.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        first[0] = 1
    # LRU eviction: two other entries push the first one out; a rerun is still equal.
    synth.synthesize_sync("one", "echo", 24000)
    synth.synthesize_sync("two", "echo", 24000)
    rebuilt = synth.synthesize_sync("what is the weather like today", "echo", 24000)
    assert rebuilt is not first
    np.testing.assert_array_equal(rebuilt, first)


def test_empty_text_gives_empty_audio() -> None:
    assert Synthesizer().synthesize_sync("   ", "alloy", 24000).size == 0
    assert speak("", "en-us", 8000).size == 0


def test_speak_with_raw_voice_spec_and_rate() -> None:
    normal = speak("my order number is four five six", "en-us", 8000)
    slow = speak("my order number is four five six", "en-us", 8000, wpm=120)
    assert slow.size > normal.size * 1.2
    other = speak("my order number is four five six", "en-us+m3", 8000)
    assert not np.array_equal(normal, other)


def test_bad_voice_spec_raises_a_clear_error() -> None:
    with pytest.raises(SpeechSynthesisError, match="qqq-nonexistent-voice"):
        speak("hello", "qqq-nonexistent-voice", 8000)


def test_missing_espeak_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speech, "ESPEAK", "espeak-ng-not-installed-here")
    with pytest.raises(SpeechSynthesisError, match="apt-get install espeak-ng"):
        speak("hello", "en-us", 8000)
    with pytest.raises(SpeechSynthesisError, match="apt-get install espeak-ng"):
        Synthesizer().synthesize_sync("hello", "alloy", 8000)


async def test_missing_espeak_names_the_fix_async(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speech, "ESPEAK", "espeak-ng-not-installed-here")
    with pytest.raises(SpeechSynthesisError, match="apt-get install espeak-ng"):
        await Synthesizer().synthesize("hello", "alloy", 8000)


def test_parse_wav_rejects_garbage() -> None:
    with pytest.raises(SpeechSynthesisError):
        parse_wav(b"not a wav file at all")


async def test_async_matches_sync_and_uses_the_cache() -> None:
    synth = Synthesizer()
    pcm = await synth.synthesize("goodbye", "sage", 24000)
    np.testing.assert_array_equal(pcm, Synthesizer().synthesize_sync("goodbye", "sage", 24000))
    assert await synth.synthesize("goodbye", "sage", 24000) is pcm


async def test_synthesize_never_blocks_the_event_loop() -> None:
    synth = Synthesizer()
    ticks: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.002)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    sentences = [
        f"this is sentence number {n}, spoken slowly and at some length so that "
        "espeak has real work to do for a while"
        for n in range(6)
    ]
    started = time.perf_counter()
    results = await asyncio.gather(*(synth.synthesize(s, "alloy", 24000) for s in sentences))
    elapsed = time.perf_counter() - started
    stop.set()
    await task

    assert all(r.size > 24000 for r in results)
    during = [t for t in ticks if started <= t <= started + elapsed]
    gaps = np.diff([started, *during, started + elapsed])
    # Blocking synthesis would freeze the ticker for whole espeak runs (tens of ms each).
    assert len(during) >= 5, f"only {len(during)} ticks in {elapsed:.3f}s"
    assert float(gaps.max()) < max(0.05, elapsed / 3)
