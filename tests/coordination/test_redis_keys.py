"""What the Redis store leaves in Redis: exactly the documented keys, under the prefix, each
with an expiry (so nothing outlives its purpose if its owner dies)."""

from __future__ import annotations

import time
from pathlib import Path

import redis.asyncio

from callplane.coordination import connect
from callplane_dev.redis_server import LocalRedis

PREFIX = "keys-test:"


async def test_every_key_is_documented_prefixed_and_expires(tmp_path: Path) -> None:
    server = LocalRedis(tmp_path / "redis")  # its own server: no other test's keys
    await server.start()
    coordination = connect(server.url, prefix=PREFIX)
    client = redis.asyncio.Redis.from_url(server.url, decode_responses=True)
    try:
        now = time.time()
        await coordination.nonces.claim("n1", now + 60, now)
        await coordination.streams.claim("CA0", "stream MZ0 on host:1")
        await coordination.leases.acquire("room1", "job1", 60)
        await coordination.leases.acquire("room2", "job4", 60, caps=[("stack", 5), ("key:k1", 2)])
        await coordination.leases.renew("room2", "job4", 60)
        await coordination.leases.note_restart("room1", 60)
        await coordination.leases.put_job(
            {"job_id": "job1", "room": "room1", "started_at": now}, 60
        )
        await coordination.live.put("CA1", {"state": "in-progress"}, 60)
        out = coordination.outbound
        await out.admit("job2", capacity=5, now=now)
        await out.admit("job3", capacity=5, now=now)
        await out.take_slot("job2", max_concurrent=1, lease_s=60, now=now)
        await out.keep_waiting("job3", lease_s=60, now=now)
        await out.renew_slot("job2", lease_s=60, now=now)
        await out.add_spend("2026-01-02", 0.5)
        await out.map_call("CA2", "job2", 60)
        await out.push_status("CA2", {"CallStatus": "ringing"}, 60)
        await out.save_job("job2", {"state": "dialing"}, 60)

        keys = sorted(await client.keys("*"))
        assert keys == sorted(
            PREFIX + name
            for name in [
                "nonce:n1",
                "stream:CA0",
                "room:room1",
                "room:room2",
                "room-caps:room2",
                "cap:stack",
                "cap:key:k1",
                "restarts:room1",
                "job:job1",
                "jobs",
                "live:CA1",
                "out:slots",
                "out:queue",
                "out:queue:lease",
                "out:spend:2026-01-02",
                "out:call:CA2",
                "out:status:CA2",
                "out:job:job2",
            ]
        )
        ttls = {key: await client.pttl(key) for key in keys}
        assert all(ttl > 0 for ttl in ttls.values()), ttls

        # owners delete what they are done with; emptied sets disappear
        await coordination.leases.release("room1", "job1")
        await coordination.leases.release("room2", "job4")
        await coordination.live.delete("CA1")
        await out.release_slot("job2")
        await out.leave_queue("job3")
        gone = {"room:room1", "live:CA1", "out:slots", "out:queue", "out:queue:lease"}
        gone |= {"room:room2", "room-caps:room2", "cap:stack", "cap:key:k1"}
        assert not {PREFIX + name for name in gone} & set(await client.keys("*"))
    finally:
        await client.aclose()
        await coordination.aclose()
        await server.stop()
