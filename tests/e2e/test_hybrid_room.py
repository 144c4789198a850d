"""A hybrid room through every local part: a simulated phone call and a Python ``livekit.rtc``
participant in the same LiveKit room, served by one dispatched agent job.

Nothing is mocked: the scripted caller -> Twilio simulator -> edge worker -> media app, whose
profile names a room, so the call joins that room as ``phone:+E164`` (µ-law 8 kHz <-> 48 kHz);
the room's webhooks go to the edge, which dispatches the agent through the media app's
``/agents/dispatch``; the agent job (a child process) hears every human mixed and answers
through the local Realtime engine. The test checks both directions for both humans: each hears
the agent's answer to a question the other one asked, and the agent hears both.
"""

from __future__ import annotations

import asyncio
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
from callplane_standins.twilio_simulator.caller import hang_up, say, wait_for_reply
from tests.conftest import ConformanceLog
from tests.e2e.conftest import E2E_REPLICAS, started
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

LOBBY = AgentProfile(
    name="lobby",
    instructions="You serve a shared room: phone callers and web users. Be brief.",
    greeting="Greet everyone in the room.",
    tools=("get_weather",),
    room=ROOM,
)


@pytest.fixture
async def stack(tmp_path: Path, conformance: ConformanceLog) -> AsyncIterator[LocalStack]:
    def observe(direction: Direction, event: Mapping[str, Any]) -> None:
        conformance(direction, event)

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
