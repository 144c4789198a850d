"""The browser playground against the whole local stack, the way a user meets it.

``LocalStack(livekit=True)`` runs the engine, the edge (which serves the page and mints tokens),
the media app (which launches agent jobs) and a real livekit-server whose signed webhooks go to
the edge. Headless Chromium opens ``stack.playground_link(room)`` with a fake microphone that
asks espeak-ng's "what is the weather like today" in a loop and presses Talk. Nothing in the
chain is stubbed: the page's ``POST /token`` is the edge's, the agent is dispatched by the real
server's webhook, runs as a child process of the media app and talks through the local engine.
"""

from __future__ import annotations

import time

import pytest

from callplane_dev.stack import LocalStack
from tests.browser import launch_browser, synthesize_wav
from tests.e2e.conftest import LIVEKIT_AGENT_IDLE_S
from tests.support.livekit_people import fresh_room
from tests.support.stack import agent_jobs, stack_livekit, wait_job_ended, wait_jobs

PHRASE = "what is the weather like today"
# The support profile (the stack's first, so a web room's default) declares get_weather, so the
# engine calls the tool and answers with the script's after_tool text filled from its output
# (callplane/samples.py SAMPLE_WEATHER), numbers read out as words.
WEATHER_ANSWER = "Right now it is sunny and seventy two degrees in San Francisco."
AGENT_IDLE_S = LIVEKIT_AGENT_IDLE_S
# How long after the idle timeout a job may take to notice, leave, save its record and exit.
EXIT_MARGIN_S = 15.0
SCREENSHOT = "e2e-playground-agent-weather-reply"


@pytest.fixture
def stack(livekit_stack: LocalStack) -> LocalStack:
    """The whole local stack with LiveKit (tests/e2e/conftest.py)."""
    return livekit_stack


async def test_talk_to_the_agent_from_the_playground(stack: LocalStack) -> None:
    room = fresh_room("e2e-web")
    # Loop the question; the long pause lets the agent answer before it is asked again.
    wav = synthesize_wav(PHRASE, lead_silence_s=0.5, tail_silence_s=7.0)
    async with launch_browser(fake_audio=wav) as browser:
        page = await browser.open(stack.playground_link(room))
        await page.wait_for("(h, r) => h.state === 'idle' && h.room === r", arg=room)
        assert await agent_jobs(stack, room) == [], "an agent started before anyone pressed Talk"

        await page.page.get_by_role("button", name="Talk").click()
        hook = await page.wait_for(
            "h => h.connected && h.micPublished && h", timeout_s=30, what="the page to connect"
        )
        assert hook["room"] == room
        assert hook["identity"].startswith("web-")

        # The server's webhook reached the edge, which dispatched one job to the media app.
        [job] = await wait_jobs(
            stack, room, lambda jobs: len(jobs) == 1, 30, "the webhook to start an agent job"
        )
        assert job["state"] == "running"
        assert job["profile"] == "support"
        assert job["reason"] in ("room_started", "participant_joined")
        assert job["handle"].startswith("pid:")

        # The agent joins and shows its state; the page records each state it passes through.
        await page.page.evaluate(
            """() => {
                window.__states = [];
                setInterval(() => {
                    const s = window.callplane.agentState;
                    if (s && window.__states[window.__states.length - 1] !== s)
                        window.__states.push(s);
                }, 20);
            }"""
        )
        await page.wait_for(
            "h => h.agentIdentity !== null && h.agentIdentity.startsWith('agent-')",
            timeout_s=45,
            what="the agent to join the room",
        )
        final = await page.wait_for(
            "(h, answer) => h.transcript.some(l => l.speaker === 'agent' && l.final "
            "&& l.text === answer) && h",
            arg=WEATHER_ANSWER,
            timeout_s=60,
            what="the agent's answer to the weather question",
        )
        # The user's question, transcribed by the agent, comes before the answer.
        texts = [(line["speaker"], line["text"], line["final"]) for line in final["transcript"]]
        answer_at = texts.index(("agent", WEATHER_ANSWER, True))
        assert ("user", PHRASE, True) in texts[:answer_at], texts
        assert all(line["identity"] == final["agentIdentity"] for line in final["transcript"])
        # The agent's voice reached the page and was not silence.
        await page.wait_for(
            "h => h.agentAudio && h.agentAudioLevelMax > 0.05",
            what="non-silent agent audio",
        )
        hook = await page.hook()
        states: list[str] = await page.page.evaluate("() => window.__states")
        assert "speaking" in states and "listening" in states, states
        assert hook["agentState"] in ("listening", "thinking", "speaking"), hook["agentState"]
        ui = page.page
        assert await ui.get_by_test_id("connection-state").inner_text() == "connected"
        lines = [
            await line.inner_text() for line in await ui.get_by_test_id("transcript-line").all()
        ]
        assert f"Agent: {WEATHER_ANSWER}" in lines, lines
        assert f"You: {PHRASE}" in lines, lines
        shot = await page.screenshot(SCREENSHOT)
        print(f"playground screenshot: {shot}")
        assert shot.stat().st_size > 0

        # Still exactly one job for the room, however many webhooks arrived.
        [job] = await agent_jobs(stack, room)
        assert job["state"] == "running"

        # Leave: the room is empty, so the agent's job ends after its idle timeout.
        await ui.get_by_role("button", name="Leave").click()
        await page.wait_for("h => h.state === 'disconnected' && !h.connected")
        left = time.monotonic()
        ended = await wait_job_ended(
            stack,
            room,
            AGENT_IDLE_S + EXIT_MARGIN_S,
            "the agent job to exit after the last human left",
        )
        waited = time.monotonic() - left
        assert ended["job_id"] == job["job_id"]
        assert ended["state"] == "exited", ended
        assert ended["exit_code"] == 0
        # It waited for the idle timeout rather than leaving at once.
        assert waited >= AGENT_IDLE_S * 0.8, waited
        assert page.errors == [], page.log()

    print(f"the agent job exited {waited:.1f} s after the page left")
    # The job saved its call record with the reason it ended (the agent's job id is the
    # job's own, so look the record up by the room).
    records = [r for r in stack.calls(limit=50) if r["call_sid"].startswith(f"room:{room}:")]
    assert [r["end_reason"] for r in records] == ["room_empty"], records


async def test_the_page_without_a_key_shows_the_401(stack: LocalStack) -> None:
    room = fresh_room("e2e-nokey")
    async with launch_browser() as browser:
        page = await browser.open(f"{stack.edge_url}/playground/?room={room}")
        await page.wait_for("h => h.state === 'idle'")
        await page.page.get_by_role("button", name="Talk").click()
        errors = await page.wait_for(
            "h => h.errors.length > 0 && h.errors", what="the refused token request"
        )
        alert = page.page.get_by_role("alert")
        assert await alert.is_visible()
        text = await alert.inner_text()
        assert await page.page.get_by_test_id("connection-state").inner_text() == "failed"
        assert await page.page.get_by_role("button", name="Talk").is_enabled()
        hook = await page.hook()
        await page.screenshot("e2e-playground-no-key-401")
    assert [(e["kind"], e["status"]) for e in errors] == [("unauthorized", 401)]
    assert "401" in text and "?key=" in text, text
    assert hook["connected"] is False
    # Nothing was created on the way: no room on the server and no agent job.
    assert room not in await stack_livekit(stack).room_names()
    assert await agent_jobs(stack, room) == []
