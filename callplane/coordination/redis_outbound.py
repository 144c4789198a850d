"""The outbound dialer's shared state in Redis: slots, the wait queue, budget, callbacks.

Keys (``{P}`` is the prefix, ``callplane:`` by default):

============================  ======  =================================  =========================
key                           type    written by                         expiry
============================  ======  =================================  =========================
``{P}out:slots``              zset    ``take_slot``/``renew_slot``:      members: their lease
                                      member job id, score the slot      (caller's clock), purged
                                      lease's expiry                     by admit/take_slot; key:
                                                                         latest lease + 1 h
``{P}out:queue``              zset    ``admit``: member job id, score    members leave with their
                                      its FIFO position (1, 2, ...)      queue lease; key: as
                                                                         above
``{P}out:queue:lease``        zset    ``admit``/``keep_waiting``:        members: their lease
                                      member job id, score its queue     (caller's clock); key: as
                                      lease's expiry                     above
``{P}out:spend:<day>``        string  ``add_spend`` (INCRBYFLOAT)        3 days after the last add
``{P}out:call:<CallSid>``     string  ``map_call``: the job id           ``ttl_s``
``{P}out:status:<CallSid>``   list    ``push_status``: one JSON object   ``ttl_s`` after the last
                                      per report, the latest 100 kept    report
``{P}out:job:<job id>``       string  ``save_job``: JSON snapshot        ``ttl_s``
============================  ======  =================================  =========================

``out:queue`` and ``out:queue:lease`` always hold the same members: every script changes both.
Positions in the queue continue after the last waiting job and restart at 1 when the queue
empties, so they stay small integers (exact as scores) without a counter key.

Admission and slot-taking are Lua scripts, so two containers deciding at the same moment see
each other's effect: the live count never exceeds ``max_concurrent``. Lease expiries are
compared with the caller's ``now``; the containers' clocks only need to agree to well within a
lease.
"""

from __future__ import annotations

import json
from typing import Any

from callplane.coordination.base import (
    MAX_STATUSES,
    QUEUE_LEASE_S,
    SPEND_KEEP_S,
    require_positive,
)
from callplane.coordination.redis_link import KEY_GRACE_S, RedisLink, ms

__all__ = ["RedisOutboundState"]

# KEYS: 1 slots, 2 queue, 3 queue leases (every script gets all three).
_COMMON = """
local function purge(now)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  local lapsed = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
  for _, id in ipairs(lapsed) do
    redis.call('ZREM', KEYS[2], id)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
end
local function extend(key, ttl_ms)
  if redis.call('PTTL', key) < tonumber(ttl_ms) then
    redis.call('PEXPIRE', key, ttl_ms)
  end
end
"""

# ARGV: job id, capacity, now, queue lease expiry, key ttl (ms)
_ADMIT = (
    _COMMON
    + """
purge(ARGV[3])
local live = redis.call('ZCARD', KEYS[1])
local waiting = redis.call('ZCARD', KEYS[2])
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
  extend(KEYS[2], ARGV[5])
  extend(KEYS[3], ARGV[5])
  return {1, live, waiting}
end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return {1, live, waiting}
end
if live + waiting >= tonumber(ARGV[2]) then
  return {0, live, waiting}
end
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
local position = 1
if #last > 0 then
  position = tonumber(last[2]) + 1
end
redis.call('ZADD', KEYS[2], position, ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
extend(KEYS[2], ARGV[5])
extend(KEYS[3], ARGV[5])
return {1, live, waiting}
"""
)

# ARGV: job id, now, queue lease expiry, key ttl (ms)
_KEEP_WAITING = (
    _COMMON
    + """
local lease = redis.call('ZSCORE', KEYS[3], ARGV[1])
if not lease then
  return 0
end
if tonumber(lease) <= tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
extend(KEYS[2], ARGV[4])
extend(KEYS[3], ARGV[4])
return 1
"""
)

# ARGV: job id, max concurrent, now, slot lease expiry, key ttl (ms)
_TAKE_SLOT = (
    _COMMON
    + """
purge(ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
  extend(KEYS[1], ARGV[5])
  return 1
end
local free = tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1])
if free <= 0 then
  return 0
end
local rank = redis.call('ZRANK', KEYS[2], ARGV[1])
if rank then
  if rank >= free then
    return 0
  end
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
extend(KEYS[1], ARGV[5])
return 1
"""
)

# ARGV: job id, now, slot lease expiry, key ttl (ms)
_RENEW_SLOT = (
    _COMMON
    + """
local lease = redis.call('ZSCORE', KEYS[1], ARGV[1])
if lease and tonumber(lease) > tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
  extend(KEYS[1], ARGV[4])
end
return 0
"""
)


def _score(value: float) -> str:
    # repr() is the shortest text that reads back as the same double, in Lua and in Redis.
    return repr(float(value))


class RedisOutboundState:
    """:class:`~callplane.coordination.base.OutboundState` in Redis (keys in the module
    docstring)."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        client = link.client
        self._zsets = [
            link.key("out", "slots"),
            link.key("out", "queue"),
            link.key("out", "queue:lease"),
        ]
        self._admit = client.register_script(_ADMIT)
        self._keep_waiting = client.register_script(_KEEP_WAITING)
        self._take_slot = client.register_script(_TAKE_SLOT)
        self._renew_slot = client.register_script(_RENEW_SLOT)

    @staticmethod
    def _key_ttl_ms(lease_s: float) -> int:
        return ms(lease_s + KEY_GRACE_S)

    async def admit(
        self, job_id: str, *, capacity: int, now: float, lease_s: float = QUEUE_LEASE_S
    ) -> tuple[bool, int, int]:
        """See :meth:`callplane.coordination.base.OutboundState.admit`."""
        lease_s = require_positive("lease_s", lease_s)
        args: list[str | int] = [
            job_id,
            int(capacity),
            _score(now),
            _score(now + lease_s),
            self._key_ttl_ms(lease_s),
        ]
        with self._link.guard():
            admitted, live, waiting = await self._admit(keys=self._zsets, args=args)
        return bool(admitted), int(live), int(waiting)

    async def keep_waiting(self, job_id: str, *, lease_s: float, now: float) -> bool:
        """See :meth:`callplane.coordination.base.OutboundState.keep_waiting`."""
        lease_s = require_positive("lease_s", lease_s)
        args: list[str | int] = [
            job_id,
            _score(now),
            _score(now + lease_s),
            self._key_ttl_ms(lease_s),
        ]
        with self._link.guard():
            return bool(await self._keep_waiting(keys=self._zsets, args=args))

    async def take_slot(
        self, job_id: str, *, max_concurrent: int, lease_s: float, now: float
    ) -> bool:
        """See :meth:`callplane.coordination.base.OutboundState.take_slot`."""
        lease_s = require_positive("lease_s", lease_s)
        args: list[str | int] = [
            job_id,
            int(max_concurrent),
            _score(now),
            _score(now + lease_s),
            self._key_ttl_ms(lease_s),
        ]
        with self._link.guard():
            return bool(await self._take_slot(keys=self._zsets, args=args))

    async def renew_slot(self, job_id: str, *, lease_s: float, now: float) -> None:
        """See :meth:`callplane.coordination.base.OutboundState.renew_slot`."""
        lease_s = require_positive("lease_s", lease_s)
        args: list[str | int] = [
            job_id,
            _score(now),
            _score(now + lease_s),
            self._key_ttl_ms(lease_s),
        ]
        with self._link.guard():
            await self._renew_slot(keys=self._zsets, args=args)

    async def release_slot(self, job_id: str) -> None:
        """See :meth:`callplane.coordination.base.OutboundState.release_slot`."""
        with self._link.guard():
            await self._link.client.zrem(self._zsets[0], job_id)

    async def leave_queue(self, job_id: str) -> None:
        """See :meth:`callplane.coordination.base.OutboundState.leave_queue`."""
        with self._link.guard():
            async with self._link.client.pipeline(transaction=True) as pipe:
                pipe.zrem(self._zsets[1], job_id)
                pipe.zrem(self._zsets[2], job_id)
                await pipe.execute()

    async def counts(self, now: float) -> tuple[int, int]:
        """See :meth:`callplane.coordination.base.OutboundState.counts`."""
        after = "(" + _score(now)
        with self._link.guard():
            async with self._link.client.pipeline(transaction=True) as pipe:
                pipe.zcount(self._zsets[0], after, "+inf")
                pipe.zcount(self._zsets[2], after, "+inf")
                live, waiting = await pipe.execute()
        return int(live), int(waiting)

    async def add_spend(self, day: str, usd: float) -> float:
        """See :meth:`callplane.coordination.base.OutboundState.add_spend`."""
        key = self._link.key("out", "spend", day)
        with self._link.guard():
            async with self._link.client.pipeline(transaction=True) as pipe:
                pipe.incrbyfloat(key, float(usd))
                pipe.pexpire(key, ms(SPEND_KEEP_S))
                total, _ = await pipe.execute()
        return float(total)

    async def spent(self, day: str) -> float:
        """See :meth:`callplane.coordination.base.OutboundState.spent`."""
        with self._link.guard():
            total = await self._link.client.get(self._link.key("out", "spend", day))
        return float(total) if total is not None else 0.0

    async def map_call(self, call_sid: str, job_id: str, ttl_s: float) -> None:
        """See :meth:`callplane.coordination.base.OutboundState.map_call`."""
        ttl_s = require_positive("ttl_s", ttl_s)
        with self._link.guard():
            await self._link.client.set(
                self._link.key("out", "call", call_sid), job_id, px=ms(ttl_s)
            )

    async def job_for_call(self, call_sid: str) -> str | None:
        """See :meth:`callplane.coordination.base.OutboundState.job_for_call`."""
        with self._link.guard():
            job_id = await self._link.client.get(self._link.key("out", "call", call_sid))
        return None if job_id is None else str(job_id)

    async def push_status(self, call_sid: str, fields: dict[str, str], ttl_s: float) -> None:
        """See :meth:`callplane.coordination.base.OutboundState.push_status`."""
        ttl_s = require_positive("ttl_s", ttl_s)
        key = self._link.key("out", "status", call_sid)
        with self._link.guard():
            async with self._link.client.pipeline(transaction=True) as pipe:
                pipe.rpush(key, json.dumps(fields))
                pipe.ltrim(key, -MAX_STATUSES, -1)
                pipe.pexpire(key, ms(ttl_s))
                await pipe.execute()

    async def statuses(self, call_sid: str) -> list[dict[str, str]]:
        """See :meth:`callplane.coordination.base.OutboundState.statuses`."""
        with self._link.guard():
            reports = await self._link.client.lrange(
                self._link.key("out", "status", call_sid), 0, -1
            )
        return [json.loads(text) for text in reports]

    async def save_job(self, job_id: str, data: dict[str, Any], ttl_s: float) -> None:
        """See :meth:`callplane.coordination.base.OutboundState.save_job`."""
        ttl_s = require_positive("ttl_s", ttl_s)
        text = json.dumps(data, separators=(",", ":"))
        with self._link.guard():
            await self._link.client.set(self._link.key("out", "job", job_id), text, px=ms(ttl_s))

    async def load_job(self, job_id: str) -> dict[str, Any] | None:
        """See :meth:`callplane.coordination.base.OutboundState.load_job`."""
        with self._link.guard():
            text = await self._link.client.get(self._link.key("out", "job", job_id))
        if text is None:
            return None
        data: dict[str, Any] = json.loads(text)
        return data
