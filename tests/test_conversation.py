"""The conversation core's rules, with a fake transport and a fake Realtime server: no sockets.

Each test runs a real :class:`~callplane.conversation.Conversation` over
:class:`tests.doubles.FakeTransport` (records what the caller would hear) and
:class:`tests.doubles.FakeRealtime` (records what the model is told, injects what it says).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import pytest

import callplane.conversation as conversation_module
from callplane.conversation import Conversation
from callplane.profiles import AgentProfile
from callplane.realtime.client import RealtimeSettings
from callplane.records import CallRecord
from callplane.tools import BUILTIN_TOOLS, ToolSet, tool
from tests.doubles import BrokenTransport, FakeClock, FakeRealtime, FakeTransport, Played, until

GREETING = "Greet the caller as Callplane support."


def delta(item_id: str, ms: int) -> dict[str, object]:
    """An audio delta of ``ms`` of µ-law (8 bytes a millisecond)."""
    payload = base64.b64encode(b"\x7f" * (8 * ms)).decode("ascii")
    return {
        "type": "response.output_audio.delta",
        "event_id": "ev",
        "response_id": "resp_1",
        "item_id": item_id,
        "output_index": 0,
        "content_index": 0,
        "delta": payload,
    }


def speech_started(ms: int = 0) -> dict[str, object]:
    return {
        "type": "input_audio_buffer.speech_started",
        "event_id": "ev",
        "audio_start_ms": ms,
        "item_id": "item_caller",
    }


def response_created() -> dict[str, object]:
    return {"type": "response.created", "event_id": "ev", "response": {"id": "resp_1"}}


def response_done() -> dict[str, object]:
    return {"type": "response.done", "event_id": "ev", "response": {"id": "resp_1"}}


@dataclass
class Call:
    conversation: Conversation
    transport: FakeTransport
    realtime: FakeRealtime
    running: asyncio.Task[CallRecord]

    @property
    def record(self) -> CallRecord:
        return self.conversation.record

    async def ended(self) -> CallRecord:
        return await asyncio.wait_for(self.running, 10)


@asynccontextmanager
async def call(
    profile: AgentProfile | None = None,
    *,
    tools: ToolSet | None = None,
    settings: RealtimeSettings | None = None,
    filler: bytes = b"",
    context: dict[str, Any] | None = None,
    answered_by: str | None = None,
    transport: FakeTransport | None = None,
) -> AsyncIterator[Call]:
    """A conversation running until the test's block ends (then the caller hangs up)."""
    transport = transport or FakeTransport()
    realtime = FakeRealtime()
    conversation = Conversation(
        transport,
        profile or AgentProfile(name="support", greeting=GREETING, tools=()),
        tools or ToolSet([]),
        settings or RealtimeSettings(url="ws://realtime.test/v1/realtime", api_key="sk-test"),
        CallRecord(call_sid="CA_test"),
        context=context,
        filler=filler,
        answered_by=answered_by,
        dial=realtime.dial,
    )
    running = asyncio.create_task(conversation.run())
    await asyncio.wait_for(transport.listened.wait(), 5)
    try:
        yield Call(conversation, transport, realtime, running)
    finally:
        transport.end()
        await asyncio.wait_for(running, 10)


async def test_the_session_is_configured_and_the_agent_greets_before_the_caller_is_heard() -> None:
    async with call() as c:
        # nothing the caller says reaches the model before the session and the greeting
        assert c.realtime.types() == ["session.update", "response.create"]
        session = c.realtime.received()[0]["session"]
        assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert c.realtime.received()[1]["response"] == {"instructions": GREETING}
        c.transport.audio(b"AAAA")
        appended = c.realtime.received(appends=True)[2]
        assert appended == {"type": "input_audio_buffer.append", "audio": "AAAA"}
    assert c.record.end_reason == "caller_hung_up"


async def test_audio_deltas_are_played_each_with_a_mark() -> None:
    async with call() as c:
        c.realtime.send(response_created())
        c.realtime.send(delta("item_A", 100))
        c.realtime.send(delta("item_A", 60))
        assert [entry[0] for entry in c.transport.log] == ["play", "play"]
        second = c.transport.log[1]
        assert second[0] == "play" and len(base64.b64decode(second[1])) == 480
        assert c.transport.marks == ["m1", "m2"]
        assert c.conversation.playback.produced_ms("item_A") == 160


async def test_barge_in_clears_and_truncates_at_the_heard_position(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(conversation_module, "time", clock)
    async with call() as c:
        c.realtime.send(response_created())
        for _ in range(3):
            c.realtime.send(delta("item_A", 100))  # 300 ms sent at once, faster than real time
        c.transport.echo("m1")  # the first 100 ms have played...
        clock.advance(0.040)  # ...and 40 ms of the next
        c.realtime.send(speech_started())
        assert c.transport.log[-1] == ("clear",)
        truncate, cancel = c.realtime.received()[-2:]
        assert truncate == {
            "type": "conversation.item.truncate",
            "item_id": "item_A",
            "content_index": 0,
            "audio_end_ms": 140,
        }
        assert cancel == {"type": "response.cancel"}
        assert [(i["item_id"], i["audio_end_ms"]) for i in c.record.interruptions] == [
            ("item_A", 140)
        ]
        assert not c.conversation.playback.playing


async def test_a_barge_in_with_nothing_playing_neither_clears_nor_truncates() -> None:
    async with call() as c:
        c.realtime.send(speech_started())
        assert c.transport.clears == 0
        assert c.realtime.types() == ["session.update", "response.create"]
        assert c.record.interruptions == []


async def test_marks_voided_by_a_clear_count_for_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(conversation_module, "time", clock)
    async with call() as c:
        c.realtime.send(response_created())
        c.realtime.send(delta("item_A", 100))
        c.realtime.send(delta("item_A", 100))
        c.transport.echo("m1")
        c.realtime.send(speech_started())  # clears m2
        c.realtime.send(delta("item_B", 200))  # the next answer: m3
        c.transport.echo("m2")  # the far end echoes the cleared mark: not played audio
        playback = c.conversation.playback
        assert playback.played_ms("item_A") == 100
        assert playback.playing_item() == "item_B"
        clock.advance(0.050)
        c.realtime.send(speech_started())
        truncates = [e for e in c.realtime.received() if e["type"].endswith("truncate")]
        assert [(t["item_id"], t["audio_end_ms"]) for t in truncates] == [
            ("item_A", 100),
            ("item_B", 50),  # from the echo-less start of item_B: the void echo added nothing
        ]


async def test_a_failing_tool_is_answered_with_its_error_and_a_new_response() -> None:
    @tool
    async def lookup_order(order_id: str) -> str:
        """Find an order."""
        raise LookupError(f"no order {order_id}")

    profile = AgentProfile(name="support", greeting=GREETING, tools=("lookup_order",))
    async with call(profile, tools=ToolSet([lookup_order])) as c:
        c.realtime.send(response_created())
        c.realtime.send(
            {
                "type": "response.function_call_arguments.done",
                "event_id": "ev",
                "response_id": "resp_1",
                "item_id": "item_fc",
                "output_index": 0,
                "call_id": "call_1",
                "name": "lookup_order",
                "arguments": json.dumps({"order_id": "A17"}),
            }
        )
        c.realtime.send(response_done())
        await until(lambda: len(c.realtime.types()) == 4, "the tool's answer")
        output, create = c.realtime.received()[-2:]
        assert output == {
            "type": "conversation.item.create",
            "item": {
                "type": "function_call_output",
                "call_id": "call_1",
                "output": json.dumps({"error": "LookupError: no order A17"}),
            },
        }
        assert create == {"type": "response.create"}
        assert c.record.tool_calls[0]["output"] == output["item"]["output"]


async def test_renewal_waits_for_the_end_of_the_turn_and_carries_the_text_over() -> None:
    settings = RealtimeSettings(
        url="ws://realtime.test/v1/realtime",
        api_key="sk-test",
        session_limit_s=0.6,
        renew_margin_s=0.5,  # due 0.1 s in; the timer checks every 0.5 s at most
    )
    async with call(settings=settings) as c:
        c.realtime.send(response_created())  # the greeting is being answered: mid-turn
        c.realtime.send(
            {
                "type": "response.output_audio_transcript.done",
                "event_id": "ev",
                "response_id": "resp_1",
                "item_id": "item_A",
                "output_index": 0,
                "content_index": 0,
                "transcript": "Hello, this is support.",
            }
        )
        await asyncio.sleep(1.2)  # the renewal is due, but the turn is not over
        assert len(c.realtime.sessions) == 1 and c.record.renewals == 0
        c.realtime.send(response_done(), session=0)
        await until(lambda: c.record.renewals == 1, "the renewal")
        assert len(c.realtime.sessions) == 2
        assert c.realtime.sessions[0].closed  # the old session is closed once replaced
        seeded = c.realtime.received(1)
        assert [e["type"] for e in seeded] == ["session.update", "conversation.item.create"]
        assert seeded[1]["item"] == {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello, this is support."}],
        }
        c.transport.audio(b"BBBB")  # the caller is heard on the new session
        assert c.realtime.received(1, appends=True)[-1]["audio"] == "BBBB"
    assert c.record.reconnects == 0


async def test_a_lost_session_is_reopened_while_the_caller_hears_the_filler() -> None:
    filler = b"\x55" * 800
    async with call(filler=filler) as c:
        c.realtime.session.peer_close(1011, "server error")
        await until(lambda: len(c.realtime.sessions) == 2, "the new session")
        assert c.transport.log[0] == ("play", base64.b64encode(filler).decode("ascii"), "m1")
        assert c.record.reconnects == 1
        assert c.realtime.types(1) == ["session.update"]  # no greeting the second time
        c.transport.audio(b"CCCC")
        assert c.realtime.received(1, appends=True)[-1]["audio"] == "CCCC"
        # the filler is not the agent's speech: speaking over it interrupts nothing
        c.realtime.send(speech_started())
        assert c.transport.clears == 0
    assert c.record.end_reason == "caller_hung_up"


async def test_a_fault_of_this_side_ends_the_call_as_an_internal_error_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not ``caller_hung_up``: the record says the call failed here, the exception is logged
    once with its traceback, the caller is hung up on and the Realtime session closed."""
    transport = BrokenTransport(RuntimeError("the transport broke"))
    realtime = FakeRealtime()
    conversation = Conversation(
        transport,
        AgentProfile(name="support", greeting=GREETING, tools=()),
        ToolSet([]),
        RealtimeSettings(url="ws://realtime.test/v1/realtime", api_key="sk-test"),
        CallRecord(call_sid="CA_test"),
        dial=realtime.dial,
    )
    record = await asyncio.wait_for(conversation.run(), 10)
    assert record.end_reason == "internal_error"
    assert transport.hang_ups == 1
    assert realtime.session.closed
    failures = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert len(failures) == 1 and "the transport broke" in str(failures[0])


async def test_a_session_that_cannot_be_reopened_within_the_budget_ends_the_call() -> None:
    settings = RealtimeSettings(url="ws://realtime.test/v1/realtime", api_key="sk-test")
    async with call(settings=replace(settings, outage_budget_s=0.6)) as c:
        c.realtime.refuse = 1000
        c.realtime.session.peer_close(1011, "server error")
        record = await asyncio.wait_for(c.running, 15)
    assert record.end_reason == "realtime_unavailable"
    assert c.transport.hang_ups == 1
    [outage] = record.outages
    assert outage["outcome"] == "gave_up" and outage["cause"] == "close code 1011"
    # retried with backoff (0.2 s, then 0.4 s, ...) until the budget was spent, not once
    assert outage["attempts"] >= 3
    assert outage["attempts"] == len(c.realtime.urls) - 1  # every dial after the first session
    assert outage["duration_s"] >= 0.6


async def test_an_outage_keeps_the_caller_on_hold_and_the_call_goes_on_when_it_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(conversation_module, "HOLD_REPEAT_S", 0.05)
    filler = b"\x55" * 80

    def fillers(transport: FakeTransport) -> list[Played]:
        return [e for e in transport.log if e[0] == "play"]

    async with call(filler=filler) as c:
        c.realtime.refuse = 1000
        c.realtime.session.peer_close(1006, "gone")
        # the hold filler keeps coming while the API is down
        await until(lambda: len(fillers(c.transport)) >= 3, "the filler, again and again")
        assert c.record.outages == []  # not over yet
        assert len(c.realtime.sessions) == 1
        c.realtime.refuse = 0  # the API is back
        await until(lambda: len(c.realtime.sessions) == 2, "the new session")
        await until(lambda: c.record.outages != [], "the outage noted")
        played = len(fillers(c.transport))
        await asyncio.sleep(0.2)
        assert len(fillers(c.transport)) == played, "no filler once the session is back"
        c.transport.audio(b"DDDD")
        assert c.realtime.received(1, appends=True)[-1]["audio"] == "DDDD"
    [outage] = c.record.outages
    assert outage["outcome"] == "recovered" and outage["cause"] == "close code 1006"
    assert outage["attempts"] == len(c.realtime.urls) - 1 >= 2
    assert c.record.reconnects == 1
    assert c.record.end_reason == "caller_hung_up"


async def test_a_caller_who_hangs_up_on_hold_ends_the_outage_in_the_record() -> None:
    async with call() as c:
        c.realtime.refuse = 1000
        c.realtime.session.peer_close(1011, "server error")
        await until(lambda: len(c.realtime.urls) >= 2, "a reconnect attempt")
    assert c.record.end_reason == "caller_hung_up"
    [outage] = c.record.outages
    assert outage["outcome"] == "call_ended"


async def test_hang_up_waits_until_the_goodbye_has_played() -> None:
    profile = AgentProfile(name="support", greeting=GREETING, tools=(), dtmf={"9": "end_call"})
    async with call(profile) as c:
        c.realtime.send(response_created())
        c.realtime.send(delta("item_bye", 200))
        c.realtime.send(response_done())
        c.transport.press("9")
        await asyncio.sleep(0.3)
        assert c.transport.hang_ups == 0  # the goodbye is still playing
        c.transport.echo("m1")
        record = await c.ended()
    assert c.transport.hang_ups == 1
    assert record.end_reason == "caller_pressed_9" and record.dtmf == ["9"]


async def test_transfer_waits_for_the_playout_then_redirects_to_the_target() -> None:
    profile = AgentProfile(
        name="support",
        greeting=GREETING,
        tools=(),
        dtmf={"0": "transfer:billing"},
        transfer_targets={"billing": "+15005550006"},
    )
    async with call(profile) as c:
        c.realtime.send(response_created())
        c.realtime.send(delta("item_A", 100))
        c.realtime.send(response_done())
        c.transport.press("0")
        await asyncio.sleep(0.3)
        assert c.transport.transfers == []
        c.transport.echo("m1")
        record = await c.ended()
    assert c.transport.transfers == ["+15005550006"]
    assert record.transferred_to == "+15005550006" and record.end_reason == "transferred"


def function_call(name: str, call_id: str, arguments: dict[str, Any]) -> dict[str, object]:
    return {
        "type": "response.function_call_arguments.done",
        "event_id": "ev",
        "response_id": "resp_1",
        "item_id": "item_" + call_id,
        "output_index": 0,
        "call_id": call_id,
        "name": name,
        "arguments": json.dumps(arguments),
    }


@tool
async def get_weather(location: str) -> dict[str, object]:
    """The weather."""
    return {"location": location, "conditions": "sunny"}


TRANSFERRING = AgentProfile(
    name="support",
    greeting=GREETING,
    tools=("transfer_call", "get_weather"),
    transfer_targets={"billing": "+15005550006"},
)
TRANSFER_TOOLS = ToolSet([BUILTIN_TOOLS["transfer_call"], get_weather])


async def ask_for(c: Call, name: str, call_id: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """The model calls a tool in a response; the output it gets back, as JSON."""
    c.realtime.send(response_created())
    c.realtime.send(function_call(name, call_id, arguments))
    c.realtime.send(response_done())
    await until(
        lambda: any(e.get("item", {}).get("call_id") == call_id for e in c.realtime.received()),
        f"the output of {call_id}",
    )
    output = next(e for e in c.realtime.received() if e.get("item", {}).get("call_id") == call_id)
    result: dict[str, Any] = json.loads(output["item"]["output"])
    return result


async def test_a_refused_transfer_is_an_error_for_the_model_and_the_call_goes_on() -> None:
    transport = FakeTransport()
    transport.transfer_refusal = "the phone network refused the transfer to +15005550006"
    async with call(TRANSFERRING, tools=TRANSFER_TOOLS, transport=transport) as c:
        out = await ask_for(c, "transfer_call", "call_1", {"to": "billing"})
        assert out == {"ok": False, "error": transport.transfer_refusal}
        await until(lambda: c.realtime.types()[-1] == "response.create", "a new response")
        # The model's next tool call is answered and spoken as any other.
        answered = len(c.realtime.types())
        weather = await ask_for(c, "get_weather", "call_2", {"location": "Oslo"})
        assert weather == {"location": "Oslo", "conditions": "sunny"}
        await until(lambda: len(c.realtime.types()) == answered + 2, "the weather's response")
        assert c.realtime.types()[-1] == "response.create"
    assert c.record.end_reason == "caller_hung_up"
    assert c.record.transferred_to is None
    assert [t["output"] for t in c.record.tool_calls] == [json.dumps(out), json.dumps(weather)]


async def test_a_transfer_to_no_known_place_never_reaches_the_carrier() -> None:
    async with call(TRANSFERRING, tools=TRANSFER_TOOLS) as c:
        out = await ask_for(c, "transfer_call", "call_1", {"to": "sales"})
        assert out["ok"] is False
        assert "departments: billing" in out["error"]
        await until(lambda: c.realtime.types()[-1] == "response.create", "a new response")
    assert c.transport.transfers == []
    assert c.record.end_reason == "caller_hung_up" and c.record.transferred_to is None


async def test_a_transfer_the_carrier_took_ends_a_phone_call_as_transferred() -> None:
    async with call(TRANSFERRING, tools=TRANSFER_TOOLS) as c:
        c.realtime.send(response_created())
        c.realtime.send(function_call("transfer_call", "call_1", {"to": "billing"}))
        c.realtime.send(response_done())
        # Twilio ends the stream as it moves the call, before its REST answer is back.
        record = await c.ended()
    assert c.transport.transfers == ["+15005550006"]
    assert record.end_reason == "transferred" and record.transferred_to == "+15005550006"
    out = {"ok": True, "transferred_to": "+15005550006"}
    assert record.tool_calls[0]["output"] == json.dumps(out)
    # the call is over: the model is not asked for another response
    assert c.realtime.types() == ["session.update", "response.create"]


async def test_when_one_caller_of_a_room_moved_the_agent_goes_on_for_the_rest() -> None:
    transport = FakeTransport()
    transport.transfer_outcome = "participant_moved"
    async with call(TRANSFERRING, tools=TRANSFER_TOOLS, transport=transport) as c:
        out = await ask_for(c, "transfer_call", "call_1", {"to": "+1 415 555 0123"})
        assert out == {"ok": True, "transferred_to": "+14155550123"}
        await until(lambda: c.realtime.types()[-1] == "response.create", "a new response")
        assert c.record.transferred_to == "+14155550123"
        weather = await ask_for(c, "get_weather", "call_2", {"location": "Oslo"})
        assert weather["conditions"] == "sunny"
        await until(lambda: c.realtime.types()[-1] == "response.create", "the weather's response")
    assert c.record.end_reason == "caller_hung_up"


async def test_a_refused_keypad_transfer_is_told_to_the_model() -> None:
    profile = TRANSFERRING.model_copy(update={"dtmf": {"0": "transfer:billing"}})
    transport = FakeTransport()
    transport.transfer_refusal = "the phone network refused the transfer to +15005550006"
    async with call(profile, tools=TRANSFER_TOOLS, transport=transport) as c:
        c.realtime.send(response_created())
        c.realtime.send(response_done())
        c.transport.press("0")
        await until(lambda: len(c.realtime.types()) == 4, "the model to be told")
        assert c.realtime.types()[-1] == "response.create"
        told = c.realtime.received()[-2]["item"]["content"][0]["text"]
        assert told == (
            "(The caller pressed 0 on the keypad to be transferred to billing, but the transfer "
            "did not happen: the phone network refused the transfer to +15005550006. They are "
            "still on the line.)"
        )
    assert c.record.end_reason == "caller_hung_up" and c.record.transferred_to is None


async def test_tools_offered_mid_call_update_the_session() -> None:
    async with call(TRANSFERRING, tools=TRANSFER_TOOLS) as c:
        first = c.realtime.received()[0]["session"]["tools"]
        assert [t["name"] for t in first] == ["transfer_call", "get_weather"]
        c.conversation.offer_tools(TRANSFER_TOOLS.without({"transfer_call"}))
        c.conversation.offer_tools(TRANSFER_TOOLS.without({"transfer_call"}))  # no change
        updates = [e for e in c.realtime.received() if e["type"] == "session.update"]
        assert len(updates) == 2
        assert updates[1]["session"] == {
            "type": "realtime",
            "tools": [get_weather.spec()],
            "tool_choice": "auto",
        }
        out = await ask_for(c, "transfer_call", "call_1", {"to": "billing"})
        assert out == {"error": "unknown tool 'transfer_call'"}
    assert c.transport.transfers == []


REMINDERS = AgentProfile(
    name="reminders",
    greeting="Greet the person you called.",
    outbound_greeting="Hello {name}, this is a reminder of your appointment {when}.",
    voicemail="Hello {name}, your appointment is {when}. Goodbye.",
    tools=(),
)


async def test_an_outbound_greeting_is_said_exactly_with_the_context() -> None:
    context = {"name": "Amina", "when": "tomorrow"}
    async with call(REMINDERS, context=context, answered_by="human") as c:
        create = c.realtime.received()[1]
    assert create["response"] == {
        "instructions": 'Say exactly: "Hello Amina, this is a reminder of your appointment '
        'tomorrow."'
    }


async def test_a_greeting_the_context_cannot_fill_is_never_said_with_a_raw_field() -> None:
    async with call(REMINDERS, context={"name": "Amina"}, answered_by="human") as c:
        create = c.realtime.received()[1]
    assert create["response"] == {"instructions": "Greet the person you called."}
    assert "{when}" not in json.dumps(c.realtime.received())


async def test_a_voicemail_the_context_cannot_fill_is_not_left() -> None:
    async with call(REMINDERS, context={"name": "Amina"}, answered_by="machine_end_beep") as c:
        record = await c.ended()
    assert c.realtime.types() == ["session.update"]  # nothing was said
    assert record.voicemail_left is None and record.end_reason == "machine_answered"
    assert c.transport.hang_ups == 1


async def test_a_key_without_an_action_is_told_to_the_model() -> None:
    async with call() as c:
        c.realtime.send(response_created())
        c.realtime.send(response_done())
        c.transport.press("5")
        item, create = c.realtime.received()[-2:]
        assert item["item"]["content"][0]["text"] == "(The caller pressed 5 on the keypad.)"
        assert create == {"type": "response.create"}
