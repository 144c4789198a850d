"""Phone calls through every local part: simulated caller -> Twilio simulator -> edge worker ->
media app -> offline Realtime engine and back, on real loopback sockets, nothing mocked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from twilio.request_validator import RequestValidator

from callplane.audio import PCMU, hold_chime
from callplane.samples import SAMPLE_PROFILES, SAMPLE_WEATHER
from callplane_dev.stack import DEFAULT_CALLER, LocalStack, NumberPlan, StackOptions
from callplane_standins.realtime_engine.context import Direction
from callplane_standins.twilio_simulator.caller import (
    Step,
    hang_up,
    interrupt_after,
    pause,
    press,
    say,
    wait_for_reply,
)
from tests.conftest import ConformanceLog
from tests.e2e.conftest import EngineEvents

WEATHER_ANSWER = "Right now it is sunny and seventy two degrees in San Francisco."
GREETING = "Hello, thanks for calling. How can I help you today?"


def texts(record: dict[str, Any], role: str) -> list[str]:
    return [line["text"] for line in record["transcript"] if line["role"] == role]


async def stored_record(stack: LocalStack, call_sid: str) -> dict[str, Any]:
    """The media app saves the record as its socket closes, just after the call ends."""
    for _ in range(100):
        record = stack.record(call_sid)
        if record is not None:
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"no record for {call_sid}")


async def test_a_weather_call_from_greeting_to_the_agent_hanging_up(stack: LocalStack) -> None:
    result = await stack.call(
        stack.number_for("support"),
        [
            wait_for_reply(),
            say("what is the weather like today"),
            wait_for_reply(),
            say("goodbye"),
            wait_for_reply(timeout_s=15),
        ],
    )
    assert result.status == "completed", result.errors
    assert result.errors == []
    assert result.hung_up_by == "rest", "the agent hangs up through Twilio's REST API"
    record = await stored_record(stack, result.call_sid)
    assert record["profile"] == "support"
    assert record["from"] == DEFAULT_CALLER and record["to"] == stack.number_for("support")
    assert record["country"] == "US"
    assert record["end_reason"] == "agent_hung_up"
    # the agent greets first, answers with the tool's output, and says goodbye
    assert record["transcript"][0] == {**record["transcript"][0], "role": "agent", "text": GREETING}
    assert texts(record, "caller") == ["what is the weather like today", "goodbye"]
    assert texts(record, "agent") == [GREETING, WEATHER_ANSWER, "Goodbye, and thanks for calling."]
    assert [c["name"] for c in record["tool_calls"]] == ["get_weather", "end_call"]
    weather_output = record["tool_calls"][0]["output"]
    assert str(SAMPLE_WEATHER["temperature"]) in weather_output
    # the goodbye played to its end before the line closed: no mark was cleared, all echoed
    marks = result.timeline.marks
    assert marks and all(m.echoed_ms is not None and not m.cleared for m in marks)
    assert result.timeline.heard_ms > 5000
    assert record["duration_s"] > 5
    assert record["usage"]["output_audio"] > 0 and record["usage"]["input_audio"] > 0
    assert record["cost_usd"]["telephony"] > 0 and record["cost_usd"]["model"] > 0
    assert record["cost_usd"]["total"] == round(
        record["cost_usd"]["telephony"] + record["cost_usd"]["model"], 6
    )


async def test_barge_in_clears_twilio_at_once_and_truncates_at_what_was_heard(
    stack: LocalStack, engine_events: EngineEvents
) -> None:
    call = await stack.simulator.start_call(
        DEFAULT_CALLER,
        stack.number_for("support"),
        [interrupt_after(1000, "hello"), wait_for_reply(), hang_up()],
    )
    result = await call.wait(60)
    assert result.status == "completed", result.errors
    started = engine_events.of_type("input_audio_buffer.speech_started", "out")
    truncates = engine_events.of_type("conversation.item.truncate", "in")
    assert len(result.timeline.clears) == 1 and len(truncates) == 1 and started
    clear = result.timeline.clears[0]
    clear_at = call.placed_at + clear.at_ms / 1000
    speech_started_at = started[0][0]
    assert 0 <= clear_at - speech_started_at < 0.050, (
        f"clear reached Twilio {1000 * (clear_at - speech_started_at):.1f} ms after speech_started"
    )
    # The greeting is the first audio of the stream: what the caller heard of it is what the
    # stream had played when the clear arrived.
    audio_end_ms = truncates[0][1]["audio_end_ms"]
    assert abs(audio_end_ms - clear.played_ms) <= 40, (audio_end_ms, clear.played_ms)
    assert clear.played_ms >= 1000 and clear.dropped_bytes > 0
    record = await stored_record(stack, result.call_sid)
    assert len(record["interruptions"]) == 1
    assert record["interruptions"][0]["audio_end_ms"] == audio_end_ms
    assert "Hello! Yes, I can hear you. How can I help you today?" in texts(record, "agent")


async def test_twenty_concurrent_calls_to_two_numbers_get_their_own_profiles(
    stack: LocalStack,
) -> None:
    script: list[Step] = [
        wait_for_reply(timeout_s=20),
        say("what is the weather like today"),
        wait_for_reply(timeout_s=20),
        say("goodbye"),
        wait_for_reply(timeout_s=20),
    ]
    numbers = [stack.number_for("support"), stack.number_for("sales")] * 10
    results = await asyncio.gather(
        *(
            stack.call(to, script, from_=f"+1202555{i:04d}", max_s=90)
            for i, to in enumerate(numbers)
        )
    )
    assert len({r.call_sid for r in results}) == 20
    for to, result in zip(numbers, results, strict=True):
        assert result.status == "completed" and result.errors == [], (to, result.errors)
        record = await stored_record(stack, result.call_sid)
        tools = [c["name"] for c in record["tool_calls"]]
        if to == stack.number_for("support"):
            assert record["profile"] == "support"
            assert tools == ["get_weather", "end_call"]
            assert WEATHER_ANSWER in texts(record, "agent")
        else:
            # sales has no weather tool: the agent answers without one
            assert record["profile"] == "sales"
            assert tools == ["end_call"]
            assert "It is sunny and seventy two degrees today." in texts(record, "agent")


async def test_the_call_survives_the_realtime_socket_being_killed(stack: LocalStack) -> None:
    call = await stack.simulator.start_call(
        DEFAULT_CALLER,
        stack.number_for("support"),
        [
            wait_for_reply(timeout_s=15),
            pause(2500),
            say("what is the weather like today"),
            wait_for_reply(timeout_s=15),
            say("goodbye"),
            wait_for_reply(timeout_s=15),
        ],
    )
    assert stack.store is not None
    for _ in range(200):  # until the greeting has been spoken (and recorded)
        found = stack.store.get(call.call_sid)
        if found is not None and found["transcript"]:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    killed_at = call.now_ms()
    assert await stack.engine.drop_connections() == 1
    result = await call.wait(60)
    assert result.status == "completed", result.errors
    record = await stored_record(stack, result.call_sid)
    assert record["reconnects"] == 1
    assert stack.engine.sessions_opened == 2
    assert WEATHER_ANSWER in texts(record, "agent"), record["transcript"]
    assert record["end_reason"] == "agent_hung_up"
    # the caller heard the hold chime while the socket was re-opened, not silence
    filler_bytes = len(PCMU.encode(hold_chime()))
    assert any(
        c.nbytes == filler_bytes and c.received_ms >= killed_at for c in result.timeline.chunks
    )


async def test_unsigned_or_wrongly_signed_webhooks_are_refused(stack: LocalStack) -> None:
    url = stack.edge_url + "/twilio/voice"
    form = {
        "CallSid": "CA" + "1" * 32,
        "From": DEFAULT_CALLER,
        "To": stack.number_for("support"),
        "AccountSid": stack.creds.account_sid,
    }
    good = RequestValidator(stack.creds.auth_token).compute_signature(url, form)
    wrong = RequestValidator("not-the-token").compute_signature(url, form)
    async with httpx.AsyncClient() as http:
        unsigned = await http.post(url, data=form)
        forged = await http.post(url, data=form, headers={"X-Twilio-Signature": wrong})
        signed = await http.post(url, data=form, headers={"X-Twilio-Signature": good})
    assert unsigned.status_code == 403 and forged.status_code == 403
    assert signed.status_code == 200 and "<Connect><Stream" in signed.text
    assert stack.engine.sessions_opened == 0


async def test_live_record_is_served_while_the_call_is_on(stack: LocalStack) -> None:
    call = await stack.simulator.start_call(
        DEFAULT_CALLER, stack.number_for("sales"), [wait_for_reply(), hang_up()]
    )
    headers = {"Authorization": f"Bearer {stack.creds.media_api_key}"}
    seen_live = False
    async with httpx.AsyncClient(base_url=stack.media_url) as http:
        assert (await http.get(f"/calls/{call.call_sid}")).status_code == 401
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and call.live:
            answer = await http.get(f"/calls/{call.call_sid}", headers=headers)
            if answer.status_code == 200 and answer.json()["live"]:
                seen_live = True
                break
            await asyncio.sleep(0.05)
        await call.wait(30)
        for _ in range(100):
            answer = await http.get(f"/calls/{call.call_sid}", headers=headers)
            if answer.status_code == 200 and not answer.json()["live"]:
                break
            await asyncio.sleep(0.05)
        listed = (await http.get("/calls", headers=headers)).json()["calls"]
    assert seen_live
    assert answer.json()["record"]["end_reason"] == "caller_hung_up"
    assert [c["call_sid"] for c in listed] == [call.call_sid]


async def test_a_call_at_its_time_limit_gets_a_goodbye_and_ends(
    tmp_path: Path, conformance: ConformanceLog
) -> None:
    profiles = {"support": SAMPLE_PROFILES["support"].model_copy(update={"max_call_seconds": 10})}
    options = StackOptions(
        data_dir=tmp_path / "stack",
        numbers=[NumberPlan("support")],
        profiles=profiles,
        engine_observer=conformance,
    )
    async with LocalStack(options) as stack:
        result = await stack.call(
            stack.number_for("support"), [wait_for_reply(), pause(40_000)], max_s=60
        )
        record = await stored_record(stack, result.call_sid)
    assert record["end_reason"] == "call_time_limit"
    assert 10 <= record["duration_s"] < 20
    assert result.hung_up_by == "rest"
    last = record["transcript"][-1]
    assert last["role"] == "agent" and last["at"] >= 10
    marks = result.timeline.marks
    assert marks and all(m.echoed_ms is not None and not m.cleared for m in marks)
    assert not conformance.violations


async def test_a_keypad_press_transfers_the_caller(stack: LocalStack) -> None:
    """support maps 0 to a transfer to billing: the call is redirected with <Dial>."""
    result = await stack.call(
        stack.number_for("support"), [wait_for_reply(), press("0"), pause(5000)]
    )
    assert result.transferred_to == "+15005550006", result.errors
    record = await stored_record(stack, result.call_sid)
    assert record["dtmf"] == ["0"]
    assert record["transferred_to"] == "+15005550006"
    assert record["end_reason"] == "transferred"


async def test_the_session_is_renewed_between_turns_and_keeps_the_conversation(
    tmp_path: Path, conformance: ConformanceLog, engine_events: EngineEvents
) -> None:
    def observe(direction: Direction, event: Mapping[str, Any]) -> None:
        conformance(direction, event)
        engine_events(direction, event)

    options = StackOptions(
        data_dir=tmp_path / "stack",
        numbers=[NumberPlan("support")],
        engine_observer=observe,
        session_limit_s=8,  # renewed 2 s before: about 6 s into the call
    )
    async with LocalStack(options) as stack:
        result = await stack.call(
            stack.number_for("support"),
            [
                wait_for_reply(),
                pause(6000),
                say("what is the weather like today"),
                wait_for_reply(),
                say("goodbye"),
                wait_for_reply(timeout_s=15),
            ],
        )
        record = await stored_record(stack, result.call_sid)
        sessions = stack.engine.sessions_opened
    assert result.status == "completed", result.errors
    assert record["renewals"] >= 1 and sessions == 1 + record["renewals"]
    assert record["reconnects"] == 0
    assert WEATHER_ANSWER in texts(record, "agent"), (record["renewals"], record["transcript"])
    # the new session was seeded with the conversation so far, as text
    seeded = [
        e["item"]
        for _, e in engine_events.of_type("conversation.item.create", "in")
        if e["item"].get("type") == "message"
    ]
    assert any(
        item["role"] == "assistant" and item["content"][0]["text"] == GREETING for item in seeded
    )
