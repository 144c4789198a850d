"""Bench: fixed-phrase recognition of the local engine over the phone path.

Speaks the default script's phrases and ten out-of-grammar sentences with several
espeak-ng voices, pads each like a VAD-committed turn (300 ms before, 500 ms after),
sends it through G.711 µ-law at 8 kHz and back (what a phone caller's audio goes
through), and recognises it with :class:`PhraseRecognizer`. Prints one JSON object.

    uv run python bench/engine_recognition.py [--json OUT]

Everything is deterministic (espeak-ng, soxr and the recogniser's seeded noise floor),
so reruns give the same rates; only the CPU figures move. The recogniser was tuned on
``bench/recognition_tuning.py``, which shares no voice and no out-of-grammar sentence
with this bench. "headline" holds the three target voices, "all_voices" all four.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from callplane.audio import ulaw_decode, ulaw_encode
from callplane_standins.realtime_engine.recognition import PhraseRecognizer
from callplane_standins.realtime_engine.speech import speak

#: The local engine's default script phrases.
DEFAULT_PATTERNS: tuple[str, ...] = (
    "hello",
    "hello can you hear me",
    "what is the weather like today",
    "please transfer me to billing",
    "my order number is {digits}",
    "goodbye",
)

#: What the bench callers say, with the pattern each must be recognised as.
SPOKEN_PHRASES: tuple[tuple[str, str], ...] = (
    ("hello", "hello"),
    ("hello can you hear me", "hello can you hear me"),
    ("what is the weather like today", "what is the weather like today"),
    ("please transfer me to billing", "please transfer me to billing"),
    ("my order number is four five six", "my order number is {digits}"),
    ("my order number is one two three four", "my order number is {digits}"),
    ("my order number is nine zero seven", "my order number is {digits}"),
    ("goodbye", "goodbye"),
)

#: Out-of-grammar sentences: each must be rejected (phrase None). Some deliberately share
#: words with the grammar ("hello ...", "my ... number is ...", "please ... me").
OOG_SENTENCES: tuple[str, ...] = (
    "i would like to cancel my subscription",
    "the quick brown fox jumps over the lazy dog",
    "can i speak to a human please",
    "what time does the store close",
    "my account number is wrong",
    "is it going to rain tomorrow",
    "please send me a new card",
    "hello is anybody there",
    "i need to change my address",
    "thank you very much",
)

#: (label, espeak-ng voice spec, words per minute or None for the voice's default).
#: The first three are the target voices and give the headline figures; the fourth (en-us
#: at 130 wpm) is reported with them in "all_voices".
BENCH_VOICES: tuple[tuple[str, str, int | None], ...] = (
    ("en-us", "en-us", None),
    ("en", "en", None),
    ("en-us+m3", "en-us+m3", None),
    ("en-us@130wpm", "en-us", 130),
)

HEADLINE_VOICES: tuple[str, ...] = ("en-us", "en", "en-us+m3")

PHONE_RATE = 8000
LEAD_IN_S = 0.3
TRAIL_S = 0.5
TARGET_EXACT = 0.95
TARGET_FALSE_ACCEPT = 0.10

Int16Array = npt.NDArray[np.int16]


def phone_turn(text: str, voice_spec: str, wpm: int | None = None) -> Int16Array:
    """Caller speech as the engine gets it from a phone call: padded, µ-law 8 kHz, decoded."""
    speech = speak(text, voice_spec, PHONE_RATE, wpm)
    turn = np.concatenate(
        [
            np.zeros(int(LEAD_IN_S * PHONE_RATE), dtype=np.int16),
            speech,
            np.zeros(int(TRAIL_S * PHONE_RATE), dtype=np.int16),
        ]
    )
    return ulaw_decode(ulaw_encode(turn))


def expected_digits(text: str) -> dict[str, str]:
    """The slot values a correct recognition of ``text`` carries."""
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    words = text.split()
    if words[:4] == ["my", "order", "number", "is"]:
        return {"digits": "".join(str(names.index(w)) for w in words[4:])}
    return {}


def espeak_version() -> str:
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True)
    m = re.search(r"text-to-speech:\s*(\S+)", out.stdout)
    return m.group(1) if m else out.stdout.strip()


@dataclass(slots=True)
class _Tally:
    utterances: int = 0
    exact: int = 0
    intent: int = 0
    oog: int = 0
    false_accepts: int = 0

    def rates(self) -> dict[str, float | int]:
        return {
            "utterances": self.utterances,
            "exact_rate": round(self.exact / self.utterances, 4) if self.utterances else 0.0,
            "intent_rate": round(self.intent / self.utterances, 4) if self.utterances else 0.0,
            "oog_utterances": self.oog,
            "false_accept_rate": round(self.false_accepts / self.oog, 4) if self.oog else 0.0,
        }


def _targets(rates: dict[str, float | int]) -> dict[str, Any]:
    return {
        "exact_rate": {"min": TARGET_EXACT, "met": rates["exact_rate"] >= TARGET_EXACT},
        "false_accept_rate": {
            "max": TARGET_FALSE_ACCEPT,
            "met": rates["false_accept_rate"] <= TARGET_FALSE_ACCEPT,
        },
    }


def run() -> dict[str, Any]:
    """Run the bench and return the result object."""
    t0 = time.process_time()
    recognizer = PhraseRecognizer(DEFAULT_PATTERNS)
    init_cpu = time.process_time() - t0

    total = _Tally()
    headline = _Tally()
    per_voice: dict[str, _Tally] = {}
    failures: list[dict[str, Any]] = []
    false_accepts: list[dict[str, Any]] = []
    audio_seconds = 0.0
    cpu = 0.0

    for label, spec, wpm in BENCH_VOICES:
        tally = per_voice.setdefault(label, _Tally())
        tallies = (total, tally, headline) if label in HEADLINE_VOICES else (total, tally)
        cases: list[tuple[str, str | None]] = [*SPOKEN_PHRASES]
        cases += [(text, None) for text in OOG_SENTENCES]
        for text, pattern in cases:
            turn = phone_turn(text, spec, wpm)
            audio_seconds += turn.size / PHONE_RATE
            t = time.process_time()
            result = recognizer.recognize(turn, PHONE_RATE)
            cpu += time.process_time() - t
            got = {"phrase": result.phrase, "text": result.text, "slots": result.slots}
            if pattern is None:
                for t_ in tallies:
                    t_.oog += 1
                if result.phrase is not None:
                    for t_ in tallies:
                        t_.false_accepts += 1
                    false_accepts.append({"voice": label, "spoken": text, **got})
                continue
            intent = result.phrase == pattern
            exact = intent and result.text == text and result.slots == expected_digits(text)
            for t_ in tallies:
                t_.utterances += 1
                t_.intent += intent
                t_.exact += exact
            if not exact:
                failures.append({"voice": label, "spoken": text, "expected": pattern, **got})

    rates = total.rates()
    head = headline.rates()
    return {
        "bench": "engine_recognition",
        "path": "espeak-ng -> 8 kHz -> G.711 µ-law encode/decode -> PhraseRecognizer",
        "patterns": list(DEFAULT_PATTERNS),
        "voices": [
            {"label": label, "espeak_voice": spec, "wpm": wpm} for label, spec, wpm in BENCH_VOICES
        ],
        "padding_ms": {"before": int(LEAD_IN_S * 1000), "after": int(TRAIL_S * 1000)},
        "oog_sentences": list(OOG_SENTENCES),
        "headline": {
            "voices": list(HEADLINE_VOICES),
            "note": "the three target voices; the headline figures",
            **head,
            "targets": _targets(head),
        },
        "all_voices": {
            "voices": [label for label, _, _ in BENCH_VOICES],
            "note": "the headline voices plus en-us at 130 wpm",
            **rates,
            "targets": _targets(rates),
        },
        "per_voice": {label: t.rates() for label, t in per_voice.items()},
        "audio_seconds": round(audio_seconds, 2),
        "cpu_seconds_per_audio_second": round(cpu / audio_seconds, 4),
        "recognizer_init_cpu_seconds": round(init_cpu, 3),
        "versions": {
            "pocketsphinx": metadata.version("pocketsphinx"),
            "espeak-ng": espeak_version(),
            "python": sys.version.split()[0],
        },
        "failures": failures,
        "false_accepts": false_accepts,
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
