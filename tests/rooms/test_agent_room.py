"""The agent job in a real room: a real livekit-server, the real local Realtime engine, and
Python ``livekit.rtc`` participants that speak with espeak-ng, as web users would.

Each test runs :func:`callplane.rooms.agent.run_agent` in-process and watches the room from the
humans' side: the agent's audio track, its ``lk.agent.state`` attribute and the
``lk.transcription`` text streams.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from callplane.media_settings import MediaSettings
from callplane.profiles import AgentProfile, resolve_tools
from callplane.records import CallRecord, RecordStore
from callplane.rooms.agent import AgentJobError, run_agent, tools_for_room
from callplane_standins.realtime_engine.server import EngineServer
from tests.livekit_server import LiveKitServer, livekit_server_fixture
from tests.support.livekit_people import Human, humans, join, minted
from tests.support.media import agent_room_settings
from tests.support.waiting import until

livekit = livekit_server_fixture()

IDLE_TIMEOUT_S = 2.0
WEATHER = "what is the weather like today"
WEATHER_REPLY = "It is sunny and seventy two degrees today."  # the engine reads numbers out


def media_settings(server: LiveKitServer, engine: EngineServer, tmp_path: Path) -> MediaSettings:
    return agent_room_settings(tmp_path, engine, server.settings(idle_timeout_s=IDLE_TIMEOUT_S))


@pytest.fixture
def settings(livekit: LiveKitServer, engine: EngineServer, tmp_path: Path) -> MediaSettings:
    return media_settings(livekit, engine, tmp_path)


@pytest.fixture
async def jobs() -> AsyncIterator[list[asyncio.Task[CallRecord]]]:
    """Agent jobs a test started; one still running when the test ends is cancelled."""
    started: list[asyncio.Task[CallRecord]] = []
    yield started
    for task in started:
        task.cancel()
    await asyncio.gather(*started, return_exceptions=True)


def start_job(
    jobs: list[asyncio.Task[CallRecord]],
    settings: MediaSettings,
    room: str,
    profile: str | None = None,
    *,
    stop: asyncio.Event | None = None,
) -> asyncio.Task[CallRecord]:
    """run_agent in the background, as the launcher's child process would run it."""
    task = asyncio.create_task(run_agent(settings, {}, room, profile, stop=stop))
    jobs.append(task)
    return task


async def finished_speaking(human: Human, spoken_before: int, timeout: float = 20) -> None:
    """The agent spoke (one more 'speaking' than before) and is listening again."""
    await until(
        lambda: (
            human.states.count("speaking") > spoken_before and human.agent_state() == "listening"
        ),
        timeout,
        f"the agent to finish speaking (states so far: {human.states})",
    )


async def test_the_agent_answers_a_question_asked_in_the_room(
    livekit: LiveKitServer, settings: MediaSettings, jobs: list[asyncio.Task[CallRecord]]
) -> None:
    async with humans(minted(livekit, "weather-room"), "alice") as (alice,):
        job = start_job(jobs, settings, "weather-room", "web")
        await finished_speaking(alice, 0)  # the greeting
        alice.say(WEATHER)
        await until(
            lambda: any("sunny" in t.text for t in alice.finals("agent")), 30, "the reply text"
        )
        await finished_speaking(alice, 1)
        assert alice.loud_frames > 50  # well over a second of non-silent agent audio
        assert "speaking" in alice.states
        user = alice.finals("user")
        assert [t.text for t in user] == [WEATHER]
        assert user[0].attributes["lk.transcribed_track_id"] == alice.mic_sid
        assert user[0].attributes["callplane.participant"] == "alice"
        reply = next(t for t in alice.finals("agent") if "sunny" in t.text)
        assert reply.text == WEATHER_REPLY
        agent_tracks = [
            pub.sid
            for p in alice.room.remote_participants.values()
            for pub in p.track_publications.values()
        ]
        assert reply.attributes["lk.transcribed_track_id"] in agent_tracks
        assert reply.attributes["lk.segment_id"]
        # interim streams carried the same segment before its final text
        interim = [
            t
            for t in alice.transcripts
            if t.attributes.get("lk.segment_id") == reply.attributes["lk.segment_id"]
            and t.attributes.get("lk.transcription_final") == "false"
        ]
        assert interim and interim[0].text == reply.text
    record = await asyncio.wait_for(job, IDLE_TIMEOUT_S + 10)
    assert record.end_reason == "room_empty"
    assert record.profile == "web"
    assert record.from_ == "alice"
    roles = [(line["role"], line["text"]) for line in record.transcript]
    assert ("caller", WEATHER) in roles
    assert ("agent", WEATHER_REPLY) in roles
    stored = RecordStore(settings.records_url).get(record.call_sid)
    assert stored is not None and stored["end_reason"] == "room_empty"
    assert record.call_sid.startswith("room:weather-room:")


async def test_the_agent_hears_every_human_in_the_room(
    livekit: LiveKitServer, settings: MediaSettings, jobs: list[asyncio.Task[CallRecord]]
) -> None:
    async with humans(minted(livekit, "two-humans"), "alice") as (alice,):
        job = start_job(jobs, settings, "two-humans", "web")
        await finished_speaking(alice, 0)
        async with humans(minted(livekit, "two-humans"), "bob") as (bob,):
            await asyncio.sleep(1.0)  # bob's track joins the mix
            bob.say(WEATHER)
            await until(
                lambda: any("sunny" in t.text for t in bob.finals("agent")), 30, "bob's answer"
            )
            await finished_speaking(alice, 1)
            alice.say("hello")
            await until(
                lambda: any("I can hear you" in t.text for t in alice.finals("agent")),
                30,
                "alice's answer",
            )
            by_identity = {
                t.text: t.attributes.get("callplane.participant") for t in alice.finals("user")
            }
            assert by_identity == {WEATHER: "bob", "hello": "alice"}
            assert bob.loud_frames > 0
    record = await asyncio.wait_for(job, IDLE_TIMEOUT_S + 10)
    callers = [line["text"] for line in record.transcript if line["role"] == "caller"]
    assert callers == [WEATHER, "hello"]
    assert record.context["participants"] == ["alice", "bob"]


async def test_the_job_leaves_once_the_last_human_has_gone(
    livekit: LiveKitServer, settings: MediaSettings, jobs: list[asyncio.Task[CallRecord]]
) -> None:
    async with humans(minted(livekit, "leaving-room"), "alice") as (alice,):
        job = start_job(jobs, settings, "leaving-room", "quiet")
        await until(lambda: alice.agent_state() == "listening", 15, "the agent to listen")
    left_at = time.monotonic()
    record = await asyncio.wait_for(job, IDLE_TIMEOUT_S + 10)
    waited = time.monotonic() - left_at
    assert record.end_reason == "room_empty"
    assert waited >= IDLE_TIMEOUT_S - 0.5  # the grace period was kept
    assert RecordStore(settings.records_url).get(record.call_sid) is not None


async def test_a_human_who_returns_within_the_grace_period_keeps_the_agent(
    livekit: LiveKitServer, settings: MediaSettings, jobs: list[asyncio.Task[CallRecord]]
) -> None:
    async with humans(minted(livekit, "reload-room"), "alice") as (alice,):
        job = start_job(jobs, settings, "reload-room", "quiet")
        await until(lambda: alice.agent_state() == "listening", 15, "the agent to listen")
    await asyncio.sleep(IDLE_TIMEOUT_S / 4)
    async with humans(minted(livekit, "reload-room"), "alice") as (again,):
        await asyncio.sleep(IDLE_TIMEOUT_S * 1.2)
        assert not job.done()  # the page reload did not end the conversation
        assert again.agent_state() == "listening"
    record: CallRecord = await asyncio.wait_for(job, IDLE_TIMEOUT_S + 10)
    assert record.end_reason == "room_empty"


async def test_nobody_comes_and_the_job_leaves_after_the_idle_timeout(
    engine: EngineServer, settings: MediaSettings
) -> None:
    started = time.monotonic()
    record = await asyncio.wait_for(run_agent(settings, {}, "empty-room"), IDLE_TIMEOUT_S + 10)
    assert time.monotonic() - started >= IDLE_TIMEOUT_S - 0.5
    assert record.end_reason == "nobody_came"
    assert engine.sessions_opened == 0  # no Realtime session for an empty room
    assert RecordStore(settings.records_url).get(record.call_sid) is not None


async def test_stop_makes_the_agent_leave(
    livekit: LiveKitServer, settings: MediaSettings, jobs: list[asyncio.Task[CallRecord]]
) -> None:
    stop = asyncio.Event()
    async with humans(minted(livekit, "stop-room"), "alice") as (alice,):
        job = start_job(jobs, settings, "stop-room", "quiet", stop=stop)
        await until(lambda: alice.agent_state() == "listening", 15, "the agent to listen")
        stop.set()
        record = await asyncio.wait_for(job, 10)
        assert record.end_reason == "job_stopped"
        await until(lambda: alice.agent_state() is None, 10, "the agent to leave the room")


async def test_the_profile_comes_from_the_room_metadata(
    livekit: LiveKitServer, settings: MediaSettings
) -> None:
    from livekit import api

    async with livekit.api() as lk:
        await lk.room.create_room(
            api.CreateRoomRequest(name="meta-room", metadata=json.dumps({"profile": "quiet"}))
        )
    record = await asyncio.wait_for(run_agent(settings, {}, "meta-room"), IDLE_TIMEOUT_S + 10)
    assert record.profile == "quiet"


async def test_bad_input_fails_before_joining(settings: MediaSettings) -> None:
    with pytest.raises(AgentJobError, match=r"profile='nope' is not a configured profile"):
        await run_agent(settings, {}, "some-room", "nope")
    with pytest.raises(AgentJobError, match="room='bad room!' is not a valid room name"):
        await run_agent(settings, {}, "bad room!")
    without = settings.model_copy(update={"livekit": None})
    with pytest.raises(AgentJobError, match="livekit is not configured"):
        await run_agent(without, {}, "some-room")
    unreachable = settings.model_copy(
        update={"livekit": settings.livekit.model_copy(update={"url": "ws://127.0.0.1:9"})}  # type: ignore[union-attr]
    )
    with pytest.raises(AgentJobError, match="cannot join room 'some-room'"):
        await run_agent(unreachable, {}, "some-room")


async def test_a_human_interrupting_the_agent_cuts_it_off_where_they_heard_it(
    livekit: LiveKitServer,
    engine: EngineServer,
    settings: MediaSettings,
    jobs: list[asyncio.Task[CallRecord]],
) -> None:
    greeting = engine.ctx.script.greeting
    greeting_ms = len(engine.ctx.synthesizer.synthesize_sync(greeting, "marin", 24000)) / 24
    async with humans(minted(livekit, "barge-room"), "alice") as (alice,):
        job = start_job(jobs, settings, "barge-room", "web")
        await until(lambda: alice.agent_state() == "speaking", 15, "the greeting to start")
        await asyncio.sleep(0.8)
        alice.say("hello")
        await until(
            lambda: any("I can hear you" in t.text for t in alice.finals("agent")),
            30,
            "the answer to the interruption",
        )
        await finished_speaking(alice, 1)
    record = await asyncio.wait_for(job, IDLE_TIMEOUT_S + 10)
    assert len(record.interruptions) == 1
    cut = record.interruptions[0]["audio_end_ms"]
    # truncated inside the greeting, after what had been played before alice spoke
    assert 800 <= cut < greeting_ms
    assert alice.states.count("listening") >= 2  # it stopped and listened


async def test_the_agent_says_goodbye_and_leaves_when_asked_to_end(
    livekit: LiveKitServer, settings: MediaSettings, jobs: list[asyncio.Task[CallRecord]]
) -> None:
    async with humans(minted(livekit, "goodbye-room"), "alice") as (alice,):
        job = start_job(jobs, settings, "goodbye-room", "quiet")
        await until(lambda: alice.agent_state() == "listening", 15, "the agent to listen")
        alice.say("goodbye")
        record = await asyncio.wait_for(job, 30)
        assert record.end_reason == "agent_hung_up"
        assert [call["name"] for call in record.tool_calls] == ["end_call"]
        assert any("Goodbye" in t.text for t in alice.finals("agent"))
        assert alice.loud_frames > 0  # the goodbye was heard before the agent left
        await until(lambda: alice.agent_state() is None, 10, "the agent to leave the room")


def test_a_room_without_a_phone_caller_is_not_offered_transfer_call() -> None:
    profile = AgentProfile(name="lobby", tools=("end_call", "transfer_call"))
    toolset = resolve_tools(profile, {})
    assert tools_for_room(toolset, phone_caller_present=False).names() == ["end_call"]
    assert tools_for_room(toolset, phone_caller_present=True).names() == [
        "end_call",
        "transfer_call",
    ]


def declared(engine: EngineServer) -> list[str]:
    """The tools the agent's live Realtime session declares, as the engine holds them."""
    return sorted(tool["name"] for s in engine.sessions for tool in s.config.get("tools", []))


async def test_transfer_is_offered_only_while_a_phone_caller_is_in_the_room(
    livekit: LiveKitServer,
    settings: MediaSettings,
    engine: EngineServer,
    jobs: list[asyncio.Task[CallRecord]],
) -> None:
    room = "tools-follow-the-room"
    assert settings.profiles["quiet"].tools == ("end_call", "transfer_call")
    async with humans(minted(livekit, room), "alice") as (alice,):
        start_job(jobs, settings, room, "quiet")
        await until(lambda: alice.agent_state() == "listening", 15, "the agent to listen")
        assert declared(engine) == ["end_call"]  # web users only: nobody to transfer
        phone = await join(livekit, "phone:+15551234567", room, kind="sip")
        try:
            await until(
                lambda: declared(engine) == ["end_call", "transfer_call"],
                10,
                f"transfer_call to be offered with a phone caller in ({declared(engine)})",
            )
        finally:
            await phone.disconnect()
        await until(
            lambda: declared(engine) == ["end_call"],
            10,
            f"transfer_call to be withdrawn once the caller left ({declared(engine)})",
        )
