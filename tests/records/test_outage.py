"""The database goes away and comes back: calls keep writing, and nothing is lost.

Each test runs a PostgreSQL server of its own (not the session's), since it stops it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator
from unittest.mock import ANY

import pytest

from callplane.records import CallRecord, RecordStore
from callplane_dev.postgres import LocalPostgres
from tests.support.ports import free_port
from tests.support.postgres import postgres_dir
from tests.support.waiting import until

OUTAGE_S = 3.0


@pytest.fixture
async def server() -> AsyncIterator[LocalPostgres]:
    """A server of this test's own on a fixed free port, not started yet."""
    base = postgres_dir()
    server = LocalPostgres(base / "server", port=free_port())
    try:
        yield server
    finally:
        await server.stop()
        shutil.rmtree(base, ignore_errors=True)


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def test_writes_wait_through_an_outage_in_order_and_all_land(
    server: LocalPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "callplane.records")
    await server.start()
    # Shorter than the outage: the calls must not be taken for lost once it is over.
    lost_after_s = 2.0
    store, watcher = (
        RecordStore(
            server.url, owner=owner, heartbeat_s=0.2, lost_after_s=lost_after_s, retry_max_s=0.2
        )
        for owner in ("container-a", "container-b")
    )
    said: list[str] = []
    try:
        record = CallRecord(call_sid="CA1", from_="+15550001111")
        record.watch(store.call_progress)
        store.call_started(record)
        record.say("agent", "before")
        assert await store.flush()
        assert store.healthy

        await server.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + OUTAGE_S
        while loop.time() < deadline:
            said.append(f"line {len(said)}")
            record.say("caller", said[-1])  # never blocks, never raises
            await asyncio.sleep(0.05)
        other = CallRecord(call_sid="CA2")
        store.call_started(other)
        other.say("agent", "a whole call during the outage")
        store.call_progress(other)
        other.close("caller_hung_up")
        store.call_finished(other)
        await until(lambda: not store.healthy, 10, "the store to see the database fail")
        assert store.pending > 0

        await server.start()
        assert await store.flush(timeout_s=30)
        assert store.healthy
        assert store.dropped == 0
        stored = await store.get_async("CA1")
        assert stored is not None and stored["status"] == "live"
        assert [line["text"] for line in stored["transcript"]] == ["before", *said]
        assert await store.get_async("CA2") == {
            **other.to_json(),
            "status": "ended",
            "served_by": ANY,
        }
        # The watcher came back too, with every heartbeat older than lost_after_s; it waits
        # that long before reaping, and by then the live call's owner has refreshed it.
        await until(lambda: watcher.healthy, 10, "the watcher to reach the database again")
        await asyncio.sleep(2 * lost_after_s)
        assert store.get("CA1") is not None and store.get("CA1") == {
            **stored,
            "status": "live",
        }
    finally:
        store.close()
        watcher.close()
    failing = messages(caplog, "is failing")
    back = messages(caplog, "is back after")
    # Once each, per store (the writer and the watcher), naming the database.
    assert len(failing) == 2 and all(server.url.split("@")[1] in m for m in failing)
    replayed = f"replaying {len(said) + 3} queued writes"  # each line, and the other call's 3
    assert len(back) == 2 and any(replayed in m for m in back), back


async def test_a_full_buffer_drops_the_oldest_progress_first_never_a_start_or_end(
    server: LocalPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    """The database is down from the start (the store migrates once it answers), and the
    buffer holds five writes."""
    caplog.set_level(logging.WARNING, "callplane.records")
    url = server.url.replace("callplane@", "callplane:s3cret-pw@")  # trust auth ignores it
    store = RecordStore(url, max_pending=5, retry_max_s=0.2)
    try:
        record = CallRecord(call_sid="CA1")
        store.call_started(record)
        await until(lambda: not store.healthy, 10, "the store to see the database fail")
        for n in range(10):
            record.say("agent", f"line {n}")
            store.call_progress(record)
        record.close("agent_hung_up")
        store.call_finished(record)
        assert store.pending == 5
        assert store.dropped == 7  # 12 writes, room for 5; the start and the end kept

        await server.start()
        assert await store.flush(timeout_s=30)
        stored = store.get("CA1")
        assert stored is not None
        assert stored["status"] == "ended" and stored["end_reason"] == "agent_hung_up"
        assert [line["text"] for line in stored["transcript"]] == ["line 7", "line 8", "line 9"]
    finally:
        store.close()
    assert "s3cret-pw" not in caplog.text
    assert len(messages(caplog, "dropping the oldest progress writes")) == 1
    back = messages(caplog, "is back after")
    assert len(back) == 1 and "7 progress writes were dropped" in back[0]
