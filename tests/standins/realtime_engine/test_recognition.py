"""Tests for fixed-phrase recognition (real espeak-ng speech, real pocketsphinx)."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from callplane.audio import resample
from callplane_standins.realtime_engine import recognition
from callplane_standins.realtime_engine.recognition import (
    PhraseRecognizer,
    Recognition,
    build_jsgf,
    normalize,
)
from callplane_standins.realtime_engine.speech import speak

# bench/ is not a package (no __init__.py): a static import would make mypy see
# bench/engine_recognition.py under two module names, so the constants are loaded here.
_bench = importlib.import_module("bench.engine_recognition")
DEFAULT_PATTERNS: tuple[str, ...] = _bench.DEFAULT_PATTERNS
SPOKEN_PHRASES: tuple[tuple[str, str], ...] = _bench.SPOKEN_PHRASES
OOG_SENTENCES: tuple[str, ...] = _bench.OOG_SENTENCES
expected_digits: Callable[[str], dict[str, str]] = _bench.expected_digits
phone_turn: Callable[..., npt.NDArray[np.int16]] = _bench.phone_turn


@functools.cache
def recognizer() -> PhraseRecognizer:
    return PhraseRecognizer(DEFAULT_PATTERNS)


@functools.cache
def en_us_turn(text: str) -> npt.NDArray[np.int16]:
    return phone_turn(text, "en-us")


# --- text -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hello, can you HEAR me?", "hello can you hear me"),
        ("my order number is 456", "my order number is four five six"),
        ("order#907!", "order nine zero seven"),
        ("  what's   the\tweather\n", "what's the weather"),
        ("'quoted' -- text", "quoted text"),
        ("", ""),
        ("...", ""),
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


def test_build_jsgf_has_one_whole_utterance_rule_per_pattern() -> None:
    jsgf = build_jsgf(["hello", "my order number is {digits}"])
    assert jsgf.startswith("#JSGF V1.0;")
    assert "<p0> = hello;" in jsgf
    assert "<p1> = my order number is <digits>;" in jsgf
    assert "public <utterance> = <p0> | <p1>;" in jsgf
    assert "<digit> = zero | oh | one |" in jsgf
    assert "<digits>" not in build_jsgf(["hello"])


@pytest.mark.parametrize(
    ("patterns", "message"),
    [
        (["call me at {phone}"], "unknown slot"),
        (["{digits} and {digits}"], "more than one"),
        (["hello", "Hello!"], "are the same"),
        (["!!!"], "no words"),
        ([], "at least one"),
        (["broken {digits"], "malformed"),
    ],
)
def test_bad_patterns_are_rejected(patterns: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_jsgf(patterns)


def test_word_missing_from_the_dictionary_is_named() -> None:
    with pytest.raises(ValueError, match="'zorblaxify'"):
        PhraseRecognizer(["please zorblaxify my account"])


def test_match_text_exact_phrases_and_digit_slots() -> None:
    rec = recognizer()
    assert rec.match_text("Hello!") == Recognition("hello", "hello", {})
    assert rec.match_text("hello, can you hear me?").phrase == "hello can you hear me"
    typed = rec.match_text("My order number is 456.")
    assert typed == Recognition(
        "my order number is {digits}", "my order number is four five six", {"digits": "456"}
    )
    spoken = rec.match_text("my order number is nine oh seven")
    assert spoken.slots == {"digits": "907"}
    assert rec.match_text("my order number is 12345678").slots == {"digits": "12345678"}


@pytest.mark.parametrize(
    "text",
    [
        "hello can you",  # partial pattern
        "hello there",  # extra words
        "my order number is",  # empty slot
        "my order number is 123456789",  # nine digits
        "my order number is four and five",
        "what is the weather like",
        "",
    ],
)
def test_match_text_rejects_anything_but_a_complete_pattern(text: str) -> None:
    result = recognizer().match_text(text)
    assert result.phrase is None
    assert result.slots == {}
    assert result.text == normalize(text)


# --- audio ----------------------------------------------------------------------------


@pytest.mark.parametrize(("spoken", "pattern"), SPOKEN_PHRASES)
def test_default_phrases_over_the_ulaw_phone_path(spoken: str, pattern: str) -> None:
    result = recognizer().recognize(en_us_turn(spoken), 8000)
    assert result.phrase == pattern
    assert result.text == spoken
    assert result.slots == expected_digits(spoken)


def test_pcm_24k_path() -> None:
    for spoken in ("please transfer me to billing", "my order number is one two three four"):
        speech = speak(spoken, "en-us", 24000)
        turn = np.concatenate([np.zeros(7200, np.int16), speech, np.zeros(12000, np.int16)])
        result = recognizer().recognize(turn, 24000)
        assert result.text == spoken


def test_other_phrase_lists_work() -> None:
    rec = PhraseRecognizer(["yes", "no", "transfer me to sales", "my pin is {digits}"])
    assert rec.recognize(phone_turn("transfer me to sales", "en"), 8000).phrase == (
        "transfer me to sales"
    )
    pin = rec.recognize(phone_turn("my pin is two eight", "en-us"), 8000)
    assert (pin.phrase, pin.slots) == ("my pin is {digits}", {"digits": "28"})


@pytest.mark.parametrize(
    "sentence",
    [
        "the quick brown fox jumps over the lazy dog",
        "i would like to cancel my subscription",
        "what time does the store close",
    ],
)
def test_out_of_grammar_speech_is_rejected(sentence: str) -> None:
    assert sentence in OOG_SENTENCES
    result = recognizer().recognize(en_us_turn(sentence), 8000)
    assert result == Recognition(None, "", {})


def test_silence_noise_and_tiny_inputs_are_rejected() -> None:
    rec = recognizer()
    assert rec.recognize(np.zeros(16000, np.int16), 8000).phrase is None
    noise = (np.random.default_rng(3).standard_normal(16000) * 2000).astype(np.int16)
    assert rec.recognize(noise, 8000).phrase is None
    assert rec.recognize(np.zeros(10, np.int16), 8000).phrase is None
    assert rec.recognize(np.zeros(0, np.int16), 16000).phrase is None
    # Longer than max_seconds: rejected without decoding.
    phrase = en_us_turn("hello")
    assert rec.recognize(phrase, 8000).phrase == "hello"
    padded = np.concatenate([phrase, np.zeros(13 * 8000, np.int16)])
    assert rec.recognize(padded, 8000).phrase is None
    with pytest.raises(ValueError, match="positive"):
        rec.recognize(np.zeros(8000, np.int16), 0)


def test_decoder_reuse_is_stateless_and_deterministic() -> None:
    first = phone_turn("hello can you hear me", "en")
    second = phone_turn("my order number is nine zero seven", "en-us+m3")
    reused = recognizer()
    a1 = reused.recognize(first, 8000)
    b1 = reused.recognize(second, 8000)
    a2 = reused.recognize(first, 8000)
    fresh = PhraseRecognizer(DEFAULT_PATTERNS)
    assert fresh.recognize(second, 8000) == b1
    assert a1 == a2
    assert a1.phrase == "hello can you hear me"


def test_rate_and_volume_do_not_change_the_result() -> None:
    turn8k = en_us_turn("my order number is four five six")
    quiet = (turn8k.astype(np.float64) * 0.3).astype(np.int16)
    turn16k = resample(turn8k, 8000, 16000)
    rec = recognizer()
    expected = rec.recognize(turn8k, 8000)
    assert expected.slots == {"digits": "456"}
    assert rec.recognize(turn16k, 16000).slots == {"digits": "456"}
    assert rec.recognize(quiet, 8000).slots == {"digits": "456"}


# --- pronunciations and confidence ------------------------------------------------------


def test_non_rhotic_pronunciations_are_in_the_dictionary() -> None:
    lexicon = recognition._dictionary(recognition._parse_patterns(["my order number is {digits}"]))
    assert "AO D AH" in lexicon["order"]  # AO R D ER without the r
    assert "N AH M B AH" in lexicon["number"]
    assert "F F AO AO" in lexicon["four"]  # digits have doubled phones
    assert "Z Z IH IH R R OW OW" in lexicon["zero"]  # an r before a vowel stays
    assert recognition._non_rhotic("Z IH R OW".split()) == ["Z", "IH", "R", "OW"]


def test_four_in_a_non_rhotic_voice_is_not_read_as_oh() -> None:
    result = recognizer().recognize(phone_turn("my order number is four five six", "en"), 8000)
    assert result.slots == {"digits": "456"}


def test_decode_exposes_the_confidence_that_recognize_applies() -> None:
    turn = en_us_turn("what is the weather like today")
    result, scores = recognizer().decode(turn, 8000)
    assert result.phrase == "what is the weather like today"
    assert scores is not None
    assert scores.worst_word <= scores.mean <= 0.0
    assert scores.mean >= recognition.DEFAULT_MIN_SCORE
    assert scores.worst_word >= recognition.DEFAULT_MIN_WORD_SCORE
    strict = PhraseRecognizer(DEFAULT_PATTERNS, min_word_score=scores.worst_word + 0.01)
    assert strict.recognize(turn, 8000) == Recognition(None, "", {})
    assert recognizer().decode(np.zeros(10, np.int16), 8000) == (Recognition(None, "", {}), None)


@pytest.mark.parametrize(
    ("sentence", "voice", "wpm"),
    [
        ("please hold on a moment", "en+f3", 150),  # forced onto "please transfer me to billing"
        ("i lost my credit card", "en-us+f2", None),  # forced onto "my order number is ..."
        ("where is the nearest station", "en-us+m1", 190),  # forced onto the weather phrase
    ],
)
def test_tuning_set_out_of_grammar_speech_is_rejected(
    sentence: str, voice: str, wpm: int | None
) -> None:
    result, _ = recognizer().decode(phone_turn(sentence, voice, wpm), 8000)
    assert result.phrase is not None  # the grammar forces a complete pattern,
    # which the confidence floors reject
    assert recognizer().recognize(phone_turn(sentence, voice, wpm), 8000).phrase is None
