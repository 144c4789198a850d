"""State that must hold across media containers: one media stream per CallSid, stream-token
nonces, room leases, live-call snapshots and the outbound dialer's slots, queue and budget.

``connect(url)`` picks the store: Redis when a URL is configured (every container sees the same
state), the in-process store when it is None (a single process: the local stack, tests). Code
is written once against the interfaces in :mod:`callplane.coordination.base`::

    coordination = connect(settings.redis_url)
    await coordination.ping()  # fails fast, naming the URL, if Redis is unreachable
    first = await coordination.streams.claim(call_sid, "MZ… on host:pid")
    if first is not None:
        ...  # the call already had its media stream: refuse this one
"""

from __future__ import annotations

from callplane.coordination.base import (
    CALL_STREAM_KEEP_S,
    MAX_CAP_GROUP_CHARS,
    MAX_JOBS,
    MAX_STATUSES,
    QUEUE_LEASE_S,
    SPEND_KEEP_S,
    CallStreams,
    Caps,
    Coordination,
    LiveCalls,
    Nonces,
    OutboundState,
    RoomLeases,
)
from callplane.coordination.errors import CapReached, CoordinationUnavailable, redact_url
from callplane.coordination.memory import MemoryCoordination
from callplane.coordination.redis_backend import RedisCoordination
from callplane.coordination.redis_link import DEFAULT_TIMEOUT_S

__all__ = [
    "CALL_STREAM_KEEP_S",
    "DEFAULT_TIMEOUT_S",
    "MAX_CAP_GROUP_CHARS",
    "MAX_JOBS",
    "MAX_STATUSES",
    "QUEUE_LEASE_S",
    "SPEND_KEEP_S",
    "CallStreams",
    "CapReached",
    "Caps",
    "Coordination",
    "CoordinationUnavailable",
    "LiveCalls",
    "MemoryCoordination",
    "Nonces",
    "OutboundState",
    "RedisCoordination",
    "RoomLeases",
    "connect",
    "redact_url",
]


def connect(
    url: str | None, *, prefix: str = "callplane:", timeout_s: float = DEFAULT_TIMEOUT_S
) -> Coordination:
    """The coordination store for ``url``: Redis (``redis://``, ``rediss://`` or ``unix://``)
    or, when ``url`` is None, this process's memory.

    ``prefix`` starts every Redis key, so deployments can share a server. ``timeout_s`` bounds
    connecting and each reply: when Redis is down, operations raise
    :class:`CoordinationUnavailable` within about that time rather than hang a call. Nothing
    is sent until the first operation (``await ping()`` to check at startup).
    """
    if url is None:
        return MemoryCoordination()
    if not url.strip():
        raise ValueError("the Redis URL is empty: give a redis:// URL, or None for in-process")
    return RedisCoordination(url, prefix=prefix, timeout_s=timeout_s)
