"""The coordination state in this process's memory, for a single-process run (no Redis).

Correct only when one process serves every call: the local stack, tests, a one-container
deployment. It has the same interfaces and passes the same contract tests as the Redis store.
Every method runs to completion without awaiting, so each is atomic on the event loop; it is not
meant to be shared between threads.

Memory is bounded: every entry has an expiry and is pruned lazily, the nonce set and the call
streams have a size cap (evicting the soonest-expiring entry first, as
:class:`callplane.security.ReplayGuard` does: the claims of the oldest calls, whose tokens
expired long before),
the jobs index keeps :data:`~callplane.coordination.base.MAX_JOBS` entries and a call's status
list :data:`~callplane.coordination.base.MAX_STATUSES`.

Entries given a ``ttl_s`` expire on ``clock`` (monotonic by default, so a wall-clock step does
not expire or revive them); entries judged by a caller's ``now`` use that ``now``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from callplane.coordination._expiring import Expiring
from callplane.coordination.base import (
    CALL_STREAM_KEEP_S,
    MAX_JOBS,
    MAX_STATUSES,
    QUEUE_LEASE_S,
    SPEND_KEEP_S,
    Caps,
    check_caps,
    job_identity,
    require_positive,
)
from callplane.coordination.errors import CapReached

__all__ = [
    "MemoryCallStreams",
    "MemoryCoordination",
    "MemoryLiveCalls",
    "MemoryNonces",
    "MemoryOutboundState",
    "MemoryRoomLeases",
]

Clock = Callable[[], float]

DEFAULT_MAX_NONCES = 65_536
DEFAULT_MAX_CALL_STREAMS = 100_000


def _dump(data: dict[str, Any]) -> str:
    # Stored as JSON text, so what comes back is a fresh copy with exactly the types Redis
    # would return (tuples become lists, non-JSON values are refused at write time).
    return json.dumps(data, separators=(",", ":"))


def _load(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    value: dict[str, Any] = json.loads(text)
    return value


class MemoryNonces:
    """Claimed nonces until they expire, at most ``max_entries`` of them."""

    def __init__(self, max_entries: int = DEFAULT_MAX_NONCES) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries={max_entries!r} is invalid: use a positive integer")
        self.max_entries = max_entries
        self._seen: Expiring[bool] = Expiring()

    def __len__(self) -> int:
        """How many nonces are remembered (expired ones go at the next claim)."""
        return len(self._seen)

    async def claim(self, nonce: str, expires_at: float, now: float) -> bool:
        """See :meth:`callplane.coordination.base.Nonces.claim`."""
        self._seen.prune(now)
        if now >= expires_at or self._seen.get(nonce, now) is not None:
            return False
        while len(self._seen) >= self.max_entries:
            self._seen.evict_soonest()
        self._seen.put(nonce, True, expires_at)
        return True


class MemoryCallStreams:
    """Which stream took each CallSid, expiring on ``clock``, at most ``max_entries`` calls."""

    def __init__(
        self, clock: Clock = time.monotonic, max_entries: int = DEFAULT_MAX_CALL_STREAMS
    ) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries={max_entries!r} is invalid: use a positive integer")
        self.max_entries = max_entries
        self._clock = clock
        self._calls: Expiring[str] = Expiring()

    def __len__(self) -> int:
        """How many calls are remembered (lapsed ones go at the next claim)."""
        return len(self._calls)

    async def claim(
        self, call_sid: str, stream: str, ttl_s: float = CALL_STREAM_KEEP_S
    ) -> str | None:
        """See :meth:`callplane.coordination.base.CallStreams.claim`."""
        ttl_s = require_positive("ttl_s", ttl_s)
        now = self._clock()
        first = self._calls.get(call_sid, now)
        if first is not None:
            return first
        while len(self._calls) >= self.max_entries:
            self._calls.evict_soonest()
        self._calls.put(call_sid, stream, now + ttl_s)
        return None

    async def holder(self, call_sid: str) -> str | None:
        """See :meth:`callplane.coordination.base.CallStreams.holder`."""
        return self._calls.get(call_sid, self._clock())


class MemoryRoomLeases:
    """Room leases (with the cap groups each counts in) and the jobs index, expiring on
    ``clock``."""

    def __init__(self, clock: Clock = time.monotonic, max_jobs: int = MAX_JOBS) -> None:
        self._clock = clock
        self._max_jobs = max_jobs
        self._rooms: Expiring[tuple[str, tuple[str, ...]]] = Expiring()  # holder, groups
        self._jobs: Expiring[tuple[float, str]] = Expiring()
        self._restarts: Expiring[int] = Expiring()

    def _holder(self, room: str, now: float) -> str | None:
        lease = self._rooms.get(room, now)
        return None if lease is None else lease[0]

    async def acquire(self, room: str, job_id: str, ttl_s: float, caps: Caps = ()) -> str:
        """See :meth:`callplane.coordination.base.RoomLeases.acquire`."""
        ttl_s = require_positive("ttl_s", ttl_s)
        checked = check_caps(caps)
        now = self._clock()
        current = self._holder(room, now)
        if current is not None:
            return current
        for group, limit in checked:
            held = self._count(group, now)
            if held >= limit:
                raise CapReached(group, limit, held)
        self._rooms.put(room, (job_id, tuple(group for group, _ in checked)), now + ttl_s)
        return job_id

    async def renew(self, room: str, job_id: str, ttl_s: float) -> bool:
        """See :meth:`callplane.coordination.base.RoomLeases.renew`."""
        ttl_s = require_positive("ttl_s", ttl_s)
        now = self._clock()
        lease = self._rooms.get(room, now)
        if lease is None or lease[0] != job_id:
            return False
        self._rooms.put(room, lease, now + ttl_s)
        return True

    async def release(self, room: str, job_id: str) -> bool:
        """See :meth:`callplane.coordination.base.RoomLeases.release`."""
        if self._holder(room, self._clock()) != job_id:
            return False
        self._rooms.pop(room)
        return True

    async def held(self, group: str) -> int:
        """See :meth:`callplane.coordination.base.RoomLeases.held`."""
        return self._count(group, self._clock())

    def _count(self, group: str, now: float) -> int:
        return sum(1 for _, (_, groups) in self._rooms.items(now) if group in groups)

    async def holder(self, room: str) -> str | None:
        """See :meth:`callplane.coordination.base.RoomLeases.holder`."""
        return self._holder(room, self._clock())

    async def note_restart(self, room: str, window_s: float) -> int:
        """See :meth:`callplane.coordination.base.RoomLeases.note_restart`."""
        window_s = require_positive("window_s", window_s)
        now = self._clock()
        count = (self._restarts.get(room, now) or 0) + 1
        ends = self._restarts.expires_at(room, now)
        self._restarts.put(room, count, now + window_s if ends is None else ends)
        return count

    async def put_job(self, job: dict[str, Any], ttl_s: float) -> None:
        """See :meth:`callplane.coordination.base.RoomLeases.put_job`."""
        job_id, started_at = job_identity(job)
        ttl_s = require_positive("ttl_s", ttl_s)
        now = self._clock()
        self._jobs.put(job_id, (started_at, _dump(job)), now + ttl_s)
        if len(self._jobs) > self._max_jobs:
            ranked = sorted(self._jobs.items(now), key=lambda item: (item[1][0], item[0]))
            for oldest, _ in ranked[: len(ranked) - self._max_jobs]:
                self._jobs.pop(oldest)

    async def jobs(self, limit: int = MAX_JOBS) -> list[dict[str, Any]]:
        """See :meth:`callplane.coordination.base.RoomLeases.jobs`."""
        if limit < 1:
            return []
        ranked = sorted(
            self._jobs.items(self._clock()),
            key=lambda item: (item[1][0], item[0]),
            reverse=True,
        )
        return [json.loads(text) for _, (_, text) in ranked[:limit]]


class MemoryLiveCalls:
    """Live-call snapshots, expiring on ``clock``."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._calls: Expiring[str] = Expiring()

    async def put(self, call_sid: str, data: dict[str, Any], ttl_s: float) -> None:
        """See :meth:`callplane.coordination.base.LiveCalls.put`."""
        ttl_s = require_positive("ttl_s", ttl_s)
        now = self._clock()
        self._calls.put(call_sid, _dump(data), now + ttl_s)

    async def put_many(self, snapshots: Mapping[str, dict[str, Any]], ttl_s: float) -> None:
        """See :meth:`callplane.coordination.base.LiveCalls.put_many`."""
        for call_sid, data in snapshots.items():
            await self.put(call_sid, data, ttl_s)

    async def get(self, call_sid: str) -> dict[str, Any] | None:
        """See :meth:`callplane.coordination.base.LiveCalls.get`."""
        return _load(self._calls.get(call_sid, self._clock()))

    async def delete(self, call_sid: str) -> None:
        """See :meth:`callplane.coordination.base.LiveCalls.delete`."""
        self._calls.pop(call_sid)


class MemoryOutboundState:
    """The outbound dialer's state: leases judged by the caller's ``now``, everything else
    expiring on ``clock``."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._slots: dict[str, float] = {}  # job_id -> lease expiry
        self._queue: dict[str, tuple[int, float]] = {}  # job_id -> (position, lease expiry)
        self._spend: Expiring[float] = Expiring()
        self._calls: Expiring[str] = Expiring()
        self._statuses: Expiring[list[str]] = Expiring()
        self._snapshots: Expiring[str] = Expiring()

    def _purge(self, now: float) -> None:
        for job_id in [j for j, expiry in self._slots.items() if expiry <= now]:
            del self._slots[job_id]
        for job_id in [j for j, (_, expiry) in self._queue.items() if expiry <= now]:
            del self._queue[job_id]

    async def admit(
        self, job_id: str, *, capacity: int, now: float, lease_s: float = QUEUE_LEASE_S
    ) -> tuple[bool, int, int]:
        """See :meth:`callplane.coordination.base.OutboundState.admit`."""
        lease_s = require_positive("lease_s", lease_s)
        self._purge(now)
        live, waiting = len(self._slots), len(self._queue)
        if job_id in self._queue:
            self._queue[job_id] = (self._queue[job_id][0], now + lease_s)
            return True, live, waiting
        if job_id in self._slots:
            return True, live, waiting
        if live + waiting >= capacity:
            return False, live, waiting
        # Positions continue after the last waiting job (and restart at 1 when nobody waits),
        # exactly as the Redis store numbers them.
        position = max((pos for pos, _ in self._queue.values()), default=0) + 1
        self._queue[job_id] = (position, now + lease_s)
        return True, live, waiting

    async def keep_waiting(self, job_id: str, *, lease_s: float, now: float) -> bool:
        """See :meth:`callplane.coordination.base.OutboundState.keep_waiting`."""
        lease_s = require_positive("lease_s", lease_s)
        entry = self._queue.get(job_id)
        if entry is None:
            return False
        if entry[1] <= now:
            del self._queue[job_id]
            return False
        self._queue[job_id] = (entry[0], now + lease_s)
        return True

    async def take_slot(
        self, job_id: str, *, max_concurrent: int, lease_s: float, now: float
    ) -> bool:
        """See :meth:`callplane.coordination.base.OutboundState.take_slot`."""
        lease_s = require_positive("lease_s", lease_s)
        self._purge(now)
        if job_id in self._slots:
            self._slots[job_id] = now + lease_s
            return True
        free = max_concurrent - len(self._slots)
        if free <= 0:
            return False
        entry = self._queue.get(job_id)
        if entry is not None:
            ahead = sum(1 for pos, _ in self._queue.values() if pos < entry[0])
            if ahead >= free:
                return False
            del self._queue[job_id]
        self._slots[job_id] = now + lease_s
        return True

    async def renew_slot(self, job_id: str, *, lease_s: float, now: float) -> None:
        """See :meth:`callplane.coordination.base.OutboundState.renew_slot`."""
        lease_s = require_positive("lease_s", lease_s)
        expiry = self._slots.get(job_id)
        if expiry is not None and expiry > now:
            self._slots[job_id] = now + lease_s

    async def release_slot(self, job_id: str) -> None:
        """See :meth:`callplane.coordination.base.OutboundState.release_slot`."""
        self._slots.pop(job_id, None)

    async def leave_queue(self, job_id: str) -> None:
        """See :meth:`callplane.coordination.base.OutboundState.leave_queue`."""
        self._queue.pop(job_id, None)

    async def counts(self, now: float) -> tuple[int, int]:
        """See :meth:`callplane.coordination.base.OutboundState.counts`."""
        live = sum(1 for expiry in self._slots.values() if expiry > now)
        waiting = sum(1 for _, expiry in self._queue.values() if expiry > now)
        return live, waiting

    async def add_spend(self, day: str, usd: float) -> float:
        """See :meth:`callplane.coordination.base.OutboundState.add_spend`."""
        now = self._clock()
        total = (self._spend.get(day, now) or 0.0) + float(usd)
        self._spend.put(day, total, now + SPEND_KEEP_S)
        return total

    async def spent(self, day: str) -> float:
        """See :meth:`callplane.coordination.base.OutboundState.spent`."""
        return self._spend.get(day, self._clock()) or 0.0

    async def map_call(self, call_sid: str, job_id: str, ttl_s: float) -> None:
        """See :meth:`callplane.coordination.base.OutboundState.map_call`."""
        ttl_s = require_positive("ttl_s", ttl_s)
        self._calls.put(call_sid, job_id, self._clock() + ttl_s)

    async def job_for_call(self, call_sid: str) -> str | None:
        """See :meth:`callplane.coordination.base.OutboundState.job_for_call`."""
        return self._calls.get(call_sid, self._clock())

    async def push_status(self, call_sid: str, fields: dict[str, str], ttl_s: float) -> None:
        """See :meth:`callplane.coordination.base.OutboundState.push_status`."""
        ttl_s = require_positive("ttl_s", ttl_s)
        now = self._clock()
        reports = [*(self._statuses.get(call_sid, now) or []), json.dumps(fields)]
        self._statuses.put(call_sid, reports[-MAX_STATUSES:], now + ttl_s)

    async def statuses(self, call_sid: str) -> list[dict[str, str]]:
        """See :meth:`callplane.coordination.base.OutboundState.statuses`."""
        reports = self._statuses.get(call_sid, self._clock()) or []
        return [json.loads(text) for text in reports]

    async def save_job(self, job_id: str, data: dict[str, Any], ttl_s: float) -> None:
        """See :meth:`callplane.coordination.base.OutboundState.save_job`."""
        ttl_s = require_positive("ttl_s", ttl_s)
        self._snapshots.put(job_id, _dump(data), self._clock() + ttl_s)

    async def load_job(self, job_id: str) -> dict[str, Any] | None:
        """See :meth:`callplane.coordination.base.OutboundState.load_job`."""
        return _load(self._snapshots.get(job_id, self._clock()))


class MemoryCoordination:
    """All coordination state in this process: :func:`callplane.coordination.connect` with no
    URL returns one."""

    def __init__(self, clock: Clock = time.monotonic, max_nonces: int = DEFAULT_MAX_NONCES) -> None:
        self.nonces = MemoryNonces(max_nonces)
        self.streams = MemoryCallStreams(clock)
        self.leases = MemoryRoomLeases(clock)
        self.live = MemoryLiveCalls(clock)
        self.outbound = MemoryOutboundState(clock)

    @property
    def shared(self) -> bool:
        """False: only this process sees the state."""
        return False

    def describe(self) -> str:
        """``in-process``."""
        return "in-process"

    async def ping(self) -> None:
        """Always answers: the state is in this process."""

    async def aclose(self) -> None:
        """Nothing to release."""
