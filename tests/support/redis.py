"""A real ``redis-server`` for tests, and a fresh key prefix per test so tests sharing the
server never see each other's keys.

Use both from a conftest or a test module by importing them (they are fixtures)::

    from tests.support.redis import local_redis, redis_prefix

    async def test_something(local_redis: LocalRedis, redis_prefix: str) -> None:
        coordination = connect(local_redis.url, prefix=redis_prefix)

The server is started once per session; a test that stops it (to play a Redis outage) should
start its own :class:`~callplane_dev.redis_server.LocalRedis` instead.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from callplane_dev.redis_server import LocalRedis

__all__ = ["local_redis", "redis_prefix"]


@pytest.fixture(scope="session")
def local_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    """One loopback redis-server for the session (missing binary: the error says how to
    install it)."""
    server = LocalRedis(tmp_path_factory.mktemp("redis"))
    _run_aside(server.start())
    try:
        yield server
    finally:
        _run_aside(server.stop())


def _run_aside(work: Coroutine[Any, Any, None]) -> None:
    # In a thread with an event loop of its own: this fixture may be set up from inside a
    # running test loop (an async fixture asking for it), and LocalRedis is not tied to the
    # loop that started it.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, work).result()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses."""
    return f"test-{secrets.token_hex(6)}:"
