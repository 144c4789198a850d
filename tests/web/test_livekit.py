"""The playground against a real livekit-server: what the page sends and what it shows.

A Python ``livekit.rtc`` participant sits in the same room as headless Chromium: as a listener
it proves the browser publishes its (fake, espeak-ng) microphone; as ``agent-test`` it plays the
agent's side of the contract (the ``lk.agent.state`` attribute, ``lk.transcription`` text
streams, an audio track) and the page must show all of it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Literal

import numpy as np
import numpy.typing as npt
import pytest
from livekit import rtc

from callplane.livekit_settings import AGENT_IDENTITY_PREFIX
from callplane_standins.realtime_engine.recognition import PhraseRecognizer
from tests.browser import BrowserPage, launch_browser, synthesize_wav
from tests.livekit_server import LiveKitServer
from tests.support.livekit_people import fresh_room, join, publish_microphone
from tests.web.conftest import SIGNED_LINK, WEB_KEY, Site

PHRASE = "what is the weather like today"
PATTERNS = (PHRASE, "goodbye", "transfer me to sales", "my order number is {digits}")
RATE = 48_000
FRAME_S = 0.02


async def _join(
    livekit: LiveKitServer,
    identity: str,
    room_name: str,
    *,
    kind: Literal["standard", "agent"] = "standard",
) -> tuple[rtc.Room, asyncio.Queue[tuple[rtc.RemoteAudioTrack, rtc.RemoteParticipant]]]:
    """Connect a Python participant; its queue receives every remote audio track it subscribes."""
    room = rtc.Room()
    tracks: asyncio.Queue[tuple[rtc.RemoteAudioTrack, rtc.RemoteParticipant]] = asyncio.Queue()

    def on_track(
        track: rtc.Track, _pub: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if isinstance(track, rtc.RemoteAudioTrack):
            tracks.put_nowait((track, participant))

    room.on("track_subscribed", on_track)
    await join(livekit, identity, room_name, kind=kind, room=room)
    return room, tracks


async def _record(track: rtc.RemoteAudioTrack, seconds: float) -> npt.NDArray[np.int16]:
    """``seconds`` of a remote track as int16 mono at 48 kHz."""
    stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1)
    chunks: list[npt.NDArray[np.int16]] = []
    got = 0
    try:
        async with asyncio.timeout(seconds + 15):
            async for event in stream:
                samples = np.frombuffer(event.frame.data, dtype=np.int16).copy()
                chunks.append(samples)
                got += samples.size
                if got >= seconds * RATE:
                    break
    finally:
        await stream.aclose()
    return np.concatenate(chunks)


def _utterances(audio: npt.NDArray[np.int16], threshold: float = 300.0) -> list[slice]:
    """Complete stretches of speech: loud frames joined across pauses under 0.4 s, and not
    touching either end of the recording (those may be cut)."""
    frame = round(FRAME_S * RATE)
    count = audio.size // frame
    frames = audio[: count * frame].astype(np.float64).reshape(count, frame)
    loud = np.sqrt((frames**2).mean(axis=1)) > threshold
    gap = round(0.4 / FRAME_S)
    spans: list[tuple[int, int]] = []
    for index in np.flatnonzero(loud):
        i = int(index)
        if spans and i - spans[-1][1] <= gap:
            spans[-1] = (spans[-1][0], i + 1)
        else:
            spans.append((i, i + 1))
    pad = round(0.15 / FRAME_S)
    return [
        slice(max(0, start - pad) * frame, min(count, end + pad) * frame)
        for start, end in spans
        if start > gap and end < count - gap
    ]


@pytest.fixture
async def browser_in_room(
    live_site: Site, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[BrowserPage, str]]:
    """Chromium on the playground for a fresh room, its microphone saying PHRASE in a loop;
    the page has a web key, or a signed link when parametrized with "link"."""
    wav = synthesize_wav(PHRASE)
    room_name = fresh_room("web-test")
    via = getattr(request, "param", "key")
    access = {"link": SIGNED_LINK} if via == "link" else {"key": WEB_KEY}
    async with launch_browser(fake_audio=wav) as browser:
        page = await browser.open(live_site.playground(room=room_name, **access))
        await page.wait_for("h => h.state === 'idle'")
        yield page, room_name
        # Leave like a user would, so the server is not left waiting for a vanished peer.
        leave = page.page.get_by_role("button", name="Leave")
        if await leave.is_enabled():
            await leave.click()
            await page.wait_for("h => h.state === 'disconnected'")
        # A whole session, joining to leaving, without a console error or uncaught exception.
        assert page.errors == [], page.log()


async def test_browser_microphone_reaches_a_python_participant(
    livekit: LiveKitServer, live_site: Site, browser_in_room: tuple[BrowserPage, str]
) -> None:
    page, room_name = browser_in_room
    listener, tracks = await _join(livekit, "listener", room_name)
    left: dict[str, asyncio.Event] = {}

    def on_left(participant: rtc.RemoteParticipant) -> None:
        left.setdefault(participant.identity, asyncio.Event()).set()

    listener.on("participant_disconnected", on_left)
    try:
        await page.page.get_by_role("button", name="Talk").click()
        hook = await page.wait_for(
            "h => h.connected && h.micPublished && h",
            timeout_s=30,
            what="the page to connect and publish its microphone",
        )
        assert hook["identity"] in live_site.endpoint.identities
        assert live_site.endpoint.requests[0]["body"] == {"room": room_name, "agent": True}
        async with asyncio.timeout(20):
            track, sender = await tracks.get()
        assert sender.identity == hook["identity"]

        # Two loops of the fake microphone file: at least one whole utterance in between.
        audio = await _record(track, 7.0)
        peak_rms = math.sqrt(float(np.max(audio.astype(np.float64) ** 2)))
        assert peak_rms > 1000, f"the browser's audio is silent (peak {peak_rms:.0f})"
        utterances = _utterances(audio)
        assert utterances, "no complete utterance between silences in the browser's audio"
        recognizer = PhraseRecognizer(PATTERNS)
        heard = [recognizer.recognize(audio[span], RATE).phrase for span in utterances]
        assert PHRASE in heard, f"recognised {heard} in the browser's microphone audio"

        await page.wait_for("h => h.micLevelMax > 0.05", what="the microphone meter to move")
        state = page.page.get_by_test_id("connection-state")
        assert await state.inner_text() == "connected"
        await page.screenshot("playground-connected")

        await page.page.get_by_role("button", name="Leave").click()
        await page.wait_for("h => h.state === 'disconnected' && !h.connected")
        async with asyncio.timeout(10):
            await left.setdefault(hook["identity"], asyncio.Event()).wait()
        assert await page.page.get_by_role("button", name="Talk").is_enabled()
        assert (await page.hook())["errors"] == []
    finally:
        await listener.disconnect()


async def _tone(source: rtc.AudioSource, stop: asyncio.Event) -> None:
    """A 440 Hz tone at about a third of full scale, the 'agent voice', until ``stop``."""
    frame_samples = round(FRAME_S * RATE)
    t = 0
    while not stop.is_set():
        n = np.arange(t, t + frame_samples)
        samples = (0.3 * 32767 * np.sin(2 * np.pi * 440 * n / RATE)).astype(np.int16)
        frame = rtc.AudioFrame(samples.tobytes(), RATE, 1, frame_samples)
        await source.capture_frame(frame)
        t += frame_samples


# A signed link instead of a key: the other way into a room.
@pytest.mark.parametrize("browser_in_room", ["link"], indirect=True)
async def test_page_shows_the_agent_state_transcript_and_voice(
    livekit: LiveKitServer, live_site: Site, browser_in_room: tuple[BrowserPage, str]
) -> None:
    page, room_name = browser_in_room
    await page.page.get_by_role("button", name="Talk").click()
    hook = await page.wait_for("h => h.connected && h", timeout_s=30, what="the page to connect")
    [request] = live_site.endpoint.requests
    assert request["link"] == SIGNED_LINK
    assert request["authorization"] is None

    identity = f"{AGENT_IDENTITY_PREFIX}test"
    agent, _ = await _join(livekit, identity, room_name, kind="agent")
    stop = asyncio.Event()
    tone: asyncio.Task[None] | None = None
    try:
        await agent.local_participant.set_attributes({"lk.agent.state": "listening"})
        await page.wait_for(
            "(h, id) => h.agentIdentity === id && h.agentState === 'listening'",
            arg=identity,
            what="the agent to show as listening",
        )
        ui = page.page
        assert await ui.get_by_test_id("agent-state").inner_text() == "listening"

        # The user's turn, transcribed by the agent: an interim result, then the final text,
        # each a whole stream for the same segment; the line must be updated in place.
        user = {"lk.segment_id": "seg-user-1", "callplane.speaker": "user"}
        await agent.local_participant.send_text(
            "what is the",
            topic="lk.transcription",
            attributes={**user, "lk.transcription_final": "false"},
        )
        await page.wait_for(
            "h => h.transcript.some(l => l.id === 'seg-user-1' && l.text === 'what is the')",
            what="the interim user line",
        )
        await agent.local_participant.send_text(
            PHRASE, topic="lk.transcription", attributes={**user, "lk.transcription_final": "true"}
        )
        await agent.local_participant.set_attributes({"lk.agent.state": "thinking"})
        await page.wait_for(
            "h => h.agentState === 'thinking' && h.transcript.some(l => l.final)",
            what="the final user line and the thinking state",
        )

        # The agent's answer: its voice as an audio track and its words as deltas in one stream
        # whose final flag arrives with the stream's trailer.
        source, _ = await publish_microphone(agent, RATE, "agent-voice")
        tone = asyncio.create_task(_tone(source, stop))
        await agent.local_participant.set_attributes({"lk.agent.state": "speaking"})
        answer = {
            "lk.segment_id": "seg-agent-1",
            "callplane.speaker": "agent",
            "lk.transcription_final": "false",
        }
        writer = await agent.local_participant.stream_text(
            topic="lk.transcription", attributes=answer
        )
        await writer.write("It is sunny ")
        await writer.write("and warm today.")
        await page.wait_for(
            "h => h.transcript.some(l => l.id === 'seg-agent-1' && l.text === "
            "'It is sunny and warm today.' && !l.final)",
            what="the agent's streamed line",
        )
        await writer.aclose(attributes={"lk.transcription_final": "true"})
        final = await page.wait_for(
            "h => h.agentState === 'speaking' && h.agentAudio && h.agentAudioLevelMax > 0.1 "
            "&& h.transcript.length === 2 && h.transcript.every(l => l.final) && h",
            what="the agent's voice, state and final transcript",
        )
        assert final["transcript"] == [
            {
                "id": "seg-user-1",
                "speaker": "user",
                "identity": identity,
                "text": PHRASE,
                "final": True,
            },
            {
                "id": "seg-agent-1",
                "speaker": "agent",
                "identity": identity,
                "text": "It is sunny and warm today.",
                "final": True,
            },
        ]
        lines = ui.get_by_test_id("transcript-line")
        assert await lines.count() == 2
        assert await lines.nth(0).inner_text() == f"You: {PHRASE}"
        assert await lines.nth(1).inner_text() == "Agent: It is sunny and warm today."
        assert await lines.nth(1).get_attribute("data-speaker") == "agent"
        assert await ui.get_by_test_id("agent-state").inner_text() == "speaking"
        # The agent's voice plays through an attached audio element.
        playing = await ui.evaluate(
            "id => [...document.querySelectorAll('#audio-sink audio')]"
            ".some(a => a.dataset.participant === id && !a.paused)",
            identity,
        )
        assert playing, page.log()
        await page.screenshot("playground-agent")
        assert hook["errors"] == []

        # The agent leaves: the page says so instead of showing a stale state.
        stop.set()
        await tone
        await agent.disconnect()
        await page.wait_for(
            "h => h.agentState === null && h.agentIdentity === null && !h.agentAudio",
            what="the agent's departure",
        )
        assert await ui.get_by_test_id("agent-state").inner_text() == "not in the room"
        assert (await page.hook())["connected"] is True
    finally:
        stop.set()
        if tone is not None:
            await tone
        await agent.disconnect()
