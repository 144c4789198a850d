"""When Redis goes away, every operation fails fast with CoordinationUnavailable naming the
(password-free) URL; when it comes back, the same objects work again.

These tests stop or pause a redis-server of their own, never the session's shared one.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from callplane.coordination import Coordination, CoordinationUnavailable, connect
from callplane_dev.redis_server import LocalRedis
from tests.support.ports import free_port

Operation = Callable[[], Awaitable[object]]


def every_operation(c: Coordination) -> dict[str, Operation]:
    """One call of each operation of each interface (and ping), by name."""
    now = time.time()
    out = c.outbound
    return {
        "ping": lambda: c.ping(),
        "nonces.claim": lambda: c.nonces.claim("n", now + 60, now),
        "streams.claim": lambda: c.streams.claim("CA1", "stream MZ1"),
        "streams.holder": lambda: c.streams.holder("CA1"),
        "leases.acquire": lambda: c.leases.acquire("room", "job", 30),
        "leases.renew": lambda: c.leases.renew("room", "job", 30),
        "leases.release": lambda: c.leases.release("room", "job"),
        "leases.holder": lambda: c.leases.holder("room"),
        "leases.put_job": lambda: c.leases.put_job(
            {"job_id": "job", "room": "room", "started_at": now}, 30
        ),
        "leases.jobs": lambda: c.leases.jobs(),
        "live.put": lambda: c.live.put("CA1", {"state": "in-progress"}, 30),
        "live.get": lambda: c.live.get("CA1"),
        "live.delete": lambda: c.live.delete("CA1"),
        "outbound.admit": lambda: out.admit("job", capacity=5, now=now),
        "outbound.keep_waiting": lambda: out.keep_waiting("job", lease_s=30, now=now),
        "outbound.take_slot": lambda: out.take_slot("job", max_concurrent=2, lease_s=30, now=now),
        "outbound.renew_slot": lambda: out.renew_slot("job", lease_s=30, now=now),
        "outbound.release_slot": lambda: out.release_slot("job"),
        "outbound.leave_queue": lambda: out.leave_queue("job"),
        "outbound.counts": lambda: out.counts(now),
        "outbound.add_spend": lambda: out.add_spend("2026-01-02", 0.5),
        "outbound.spent": lambda: out.spent("2026-01-02"),
        "outbound.map_call": lambda: out.map_call("CA1", "job", 30),
        "outbound.job_for_call": lambda: out.job_for_call("CA1"),
        "outbound.push_status": lambda: out.push_status("CA1", {"CallStatus": "ringing"}, 30),
        "outbound.statuses": lambda: out.statuses("CA1"),
        "outbound.save_job": lambda: out.save_job("job", {"state": "queued"}, 30),
        "outbound.load_job": lambda: out.load_job("job"),
    }


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[LocalRedis]:
    server = LocalRedis(tmp_path / "redis")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_every_operation_fails_fast_while_redis_is_down_and_works_again(
    own_redis: LocalRedis,
) -> None:
    coordination = connect(own_redis.url, prefix="outage:")
    try:
        for operation in every_operation(coordination).values():
            await operation()  # all work while Redis is up (and the pool holds connections)
        await own_redis.stop()
        for name, operation in every_operation(coordination).items():
            with pytest.raises(CoordinationUnavailable) as caught:
                await operation()
            message = str(caught.value)
            assert message.startswith(f"Redis at {own_redis.url} "), (name, message)
        # far more failures than the pool has connections: none of them is kept
        for _ in range(200):
            with pytest.raises(CoordinationUnavailable):
                await coordination.live.get("CA1")
        await own_redis.start()  # the same port: the same URL
        for operation in every_operation(coordination).values():
            await operation()
        assert await coordination.leases.holder("room") is None  # released above
        assert await coordination.outbound.spent("2026-01-02") == 0.5  # a fresh server
    finally:
        await coordination.aclose()


async def test_a_silent_redis_times_out_and_is_used_again_when_it_answers(
    own_redis: LocalRedis,
) -> None:
    coordination = connect(own_redis.url, prefix="silent:", timeout_s=0.3)
    pid = own_redis.pid
    assert pid is not None
    try:
        await coordination.live.put("CA1", {"state": "in-progress"}, 30)
        os.kill(pid, signal.SIGSTOP)
        try:
            for name in ("ping", "live.get", "outbound.take_slot", "outbound.add_spend"):
                with pytest.raises(CoordinationUnavailable, match=r"did not answer within 0\.3 s"):
                    await every_operation(coordination)[name]()
        finally:
            os.kill(pid, signal.SIGCONT)
        assert await coordination.live.get("CA1") == {"state": "in-progress"}
        await coordination.ping()
    finally:
        await coordination.aclose()


async def test_the_message_names_the_url_without_its_password() -> None:
    port = free_port()  # nothing listens there
    coordination = connect(f"redis://app:s3cret@127.0.0.1:{port}/2?password=s3cret", prefix="x:")
    try:
        assert coordination.describe() == f"redis://app@127.0.0.1:{port}/2"
        with pytest.raises(CoordinationUnavailable) as caught:
            await coordination.ping()
    finally:
        await coordination.aclose()
    message = str(caught.value)
    assert message == f"Redis at redis://app@127.0.0.1:{port}/2 is unreachable (Connection refused)"
    assert "s3cret" not in message
    assert "s3cret" not in repr(caught.value.__cause__)
