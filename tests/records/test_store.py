"""RecordStore against SQLite and a real PostgreSQL: calls written as they go, read by another
store (as another container would), listed, reaped when their container dies."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from unittest.mock import ANY

import pytest
import sqlalchemy as sa

from callplane.records import LOST_REASON, CallRecord, RecordStore
from callplane.records.schema import call_events
from tests.records.conftest import OpenStore
from tests.support.waiting import until


def a_call(sid: str = "CA1", **fields: Any) -> CallRecord:
    defaults: dict[str, Any] = {"from_": "+15550001111", "to": "+15550002222", "profile": "sales"}
    return CallRecord(call_sid=sid, **{**defaults, **fields})


@contextlib.contextmanager
def database(store: RecordStore) -> Iterator[sa.Connection]:
    """A connection of the test's own to the store's database (to look behind the API)."""
    engine = sa.create_engine(store.url)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def event_kinds(store: RecordStore, sid: str) -> list[str]:
    with database(store) as connection:
        return list(
            connection.execute(
                sa.select(call_events.c.kind)
                .where(call_events.c.call_sid == sid)
                .order_by(call_events.c.seq)
            ).scalars()
        )


async def test_a_call_is_readable_by_another_store_while_it_goes(open_store: OpenStore) -> None:
    owner = open_store(owner="container-a")
    record = a_call()
    owner.call_started(record)
    record.say("agent", "Hello, this is Sales.")
    record.say("caller", "Hi, I have a question.")
    owner.call_progress(record)
    assert await owner.flush()

    seen = open_store(owner="container-b").get(record.call_sid)
    assert seen is not None
    assert seen["status"] == "live"
    assert seen["ended_at"] is None and seen["end_reason"] == ""
    assert [line["text"] for line in seen["transcript"]] == [
        "Hello, this is Sales.",
        "Hi, I have a question.",
    ]


async def test_a_finished_record_reads_back_exactly_as_to_json(open_store: OpenStore) -> None:
    store = open_store()
    record = a_call(country="PK", direction="outbound", answered_by="human")
    record.watch(store.call_progress)
    store.call_started(record)
    record.say("agent", "Hello")
    record.tool_started("lookup", "call_1", '{"q": "order 7"}')
    record.tool_started("transfer_call", "call_2", "{}")
    record.tool_finished("call_2", '{"ok": true}')  # finishes before call_1
    record.interrupted("item_9", 1250)
    record.key_pressed("5")
    record.outage(record.started_at + 3.5, 20.25, 9, "recovered", "close code 1006")
    record.say("caller", "thanks")
    record.tool_finished("call_1", '{"status": "shipped"}')
    record.tool_started("slow", "call_3", "{}")  # never finishes: stored without output
    record.usage.add({"input_token_details": {"audio_tokens": 1000, "text_tokens": 20}})
    record.reconnects, record.renewals = 1, 2
    record.transferred_to = "+15550009999"
    record.context = {"order": 7, "tags": ["vip"]}
    record.close("transferred")
    store.call_finished(record)
    assert await store.flush()

    stored = open_store().get(record.call_sid)
    assert stored == {**record.to_json(), "status": "ended", "served_by": ANY}
    assert list(stored) == [*record.to_json(), "status", "served_by"]
    assert stored["served_by"] == store.owner
    assert [c["call_id"] for c in stored["tool_calls"]] == ["call_1", "call_2", "call_3"]
    assert stored["tool_calls"][2]["output"] is None
    assert stored["outages"] == [
        {
            "at": 3.5,
            "duration_s": 20.25,
            "attempts": 9,
            "outcome": "recovered",
            "cause": "close code 1006",
        }
    ]


async def test_save_writes_a_whole_record_and_a_second_save_adds_only_what_is_new(
    open_store: OpenStore,
) -> None:
    store = open_store()
    record = a_call()
    record.say("agent", "one")
    record.close("agent_hung_up")
    store.save(record)
    record.say("agent", "two")
    await store.save_async(record)
    assert store.get(record.call_sid) == {**record.to_json(), "status": "ended", "served_by": ANY}
    assert event_kinds(store, record.call_sid) == ["transcript", "transcript"]


async def test_a_tool_call_is_appended_once_with_its_output(open_store: OpenStore) -> None:
    store = open_store()
    record = a_call()
    record.watch(store.call_progress)
    store.call_started(record)
    record.tool_started("lookup", "call_1", "{}")
    assert await store.flush()
    live = store.get(record.call_sid)
    assert live is not None and live["tool_calls"] == []  # no output yet: not written

    record.tool_finished("call_1", "found")
    store.call_progress(record)
    store.call_progress(record)
    record.close("caller_hung_up")
    store.call_finished(record)
    assert await store.flush()
    stored = store.get(record.call_sid)
    assert stored is not None
    assert stored["tool_calls"] == [
        {"name": "lookup", "call_id": "call_1", "arguments": "{}", "output": "found"}
    ]
    assert event_kinds(store, record.call_sid) == ["tool_call"]


async def test_a_finished_record_is_never_replaced_by_a_second_stream_for_its_call(
    open_store: OpenStore, caplog: pytest.LogCaptureFixture
) -> None:
    first = open_store(owner="container-a")
    record = a_call(country="US")
    first.call_started(record)
    record.say("agent", "Hello, this is Support.")
    record.say("caller", "Thanks, bye.")
    record.close("caller_hung_up")
    first.call_finished(record)
    assert await first.flush()
    finished = first.get(record.call_sid)
    assert finished is not None and finished["status"] == "ended"

    # Another container writes a call with the same CallSid from start to end.
    second = open_store(owner="container-b")
    impostor = a_call(from_="+15559990000", country="PK", profile="sales")
    second.call_started(impostor)
    impostor.say("agent", "Hello, this is Sales.")
    impostor.say("caller", "one")
    impostor.say("caller", "two")
    second.call_progress(impostor)
    impostor.close("agent_hung_up")
    second.call_finished(impostor)
    assert await second.flush()
    assert second.get(record.call_sid) == finished
    assert event_kinds(second, record.call_sid) == ["transcript", "transcript"]
    refusals = [r for r in caplog.records if "first written by container-a" in r.getMessage()]
    assert len(refusals) == 1 and "container-b" in refusals[0].getMessage()

    # The call's own store, writing it again, cannot reopen it or change its end either.
    first.call_started(record)
    late = a_call(country="US")
    late.close("agent_hung_up")
    first.call_finished(late)
    assert await first.flush()
    assert first.get(record.call_sid) == finished


async def test_a_live_call_is_not_taken_over_by_another_store(open_store: OpenStore) -> None:
    owner = open_store(owner="container-a")
    record = a_call()
    owner.call_started(record)
    record.say("agent", "Hello")
    owner.call_progress(record)
    assert await owner.flush()

    other = open_store(owner="container-b")
    impostor = a_call(from_="+15559990000")
    other.call_started(impostor)
    impostor.say("caller", "not this call")
    impostor.close("caller_hung_up")
    other.call_finished(impostor)
    assert await other.flush()
    live = other.get(record.call_sid)
    assert live is not None
    assert (live["status"], live["served_by"], live["from"]) == (
        "live",
        "container-a",
        a_call().from_,
    )
    assert [line["text"] for line in live["transcript"]] == ["Hello"]

    # The owner goes on and closes its call as usual.
    record.say("caller", "bye")
    record.close("caller_hung_up")
    owner.call_finished(record)
    assert await owner.flush()
    assert owner.get(record.call_sid) == {
        **record.to_json(),
        "status": "ended",
        "served_by": "container-a",
    }


async def test_list_filters_newest_first_and_pages_with_a_cursor(open_store: OpenStore) -> None:
    store = open_store()
    base = 1_700_000_000.0
    specs: list[tuple[str, float, str, str, str, str | None]] = [
        # sid, started, from, to, profile, end reason (None: still live)
        ("CA1", base + 1, "+1555000001", "+1555999999", "sales", "caller_hung_up"),
        ("CA2", base + 2, "+1555999999", "+1555000002", "support", "agent_hung_up"),
        ("CA3", base + 3, "+1555000003", "+1555999999", "sales", "transferred"),
        ("CA4", base + 4, "+1555000004", "+1555000005", "sales", None),
        ("CA5", base + 5, "+1555000005", "+1555999999", "support", "caller_hung_up"),
        ("CA6", base + 5, "+1555000006", "+1555000007", "sales", "caller_hung_up"),  # same time
        ("CA7", base + 7, "+1555000008", "+1555000009", "support", "voicemail"),
    ]
    for sid, started, from_, to, profile, reason in specs:
        record = a_call(sid, from_=from_, to=to, profile=profile, started_at=started)
        store.call_started(record)
        if reason is not None:
            record.close(reason)
            store.call_finished(record)
    assert await store.flush()

    def sids(**query: Any) -> list[str]:
        calls, _ = store.list(**query)
        return [call["call_sid"] for call in calls]

    assert sids() == ["CA7", "CA6", "CA5", "CA4", "CA3", "CA2", "CA1"]
    assert sids(number="+1555999999") == ["CA5", "CA3", "CA2", "CA1"]  # from or to
    assert sids(number="+1555000005") == ["CA5", "CA4"]
    assert sids(profile="support") == ["CA7", "CA5", "CA2"]
    assert sids(outcome="caller_hung_up") == ["CA6", "CA5", "CA1"]
    assert sids(outcome="live") == ["CA4"]
    assert sids(outcome="lost") == []
    assert sids(since=base + 5) == ["CA7", "CA6", "CA5"]
    assert sids(profile="sales", outcome="caller_hung_up", since=base + 2) == ["CA6"]

    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        calls, cursor = await store.list_async(limit=2, before=cursor)
        pages.append([call["call_sid"] for call in calls])
        if cursor is None:
            break
    assert pages == [["CA7", "CA6"], ["CA5", "CA4"], ["CA3", "CA2"], ["CA1"]]
    calls, cursor = store.list(limit=3, profile="sales")
    assert [c["call_sid"] for c in calls] == ["CA6", "CA4", "CA3"] and cursor is not None
    calls, cursor = store.list(limit=3, profile="sales", before=cursor)
    assert [c["call_sid"] for c in calls] == ["CA1"] and cursor is None
    assert calls[0]["status"] == "ended" and calls[0]["end_reason"] == "caller_hung_up"


async def test_spent_since_adds_the_cost_of_one_direction(open_store: OpenStore) -> None:
    store = open_store()
    now = time.time()
    costs = [
        ("CA1", "outbound", now - 86_400, 5.0),  # yesterday: not counted
        ("CA2", "outbound", now - 60, 1.25),
        ("CA3", "outbound", now - 30, 0.5),
        ("CA4", "inbound", now - 30, 9.0),
    ]
    for sid, direction, started, total in costs:
        record = a_call(sid, direction=direction, started_at=started)
        record.close("caller_hung_up")
        record.cost_usd = {"telephony": 0.0, "model": total, "total": total}
        store.call_finished(record)
    store.call_started(a_call("CA5", direction="outbound", started_at=now - 10))  # live: 0
    assert await store.flush()
    assert store.spent_since(now - 3600) == 1.75
    assert await store.spent_since_async(now - 3600, "inbound") == 9.0
    assert store.spent_since(now - 2 * 86_400) == 6.75


def test_migrations_are_idempotent_and_safe_when_stores_start_together(
    open_store: OpenStore,
) -> None:
    start = threading.Barrier(3)

    def replica(n: int) -> RecordStore:
        start.wait()
        return open_store(owner=f"replica-{n}")

    with ThreadPoolExecutor(3) as pool:
        stores = list(pool.map(replica, range(3)))
    stores[0].save(a_call("CA1"))
    again = open_store()  # the schema is current: nothing to do
    assert again.get("CA1") is not None
    with database(again) as connection:
        versions = connection.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    assert [v for (v,) in versions] == ["0001"]


async def test_a_call_whose_container_stops_heart_beating_is_reaped_as_lost(
    open_store: OpenStore,
) -> None:
    timing = {"heartbeat_s": 0.2, "lost_after_s": 1.0}
    owner = open_store(owner="container-a", **timing)
    watcher = open_store(owner="container-b", **timing)
    record = a_call()
    owner.call_started(record)
    record.say("agent", "Hello")
    owner.call_progress(record)
    assert await owner.flush()
    # While its owner heart-beats, the call stays live however long it takes.
    await until(lambda: _heartbeat(watcher, record.call_sid) > record.started_at + 1.2, 10, "beats")
    assert watcher.reap_lost() == []
    assert _status(watcher, record.call_sid) == "live"

    owner.close()  # the container dies: no more heartbeats, the call never finishes
    await until(lambda: _status(watcher, record.call_sid) == "lost", 10, "the call reaped")
    lost = watcher.get(record.call_sid)
    assert lost is not None
    assert lost["end_reason"] == LOST_REASON
    assert lost["ended_at"] == _heartbeat(watcher, record.call_sid)
    assert lost["duration_s"] == round(lost["ended_at"] - lost["started_at"], 3)
    assert [line["text"] for line in lost["transcript"]] == ["Hello"]  # what it had written

    # A late progress write from the old owner does not reopen the call ...
    late = open_store(owner="container-a", **timing)
    record.say("caller", "are you there?")
    late.call_progress(record)
    assert await late.flush()
    assert _status(late, record.call_sid) == "lost"
    # ... but its real end, when it comes, is more accurate than the reaper's guess.
    record.close("caller_hung_up")
    late.call_finished(record)
    assert await late.flush()
    finished = late.get(record.call_sid)
    assert finished is not None
    assert finished["status"] == "ended" and finished["end_reason"] == "caller_hung_up"
    assert [line["text"] for line in finished["transcript"]] == ["Hello", "are you there?"]


def test_two_reapers_close_each_lost_call_exactly_once(open_store: OpenStore) -> None:
    quiet = {"heartbeat_s": 3600.0, "lost_after_s": 1.0}  # no automatic upkeep in this test
    dead = open_store(owner="dead", **quiet)
    sids = [f"CA{i:02d}" for i in range(40)]
    for sid in sids:
        dead.call_started(a_call(sid))
    assert dead.flush_sync()
    dead.close()
    reapers = [open_store(owner=f"reaper-{n}", **quiet) for n in range(2)]
    later = time.time() + 60  # as if a minute went by without a heartbeat
    start = threading.Barrier(2)

    def reap(store: RecordStore) -> list[str]:
        start.wait()
        return store.reap_lost(now=later)

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(reap, reapers)
    assert sorted(first + second) == sids
    assert not set(first) & set(second)
    assert reapers[0].reap_lost(now=later) == []
    calls, _ = reapers[0].list(limit=100, outcome="lost")
    assert len(calls) == len(sids)


def _status(store: RecordStore, sid: str) -> str | None:
    found = store.get(sid)
    return None if found is None else str(found["status"])


def _heartbeat(store: RecordStore, sid: str) -> float:
    with database(store) as connection:
        value = connection.execute(
            sa.text("SELECT heartbeat_at FROM calls WHERE call_sid = :sid"), {"sid": sid}
        ).scalar_one()
    return float(value)
