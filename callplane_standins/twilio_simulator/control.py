"""Interrupting a live call: hang-ups and redirects from REST, the caller or the watchdog.

Whatever the call is doing (ringing, fetching TwiML, playing ``<Say>``, running a stream) must
stop as soon as one of these arrives, and the call's state machine then decides what follows.
:class:`PendingControl` is the one place a request is held until acted on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from dataclasses import dataclass

from callplane_standins.twilio_simulator.timeline import HungUpBy
from callplane_standins.twilio_simulator.twiml import Instruction

__all__ = ["ControlRequest", "HangupRequest", "PendingControl", "RedirectRequest"]


@dataclass(frozen=True, slots=True)
class HangupRequest:
    """End the call; ``by`` is who hung up."""

    by: HungUpBy
    reason: str


@dataclass(frozen=True, slots=True)
class RedirectRequest:
    """Replace the running TwiML with ``instructions``, or with the document at ``url``."""

    instructions: list[Instruction] | None
    url: str
    method: str


ControlRequest = HangupRequest | RedirectRequest


class PendingControl:
    """The pending control request of one call, and whether the call has ended."""

    def __init__(self) -> None:
        self.pending: ControlRequest | None = None
        self.ended = False
        self._changed = asyncio.Event()

    def request(self, req: ControlRequest) -> None:
        """Ask the call to hang up or redirect; ignored once it has ended."""
        if self.ended:
            return
        # A hang-up wins over a redirect that has not been acted on yet.
        if isinstance(self.pending, HangupRequest):
            return
        self.pending = req
        self._changed.set()

    def take(self) -> ControlRequest | None:
        """The pending request, now being acted on (it is no longer pending)."""
        pending, self.pending = self.pending, None
        return pending

    async def wait_or_interrupt(self, aw: Awaitable[object]) -> object | None:
        """Await ``aw`` unless a control request arrives first (then cancel it, return None)."""
        task = asyncio.ensure_future(aw)
        if self.pending is not None:
            task.cancel()
            return None
        self._changed.clear()
        waiter = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
