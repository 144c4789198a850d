"""CallRecord's change methods: what they record, who they tell, and what they leave out."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from callplane.records import CallRecord


def test_each_change_method_records_and_tells_the_listener() -> None:
    record = CallRecord(call_sid="CA1")
    seen: list[tuple[int, int, int, int]] = []

    def changed(r: CallRecord) -> None:
        assert r is record
        seen.append((len(r.transcript), len(r.tool_calls), len(r.interruptions), len(r.dtmf)))

    record.watch(changed)
    record.say("agent", "Hello")
    record.tool_started("lookup", "call_1", '{"q": 1}')
    record.tool_finished("call_1", "found")
    record.interrupted("item_1", 800)
    record.key_pressed("7")
    assert seen == [(1, 0, 0, 0), (1, 1, 0, 0), (1, 1, 0, 0), (1, 1, 1, 0), (1, 1, 1, 1)]
    assert record.tool_calls == [
        {"name": "lookup", "call_id": "call_1", "arguments": '{"q": 1}', "output": "found"}
    ]
    assert record.interruptions[0]["item_id"] == "item_1"
    assert record.interruptions[0]["audio_end_ms"] == 800
    assert record.dtmf == ["7"]

    record.watch(None)
    record.say("caller", "bye")
    assert len(seen) == 5


def test_the_listener_is_not_part_of_the_record() -> None:
    watched = CallRecord(call_sid="CA1", started_at=1.0)
    watched.watch(lambda r: None)
    plain = CallRecord(call_sid="CA1", started_at=1.0)
    assert watched == plain
    assert watched.to_json() == plain.to_json()
    assert "on_change" not in dataclasses.asdict(watched)
    assert "on_change" not in repr(watched)


def test_a_failing_listener_is_logged_and_never_breaks_the_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(_: CallRecord) -> None:
        raise RuntimeError("store gone")

    record = CallRecord(call_sid="CA1")
    record.watch(broken)
    with caplog.at_level(logging.ERROR, "callplane.records"):
        record.say("agent", "Hello")
    assert record.transcript[0]["text"] == "Hello"
    assert "record listener failed" in caplog.text
