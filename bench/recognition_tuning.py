"""Tuning set for the local engine's fixed-phrase recognition (not the bench).

``PhraseRecognizer``'s acceptance floors (``min_score``, ``min_word_score``), its word
insertion probability and its pronunciation variants were chosen on this set, so that
``bench/engine_recognition.py`` stays a test the recogniser was not fitted to. Nothing
here overlaps the bench: other espeak-ng voices, speeds and pitches (accents included),
other digit strings, and twenty other out-of-grammar sentences of similar length and
vocabulary (several share words with the patterns). The script checks the disjointness.

    uv run --frozen python bench/recognition_tuning.py [--json OUT]

Prints one JSON object: the rates at the recogniser's defaults, a grid of the two floors
(exact rate and false-accept rate at each point, from one decode per utterance), the
point the selection rule picks (highest exact rate with false accepts <= 0.05, half the
bench's 0.10 target), and ablations (pocketsphinx's default word insertion probability;
no non-rhotic pronunciations). Deterministic except for the CPU figures.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import callplane_standins.realtime_engine.recognition as recognition
from callplane.audio import resample, ulaw_decode, ulaw_encode
from callplane_standins.realtime_engine.recognition import PhraseRecognizer
from callplane_standins.realtime_engine.speech import parse_wav

#: (label, espeak-ng voice spec, words per minute or None, pitch 0-99 or None).
TUNING_VOICES: tuple[tuple[str, str, int | None, int | None], ...] = (
    ("en-us+f2", "en-us+f2", None, None),
    ("en-us+m1@190wpm", "en-us+m1", 190, None),
    ("en+f3@150wpm", "en+f3", 150, None),
    ("en-gb-x-rp", "en-gb-x-rp", None, None),
    ("en-gb-scotland+m2", "en-gb-scotland+m2", None, None),
    ("en-us-nyc@160wpm", "en-us-nyc", 160, None),
    ("en-us@pitch30", "en-us", None, 30),
    ("en-us+f4@170wpm@pitch70", "en-us+f4", 170, 70),
    ("en-029", "en-029", None, None),
)

#: What the tuning callers say, with the pattern each must be recognised as. The fixed
#: phrases are the default script's (there is nothing else to say for them); the digit
#: strings differ from the bench's.
TUNING_PHRASES: tuple[tuple[str, str], ...] = (
    ("hello", "hello"),
    ("hello can you hear me", "hello can you hear me"),
    ("what is the weather like today", "what is the weather like today"),
    ("please transfer me to billing", "please transfer me to billing"),
    ("goodbye", "goodbye"),
    ("my order number is two eight one", "my order number is {digits}"),
    ("my order number is seven four zero three", "my order number is {digits}"),
    ("my order number is six one five", "my order number is {digits}"),
    ("my order number is eight nine", "my order number is {digits}"),
    ("my order number is three four four two", "my order number is {digits}"),
)

#: Out-of-grammar sentences, none of them in the bench.
TUNING_OOG: tuple[str, ...] = (
    "what is the time right now",
    "please call me back later",
    "hello my name is john",
    "my phone number has changed",
    "can you help me with my bill",
    "i lost my credit card",
    "where is the nearest station",
    "good morning how are you",
    "please cancel my order",
    "the weather is nice outside",
    "transfer the money to my account",
    "tell me a joke",
    "i do not understand",
    "my order was damaged",
    "who am i talking to",
    "can you repeat that please",
    "what are your opening hours",
    "please hold on a moment",
    "bye for now",
    "send me the billing details",
)

_BENCH_FILE = "engine_recognition.py"
PHONE_RATE = 8000
LEAD_IN_S = 0.3
TRAIL_S = 0.5
MAX_FALSE_ACCEPT = 0.05
MIN_SCORE_GRID = tuple(x / 4 for x in range(-20, -11))  # -5.0 .. -3.0
MIN_WORD_SCORE_GRID = tuple(x / 4 for x in range(-28, -15))  # -7.0 .. -4.0

Int16Array = npt.NDArray[np.int16]


@functools.cache
def _bench_module() -> Any:
    """bench/engine_recognition.py, loaded by path (bench/ is not a package)."""
    name = "_engine_recognition_bench"
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(_BENCH_FILE))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def check_disjoint_from_bench() -> None:
    """Fail if a tuning voice or out-of-grammar sentence is also in the bench."""
    bench = _bench_module()
    bench_voices = {(spec, wpm) for _, spec, wpm in bench.BENCH_VOICES}
    for label, spec, wpm, pitch in TUNING_VOICES:
        if pitch is None and (spec, wpm) in bench_voices:
            raise SystemExit(f"tuning voice {label} is a bench voice")
    shared = set(TUNING_OOG) & set(bench.OOG_SENTENCES)
    digit_strings = {text for text, pattern in TUNING_PHRASES if "{digits}" in pattern}
    shared |= digit_strings & {text for text, _ in bench.SPOKEN_PHRASES}
    if shared:
        raise SystemExit(f"tuning sentences also in the bench: {sorted(shared)}")


def synthesize(text: str, voice: str, wpm: int | None, pitch: int | None) -> Int16Array:
    """espeak-ng speech at 8 kHz (stdin text, like callplane's speech module)."""
    args = ["espeak-ng", "-v", voice, "--stdout"]
    if wpm is not None:
        args += ["-s", str(wpm)]
    if pitch is not None:
        args += ["-p", str(pitch)]
    out = subprocess.run(args, input=text.encode(), capture_output=True, check=True).stdout
    samples, rate = parse_wav(out)
    return resample(samples, rate, PHONE_RATE)


def phone_turn(speech: Int16Array) -> Int16Array:
    """Padded like a VAD-committed turn, through G.711 µ-law at 8 kHz and back."""
    turn = np.concatenate(
        [
            np.zeros(int(LEAD_IN_S * PHONE_RATE), dtype=np.int16),
            speech,
            np.zeros(int(TRAIL_S * PHONE_RATE), dtype=np.int16),
        ]
    )
    return ulaw_decode(ulaw_encode(turn))


def expected_digits(text: str) -> dict[str, str]:
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    words = text.split()
    if words[:4] == ["my", "order", "number", "is"]:
        return {"digits": "".join(str(names.index(w)) for w in words[4:])}
    return {}


@dataclass(frozen=True, slots=True)
class Case:
    voice: str
    text: str
    pattern: str | None  # None: out of grammar
    audio: Int16Array


@dataclass(frozen=True, slots=True)
class Decoded:
    case: Case
    complete: bool  # the best path is a complete pattern
    correct: bool  # ... and exactly what was said (in-grammar cases only)
    mean: float
    worst_word: float
    text: str


def build_cases() -> list[Case]:
    cases: list[Case] = []
    for label, voice, wpm, pitch in TUNING_VOICES:
        spoken: list[tuple[str, str | None]] = [*TUNING_PHRASES]
        spoken += [(text, None) for text in TUNING_OOG]
        for text, pattern in spoken:
            cases.append(
                Case(label, text, pattern, phone_turn(synthesize(text, voice, wpm, pitch)))
            )
    return cases


def decode_all(cases: list[Case]) -> tuple[list[Decoded], float]:
    """Decode every case once with the current module settings; (results, CPU s/audio s)."""
    recognizer = PhraseRecognizer(recognition_patterns())
    out: list[Decoded] = []
    cpu = 0.0
    seconds = 0.0
    for case in cases:
        t = time.process_time()
        result, scores = recognizer.decode(case.audio, PHONE_RATE)
        cpu += time.process_time() - t
        seconds += case.audio.size / PHONE_RATE
        complete = result.phrase is not None and scores is not None
        correct = (
            complete
            and case.pattern is not None
            and result.phrase == case.pattern
            and result.text == case.text
            and result.slots == expected_digits(case.text)
        )
        mean = scores.mean if scores is not None else -np.inf
        worst = scores.worst_word if scores is not None else -np.inf
        out.append(Decoded(case, complete, correct, mean, worst, result.text))
    return out, cpu / seconds


def recognition_patterns() -> tuple[str, ...]:
    bench = _bench_module()
    patterns: tuple[str, ...] = bench.DEFAULT_PATTERNS
    return patterns


def rates(decoded: list[Decoded], min_score: float, min_word_score: float) -> dict[str, float]:
    in_grammar = [d for d in decoded if d.case.pattern is not None]
    oog = [d for d in decoded if d.case.pattern is None]

    def accepted(d: Decoded) -> bool:
        return d.complete and d.mean >= min_score and d.worst_word >= min_word_score

    exact = sum(d.correct and accepted(d) for d in in_grammar)
    false_accepts = sum(accepted(d) for d in oog)
    return {
        "exact_rate": round(exact / len(in_grammar), 4),
        "false_accept_rate": round(false_accepts / len(oog), 4),
    }


def summary(decoded: list[Decoded], min_score: float, min_word_score: float) -> dict[str, Any]:
    in_grammar = [d for d in decoded if d.case.pattern is not None]
    oog = [d for d in decoded if d.case.pattern is None]
    return {
        **rates(decoded, min_score, min_word_score),
        "exact_rate_without_rejection": round(
            sum(d.correct for d in in_grammar) / len(in_grammar), 4
        ),
        "oog_forced_onto_a_complete_pattern": sum(d.complete for d in oog),
    }


def grid(decoded: list[Decoded]) -> list[dict[str, float]]:
    return [
        {"min_score": ms, "min_word_score": mw, **rates(decoded, ms, mw)}
        for ms in MIN_SCORE_GRID
        for mw in MIN_WORD_SCORE_GRID
    ]


def select(points: list[dict[str, float]]) -> dict[str, float]:
    """Highest exact rate with false accepts <= MAX_FALSE_ACCEPT; ties: fewer false
    accepts, then the stricter floors (higher values; safer on unseen speech)."""
    ok = [p for p in points if p["false_accept_rate"] <= MAX_FALSE_ACCEPT]
    return max(
        ok,
        key=lambda p: (
            p["exact_rate"],
            -p["false_accept_rate"],
            p["min_score"],
            p["min_word_score"],
        ),
    )


@contextmanager
def patched(name: str, value: Any) -> Iterator[None]:
    """Temporarily replace a recognition-module setting (for the ablations only)."""
    old = getattr(recognition, name)
    setattr(recognition, name, value)
    try:
        yield
    finally:
        setattr(recognition, name, old)


def run() -> dict[str, Any]:
    check_disjoint_from_bench()
    cases = build_cases()
    decoded, cpu = decode_all(cases)
    ms, mw = recognition.DEFAULT_MIN_SCORE, recognition.DEFAULT_MIN_WORD_SCORE
    points = grid(decoded)
    per_voice: dict[str, dict[str, float]] = {}
    for label, *_ in TUNING_VOICES:
        per_voice[label] = rates([d for d in decoded if d.case.voice == label], ms, mw)
    failures = [
        {"voice": d.case.voice, "spoken": d.case.text, "got": d.text}
        for d in decoded
        if d.case.pattern is not None and not (d.correct and d.mean >= ms and d.worst_word >= mw)
    ]
    false_accepts = [
        {"voice": d.case.voice, "spoken": d.case.text, "got": d.text}
        for d in decoded
        if d.case.pattern is None and d.complete and d.mean >= ms and d.worst_word >= mw
    ]
    ablations: dict[str, Any] = {}
    with patched("_WORD_INSERTION_PROB", 0.65):
        ablated, _ = decode_all(cases)
        ablations["pocketsphinx_default_wip_0.65"] = {
            "at_defaults": summary(ablated, ms, mw),
            "selected": select(grid(ablated)),
        }
    with patched("_non_rhotic", list):
        ablated, _ = decode_all(cases)
        ablations["no_non_rhotic_variants"] = {
            "at_defaults": summary(ablated, ms, mw),
            "selected": select(grid(ablated)),
        }
    n_ig = sum(c.pattern is not None for c in cases)
    return {
        "bench": "recognition_tuning",
        "path": "espeak-ng -> 8 kHz -> G.711 µ-law encode/decode -> PhraseRecognizer",
        "voices": [
            {"label": label, "espeak_voice": spec, "wpm": wpm, "pitch": pitch}
            for label, spec, wpm, pitch in TUNING_VOICES
        ],
        "in_grammar_utterances": n_ig,
        "oog_utterances": len(cases) - n_ig,
        "oog_sentences": list(TUNING_OOG),
        "defaults": {
            "min_score": ms,
            "min_word_score": mw,
            "word_insertion_prob": recognition._WORD_INSERTION_PROB,
        },
        "at_defaults": summary(decoded, ms, mw),
        "per_voice_at_defaults": per_voice,
        "selection_rule": f"max exact_rate with false_accept_rate <= {MAX_FALSE_ACCEPT}",
        "selected": select(points),
        "cpu_seconds_per_audio_second": round(cpu, 4),
        "ablations": ablations,
        "failures_at_defaults": failures,
        "false_accepts_at_defaults": false_accepts,
        "grid": points,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    args = parser.parse_args(argv)
    result = run()
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
