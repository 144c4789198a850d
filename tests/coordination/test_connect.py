"""Choosing the store, and showing a Redis URL safely."""

from __future__ import annotations

import time

import pytest

from callplane.coordination import (
    MemoryCoordination,
    RedisCoordination,
    connect,
    redact_url,
)
from callplane.coordination.memory import MemoryNonces


async def test_no_url_means_in_process_state() -> None:
    coordination = connect(None)
    assert isinstance(coordination, MemoryCoordination)
    assert coordination.shared is False
    await coordination.ping()
    await coordination.aclose()


async def test_a_url_means_redis_and_nothing_is_sent_until_used() -> None:
    coordination = connect("redis://127.0.0.1:1/0", prefix="app:")
    assert isinstance(coordination, RedisCoordination)
    assert coordination.shared is True
    assert coordination.describe() == "redis://127.0.0.1:1/0"
    await coordination.aclose()


@pytest.mark.parametrize("url", ["", "  "])
def test_an_empty_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="Redis URL is empty"):
        connect(url)


@pytest.mark.parametrize("timeout_s", [0, -1.0, float("inf")])
def test_a_timeout_must_be_positive(timeout_s: float) -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        connect("redis://127.0.0.1:1/0", timeout_s=timeout_s)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6390/0", "redis://127.0.0.1:6390/0"),
        ("redis://:s3cret@cache.internal:6379/0", "redis://cache.internal:6379/0"),
        ("rediss://app:s3cret@cache.internal/1", "rediss://app@cache.internal/1"),
        ("redis://app@cache.internal/1", "redis://app@cache.internal/1"),
        ("redis://h/0?password=s3cret&db=2", "redis://h/0?db=2"),
        ("unix:///run/redis.sock?db=1&password=s3cret", "unix:///run/redis.sock?db=1"),
    ],
)
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


async def test_the_in_process_nonce_set_is_bounded_evicting_the_soonest_expiring() -> None:
    nonces = MemoryNonces(max_entries=3)
    now = time.time()
    for n, ttl in enumerate([30, 10, 20, 40]):
        assert await nonces.claim(f"n{n}", now + ttl, now) is True
    assert len(nonces) == 3
    # n1 expired soonest, so it made room for n3; the others are still replays
    assert await nonces.claim("n0", now + 30, now) is False
    assert await nonces.claim("n2", now + 20, now) is False
    assert await nonces.claim("n1", now + 10, now) is True
    with pytest.raises(ValueError, match="max_entries"):
        MemoryNonces(max_entries=0)
