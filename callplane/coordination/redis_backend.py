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
``{P}room-caps:<room>``       string  ``acquire`` under caps: the cap    as its ``room:`` key
                                      groups, one per line
``{P}cap:<group>``            zset    ``acquire``/``renew``: member      the latest lease's
                                      room, score the lease's expiry     expiry; ``release``
                                      (ms, Redis's clock)                removes the room;
                                                                         members past their
                                                                         score are dropped
                                                                         before counting
``{P}restarts:<room>``        string  ``RoomLeases.note_restart``: the    ``window_s`` after the
                                      room's agent replacements          first one counted
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

Lease compare-and-set (renew and release only by the holder), counting and taking a place in the
cap groups, the call-stream claim and the jobs index are Lua scripts, so two containers never
interleave inside them: two dispatches racing for the last place under a cap on two containers
get it once. The scripts read Redis's own clock (``TIME``) for the cap groups' expiries, the
clock that expires the ``room:`` keys, so a lease counts in its groups exactly as long as it
lives.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from callplane.coordination.base import (
    CALL_STREAM_KEEP_S,
    MAX_JOBS,
    Caps,
    check_caps,
    job_identity,
    require_positive,
)
from callplane.coordination.errors import CapReached
from callplane.coordination.redis_link import DEFAULT_TIMEOUT_S, RedisLink, ms
from callplane.coordination.redis_outbound import RedisOutboundState

__all__ = [
    "RedisCallStreams",
    "RedisCoordination",
    "RedisLiveCalls",
    "RedisNonces",
    "RedisRoomLeases",
]

# Redis's clock in milliseconds, for the cap groups' scores.
_NOW_MS = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# KEYS: room key, room-caps key, then one cap zset per group.
# ARGV: job id, ttl (ms), room, groups (one per line), then one limit per group.
# Returns {holder}, or {'', index of the full group (0-based), leases held in it}.
_ACQUIRE = (
    """
local holder = redis.call('GET', KEYS[1])
if holder then
  return {holder}
end
"""
    + _NOW_MS
    + """
for i = 3, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  local held = redis.call('ZCARD', KEYS[i])
  if held >= tonumber(ARGV[i + 2]) then
    return {'', tostring(i - 3), tostring(held)}
  end
end
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
if #KEYS > 2 then
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ttl)
  for i = 3, #KEYS do
    redis.call('ZADD', KEYS[i], now + ttl, ARGV[3])
    if redis.call('PTTL', KEYS[i]) < ttl then
      redis.call('PEXPIRE', KEYS[i], ttl)
    end
  end
else
  redis.call('DEL', KEYS[2])
end
return {ARGV[1]}
"""
)

# KEYS: restarts key. ARGV: window (ms). The window starts with the first count.
_NOTE_RESTART = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return count
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

# KEYS: room key, room-caps key. ARGV: job id, ttl (ms), room, cap key prefix
_RENEW = (
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local ttl = tonumber(ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
local groups = redis.call('GET', KEYS[2])
if groups then
  redis.call('PEXPIRE', KEYS[2], ttl)
"""
    + _NOW_MS
    + """
  for group in string.gmatch(groups, '[^\\n]+') do
    local key = ARGV[4] .. group
    redis.call('ZADD', key, now + ttl, ARGV[3])
    if redis.call('PTTL', key) < ttl then
      redis.call('PEXPIRE', key, ttl)
    end
  end
end
return 1
"""
)

# KEYS: room key, room-caps key. ARGV: job id, room, cap key prefix
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
local groups = redis.call('GET', KEYS[2])
if groups then
  for group in string.gmatch(groups, '[^\\n]+') do
    redis.call('ZREM', ARGV[3] .. group, ARGV[2])
  end
  redis.call('DEL', KEYS[2])
end
return 1
"""

# KEYS: cap zset.
_HELD = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""
)

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
        self._held = client.register_script(_HELD)
        self._put_job = client.register_script(_PUT_JOB)
        self._note_restart = client.register_script(_NOTE_RESTART)
        self._jobs = client.register_script(_JOBS)

    def _room_keys(self, room: str) -> list[str]:
        return [self._link.key("room", room), self._link.key("room-caps", room)]

    async def acquire(self, room: str, job_id: str, ttl_s: float, caps: Caps = ()) -> str:
        """See :meth:`callplane.coordination.base.RoomLeases.acquire`."""
        ttl_s = require_positive("ttl_s", ttl_s)
        checked = check_caps(caps)
        keys = self._room_keys(room) + [self._link.key("cap", group) for group, _ in checked]
        groups = "\n".join(group for group, _ in checked)
        args: list[str | int] = [job_id, ms(ttl_s), room, groups]
        args += [limit for _, limit in checked]
        with self._link.guard():
            answer = await self._acquire(keys=keys, args=args)
        holder = str(answer[0])
        if holder:
            return holder
        group, limit = checked[int(answer[1])]
        raise CapReached(group, limit, int(answer[2]))

    async def renew(self, room: str, job_id: str, ttl_s: float) -> bool:
        """See :meth:`callplane.coordination.base.RoomLeases.renew`."""
        ttl_s = require_positive("ttl_s", ttl_s)
        args: list[str | int] = [job_id, ms(ttl_s), room, self._link.key("cap", "")]
        with self._link.guard():
            renewed = await self._renew(keys=self._room_keys(room), args=args)
        return bool(renewed)

    async def release(self, room: str, job_id: str) -> bool:
        """See :meth:`callplane.coordination.base.RoomLeases.release`."""
        args = [job_id, room, self._link.key("cap", "")]
        with self._link.guard():
            released = await self._release(keys=self._room_keys(room), args=args)
        return bool(released)

    async def held(self, group: str) -> int:
        """See :meth:`callplane.coordination.base.RoomLeases.held`."""
        with self._link.guard():
            count = await self._held(keys=[self._link.key("cap", group)])
        return int(count)

    async def holder(self, room: str) -> str | None:
        """See :meth:`callplane.coordination.base.RoomLeases.holder`."""
        with self._link.guard():
            holder = await self._link.client.get(self._link.key("room", room))
        return None if holder is None else str(holder)

    async def note_restart(self, room: str, window_s: float) -> int:
        """See :meth:`callplane.coordination.base.RoomLeases.note_restart`."""
        window_s = require_positive("window_s", window_s)
        with self._link.guard():
            count = await self._note_restart(
                keys=[self._link.key("restarts", room)], args=[ms(window_s)]
            )
        return int(count)

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
