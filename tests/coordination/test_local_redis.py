"""LocalRedis: a loopback redis-server that tests can stop and bring back on the same port."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio

from callplane_dev import redis_server
from callplane_dev.redis_server import LocalRedis, RedisNotInstalled


async def test_it_serves_on_loopback_without_persistence_and_restarts_on_its_port(
    tmp_path: Path,
) -> None:
    server = LocalRedis(tmp_path / "redis")
    with pytest.raises(RuntimeError, match="await start"):
        _ = server.url
    await server.start()
    try:
        url, pid = server.url, server.pid
        assert url.startswith("redis://127.0.0.1:") and url.endswith("/0")
        client = redis.asyncio.Redis.from_url(url, decode_responses=True)
        try:
            assert await client.config_get("bind") == {"bind": "127.0.0.1"}
            assert await client.config_get("save") == {"save": ""}
            assert await client.config_get("appendonly") == {"appendonly": "no"}
            await server.stop()
            assert server.pid is None and not server.running
            await server.stop()  # stopping twice is harmless
            await server.start()
            assert server.url == url and server.pid != pid
            assert await client.ping() is True  # the same client reconnects
        finally:
            await client.aclose()
        assert server.log_path.exists() and server.log_path.stat().st_size > 0
    finally:
        await server.stop()


async def test_a_taken_port_is_reported_with_the_log(tmp_path: Path) -> None:
    first = LocalRedis(tmp_path / "first")
    await first.start()
    try:
        second = LocalRedis(tmp_path / "second", port=first.port)
        with pytest.raises(RuntimeError, match=r"redis-server exited with code \d+ at start"):
            await second.start()
        assert not second.running
    finally:
        await first.stop()


async def test_a_missing_redis_server_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_server, "find_tool", lambda name: None)
    with pytest.raises(RedisNotInstalled, match=r"run scripts/tools/setup_tools\.sh redis"):
        await LocalRedis(tmp_path).start()
