"""The interfaces of the state that must hold across media containers.

Several containers serve calls at once, and Modal may route the next request of a call, or a
replayed stream token, to any of them. What must be true across all of them lives behind these
interfaces: the in-process implementation (:mod:`callplane.coordination.memory`) for a single
process, the Redis one (:mod:`callplane.coordination.redis_backend`) for a fleet. Both pass the
same contract tests, so code written against these names behaves the same on either.

Times are unix seconds as floats. Methods that take ``now`` judge expiry by the caller's clock
(so containers agree as long as their clocks do, and tests can be deterministic); methods that
take only ``ttl_s`` let the store expire the entry on its own clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

__all__ = [
    "CALL_STREAM_KEEP_S",
    "MAX_CAP_GROUP_CHARS",
    "MAX_JOBS",
    "MAX_STATUSES",
    "QUEUE_LEASE_S",
    "SPEND_KEEP_S",
    "CallStreams",
    "Coordination",
    "LiveCalls",
    "Nonces",
    "OutboundState",
    "RoomLeases",
    "job_identity",
    "require_positive",
]

QUEUE_LEASE_S = 30.0
"""How long an outbound job keeps its place in the wait queue without calling
:meth:`OutboundState.keep_waiting`. A waiter whose container died stops refreshing, and its
entry lapses instead of blocking the jobs behind it forever."""


MAX_JOBS = 500
"""How many agent jobs the jobs index keeps (the newest by ``started_at``); older ones drop
out as new ones are stored, so the index never grows with the service's age."""

MAX_STATUSES = 100
"""How many status callbacks are kept per CallSid (the latest); a call has a handful, and the
cap keeps a misbehaving sender from growing the list without bound."""

SPEND_KEEP_S = 3 * 86_400.0
"""How long a day's spend total is kept: long enough to read yesterday's in any time zone."""

CALL_STREAM_KEEP_S = 2 * 86_400.0
"""How long the shared state remembers that a CallSid had its media stream: two days, longer
than a call and its stream token can last together (Twilio ends every call at its time limit,
24 hours at most, and a stream token lives an hour at most), with a margin for clocks. While
anything could still present a token for the call, its claim is there to refuse a second
stream; after that, no stream can start without Twilio's signature over a new token's URL."""


MAX_CAP_GROUP_CHARS = 64
"""The longest name of a cap group (:meth:`RoomLeases.acquire`)."""

Caps = Sequence[tuple[str, int]]
"""``(group, limit)`` pairs: at most ``limit`` live room leases taken in ``group``."""


def check_caps(caps: Caps) -> list[tuple[str, int]]:
    """``caps`` as a list, or a ValueError naming a bad group or limit: both stores refuse a
    group name with whitespace (they store names one per line) or a limit below 1 alike."""
    checked: list[tuple[str, int]] = []
    for group, limit in caps:
        if (
            not isinstance(group, str)
            or not group
            or len(group) > MAX_CAP_GROUP_CHARS
            or any(c.isspace() for c in group)
        ):
            raise ValueError(
                f"cap group {group!r} is invalid: use 1-{MAX_CAP_GROUP_CHARS} characters "
                "without whitespace"
            )
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"the cap of group {group!r} is {limit!r}: use a whole number >= 1")
        checked.append((group, limit))
    return checked


def require_positive(name: str, value: float) -> float:
    """``value`` if it is a finite number above zero, else a ValueError naming ``name``: a
    zero or negative lease or TTL is always a bug, and both stores refuse it the same way."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ValueError(f"{name}={value!r} is invalid: use a positive number of seconds")
    return float(value)


def job_identity(job: dict[str, Any]) -> tuple[str, float]:
    """``(job_id, started_at)`` of a job description, or a ValueError saying what is missing:
    both stores index jobs by these, so a malformed job is refused before it is stored."""
    job_id, room, started_at = job.get("job_id"), job.get("room"), job.get("started_at")
    if not isinstance(job_id, str) or not job_id:
        raise ValueError(f"a job needs a non-empty string job_id, got {job_id!r}")
    if not isinstance(room, str) or not room:
        raise ValueError(f"job {job_id!r} needs a non-empty string room, got {room!r}")
    if (
        isinstance(started_at, bool)
        or not isinstance(started_at, int | float)
        or not math.isfinite(started_at)
    ):
        raise ValueError(f"job {job_id!r} needs a finite numeric started_at, got {started_at!r}")
    return job_id, float(started_at)


class Nonces(Protocol):
    """Single-use stream-token nonces: a captured token must not open a second stream, on
    whichever container the replay lands."""

    async def claim(self, nonce: str, expires_at: float, now: float) -> bool:
        """True the first time ``nonce`` is seen (it is remembered until ``expires_at``); False
        if it was already claimed (a replay), or if ``expires_at`` is not after ``now`` (an
        expired token must not start a stream either, and there is nothing to remember)."""
        ...


class CallStreams(Protocol):
    """One media stream per CallSid, ever: a repeated stream, a replayed stream token or the
    stream of a replayed voice webhook for a call that already had its stream is refused, on
    whichever container it lands, while the call is live and after it ended.

    The claim is taken once, before any Realtime session opens, and never renewed or released:
    a stream that ends does not give its call back. It lapses after ``ttl_s``
    (:data:`CALL_STREAM_KEEP_S` by default), when no token for the call can be valid any more.
    """

    async def claim(
        self, call_sid: str, stream: str, ttl_s: float = CALL_STREAM_KEEP_S
    ) -> str | None:
        """Take ``call_sid`` for ``stream`` (a description of the stream, kept for logs and
        :meth:`holder`) if no stream took it before: None when the call is now this stream's,
        else the description the first stream left. Atomic across containers: of streams
        claiming one call at once, exactly one gets None."""
        ...

    async def holder(self, call_sid: str) -> str | None:
        """The description left by the stream that took ``call_sid``, or None if none did (or
        its claim lapsed)."""
        ...


class RoomLeases(Protocol):
    """One agent job per LiveKit room, caps on how many run at once, and the public list of
    jobs.

    A lease is held by a job id for ``ttl_s`` seconds and renewed by its holder while the job
    runs; if the holder's container dies, the lease lapses and another job may take the room.
    A lease may be taken under caps (``(group, limit)`` pairs, e.g. the whole stack and one web
    key): it counts in each of its groups for exactly as long as it lives, so a job that is
    renewed keeps its place, one that ends frees it, and one whose container died frees it when
    its lease lapses.
    """

    async def acquire(self, room: str, job_id: str, ttl_s: float, caps: Caps = ()) -> str:
        """Take ``room`` for ``job_id`` if nobody holds it; return the holder's job id, which is
        ``job_id`` when the lease is ours (also when we already held it: it is not renewed).

        With ``caps``, a room nobody holds is taken only if every group has fewer live leases
        than its limit, atomically across containers; otherwise
        :class:`~callplane.coordination.errors.CapReached` names the first full group and
        nothing is taken. A room already held is returned as before, whatever the caps."""
        ...

    async def renew(self, room: str, job_id: str, ttl_s: float) -> bool:
        """Extend the lease (and its place in its cap groups) to ``ttl_s`` from now, only if
        ``job_id`` still holds it; False means the lease lapsed (and perhaps another job took
        the room): stop the job."""
        ...

    async def release(self, room: str, job_id: str) -> bool:
        """Give the room (and its place in its cap groups) up, only if ``job_id`` holds it (a
        late release never frees a room another job has since taken); True if it was
        released."""
        ...

    async def held(self, group: str) -> int:
        """How many live leases count in cap group ``group`` now."""
        ...

    async def holder(self, room: str) -> str | None:
        """The job id holding ``room``, or None."""
        ...

    async def note_restart(self, room: str, window_s: float) -> int:
        """Count one more replacement of ``room``'s crashed agent; return how many there have
        been in the current window. The window starts with the first replacement counted
        and ends ``window_s`` later, when the count starts again from zero. Shared by every
        container, so a room that keeps crashing its agents is given up on once, stack-wide."""
        ...

    async def put_job(self, job: dict[str, Any], ttl_s: float) -> None:
        """Store a job's public description (a JSON object with at least ``job_id`` and
        ``room`` strings and a numeric ``started_at``) for ``ttl_s`` seconds, replacing an
        earlier one with the same ``job_id``."""
        ...

    async def jobs(self, limit: int = 500) -> list[dict[str, Any]]:
        """Stored jobs, newest ``started_at`` first (ties: greater ``job_id`` first), at most
        ``limit``. Only the newest few hundred are indexed at all (the oldest drop out as new
        ones arrive), so this list stays cheap however long the service runs."""
        ...


class LiveCalls(Protocol):
    """Snapshots of calls in progress, readable from any container (a status page, a transfer
    request landing on another replica)."""

    async def put(self, call_sid: str, data: dict[str, Any], ttl_s: float) -> None:
        """Store ``data`` (a JSON object) for ``ttl_s`` seconds, replacing the previous one.
        Refresh it while the call runs, so a container that dies leaves nothing behind."""
        ...

    async def put_many(self, snapshots: Mapping[str, dict[str, Any]], ttl_s: float) -> None:
        """:meth:`put` for every CallSid in ``snapshots`` at once (one round trip): how a
        container refreshes all its live calls each heartbeat."""
        ...

    async def get(self, call_sid: str) -> dict[str, Any] | None:
        """The latest snapshot of ``call_sid``, or None if there is none (or it expired)."""
        ...

    async def delete(self, call_sid: str) -> None:
        """Forget ``call_sid`` (the call ended)."""
        ...


class OutboundState(Protocol):
    """The outbound dialer's shared state: concurrency slots, a FIFO wait queue, the daily
    budget, the CallSid -> job map, status callbacks and job snapshots.

    A job is admitted into the wait queue (:meth:`admit`), keeps its place there with
    :meth:`keep_waiting`, and polls :meth:`take_slot` until it gets a slot; it then renews the
    slot's lease while its call runs and releases it at the end. Slot and queue leases are
    judged by the caller's ``now``; an entry whose lease lapsed (its container died) is purged
    by the next :meth:`admit` or :meth:`take_slot` and never counted.
    """

    async def admit(
        self, job_id: str, *, capacity: int, now: float, lease_s: float = QUEUE_LEASE_S
    ) -> tuple[bool, int, int]:
        """Atomically: if live slots + waiting jobs < ``capacity``, append ``job_id`` to the
        wait queue with a queue lease of ``lease_s``. Returns ``(admitted, live, waiting)``
        counted before adding. A job already queued or holding a slot is admitted again
        without moving (its queue lease is refreshed), so a retried request is harmless."""
        ...

    async def keep_waiting(self, job_id: str, *, lease_s: float, now: float) -> bool:
        """Refresh ``job_id``'s queue lease to ``now + lease_s``. False if it is no longer
        waiting (it took a slot, left, or its lease lapsed: admit it again to rejoin, at the
        back)."""
        ...

    async def take_slot(
        self, job_id: str, *, max_concurrent: int, lease_s: float, now: float
    ) -> bool:
        """Atomically: drop lapsed slot and queue leases; then, if fewer than
        ``max_concurrent`` slots are live and ``job_id`` is among the first
        ``max_concurrent - live`` waiting jobs (FIFO across containers), move it from the queue
        to a slot leased until ``now + lease_s`` and return True.

        A job that is not queued (a retry attempt of a job that already went through the
        queue) takes a free slot if there is one. A job that already holds a live slot keeps
        it (the lease is renewed) and gets True.
        """
        ...

    async def renew_slot(self, job_id: str, *, lease_s: float, now: float) -> None:
        """Extend ``job_id``'s slot lease to ``now + lease_s`` while its call runs. A lease that
        already lapsed is not revived: the slot may be someone else's by now."""
        ...

    async def release_slot(self, job_id: str) -> None:
        """Free ``job_id``'s slot (the call ended)."""
        ...

    async def leave_queue(self, job_id: str) -> None:
        """Drop ``job_id`` from the wait queue (cancelled while waiting)."""
        ...

    async def counts(self, now: float) -> tuple[int, int]:
        """``(live, waiting)``: slots and queue entries whose leases have not lapsed."""
        ...

    async def add_spend(self, day: str, usd: float) -> float:
        """Add ``usd`` to ``day``'s spend (atomic across containers) and return the new total.
        A day's total is kept for three days."""
        ...

    async def spent(self, day: str) -> float:
        """``day``'s spend so far (0.0 if nothing was spent)."""
        ...

    async def map_call(self, call_sid: str, job_id: str, ttl_s: float) -> None:
        """Remember which job placed ``call_sid``, for ``ttl_s`` seconds, so a status callback
        landing on any container finds its job."""
        ...

    async def job_for_call(self, call_sid: str) -> str | None:
        """The job that placed ``call_sid``, or None."""
        ...

    async def push_status(self, call_sid: str, fields: dict[str, str], ttl_s: float) -> None:
        """Append one status callback's fields to ``call_sid``'s reports, and keep them for
        ``ttl_s`` seconds from now. Only the latest :data:`MAX_STATUSES` reports are kept."""
        ...

    async def statuses(self, call_sid: str) -> list[dict[str, str]]:
        """``call_sid``'s reports so far, in arrival order."""
        ...

    async def save_job(self, job_id: str, data: dict[str, Any], ttl_s: float) -> None:
        """Store a job's snapshot (a JSON object) for ``ttl_s`` seconds, replacing the last."""
        ...

    async def load_job(self, job_id: str) -> dict[str, Any] | None:
        """The job's latest snapshot, or None."""
        ...


class Coordination(Protocol):
    """Everything shared across containers, from one store: ``connect(url)`` picks it."""

    @property
    def nonces(self) -> Nonces: ...

    @property
    def streams(self) -> CallStreams: ...

    @property
    def leases(self) -> RoomLeases: ...

    @property
    def live(self) -> LiveCalls: ...

    @property
    def outbound(self) -> OutboundState: ...

    @property
    def shared(self) -> bool:
        """True if other processes see this state (Redis); False for in-process state, which
        is only correct when a single process serves every call."""
        ...

    def describe(self) -> str:
        """Where the state lives, safe to log: the Redis URL without password, or
        ``in-process``."""
        ...

    async def ping(self) -> None:
        """Return if the store answers; raise
        :class:`~callplane.coordination.errors.CoordinationUnavailable` if not. Use it at
        startup and in health checks."""
        ...

    async def aclose(self) -> None:
        """Release connections. The object is not used afterwards."""
        ...
