"""A hybrid room through every local part: a simulated phone call and a Python ``livekit.rtc``
participant in the same LiveKit room, served by one dispatched agent job.

Nothing is mocked: the scripted caller -> Twilio simulator -> edge worker -> media app, whose
profile names a room, so the call joins that room as ``phone:+E164`` (µ-law 8 kHz <-> 48 kHz);
the room's webhooks go to the edge, which dispatches the agent through the media app's
``/agents/dispatch``; the agent job (a child process) hears every human mixed and answers
through the local Realtime engine. The test checks both directions for both humans: each hears
the agent's answer to a question the other one asked, and the agent hears both. The agent can
transfer the phone caller (the bridge redirects the call to ``<Dial>`` at the simulator) and
stays for the web user; in a room of web users only it is not offered ``transfer_call``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from callplane.profiles import AgentProfile
from callplane_dev.stack import DEFAULT_CALLER, LocalStack, NumberPlan, StackOptions
from callplane_standins.realtime_engine.context import Direction
from callplane_standins.realtime_engine.speech import speak
from callplane_standins.twilio_simulator.caller import hang_up, pause, say, wait_for_reply
from tests.conftest import ConformanceLog
from tests.e2e.conftest import E2E_REPLICAS, EngineEvents, started
from tests.support.livekit_people import Human
from tests.support.stack import stack_livekit
from tests.support.waiting import until

ROOM = "hybrid-lobby"
PHONE_IDENTITY = "phone:" + DEFAULT_CALLER
WEB_IDENTITY = "alice"
IDLE_TIMEOUT_S = 2.0
WEATHER = "what is the weather like today"
# The sample get_weather tool's output, read out by the engine's after_tool template.
WEATHER_ANSWER = "Right now it is sunny and seventy two degrees in San Francisco."
HELLO = "hello"
HELLO_ANSWER = "Hello! Yes, I can hear you. How can I help you today?"
TRANSFER_ME = "please transfer me to billing"
TRANSFERRING = "Sure. Transferring you to billing now."
BILLING = "+15005550006"

LOBBY = AgentProfile(
    name="lobby",
    instructions="You serve a shared room: phone callers and web users. Be brief.",
    greeting="Greet everyone in the room.",
    tools=("get_weather", "transfer_call"),
    transfer_targets={"billing": BILLING},
    room=ROOM,
)


@pytest.fixture
async def stack(
    tmp_path: Path, conformance: ConformanceLog, engine_events: EngineEvents
) -> AsyncIterator[LocalStack]:
    def observe(direction: Direction, event: Mapping[str, Any]) -> None:
        conformance(direction, event)
        engine_events(direction, event)

    options = StackOptions(
        data_dir=tmp_path / "stack",
        pace=4.0,
        engine_observer=observe,
        profiles={"lobby": LOBBY},
        numbers=[NumberPlan("lobby", "US", "local", 415)],
        livekit=True,
        agent_idle_timeout_s=IDLE_TIMEOUT_S,
        replicas=E2E_REPLICAS,
    )
    async with started(options) as running:
        yield running
    conformance.count()
    assert not conformance.violations, "non-conforming events:\n" + "\n".join(
        conformance.violations[:20]
    )
    assert conformance.server_checked > 0  # the agent job's session ran on this engine


async def participants(stack: LocalStack) -> set[str]:
    return {p.identity for p in await stack_livekit(stack).participants(ROOM)}


def heard_from(human: Human) -> list[tuple[str, str]]:
    """What ``human`` saw transcribed of the humans: (text, the human who said it)."""
    return [(t.text, t.participant) for t in human.finals("user")]


async def stored(stack: LocalStack, call_sid: str, timeout: float) -> dict[str, Any]:
    await until(lambda: stack.record(call_sid) is not None, timeout, f"a record for {call_sid}")
    record = stack.record(call_sid)
    assert record is not None
    return record


async def test_a_phone_caller_and_a_web_user_share_the_room_and_its_agent(
    stack: LocalStack,
) -> None:
    number = stack.number_for("lobby")
    hello_ms = len(speak(HELLO, "en-us", 8000)) / 8
    call = asyncio.create_task(
        stack.call(
            number,
            [
                wait_for_reply(timeout_s=30),  # the greeting
                say(WEATHER),
                wait_for_reply(timeout_s=30),  # the agent's answer
                # the web user's "hello" and the agent's answer to it, as one stretch of audio
                wait_for_reply(timeout_s=45, quiet_ms=2500),
                hang_up(),
            ],
            max_s=120,
        )
    )
    alice = Human(WEB_IDENTITY)
    try:
        # The call creates the room (and so dispatches the agent); the web user joins once the
        # caller and the agent are both in it.
        deadline = time.monotonic() + 40
        while not {PHONE_IDENTITY}.issubset(present := await participants(stack)) or not any(
            p.startswith("agent-") for p in present
        ):
            assert not call.done(), f"the call ended early: {call.result()}"
            assert time.monotonic() < deadline, f"the room never had caller and agent: {present}"
            await asyncio.sleep(0.2)
        livekit = stack_livekit(stack)
        await alice.join(livekit.url, livekit.token(WEB_IDENTITY, ROOM))

        # 1. The caller's question: the web user hears the agent's answer to it.
        await until(
            lambda: any(t.text == WEATHER_ANSWER for t in alice.finals("agent")),
            60,
            f"the weather answer in the web user's transcripts ({alice.transcripts})",
        )
        assert (WEATHER, PHONE_IDENTITY) in heard_from(alice)
        await until(lambda: alice.agent_state() == "listening", 30, "the agent to finish answering")
        loud_after_weather = alice.agent_loud_frames
        assert loud_after_weather > 50  # over a second of non-silent agent audio

        # 2. The web user's question: the agent hears it and the caller hears the answer.
        await asyncio.sleep(1.5)  # the caller's wait for the weather answer sees the quiet
        alice.say(HELLO)
        await until(
            lambda: any(t.text == HELLO_ANSWER for t in alice.finals("agent")),
            45,
            f"the answer to hello ({[t.text for t in alice.finals('agent')]})",
        )
        assert (HELLO, WEB_IDENTITY) in heard_from(alice)
        agent = alice.agent_identity()
        assert agent is not None
        result = await asyncio.wait_for(call, 90)
    finally:
        if not call.done():
            call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        await alice.leave()

    assert alice.agent_loud_frames > loud_after_weather + 50  # the hello answer was heard too
    assert result.status == "completed", result.errors
    assert result.errors == []
    assert result.hung_up_by == "caller"
    # The caller heard the agent: non-silent audio after each of its waits began.
    events = result.timeline.events
    kinds = [e.kind for e in events]
    said = kinds.index("caller_say_end")
    heard = [e for e in events if e.kind == "caller_heard_reply"]
    assert len(heard) == 3
    greeting, weather_answer, hello_and_answer = heard
    assert greeting.at_ms < events[said].at_ms < weather_answer.at_ms
    bot_ms = [float(str(e.detail["bot_ms"])) for e in heard]
    assert bot_ms[0] > 1500, bot_ms  # the greeting
    assert bot_ms[1] > 2500, bot_ms  # "Right now it is sunny ..." (the web user was silent)
    # More than the web user's own "hello" (which the caller hears too): the agent's answer.
    assert bot_ms[2] > hello_ms + 2000, (bot_ms, hello_ms)
    assert hello_and_answer.at_ms > weather_answer.at_ms

    # The call's record: a participant of the room, not a Realtime session of its own.
    call_record = await stored(stack, result.call_sid, 10)
    assert call_record["profile"] == "lobby"
    assert call_record["context"]["room"] == ROOM
    assert call_record["from"] == DEFAULT_CALLER and call_record["to"] == number
    assert call_record["transcript"] == []

    # The agent's record: everyone it heard and what it answered; saved once the room emptied.
    agent_record = await stored(stack, f"room:{ROOM}:{agent.removeprefix('agent-')}", 30)
    assert agent_record["profile"] == "lobby"
    assert agent_record["end_reason"] == "room_empty"
    assert agent_record["context"]["room"] == ROOM
    assert agent_record["context"]["participants"] == [PHONE_IDENTITY, WEB_IDENTITY]
    callers = [line["text"] for line in agent_record["transcript"] if line["role"] == "caller"]
    assert callers == [WEATHER, HELLO]
    answers = [line["text"] for line in agent_record["transcript"] if line["role"] == "agent"]
    assert WEATHER_ANSWER in answers and HELLO_ANSWER in answers
    assert [c["name"] for c in agent_record["tool_calls"]] == ["get_weather"]

    # The dispatcher ran exactly one job for the room (the webhooks for the room starting and
    # each human joining were idempotent), and its process ended normally after the room did.
    headers = {"Authorization": f"Bearer {stack.creds.media_api_key}"}
    async with httpx.AsyncClient(base_url=stack.media_url, headers=headers) as media:
        deadline = time.monotonic() + 15
        while True:
            jobs = (await media.get("/agents")).json()["agents"]
            if (jobs and jobs[0]["state"] != "running") or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    assert [(j["room"], j["profile"], j["state"]) for j in jobs] == [(ROOM, "lobby", "exited")]
    assert jobs[0]["exit_code"] == 0
    # ... and the dispatch's job id is the one the agent joined and recorded under
    assert agent == f"agent-{jobs[0]['job_id']}"


def offered(engine_events: EngineEvents) -> list[list[str]]:
    """The tools of every ``session.update`` the engine got that declares tools, in order."""
    return [
        [tool["name"] for tool in event["session"]["tools"]]
        for _, event in engine_events.of_type("session.update", "in")
        if "tools" in event["session"]
    ]


async def test_the_agent_transfers_the_phone_caller_and_stays_for_the_web_user(
    stack: LocalStack, engine_events: EngineEvents
) -> None:
    number = stack.number_for("lobby")
    call = asyncio.create_task(
        stack.call(
            number,
            [
                wait_for_reply(timeout_s=30),  # the greeting
                # the web user's "hello" and the agent's answer: the web user is in the room
                wait_for_reply(timeout_s=60, quiet_ms=2500),
                say(TRANSFER_ME),
                pause(30_000),  # the call is redirected to <Dial> meanwhile
            ],
            max_s=120,
        )
    )
    alice = Human(WEB_IDENTITY)
    try:
        deadline = time.monotonic() + 40
        while not {PHONE_IDENTITY}.issubset(present := await participants(stack)) or not any(
            p.startswith("agent-") for p in present
        ):
            assert not call.done(), f"the call ended early: {call.result()}"
            assert time.monotonic() < deadline, f"the room never had caller and agent: {present}"
            await asyncio.sleep(0.2)
        livekit = stack_livekit(stack)
        await alice.join(livekit.url, livekit.token(WEB_IDENTITY, ROOM))
        # the greeting (which may have ended before the web user came) is over
        await until(
            lambda: (
                bool(engine_events.of_type("response.done", "out"))
                and alice.agent_state() == "listening"
            ),
            45,
            f"the greeting to end (states so far: {alice.states})",
        )
        alice.say(HELLO)
        await until(
            lambda: any(t.text == HELLO_ANSWER for t in alice.finals("agent")),
            45,
            f"the answer to hello ({[t.text for t in alice.finals('agent')]})",
        )

        # The caller asks for billing: the agent says so, and the call goes to <Dial>.
        result = await asyncio.wait_for(call, 90)
        assert result.transferred_to == BILLING, result.errors
        dials = [e.detail for e in result.timeline.events if e.kind == "dial"]
        assert [d["number"] for d in dials] == [BILLING]
        assert any(t.text == TRANSFERRING for t in alice.finals("agent"))
        await until(
            lambda: (
                PHONE_IDENTITY not in {p.identity for p in alice.room.remote_participants.values()}
            ),
            15,
            "the transferred caller to leave the room",
        )

        # The agent stays for the web user, and its tools still answer out loud.
        agent = alice.agent_identity()
        assert agent is not None
        await until(lambda: alice.agent_state() == "listening", 30, "the agent to listen")
        alice.say(WEATHER)
        await until(
            lambda: any(t.text == WEATHER_ANSWER for t in alice.finals("agent")),
            45,
            f"the weather answer after the transfer ({[t.text for t in alice.finals('agent')]})",
        )
        # transfer_call was offered while the caller was in the room, and withdrawn after
        await until(
            lambda: bool(offered(engine_events)) and offered(engine_events)[-1] == ["get_weather"],
            15,
            f"transfer_call to be withdrawn ({offered(engine_events)})",
        )
        assert offered(engine_events)[0] == ["get_weather", "transfer_call"]
    finally:
        if not call.done():
            call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        await alice.leave()

    # The call's record: moved to billing, not hung up on.
    call_record = await stored(stack, result.call_sid, 10)
    assert call_record["end_reason"] == "transferred"
    assert call_record["transferred_to"] == BILLING
    assert result.hung_up_by != "rest"

    # The agent's record: the transfer as the carrier took it, then the weather, answered.
    agent_record = await stored(stack, f"room:{ROOM}:{agent.removeprefix('agent-')}", 30)
    assert agent_record["end_reason"] == "room_empty"
    assert agent_record["transferred_to"] == BILLING
    calls = [(c["name"], json.loads(c["output"])) for c in agent_record["tool_calls"]]
    assert calls[0] == ("transfer_call", {"ok": True, "transferred_to": BILLING})
    assert [name for name, _ in calls] == ["transfer_call", "get_weather"]
    answers = [line["text"] for line in agent_record["transcript"] if line["role"] == "agent"]
    assert TRANSFERRING in answers and WEATHER_ANSWER in answers
    assert answers.index(WEATHER_ANSWER) > answers.index(TRANSFERRING)


async def test_a_web_only_rooms_agent_is_not_offered_transfer_call(
    stack: LocalStack, engine_events: EngineEvents
) -> None:
    """The lobby profile has transfer_call; a room of web users has no call to transfer."""
    room = "web-only-lobby"
    alice = Human(WEB_IDENTITY)
    livekit = stack_livekit(stack)
    try:
        await alice.join(livekit.url, livekit.token(WEB_IDENTITY, room))
        await until(
            lambda: bool(alice.finals("agent")) and alice.agent_state() == "listening",
            60,
            f"the agent to greet and listen (states so far: {alice.states})",
        )
        assert offered(engine_events) == [["get_weather"]]
        alice.say(TRANSFER_ME)  # the model cannot call what it is not offered
        await until(
            lambda: any(t.text == TRANSFERRING for t in alice.finals("agent")),
            45,
            f"the agent's reply ({[t.text for t in alice.finals('agent')]})",
        )
        await until(lambda: alice.agent_state() == "listening", 30, "the agent to listen")
        alice.say(WEATHER)
        await until(
            lambda: any(t.text == WEATHER_ANSWER for t in alice.finals("agent")),
            45,
            f"the weather answer ({[t.text for t in alice.finals('agent')]})",
        )
        agent = alice.agent_identity()
        assert agent is not None
    finally:
        await alice.leave()
    assert engine_events.of_type("response.function_call_arguments.done", "out")
    called = [e["name"] for _, e in engine_events.of_type("response.function_call_arguments.done")]
    assert called == ["get_weather"]
    assert offered(engine_events) == [["get_weather"]]
    agent_record = await stored(stack, f"room:{room}:{agent.removeprefix('agent-')}", 30)
    assert [c["name"] for c in agent_record["tool_calls"]] == ["get_weather"]
    assert agent_record["transferred_to"] is None
