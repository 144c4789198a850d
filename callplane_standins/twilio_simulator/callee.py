"""Who answers an outbound call on the simulator, and how: a person, a voicemail, a busy line,
or nobody.

Twilio's answering-machine detection (AMD) is modelled on what its docs describe:
``MachineDetection=Enable`` decides at pickup (``human`` or ``machine_start``);
``DetectMessageEnd`` waits, for a machine, until the greeting's beep and reports
``machine_end_beep``, so that the TwiML (and the agent) starts right after the beep. The voice
webhook then carries ``AnsweredBy``. Detection takes :data:`AMD_DECISION_S` for a person.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from callplane_standins.twilio_simulator.caller import Step, pause, say, script_from_json

__all__ = [
    "AMD_DECISION_S",
    "BEEP_MS",
    "Callee",
    "busy",
    "human",
    "no_answer",
    "voicemail",
]

AMD_DECISION_S = 0.4
BEEP_MS = 500
DEFAULT_GREETING = "Hi, you have reached my voicemail. Please leave a message after the tone."

CalleeKind = Literal["human", "voicemail", "busy", "no_answer"]


@dataclass(frozen=True)
class Callee:
    """The far end of an outbound call. ``rings`` is how many rings before pickup (the
    simulator's ``ring_period_s`` long each); ``script`` is what a person does once connected;
    a voicemail plays ``greeting`` and a beep, then listens for ``listen_ms``."""

    kind: CalleeKind
    rings: int = 1
    script: tuple[Step, ...] = ()
    greeting: str = DEFAULT_GREETING
    listen_ms: int = 20_000
    # What a person says on picking up. With AMD it is said while Twilio listens, before the
    # call is connected to anyone; without AMD it is the first thing on the stream.
    answer_with: str | None = "hello"
    notes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rings < 0:
            raise ValueError(f"rings={self.rings} must be 0 or more")

    @property
    def answers(self) -> bool:
        return self.kind in ("human", "voicemail")

    def connected_script(self, machine_detection: str | None) -> list[Step]:
        """What the far end does on the connected call. A voicemail detected to its beep has
        already played its greeting before the call was connected."""
        if self.kind == "human":
            if self.answer_with and not machine_detection:
                return [say(self.answer_with), *self.script]
            return list(self.script)
        if self.kind == "voicemail":
            if machine_detection == "DetectMessageEnd":
                return [pause(self.listen_ms)]
            return [say(self.greeting), pause(BEEP_MS), pause(self.listen_ms)]
        return []

    def greeting_steps(self) -> list[Step]:
        """Speech said before the call is connected (its length sets when AMD decides)."""
        if self.kind == "voicemail":
            return [say(self.greeting)]
        if self.kind == "human" and self.answer_with:
            return [say(self.answer_with)]
        return []


def human(*script: Step, rings: int = 1, answer_with: str | None = "hello") -> Callee:
    """A person who picks up after ``rings`` rings saying ``answer_with``, then follows
    ``script``."""
    return Callee("human", rings=rings, script=tuple(script), answer_with=answer_with)


def voicemail(
    greeting: str = DEFAULT_GREETING, *, rings: int = 4, listen_ms: int = 20_000
) -> Callee:
    """An answering machine: greeting, beep, then it records whatever comes."""
    return Callee("voicemail", rings=rings, greeting=greeting, listen_ms=listen_ms)


def busy() -> Callee:
    """A busy line: the call ends ``busy`` without ringing through."""
    return Callee("busy", rings=0)


def no_answer(rings: int = 6) -> Callee:
    """Nobody picks up: ``no-answer`` after ``rings`` rings (or Twilio's Timeout)."""
    return Callee("no_answer", rings=rings)


def callee_from_json(data: Mapping[str, Any]) -> Callee:
    """A callee from JSON: ``{"kind": "human", "rings": 3, "script": [{"say": "hi"}]}``,
    ``{"kind": "voicemail", "greeting": "..."}``, ``{"kind": "busy"}``, ``{"kind":
    "no_answer"}``; ValueError names what is wrong."""
    kind = data.get("kind")
    rings = data.get("rings", 1)
    if not isinstance(rings, int) or isinstance(rings, bool):
        raise ValueError(f"rings {rings!r} must be a whole number")
    if kind == "human":
        return human(*script_from_json(data.get("script") or []), rings=rings)
    if kind == "voicemail":
        return voicemail(str(data.get("greeting") or DEFAULT_GREETING), rings=rings)
    if kind == "busy":
        return busy()
    if kind == "no_answer":
        return no_answer(rings)
    raise ValueError(f"kind {kind!r} is not one of human, voicemail, busy, no_answer")


def as_callee(script_or_callee: Callee | Sequence[Step]) -> Callee:
    """A bare script means a person who answers on the first ring and does just that."""
    if isinstance(script_or_callee, Callee):
        return script_or_callee
    return human(*script_or_callee, answer_with=None)
