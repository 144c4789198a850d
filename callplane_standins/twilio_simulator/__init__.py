"""Offline stand-in for Twilio: REST subset, number inventory, signed webhooks, TwiML and
Media Streams, driven by scripted callers. Start with :class:`Simulator`."""

from callplane_standins.twilio_simulator.call import LiveCall
from callplane_standins.twilio_simulator.caller import (
    Step,
    hang_up,
    interrupt_after,
    pause,
    press,
    say,
    wait_for_reply,
)
from callplane_standins.twilio_simulator.simulator import Simulator
from callplane_standins.twilio_simulator.state import TwilioApiError
from callplane_standins.twilio_simulator.timeline import CallResult, MarkRecord, Timeline

__all__ = [
    "CallResult",
    "LiveCall",
    "MarkRecord",
    "Simulator",
    "Step",
    "Timeline",
    "TwilioApiError",
    "hang_up",
    "interrupt_after",
    "pause",
    "press",
    "say",
    "wait_for_reply",
]
