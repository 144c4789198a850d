"""The coordination state in Redis, shared by every media container.

One Redis (a single primary; the Lua scripts name keys they compute, which Redis Cluster would
refuse) holds it all, under a key prefix ``{P}`` (``callplane:`` by default) so several
deployments can share a server. Every key expires or is deleted by its owner, and the sorted
sets are trimmed, so nothing grows with the service's age:

============================  ======  =================================  =========================
key                           type    written by                         expiry
============================  ======  =================================  =========================
``{P}nonce:<nonce>``          string  ``Nonces.claim`` (SET NX PXAT)     the token's expiry
``{P}stream:<CallSid>``       string  ``CallStreams.claim`` (set if      ``ttl_s``, two days by
                                      absent): the first stream          default; never deleted
``{P}room:<room>``            string  ``RoomLeases.acquire``/``renew``:  ``ttl_s`` after the last
                                      the holder's job id                renewal; ``release``
                                                                         deletes it
``{P}job:<job id>``           string  ``RoomLeases.put_job``: JSON       ``ttl_s``
``{P}jobs``                   zset    ``put_job``: member job id, score  the longest job TTL;
                                      ``started_at``                     trimmed to the newest
                                                                         500; ``jobs()`` drops
                                                                         members whose job key
                                                                         expired
``{P}live:<CallSid>``         string  ``LiveCalls.put``: JSON            ``ttl_s``; ``delete``
                                                                         deletes it
``{P}out:...``                ...     the outbound dialer                see
                                                                         :mod:`.redis_outbound`
============================  ======  =================================  =========================

Lease compare-and-set (renew and release only by the holder), the call-stream claim and the
jobs index are Lua scripts, so two containers never interleave inside them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from callplane.coordination.base import (
    CALL_STREAM_KEEP_S,
    MAX_JOBS,
    job_identity,
    require_positive,
)
from callplane.coordination.redis_link import DEFAULT_TIMEOUT_S, RedisLink, ms
from callplane.coordination.redis_outbound import RedisOutboundState

__all__ = [
    "RedisCallStreams",
    "RedisCoordination",
    "RedisLiveCalls",
    "RedisNonces",
    "RedisRoomLeases",
]

# KEYS: room key. ARGV: job id, ttl (ms)
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder then
  return holder
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""

# KEYS: call stream key. ARGV: stream description, ttl (ms). Nil when the claim is ours.
_CLAIM_CALL = """
local first = redis.call('GET', KEYS[1])
if first then
  return first
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

# KEYS: room key. ARGV: job id, ttl (ms)
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: room key. ARGV: job id
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

# KEYS: job key, index. ARGV: job id, JSON, started_at, ttl (ms), index size
_PUT_JOB = """
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[5]) + 1))
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[4]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return 0
"""

# KEYS: index. ARGV: limit, job key prefix
_JOBS = """
local limit = tonumber(ARGV[1])
local found = {}
for _, id in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, -1)) do
  if #found >= limit then
    break
  end
  local text = redis.call('GET', ARGV[2] .. id)
  if text then
    table.insert(found, text)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return found
"""


class RedisNonces:
    """:class:`~callplane.coordination.base.Nonces` in Redis."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link

    async def claim(self, nonce: str, expires_at: float, now: float) -> bool:
        """See :meth:`callplane.coordination.base.Nonces.claim`."""
        if now >= expires_at:
            return False
        key = self._link.key("nonce", nonce)
        with self._link.guard():
            created = await self._link.client.set(key, 1, nx=True, pxat=ms(expires_at))
        return bool(created)


class RedisCallStreams:
    """:class:`~callplane.coordination.base.CallStreams` in Redis."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._claim = link.client.register_script(_CLAIM_CALL)

    async def claim(
        self, call_sid: str, stream: str, ttl_s: float = CALL_STREAM_KEEP_S
    ) -> str | None:
        """See :meth:`callplane.coordination.base.CallStreams.claim`."""
        ttl_s = require_positive("ttl_s", ttl_s)
        with self._link.guard():
            first = await self._claim(
                keys=[self._link.key("stream", call_sid)], args=[stream, ms(ttl_s)]
            )
        return None if first is None else str(first)

    async def holder(self, call_sid: str) -> str | None:
        """See :meth:`callplane.coordination.base.CallStreams.holder`."""
        with self._link.guard():
            first = await self._link.client.get(self._link.key("stream", call_sid))
        return None if first is None else str(first)


class RedisRoomLeases:
    """:class:`~callplane.coordination.base.RoomLeases` in Redis."""

    def __init__(self, link: RedisLink, max_jobs: int = MAX_JOBS) -> None:
        self._link = link
        self._max_jobs = max_jobs
        self._index = link.key("jobs")
        client = link.client
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._put_job = client.register_script(_PUT_JOB)
        self._jobs = client.register_script(_JOBS)

    async def acquire(self, room: str, job_id: str, ttl_s: float) -> str:
        """See :meth:`callplane.coordination.base.RoomLeases.acquire`."""
        ttl_s = require_positive("ttl_s", ttl_s)
        with self._link.guard():
            holder = await self._acquire(
                keys=[self._link.key("room", room)], args=[job_id, ms(ttl_s)]
            )
        return str(holder)

    async def renew(self, room: str, job_id: str, ttl_s: float) -> bool:
        """See :meth:`callplane.coordination.base.RoomLeases.renew`."""
        ttl_s = require_positive("ttl_s", ttl_s)
        with self._link.guard():
            renewed = await self._renew(
                keys=[self._link.key("room", room)], args=[job_id, ms(ttl_s)]
            )
        return bool(renewed)

    async def release(self, room: str, job_id: str) -> bool:
        """See :meth:`callplane.coordination.base.RoomLeases.release`."""
        with self._link.guard():
            released = await self._release(keys=[self._link.key("room", room)], args=[job_id])
        return bool(released)

    async def holder(self, room: str) -> str | None:
        """See :meth:`callplane.coordination.base.RoomLeases.holder`."""
        with self._link.guard():
            holder = await self._link.client.get(self._link.key("room", room))
        return None if holder is None else str(holder)

    async def put_job(self, job: dict[str, Any], ttl_s: float) -> None:
        """See :meth:`callplane.coordination.base.RoomLeases.put_job`."""
        job_id, started_at = job_identity(job)
        ttl_s = require_positive("ttl_s", ttl_s)
        text = json.dumps(job, separators=(",", ":"))
        keys = [self._link.key("job", job_id), self._index]
        args: list[str | int] = [job_id, text, repr(started_at), ms(ttl_s), self._max_jobs]
        with self._link.guard():
            await self._put_job(keys=keys, args=args)

    async def jobs(self, limit: int = MAX_JOBS) -> list[dict[str, Any]]:
        """See :meth:`callplane.coordination.base.RoomLeases.jobs`."""
        if limit < 1:
            return []
        with self._link.guard():
            texts = await self._jobs(keys=[self._index], args=[limit, self._link.key("job", "")])
        return [json.loads(text) for text in texts]


class RedisLiveCalls:
    """:class:`~callplane.coordination.base.LiveCalls` in Redis."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link

    async def put(self, call_sid: str, data: dict[str, Any], ttl_s: float) -> None:
        """See :meth:`callplane.coordination.base.LiveCalls.put`."""
        ttl_s = require_positive("ttl_s", ttl_s)
        text = json.dumps(data, separators=(",", ":"))
        with self._link.guard():
            await self._link.client.set(self._link.key("live", call_sid), text, px=ms(ttl_s))

    async def put_many(self, snapshots: Mapping[str, dict[str, Any]], ttl_s: float) -> None:
        """See :meth:`callplane.coordination.base.LiveCalls.put_many`: one pipeline."""
        ttl_s = require_positive("ttl_s", ttl_s)
        if not snapshots:
            return
        with self._link.guard():
            pipe = self._link.client.pipeline(transaction=False)
            for call_sid, data in snapshots.items():
                text = json.dumps(data, separators=(",", ":"))
                pipe.set(self._link.key("live", call_sid), text, px=ms(ttl_s))
            await pipe.execute()

    async def get(self, call_sid: str) -> dict[str, Any] | None:
        """See :meth:`callplane.coordination.base.LiveCalls.get`."""
        with self._link.guard():
            text = await self._link.client.get(self._link.key("live", call_sid))
        if text is None:
            return None
        data: dict[str, Any] = json.loads(text)
        return data

    async def delete(self, call_sid: str) -> None:
        """See :meth:`callplane.coordination.base.LiveCalls.delete`."""
        with self._link.guard():
            await self._link.client.delete(self._link.key("live", call_sid))


class RedisCoordination:
    """All coordination state in the Redis at ``url``: what
    :func:`callplane.coordination.connect` returns for a URL. Nothing is sent until the first
    operation; call :meth:`ping` at startup to find a wrong URL before the first call does."""

    def __init__(
        self, url: str, *, prefix: str = "callplane:", timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self._link = RedisLink(url, prefix=prefix, timeout_s=timeout_s)
        self.nonces = RedisNonces(self._link)
        self.streams = RedisCallStreams(self._link)
        self.leases = RedisRoomLeases(self._link)
        self.live = RedisLiveCalls(self._link)
        self.outbound = RedisOutboundState(self._link)

    @property
    def shared(self) -> bool:
        """True: every container connected to this Redis sees the same state."""
        return True

    def describe(self) -> str:
        """The Redis URL without its password."""
        return self._link.url

    async def ping(self) -> None:
        """Raise :class:`~callplane.coordination.errors.CoordinationUnavailable` unless Redis
        answers."""
        with self._link.guard():
            await self._link.client.ping()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._link.client.aclose()
