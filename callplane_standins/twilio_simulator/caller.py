"""Scripted callers: a person on the phone, reduced to a few declarative steps.

A voice agent is tested by calling it: say something, wait for the answer, interrupt it,
press keys, hang up. A script is a list of steps built with the functions below::

    script = [
        wait_for_reply(timeout_s=5),         # the greeting
        say("what is the weather like"),
        interrupt_after(800, "stop, thanks"),  # barge in 800 ms into the answer
        press("1#"),
        hang_up(),
    ]

The carrier runs the script against the call's :class:`Line`: speech is synthesised with
espeak-ng (in a thread, before the call rings, so timing during the call is not disturbed by
synthesis) and sent as µ-law in the 20 ms slots of the phone line; every slot without speech
carries µ-law silence (0xFF), as a real line does. A script that ends without ``hang_up()``
leaves the caller silent on the line until the other side ends the call.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from callplane.audio import ulaw_encode

__all__ = [
    "DTMF_DIGITS",
    "CallerScriptError",
    "HangUp",
    "InterruptAfter",
    "Line",
    "PauseStep",
    "Press",
    "SayStep",
    "Step",
    "WaitForReply",
    "hang_up",
    "interrupt_after",
    "pause",
    "press",
    "render_script",
    "run_script",
    "say",
    "script_from_json",
    "synthesize_ulaw",
    "wait_for_reply",
]

FRAME_MS = 20
FRAME_BYTES = 160
SILENCE = 0xFF
DTMF_DIGITS = frozenset("0123456789*#")
DTMF_TONE_MS = 100
DTMF_GAP_MS = 100
DEFAULT_QUIET_MS = 700
DEFAULT_VOICE = "en-us"


class CallerScriptError(ValueError):
    """A script step is invalid (bad digit, negative time, empty text…)."""


@dataclass(frozen=True, slots=True)
class SayStep:
    """Speak ``text`` in espeak-ng voice ``voice``; the step ends when the speech was sent."""

    text: str
    voice: str = DEFAULT_VOICE


@dataclass(frozen=True, slots=True)
class WaitForReply:
    """Wait until the bot has played audio and then been quiet for ``quiet_ms``."""

    timeout_s: float = 10.0
    quiet_ms: int = DEFAULT_QUIET_MS


@dataclass(frozen=True, slots=True)
class InterruptAfter:
    """Once the bot has played ``ms`` of audio since this step began, speak ``text`` over it."""

    ms: int
    text: str
    voice: str = DEFAULT_VOICE
    timeout_s: float = 15.0


@dataclass(frozen=True, slots=True)
class Press:
    """Press keypad ``digits`` (0-9, *, #): one DTMF event each, 100 ms tone + 100 ms gap."""

    digits: str


@dataclass(frozen=True, slots=True)
class PauseStep:
    """Stay silent for ``ms``."""

    ms: int


@dataclass(frozen=True, slots=True)
class HangUp:
    """End the call from the caller's side."""


Step = SayStep | WaitForReply | InterruptAfter | Press | PauseStep | HangUp


def say(text: str, voice: str = DEFAULT_VOICE) -> SayStep:
    """Speak ``text`` (espeak-ng voice spec ``voice``, e.g. ``en-us``, ``en+f3``)."""
    if not text.strip():
        raise CallerScriptError("say() needs non-empty text")
    return SayStep(text, voice)


def wait_for_reply(timeout_s: float = 10.0, quiet_ms: int = DEFAULT_QUIET_MS) -> WaitForReply:
    """Wait for the bot to speak and fall quiet (``quiet_ms``, ~700 ms by default)."""
    if timeout_s <= 0 or quiet_ms <= 0:
        raise CallerScriptError(
            f"wait_for_reply needs positive times, got {timeout_s}s/{quiet_ms}ms"
        )
    return WaitForReply(timeout_s, quiet_ms)


def interrupt_after(ms: int, text: str, voice: str = DEFAULT_VOICE) -> InterruptAfter:
    """Barge in: speak ``text`` while the bot is talking, after it has played ``ms`` ms."""
    if ms < 0:
        raise CallerScriptError(f"interrupt_after needs ms >= 0, got {ms}")
    if not text.strip():
        raise CallerScriptError("interrupt_after() needs non-empty text")
    return InterruptAfter(ms, text, voice)


def press(digits: str) -> Press:
    """Press keys; each digit becomes one Media Streams ``dtmf`` event."""
    bad = [d for d in digits if d not in DTMF_DIGITS]
    if not digits or bad:
        raise CallerScriptError(f"press() takes digits from 0-9 * #, got {digits!r}")
    return Press(digits)


def pause(ms: int) -> PauseStep:
    """Silence for ``ms`` milliseconds."""
    if ms < 0:
        raise CallerScriptError(f"pause needs ms >= 0, got {ms}")
    return PauseStep(ms)


def hang_up() -> HangUp:
    """Hang up (the media stream then gets ``stop``)."""
    return HangUp()


def script_from_json(steps: Sequence[Mapping[str, Any]]) -> list[Step]:
    """Build a script from JSON-style objects, e.g. ``[{"say": "hi"}, {"wait_for_reply": 5},
    {"interrupt_after": [800, "stop"]}, {"press": "1"}, {"pause": 500}, {"hang_up": true}]``.

    Used by the simulator's HTTP endpoint for scripted calls; raises CallerScriptError naming the
    step at fault.
    """
    out: list[Step] = []
    for i, step in enumerate(steps):
        if not isinstance(step, Mapping) or len(step) != 1:
            raise CallerScriptError(
                f"step {i} must be an object with exactly one key, got {step!r}"
            )
        ((kind, arg),) = step.items()
        try:
            if kind == "say":
                out.append(say(**arg) if isinstance(arg, Mapping) else say(str(arg)))
            elif kind == "wait_for_reply":
                out.append(
                    wait_for_reply(**arg)
                    if isinstance(arg, Mapping)
                    else wait_for_reply(float(arg))
                )
            elif kind == "interrupt_after":
                if isinstance(arg, Mapping):
                    out.append(interrupt_after(**arg))
                else:
                    ms, text = arg
                    out.append(interrupt_after(int(ms), str(text)))
            elif kind == "press":
                out.append(press(str(arg)))
            elif kind == "pause":
                out.append(pause(int(arg)))
            elif kind == "hang_up":
                out.append(hang_up())
            else:
                raise CallerScriptError(f"unknown step {kind!r}")
        except (TypeError, ValueError) as exc:
            raise CallerScriptError(f"step {i} ({kind}): {exc}") from None
    return out


class Line(Protocol):
    """The caller's end of a call, as the carrier exposes it to a script.

    Time advances in 20 ms slots; :meth:`next_slot` returns after the next one.
    """

    def speak(self, ulaw: bytes) -> None:
        """Queue µ-law audio to be sent in the next slots."""

    @property
    def speaking(self) -> bool:
        """Queued speech has not all been sent yet."""

    def dtmf(self, digit: str) -> None:
        """Send one DTMF digit event now."""

    def hang_up(self) -> None:
        """End the call from the caller's side."""

    async def next_slot(self) -> None:
        """Wait for the next 20 ms slot."""

    @property
    def bot_played_bytes(self) -> int:
        """µ-law bytes of bot audio played to the caller so far (after clears)."""

    @property
    def bot_voiced_bytes(self) -> int:
        """Of those, bytes in frames that were not silence."""

    @property
    def bot_quiet_ms(self) -> float:
        """Milliseconds since audible bot audio last played (inf if it never has)."""

    def note(self, kind: str, detail: Mapping[str, object]) -> None:
        """Record a timeline event."""

    def error(self, message: str) -> None:
        """Record a problem in the call result's ``errors``."""


@functools.lru_cache(maxsize=128)
def synthesize_ulaw(text: str, voice: str) -> bytes:
    """``text`` spoken by espeak-ng voice ``voice`` as 8 kHz µ-law (blocking, cached).

    Shared by scripted callers and the carrier's ``<Say>``; call it through
    ``asyncio.to_thread`` from async code.
    """
    # Imported here: espeak-ng is only needed once something speaks.
    from callplane_standins.realtime_engine.speech import speak

    pcm = speak(text, voice, 8000)
    if pcm.size == 0:
        return b""
    return bytes(ulaw_encode(np.asarray(pcm, dtype=np.int16)).tobytes())


async def render_script(script: Sequence[Step]) -> dict[tuple[str, str], bytes]:
    """Synthesise every utterance of ``script`` (espeak-ng in worker threads), keyed by
    ``(text, voice)``, before the call starts."""
    wanted = {(s.text, s.voice) for s in script if isinstance(s, SayStep | InterruptAfter)}
    keys = sorted(wanted)
    audio = await asyncio.gather(*(asyncio.to_thread(synthesize_ulaw, t, v) for t, v in keys))
    return dict(zip(keys, audio, strict=True))


async def _say(line: Line, audio: bytes, text: str) -> None:
    line.note("caller_say_start", {"text": text, "ms": len(audio) / 8})
    line.speak(audio)
    while line.speaking:
        await line.next_slot()
    line.note("caller_say_end", {"text": text})


async def _wait_for_reply(line: Line, step: WaitForReply) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + step.timeout_s
    start = line.bot_voiced_bytes
    while loop.time() < deadline:
        heard = line.bot_voiced_bytes > start
        if heard and line.bot_quiet_ms >= step.quiet_ms:
            line.note("caller_heard_reply", {"bot_ms": (line.bot_voiced_bytes - start) / 8})
            return
        await line.next_slot()
    heard_ms = (line.bot_voiced_bytes - start) / 8
    line.error(
        f"script: wait_for_reply timed out after {step.timeout_s:g}s "
        f"(bot played {heard_ms:.0f} ms meanwhile)"
    )


async def _interrupt(line: Line, step: InterruptAfter, audio: bytes) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + step.timeout_s + step.ms / 1000
    start = line.bot_played_bytes
    target = step.ms * 8
    while loop.time() < deadline:
        played = line.bot_played_bytes - start
        if played >= target:
            break
        if played > 0 and line.bot_quiet_ms >= DEFAULT_QUIET_MS:
            line.error(
                f"script: interrupt_after({step.ms}) - the bot stopped after {played / 8:.0f} ms, "
                "before the interrupt point; speaking anyway"
            )
            break
        await line.next_slot()
    else:
        line.error(f"script: interrupt_after({step.ms}) - the bot did not speak; speaking anyway")
    line.note("caller_interrupt", {"after_bot_ms": (line.bot_played_bytes - start) / 8})
    await _say(line, audio, step.text)


async def _slots(line: Line, ms: float) -> None:
    for _ in range(max(round(ms / FRAME_MS), 0)):
        await line.next_slot()


async def run_script(
    script: Sequence[Step], line: Line, speech: Mapping[tuple[str, str], bytes]
) -> bool:
    """Play ``script`` on ``line``; return True if the script hung up.

    ``speech`` is what :func:`render_script` returned for this script.
    """
    for step in script:
        if isinstance(step, SayStep):
            await _say(line, speech[(step.text, step.voice)], step.text)
        elif isinstance(step, WaitForReply):
            await _wait_for_reply(line, step)
        elif isinstance(step, InterruptAfter):
            await _interrupt(line, step, speech[(step.text, step.voice)])
        elif isinstance(step, Press):
            for digit in step.digits:
                await _slots(line, DTMF_TONE_MS)
                line.dtmf(digit)
                await _slots(line, DTMF_GAP_MS)
        elif isinstance(step, PauseStep):
            await _slots(line, step.ms)
        elif isinstance(step, HangUp):
            line.note("caller_hang_up", {})
            line.hang_up()
            return True
    return False
