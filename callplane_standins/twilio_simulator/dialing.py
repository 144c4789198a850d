"""Dialling an outbound call: how long it rings, whether it is answered, and by whom (AMD).

Pure decisions from the :class:`Callee` and the request's ``Timeout`` and ``MachineDetection``;
the call's state machine (``call.py``) waits the times given here and reports the statuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from callplane_standins.twilio_simulator.callee import AMD_DECISION_S, BEEP_MS, Callee
from callplane_standins.twilio_simulator.caller import DEFAULT_VOICE

__all__ = ["MachineDetection", "Ringing", "detect_machine", "ringing"]


@dataclass(frozen=True, slots=True)
class Ringing:
    """How long the phone rings (seconds) and whether it is picked up at the end."""

    ring_s: float
    answered: bool


def ringing(callee: Callee | None, ring_period_s: float, ring_timeout_s: float) -> Ringing:
    """Ring for the callee's rings, but no longer than Twilio's ``Timeout``.

    Nobody (``callee`` None) or a callee that never answers rings the whole timeout; a callee
    whose pickup comes after the timeout counts as not answering.
    """
    answers = callee is not None and callee.answers
    rings_s = callee.rings * ring_period_s if callee is not None else ring_timeout_s
    ring = min(rings_s, ring_timeout_s) if answers else ring_timeout_s
    if answers and rings_s > ring_timeout_s:
        answers = False  # Twilio's Timeout ran out before the pickup
    return Ringing(ring, answers)


@dataclass(frozen=True, slots=True)
class MachineDetection:
    """What AMD reports (``AnsweredBy``) and how long after pickup it takes to decide."""

    answered_by: str
    decision_s: float


def detect_machine(
    callee: Callee, mode: str, speech: Mapping[tuple[str, str], bytes]
) -> MachineDetection:
    """Twilio's AMD for ``MachineDetection=mode`` (see ``callee.py``).

    A person is recognised once their answer has been said; ``DetectMessageEnd`` waits for a
    machine's greeting and beep; otherwise a machine is reported at the start. ``speech`` holds
    the callee's rendered phrases (8 kHz µ-law, so 8000 bytes a second).
    """
    if callee.kind == "human":
        said = speech.get((callee.answer_with or "", DEFAULT_VOICE), b"")
        return MachineDetection("human", len(said) / 8000 + AMD_DECISION_S)
    if mode == "DetectMessageEnd":
        greeting = speech.get((callee.greeting, DEFAULT_VOICE), b"")
        return MachineDetection("machine_end_beep", len(greeting) / 8000 + BEEP_MS / 1000)
    return MachineDetection("machine_start", AMD_DECISION_S)
