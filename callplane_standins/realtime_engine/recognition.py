"""Fixed-phrase speech recognition with a pocketsphinx JSGF grammar.

The local engine is a *scripted fixed-phrase* engine: it recognises a closed list of
phrases, nothing else. pocketsphinx's generic language model is far too inaccurate for
free-form speech, but a grammar of the expected phrases works, and it is honest only if
speech that is not one of the phrases is rejected instead of being forced onto the
closest one. The design, each part measured on espeak-ng speech sent through the 8 kHz
µ-law phone path (see ``bench/engine_recognition.py``):

* **Grammar**: one JSGF alternative per pattern, whole utterance only, ``{digits}`` as a
  loop of digit words (one to eight, checked after decoding). A hypothesis is accepted
  only if its words match a complete pattern again in Python: pocketsphinx returns its
  best *partial* path when no path reaches the end of the grammar (e.g. "hello can you
  hear").
* **Rejection** (a confidence measure, see :class:`PathScores`): the acoustic score of
  the winning path's fixed (non-slot) words, per frame, relative to the best scoring
  senone of each frame (pocketsphinx normalises acoustic scores that way, so the
  per-frame best acts as an unconstrained "anything" model, and dividing by frames makes
  the score independent of how long the words are). Speech that is really one of the
  phrases stays close to it; out-of-grammar speech forced through the grammar falls
  below. Two floors are applied: on the mean over the fixed words and on the worst single
  fixed word. Slot digits are left out of the score because synthetic digits fit the
  model poorly even when they are right. A phone-loop garbage alternative inside the
  grammar also rejected but cost 20-40x more CPU and lost many true matches, and word
  posteriors from the lattice (``seg().prob``, ``hyp().prob``) gave no separation, so
  neither is used.
* **Tuning** (``bench/recognition_tuning.py``): the floors and the word insertion
  probability were chosen on a tuning set that shares no voice and no out-of-grammar
  sentence with ``bench/engine_recognition.py`` (9 espeak-ng voice/speed/pitch variants,
  British, Scottish, Caribbean and New York accents included; other digit strings; 20
  other out-of-grammar sentences). The rule: highest exact rate with false accepts at
  most 0.05 (half the 0.10 target, for margin), on a plateau of the grid. Tuning-set
  figures at the chosen point (mean >= -4.25, worst word >= -6.0, ``wip=0.2``): exact
  0.856 of 90, false accepts 0.044 of 180; neighbours -4.5/-6.0 and -4.25/-6.25 give
  0.856/0.050 and 0.856/0.044. The tuning set is harder than the bench (its accents fit
  the US acoustic model worse): pattern decoding alone, without any rejection, gets
  0.889 of it exactly right.
* **Word insertion probability** ``wip=0.2`` (pocketsphinx default 0.65): every extra
  word a path uses costs more, which cut out-of-grammar sentences forced onto a complete
  pattern from 52 to 43 of 180 on the tuning set (the digit loop lets a forced path
  take any number of short words) without losing true matches.
* **Bench** (``bench/engine_recognition.py``, run once after the tuning above): the three
  headline voices (``en-us``, ``en``, ``en-us+m3``) exact 1.0 of 24, false accepts 0.10
  of 30; all four voices exact 0.969 of 32, false accepts 0.10 of 40 (without the tuning
  above: 0.958/0.133 and 0.906/0.125). The
  remaining false accepts are near misses ("please send me a new card" as "please
  transfer me to billing", "my account number is wrong" as "my order number is one").
* **Telephone band**: µ-law at 8 kHz removes most of /s/ and /z/, which then look like
  /th/, /dh/ or /f/, /v/ to the wideband model. Every grammar word gets extra
  pronunciations with those substitutions ("status" was otherwise missed on the phone
  path).
* **Non-rhotic accents**: CMUdict is American; British-type voices (espeak-ng ``en``,
  ``en-gb-x-rp``, ...) drop an /r/ that follows a vowel ("four" = F AO, "order" = AO D
  AH). Every pronunciation also gets a non-rhotic variant (post-vocalic R removed, ER ->
  AH). Without it "four" was read as "oh" and "four four" merged into one "four"; on the
  tuning set it raised exact decoding from 0.844 to 0.889 of 90 utterances.
* **Digits** are the fragile part: besides the fricatives, short digit words get inserted
  into long ones ("one" -> "one eight"). Every phone of a digit pronunciation is doubled,
  which doubles the minimum duration the HMMs allow and stops most of those insertions.
* **Noise floor**: seeded Gaussian noise 32 dB below the loud frames of the turn is added
  after resampling to 16 kHz. Synthesized and phone audio contain stretches of exact
  digital zero and, after µ-law at 8 kHz, nothing above 4 kHz; both give the filterbank
  log(0)-like outliers. Tying the floor to the speech level keeps results independent of
  the caller's volume; the seed is constant so results are deterministic.

Decoder lifetime: one pocketsphinx decoder per :class:`PhraseRecognizer`, reused for every
utterance. Measured: a reused decoder gave different results from a fresh one on 19 of
30 turns, because the front end's noise estimate (``remove_noise``, set by the model's
feat.params) carries over. ``reinit_feat()`` before each turn (about 20 µs) makes a
reused decoder match a fresh one exactly, and ``full_utt=True`` computes cepstral mean
normalisation over that turn alone. A fresh decoder per turn would cost ~8 ms CPU (with
the grammar-only dictionary used here) for the same result.

GIL: ``Decoder.process_raw`` does **not** release the GIL. The compiled module does not
even import ``PyEval_SaveThread``, and a ticker thread measured while another thread
decoded 28 s of audio stalled for the whole 5.3 s call. ``asyncio.to_thread`` therefore
does not keep the event loop running during a decode: every other thread, the loop's
included, waits until ``process_raw`` returns. Per-call CPU is kept small instead: a
typical turn (2-5 s) costs 10-130 ms (about 0.02 CPU s per audio second), and turns
longer than ``max_seconds`` (default 12 s; no fixed phrase takes that long) are rejected
without decoding, because long digit-heavy speech is where the search gets expensive.
"""

from __future__ import annotations

import functools
import math
import os
import re
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from pocketsphinx import Decoder, get_model_path

from callplane.audio import resample

__all__ = [
    "DIGIT_WORDS",
    "MAX_DIGITS",
    "PathScores",
    "PhraseRecognizer",
    "Recognition",
    "build_jsgf",
    "normalize",
]

Int16Array = npt.NDArray[np.int16]

#: Spoken digit words accepted in a ``{digits}`` slot and their values.
DIGIT_WORDS: dict[str, str] = {
    "zero": "0",
    "oh": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}
_DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MAX_DIGITS = 8
_SLOT = "digits"

_DECODER_RATE = 16000
# Seeded noise floor relative to the 95th percentile of 20 ms frame RMS (-32 dB).
_NOISE_RELATIVE = 0.025
_NOISE_MIN_STD = 4.0
_NOISE_SEED = 0x5EED
# Acceptance thresholds on the acoustic score per frame of the fixed (non-slot) words,
# in nats relative to the best senone of each frame: their mean, and the worst single
# word (an out-of-grammar sentence that shares some words with a pattern still has one
# word that fits badly). Tuned with bench/recognition_tuning.py on voices and
# out-of-grammar sentences that are not in the bench (see the module docstring).
DEFAULT_MIN_SCORE = -4.25
DEFAULT_MIN_WORD_SCORE = -6.0
# Word insertion probability (pocketsphinx default 0.65); see the module docstring.
_WORD_INSERTION_PROB = 0.2
# Utterances shorter than this cannot hold a phrase; skip the decoder.
_MIN_AUDIO_S = 0.1
# Longer turns are rejected without decoding (see the GIL note above).
DEFAULT_MAX_SECONDS = 12.0

# Telephone-band substitutions used for extra digit pronunciations (see module docstring).
_CHANNEL_VARIANTS: tuple[dict[str, str], ...] = (
    {"S": "TH", "Z": "DH"},
    {"S": "F", "Z": "V"},
)
_VOWELS = frozenset(
    ("AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW")
)


def normalize(text: str) -> str:
    """Lowercase, spell ASCII digits as words, drop punctuation, collapse whitespace.

    Recognised text and typed text are both compared in this form, so "My order # is 456!"
    and the spoken "my order number is four five six" differ only in the words themselves.
    Apostrophes inside words are kept because the pronunciation dictionary has words such
    as "what's".
    """
    text = text.lower()
    text = re.sub(r"[0-9]", lambda m: f" {_DIGIT_NAMES[int(m.group())]} ", text)
    text = re.sub(r"[^a-z']+", " ", text)
    words = (w.strip("'") for w in text.split())
    return " ".join(w for w in words if w)


@dataclass(frozen=True, slots=True)
class Recognition:
    """Result of recognising one user turn (or one typed message).

    ``phrase`` is the matching pattern exactly as the script wrote it, or None when the
    input is out of grammar or nothing was heard. ``text`` is the normalized words
    recognised ("" when rejected: a forced grammar path is not what the caller said).
    ``slots`` maps slot names to values, digits as ASCII ("456").
    """

    phrase: str | None
    text: str
    slots: dict[str, str] = field(default_factory=dict)


NO_MATCH = Recognition(None, "", {})


@dataclass(frozen=True, slots=True)
class _Pattern:
    source: str
    words: tuple[str, ...]  # normalized words; "{digits}" marks the slot
    regex: re.Pattern[str]


def _parse_pattern(source: str) -> _Pattern:
    words: list[str] = []
    for token in source.split():
        slot = re.fullmatch(r"\{([^{}]*)\}", token)
        if slot is not None:
            if slot.group(1) != _SLOT:
                raise ValueError(
                    f"unknown slot {token!r} in pattern {source!r}; only {{{_SLOT}}} is supported"
                )
            if "{digits}" in words:
                raise ValueError(f"pattern {source!r} has more than one {{{_SLOT}}} slot")
            words.append("{digits}")
        elif "{" in token or "}" in token:
            raise ValueError(f"malformed slot {token!r} in pattern {source!r}")
        else:
            words.extend(normalize(token).split())
    if not words:
        raise ValueError(f"pattern {source!r} has no words")
    digit = "(?:" + "|".join(DIGIT_WORDS) + ")"
    parts = [
        f"(?P<digits>{digit}(?: {digit}){{0,{MAX_DIGITS - 1}}})"
        if w == "{digits}"
        else re.escape(w)
        for w in words
    ]
    return _Pattern(source, tuple(words), re.compile(" ".join(parts)))


def _parse_patterns(patterns: Sequence[str]) -> list[_Pattern]:
    if isinstance(patterns, str):
        raise TypeError("patterns must be a sequence of strings, not a single string")
    parsed: list[_Pattern] = []
    seen: dict[tuple[str, ...], str] = {}
    for source in patterns:
        pattern = _parse_pattern(source)
        if pattern.words in seen:
            raise ValueError(f"patterns {seen[pattern.words]!r} and {source!r} are the same")
        seen[pattern.words] = source
        parsed.append(pattern)
    if not parsed:
        raise ValueError("at least one pattern is needed")
    return parsed


def _match(patterns: Sequence[_Pattern], words: str) -> Recognition:
    for pattern in patterns:
        m = pattern.regex.fullmatch(words)
        if m is None:
            continue
        slots: dict[str, str] = {}
        spoken = m.groupdict().get(_SLOT)
        if spoken is not None:
            slots[_SLOT] = "".join(DIGIT_WORDS[w] for w in spoken.split())
        return Recognition(pattern.source, words, slots)
    return Recognition(None, words, {})


def _jsgf_token(word: str) -> str:
    return word if re.fullmatch(r"[a-z]+", word) else f'"{word}"'


def _jsgf(patterns: Sequence[_Pattern]) -> str:
    lines = ["#JSGF V1.0;", "", "grammar callplane;", ""]
    alternatives = []
    for i, pattern in enumerate(patterns):
        body = " ".join("<digits>" if w == "{digits}" else _jsgf_token(w) for w in pattern.words)
        lines.append(f"<p{i}> = {body};")
        alternatives.append(f"<p{i}>")
    lines.append(f"public <utterance> = {' | '.join(alternatives)};")
    if any("{digits}" in p.words for p in patterns):
        # The 1..8 bound is checked after decoding: nested optionals or an alternation of
        # lengths compile to FSGs with many null transitions that decode ~15x slower.
        lines.append("<digits> = <digit>+;")
        lines.append(f"<digit> = {' | '.join(DIGIT_WORDS)};")
    return "\n".join(lines) + "\n"


def build_jsgf(patterns: Sequence[str]) -> str:
    """The JSGF grammar PhraseRecognizer decodes with: one whole-utterance rule per pattern.

    Exposed so the grammar an engine uses can be logged or inspected. Raises ValueError for
    malformed patterns (unknown slot, duplicate, empty).
    """
    return _jsgf(_parse_patterns(patterns))


@functools.cache
def _cmudict() -> dict[str, tuple[str, ...]]:
    """The bundled CMU dictionary as word -> pronunciations (loaded once per process)."""
    path = os.path.join(get_model_path(), "en-us", "cmudict-en-us.dict")
    entries: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 2:
                continue
            word = re.sub(r"\(\d+\)$", "", parts[0])
            entries.setdefault(word, []).append(" ".join(parts[1:]))
    return {w: tuple(p) for w, p in entries.items()}


def _non_rhotic(phones: Sequence[str]) -> list[str]:
    """A pronunciation as a non-rhotic (British-type) accent says it.

    An R after a vowel and not before one is dropped ("four" F AO R -> F AO, "order"
    AO R D ER -> AO D AH) and ER becomes AH; an R before a vowel stays ("zero").
    """
    out: list[str] = []
    for i, phone in enumerate(phones):
        after_vowel = i > 0 and phones[i - 1] in _VOWELS
        before_vowel = i + 1 < len(phones) and phones[i + 1] in _VOWELS
        if phone == "R" and after_vowel and not before_vowel:
            continue
        out.append("AH" if phone == "ER" else phone)
    return out


def _channel_variants(prons: Sequence[str]) -> list[list[str]]:
    """The dictionary pronunciations, their telephone-band fricative substitutions, and
    the non-rhotic form of each of those."""
    variants: list[list[str]] = []
    for pron in prons:
        phones = pron.split()
        for candidate in (phones, *([v.get(p, p) for p in phones] for v in _CHANNEL_VARIANTS)):
            if candidate not in variants:
                variants.append(candidate)
    for candidate in [_non_rhotic(v) for v in variants]:
        if candidate not in variants:
            variants.append(candidate)
    return variants


def _word_pronunciations(prons: Sequence[str]) -> list[str]:
    return [" ".join(v) for v in _channel_variants(prons)]


def _digit_pronunciations(prons: Sequence[str]) -> list[str]:
    # Doubled phones: a longer minimum duration, so short digits are not inserted.
    return [" ".join(p for phone in v for p in (phone, phone)) for v in _channel_variants(prons)]


def _dictionary(patterns: Sequence[_Pattern]) -> dict[str, list[str]]:
    cmudict = _cmudict()
    lexicon: dict[str, list[str]] = {}
    for pattern in patterns:
        for word in pattern.words:
            if word == "{digits}" or word in lexicon:
                continue
            prons = cmudict.get(word)
            if prons is None:
                raise ValueError(
                    f"word {word!r} in pattern {pattern.source!r} is not in pocketsphinx's "
                    "pronunciation dictionary; rephrase the pattern"
                )
            lexicon[word] = _word_pronunciations(prons)
    if any("{digits}" in p.words for p in patterns):
        for word in DIGIT_WORDS:
            lexicon[word] = _digit_pronunciations(cmudict[word])
    return lexicon


@dataclass(frozen=True, slots=True)
class PathScores:
    """Confidence of a decoded path: acoustic log score per frame of its fixed words.

    ``mean`` is the total score of the fixed (non-slot, non-filler) words divided by their
    frames; ``worst_word`` is the lowest per-frame score of a single fixed word. Both are
    in nats relative to the best scoring senone of each frame, so 0 is a perfect fit and
    the values do not depend on how long the words or the turn are. A turn is accepted
    when ``mean >= min_score`` and ``worst_word >= min_word_score``.
    """

    mean: float
    worst_word: float


def _path_scores(decoder: Decoder) -> PathScores:
    """(mean, worst word) acoustic log score per frame of the best path's fixed words.

    Fillers (silence) are excluded, and so are digit words unless the path has nothing
    else. Segment ``ascore`` is ``logmath_exp`` of pocketsphinx's integer score, i.e. a
    linear ratio to the per-frame best senone; its log is in nats.
    """
    hopeless = PathScores(-math.inf, -math.inf)
    words: list[tuple[bool, float, int]] = []
    for seg in decoder.seg() or []:
        word: str = seg.word
        if word.startswith(("<", "[")):
            continue
        ascore: float = seg.ascore
        if ascore <= 0.0:
            return hopeless  # underflowed
        is_digit = re.sub(r"\(\d+\)$", "", word) in DIGIT_WORDS
        words.append((is_digit, math.log(ascore), seg.end_frame - seg.start_frame + 1))
    fixed = [w for w in words if not w[0]] or words
    frames = sum(w[2] for w in fixed)
    if not frames:
        return hopeless
    return PathScores(sum(w[1] for w in fixed) / frames, min(w[1] / w[2] for w in fixed))


def _speech_level(audio: npt.NDArray[np.float64]) -> float:
    """RMS of the loud frames (95th percentile of 20 ms frame RMS at 16 kHz)."""
    frame = _DECODER_RATE // 50
    n = audio.size // frame
    if n == 0:
        return 0.0
    frames = audio[: n * frame].reshape(n, frame)
    return float(np.percentile(np.sqrt(np.mean(frames * frames, axis=1)), 95))


class PhraseRecognizer:
    """Recognise one of a fixed list of phrase patterns in a user turn, or reject it.

    Patterns are plain phrases ("what is the weather like today") with at most one
    ``{digits}`` slot (one to eight spoken digits, "zero"/"oh" to "nine"). Every pattern
    word must be in pocketsphinx's pronunciation dictionary (ValueError names the word).

    Thread-safety: decoding holds an internal lock, so one instance may be shared, but
    calls are serialised; give each concurrent session its own instance (construction
    costs ~10 ms and a few MiB once the CMU dictionary is cached).
    """

    def __init__(
        self,
        patterns: Sequence[str],
        *,
        min_score: float = DEFAULT_MIN_SCORE,
        min_word_score: float = DEFAULT_MIN_WORD_SCORE,
        max_seconds: float = DEFAULT_MAX_SECONDS,
    ) -> None:
        self._max_seconds = max_seconds
        self._patterns = _parse_patterns(patterns)
        self._min_score = min_score
        self._min_word_score = min_word_score
        self.jsgf = _jsgf(self._patterns)
        lexicon = _dictionary(self._patterns)
        self._decoder = self._make_decoder(lexicon, self.jsgf)
        self._lock = threading.Lock()
        self._noise: npt.NDArray[np.float64] = np.zeros(0)

    @property
    def patterns(self) -> list[str]:
        """The patterns, as given."""
        return [p.source for p in self._patterns]

    @staticmethod
    def _make_decoder(lexicon: dict[str, list[str]], jsgf: str) -> Decoder:
        # A dictionary holding only the grammar's words loads in milliseconds instead of
        # parsing all 130k CMU entries for every decoder.
        with tempfile.TemporaryDirectory(prefix="callplane-asr-") as tmp:
            dict_path = os.path.join(tmp, "grammar.dict")
            with open(dict_path, "w", encoding="utf-8") as f:
                for word, prons in lexicon.items():
                    for i, pron in enumerate(prons):
                        name = word if i == 0 else f"{word}({i + 1})"
                        f.write(f"{name} {pron}\n")
            decoder = Decoder(
                samprate=_DECODER_RATE,
                lm=None,
                dict=dict_path,
                wip=_WORD_INSERTION_PROB,
                loglevel="FATAL",
            )
        decoder.add_jsgf_string("phrases", jsgf)
        decoder.activate_search("phrases")
        return decoder

    def _unit_noise(self, n: int) -> npt.NDArray[np.float64]:
        if self._noise.size < n:
            size = max(n, 30 * _DECODER_RATE)
            self._noise = np.random.default_rng(_NOISE_SEED).standard_normal(size)
        return self._noise[:n]

    def _prepare(self, pcm: npt.NDArray[np.int16], rate: int) -> Int16Array:
        audio = resample(pcm, rate, _DECODER_RATE).astype(np.float64)
        std = max(_speech_level(audio) * _NOISE_RELATIVE, _NOISE_MIN_STD)
        audio += self._unit_noise(audio.size) * std
        return np.clip(np.round(audio), -32768, 32767).astype(np.int16)

    def recognize(self, pcm: npt.NDArray[np.int16], rate: int) -> Recognition:
        """Recognise one complete user turn (int16 mono at ``rate`` Hz); blocking.

        Returns the matching pattern, or ``phrase=None`` when nothing in the grammar was
        said, including when the best grammar path is a poor acoustic fit (out-of-grammar
        speech, see :class:`PathScores`) and when the turn is longer than ``max_seconds``.
        Takes about 20 ms CPU per second of audio, and holds the GIL throughout (see the
        module docstring).
        """
        result, scores = self.decode(pcm, rate)
        if (
            result.phrase is None
            or scores is None
            or scores.mean < self._min_score
            or scores.worst_word < self._min_word_score
        ):
            return NO_MATCH
        return result

    def decode(
        self, pcm: npt.NDArray[np.int16], rate: int
    ) -> tuple[Recognition, PathScores | None]:
        """The best grammar path and its confidence, before the acceptance floors.

        For tuning and diagnostics (``bench/recognition_tuning.py``): ``recognize`` is this
        plus the ``min_score``/``min_word_score`` test. The Recognition has ``phrase=None``
        when the path is not a complete pattern; scores are None when nothing was decoded
        (too short, too long, or an empty hypothesis).
        """
        if rate <= 0:
            raise ValueError(f"sample rate must be positive, got {rate}")
        if not _MIN_AUDIO_S * rate <= pcm.size <= self._max_seconds * rate:
            return NO_MATCH, None
        audio = self._prepare(pcm, rate)
        with self._lock:
            decoder = self._decoder
            # The front end keeps state across utterances (its noise estimate for
            # remove_noise); resetting it makes every turn decode as on a fresh decoder.
            decoder.reinit_feat()
            decoder.start_utt()
            decoder.process_raw(audio.tobytes(), no_search=False, full_utt=True)
            decoder.end_utt()
            hyp = decoder.hyp()
            if hyp is None or not hyp.hypstr:
                return NO_MATCH, None
            words: str = hyp.hypstr
            scores = _path_scores(decoder)
        return _match(self._patterns, words), scores

    def match_text(self, text: str) -> Recognition:
        """Match typed text against the patterns (exact after :func:`normalize`).

        Typed digits work in slots ("my order number is 456"). On no match, ``phrase`` is
        None and ``text`` is the normalized input.
        """
        return _match(self._patterns, normalize(text))
