from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from callplane.pricing import PriceTable
from callplane.records import CallRecord, RecordStore


def test_cost_uses_the_country_rate_per_started_minute_and_token_prices(tmp_path: Path) -> None:
    prices = PriceTable(
        twilio_inbound_per_min={"PK": 0.02},
        audio_input_per_m=10,
        audio_output_per_m=20,
        text_input_per_m=1,
        text_output_per_m=2,
    )
    record = CallRecord(call_sid="CA1", country="PK", started_at=0.0)
    record.usage.add(
        {
            "input_token_details": {"audio_tokens": 1000, "text_tokens": 500},
            "output_token_details": {"audio_tokens": 2000, "text_tokens": 100},
        }
    )
    record.close("caller_hung_up", prices)
    record.duration_s = 61.0  # two started minutes
    assert prices.telephony("PK", 61.0) == 0.04
    assert record.cost_usd["model"] == (1000 * 10 + 2000 * 20 + 500 * 1 + 100 * 2) / 1e6


def test_dropped_frames_are_counted_by_reason_without_a_write_each(tmp_path: Path) -> None:
    """A flood of bad frames is a flood of counts, not of writes: the counts go with the
    call's next change (here its end) and come back from the store."""
    record = CallRecord(call_sid="CA8")
    writes: list[CallRecord] = []
    record.watch(writes.append)
    for reason in ("invalid_json", "oversized_number", "invalid_json"):
        record.frame_dropped(reason)
    assert writes == []
    assert record.dropped_frames == {"invalid_json": 2, "oversized_number": 1}
    record.close("caller_hung_up")
    store = RecordStore(tmp_path / "r.sqlite3")
    store.save(record)
    again = store.get("CA8")
    store.close()
    assert again is not None
    assert again["dropped_frames"] == {"invalid_json": 2, "oversized_number": 1}


def test_records_round_trip_through_sqlite(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "r.sqlite3")
    record = CallRecord(call_sid="CA9", from_="+15550001111", to="+15550002222", profile="sales")
    record.say("agent", "Hello")
    record.say("caller", "hi")
    record.close("agent_hung_up")
    store.save(record)
    other = RecordStore(tmp_path / "r.sqlite3")
    again = other.get("CA9")
    other.close()
    assert again is not None
    assert again["from"] == "+15550001111" and again["profile"] == "sales"
    assert [t["text"] for t in again["transcript"]] == ["Hello", "hi"]
    calls, _ = store.list()
    assert calls[0]["call_sid"] == "CA9"
    store.close()


async def test_async_saves_run_off_the_event_loop_and_all_land(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "r.sqlite3")
    seen: set[str] = set()

    def statement(*_: Any) -> None:
        seen.add(threading.current_thread().name)

    event.listen(Engine, "before_cursor_execute", statement)
    try:
        records = [CallRecord(call_sid=f"CA{i}", started_at=float(i)) for i in range(100)]
        await asyncio.gather(*(store.save_async(r) for r in records))
    finally:
        event.remove(Engine, "before_cursor_execute", statement)
    assert seen, "no statement ran"
    assert threading.current_thread().name not in seen
    assert all(name.startswith("records") for name in seen)
    listed, _ = store.list(limit=500)
    assert sorted(r["call_sid"] for r in listed) == sorted(r.call_sid for r in records)
    store.close()
    again = RecordStore(tmp_path / "r.sqlite3")
    assert again.get("CA42") is not None
    again.close()
