"""Tests for espeak-ng synthesis (real espeak-ng, no mocks)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from callplane.audio import rms
from callplane_standins.realtime_engine import speech
from callplane_standins.realtime_engine.speech import (
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


async def test_synthesize_never_blocks_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """espeak-ng runs as an asyncio subprocess, never as a blocking call on the event loop
    (which would freeze every call the engine serves for whole espeak runs)."""

    def blocking(*args: Any) -> Any:
        raise AssertionError("the async path ran espeak-ng as a blocking call")

    monkeypatch.setattr(speech, "_run_espeak_sync", blocking)
    synth = Synthesizer()
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    sentences = [f"this is sentence number {n}, spoken at some length" for n in range(4)]
    results = await asyncio.gather(*(synth.synthesize(s, "alloy", 24000) for s in sentences))
    stop.set()
    await task

    assert all(r.size > 24000 for r in results)
    assert ticks > len(sentences)  # the loop ran other work while espeak-ng did
