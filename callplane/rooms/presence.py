"""Who is in the room: whether any human is there, and when the room has stayed empty.

An agent job serves humans (web users, phone callers), never other agents, so it waits for the
first human to arrive and leaves once the last one has been gone for a grace period. The grace
period absorbs a page reload or a phone caller's brief drop, which would otherwise cost the
conversation its context.
"""

from __future__ import annotations

import asyncio
import contextlib

from livekit import rtc

from callplane.rooms.agent_transport import is_human


class Presence:
    """The humans in a room, followed from its events; create it before ``Room.connect`` (it
    also counts the participants already there when :meth:`refresh` runs after connecting)."""

    def __init__(self, room: rtc.Room) -> None:
        self.room = room
        self.seen: list[str] = []  # identities of every human that was here, in order
        self._someone = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        room.on("participant_connected", self._changed)
        room.on("participant_disconnected", self._changed)

    def humans(self) -> list[str]:
        """Identities of the humans now in the room."""
        return [p.identity for p in self.room.remote_participants.values() if is_human(p)]

    def refresh(self) -> None:
        """Recount (after connecting: the participants already in the room emit no event)."""
        here = self.humans()
        for identity in here:
            if identity not in self.seen:
                self.seen.append(identity)
        if here:
            self._empty.clear()
            self._someone.set()
        else:
            self._someone.clear()
            self._empty.set()

    def _changed(self, participant: rtc.RemoteParticipant) -> None:
        self.refresh()

    async def wait_for_human(self, timeout_s: float) -> bool:
        """True once a human is in the room; False if none came within ``timeout_s``."""
        try:
            await asyncio.wait_for(self._someone.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def wait_empty_for(self, grace_s: float) -> None:
        """Return once no human has been in the room for ``grace_s`` seconds in a row."""
        while True:
            await self._empty.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._someone.wait(), grace_s)
                continue  # someone came back within the grace period
            return

    def close(self) -> None:
        self.room.off("participant_connected", self._changed)
        self.room.off("participant_disconnected", self._changed)
