"""The contract tests run every case against both stores: ``fleet`` is two "containers" that
share one coordination state: two connections to the same Redis under one prefix, or the
in-process store twice (a single process is its own fleet)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from callplane.coordination import Coordination, connect
from callplane_dev.redis_server import LocalRedis
from tests.support.redis import local_redis, redis_prefix

__all__ = ["Fleet", "fleet", "local_redis", "redis_prefix"]


@dataclass(frozen=True)
class Fleet:
    """Two handles on one shared state, and which store holds it."""

    backend: str
    first: Coordination
    second: Coordination


@pytest.fixture(params=["memory", "redis"])
async def fleet(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[Fleet]:
    if request.param == "memory":
        store = connect(None)
        yield Fleet("memory", store, store)
        await store.aclose()
        return
    server: LocalRedis = request.getfixturevalue("local_redis")  # started only when needed
    first = connect(server.url, prefix=redis_prefix)
    second = connect(server.url, prefix=redis_prefix)
    try:
        yield Fleet("redis", first, second)
    finally:
        await first.aclose()
        await second.aclose()
