"""A Realtime outage in the middle of a phone call, through every local part: the engine goes
away for 20 s and comes back on the same port; the caller holds, hearing the hold chime, and
the call goes on where it was."""

from __future__ import annotations

import asyncio

from callplane.audio import PCMU, hold_chime
from callplane_dev.stack import LocalStack
from callplane_standins.twilio_simulator.caller import hang_up, pause, say, wait_for_reply
from tests.e2e.test_phone_calls import WEATHER_ANSWER, stored_record, texts

OUTAGE_S = 20.0


async def test_a_twenty_second_engine_outage_is_held_through_and_recorded(
    stack: LocalStack,
) -> None:
    assert stack.settings is not None and stack.settings.realtime_outage_s == 30.0
    call = await stack.simulator.start_call(
        "+15017122661",
        stack.number_for("support"),
        [
            wait_for_reply(timeout_s=15),  # the greeting
            say("what is the weather like today"),
            wait_for_reply(timeout_s=15),
            # on hold: the engine is down for OUTAGE_S and the bridge reconnects with backoff
            # (waits of at most 4 s), so the session is back well before the caller speaks
            pause(int((OUTAGE_S + 12) * 1000)),
            say("what is the weather like today"),
            wait_for_reply(timeout_s=15),
            hang_up(),
        ],
        max_duration_s=120,
    )
    assert stack.store is not None
    for _ in range(600):  # until the first weather answer has been spoken (and recorded)
        found = stack.store.get(call.call_sid)
        if found is not None and WEATHER_ANSWER in texts(found, "agent"):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the first answer never came")
    port = stack.engine.port
    down_at = call.now_ms()
    await stack.engine.stop()  # every session closes; new connections are refused
    await asyncio.sleep(OUTAGE_S)
    await stack.engine.start(port=port)
    up_at = call.now_ms()

    result = await call.wait(120)
    assert result.status == "completed", result.errors
    assert result.hung_up_by == "caller"
    record = await stored_record(stack, result.call_sid)
    assert record["end_reason"] == "caller_hung_up"
    # the next answer arrived after the outage, on a new session seeded with the call so far
    assert texts(record, "agent").count(WEATHER_ANSWER) == 2, record["transcript"]
    assert texts(record, "caller") == ["what is the weather like today"] * 2
    assert record["reconnects"] == 1
    [outage] = record["outages"]
    assert outage["outcome"] == "recovered"
    assert outage["attempts"] > 1  # refused while the engine was down, then back
    assert OUTAGE_S <= outage["duration_s"] < record["duration_s"]
    # the caller heard the hold chime again and again while on hold, not silence
    filler_bytes = len(PCMU.encode(hold_chime()))
    held = [
        c
        for c in result.timeline.chunks
        if c.nbytes == filler_bytes and down_at <= c.received_ms <= up_at
    ]
    assert len(held) >= 2, [c.received_ms for c in result.timeline.chunks]
