"""The LiveKit room transport: mark/clear accounting (pure) and the transport in a real room.

The room tests start a real livekit-server (tests/livekit_server.py): a listener participant
hears the agent's audio, marks echo once the audio has played in real time, a clear echoes the
pending marks right after it, and a human's speech reaches the handler's ``on_audio`` as PCM.
"""

from __future__ import annotations

import asyncio
import base64
import time

import numpy as np
import pytest
from livekit import rtc

from callplane.rooms.agent_transport import (
    BYTES_PER_MS,
    FRAME_BYTES,
    LiveKitRoomTransport,
    is_human,
)
from callplane.rooms.playout import PlayoutQueue
from callplane.transports.base import AudioIn, CallEnded, MarkIn, TransportEvent
from callplane.transports.playback import PlaybackTracker
from tests.doubles import RecordingHandler
from tests.livekit_server import LiveKitServer, livekit_server_fixture
from tests.support.livekit_people import join, publish_microphone
from tests.support.waiting import until

livekit = livekit_server_fixture()

BPS = 48000  # bytes per second of PCM16 at 24 kHz


# --- PlayoutQueue: the transport's mark accounting --------------------------------------------


def test_frames_are_cut_across_chunks_and_name_the_marks_they_finish() -> None:
    q = PlayoutQueue(frame_bytes=8, bytes_per_second=BPS)
    q.push(b"\x01\x00" * 3, "m1")  # 6 bytes
    q.push(b"\x02\x00" * 3, "m2")  # 6 bytes
    first = q.next_frame()
    assert first is not None
    assert first.pcm == b"\x01\x00" * 3 + b"\x02\x00"
    assert first.marks == ("m1",)
    second = q.next_frame()
    assert second is not None and second.pcm == b"\x02\x00" * 2 and second.marks == ("m2",)
    assert q.next_frame() is None
    assert q.queued_bytes == 0


def test_an_empty_chunk_rides_on_the_frame_that_ends_before_it() -> None:
    q = PlayoutQueue(frame_bytes=4, bytes_per_second=BPS)
    q.push(b"\x00" * 4, "a")
    q.push(b"", "b")
    frame = q.next_frame()
    assert frame is not None and frame.marks == ("a", "b")
    q2 = PlayoutQueue(frame_bytes=4, bytes_per_second=BPS)
    q2.push(b"", "only")
    lone = q2.next_frame()
    assert lone is not None and lone.pcm == b"" and lone.marks == ("only",)


def test_marks_become_due_when_their_audio_has_played_out() -> None:
    q = PlayoutQueue(frame_bytes=960, bytes_per_second=BPS)  # 20 ms frames
    q.push(b"\x00" * 1920, "m1")  # 40 ms
    q.push(b"\x00" * 960, "m2")  # 20 ms
    t0 = 100.0
    f1 = q.next_frame()
    assert f1 is not None and f1.marks == ()
    assert q.captured(f1, t0) == pytest.approx(t0 + 0.02)
    f2 = q.next_frame()
    assert f2 is not None and f2.marks == ("m1",)
    # the source took the second frame right away: it plays after the first
    assert q.captured(f2, t0 + 0.001) == pytest.approx(t0 + 0.04)
    f3 = q.next_frame()
    assert f3 is not None
    q.captured(f3, t0 + 0.002)
    assert q.next_due() == pytest.approx(t0 + 0.04)
    assert q.due(t0 + 0.039) == []
    assert q.due(t0 + 0.04) == ["m1"]
    assert q.due(t0 + 0.07) == ["m2"]
    assert q.idle


def test_after_an_underrun_playout_restarts_from_now() -> None:
    q = PlayoutQueue(frame_bytes=960, bytes_per_second=BPS)
    q.push(b"\x00" * 960, "a")
    fa = q.next_frame()
    assert fa is not None
    q.captured(fa, 10.0)
    q.push(b"\x00" * 960, "b")
    fb = q.next_frame()
    assert fb is not None
    assert q.captured(fb, 11.0) == pytest.approx(11.02)  # not 10.04: the source ran dry


def test_clear_returns_every_unechoed_mark_in_order_and_voids_frames_in_flight() -> None:
    q = PlayoutQueue(frame_bytes=960, bytes_per_second=BPS)
    for name in ("m1", "m2", "m3", "m4"):
        q.push(b"\x00" * 960, name)
    f1 = q.next_frame()
    assert f1 is not None
    q.captured(f1, 1.0)  # m1 scheduled
    f2 = q.next_frame()  # m2 handed to the source, not yet captured
    assert f2 is not None
    assert q.clear(1.005) == ["m1", "m2", "m3", "m4"]
    assert q.idle and q.queued_bytes == 0
    # the frame that was in flight comes back from the source after the clear: ignored
    q.captured(f2, 1.01)
    assert q.next_due() is None and q.due(99.0) == []
    # new audio after the clear plays from the clear's time on
    q.push(b"\x00" * 960, "m5")
    f5 = q.next_frame()
    assert f5 is not None and f5.generation != f2.generation
    assert q.captured(f5, 1.006) == pytest.approx(1.026)


def test_bad_chunks_and_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="frame_bytes"):
        PlayoutQueue(frame_bytes=7, bytes_per_second=BPS)
    with pytest.raises(ValueError, match="bytes_per_second"):
        PlayoutQueue(frame_bytes=8, bytes_per_second=0)
    q = PlayoutQueue(frame_bytes=8, bytes_per_second=BPS)
    with pytest.raises(ValueError, match="odd length"):
        q.push(b"\x00\x00\x00", "m1")


def test_echoes_of_a_clear_are_void_for_the_core() -> None:
    """The accounting the core relies on: played marks count, marks voided by clear do not."""
    tracker = PlaybackTracker(bytes_per_ms=BYTES_PER_MS)
    q = PlayoutQueue(frame_bytes=FRAME_BYTES, bytes_per_second=BPS)
    names = [tracker.sent("item", 960) for _ in range(3)]
    for name in names:
        q.push(b"\x00" * 960, name)
    frame = q.next_frame()
    assert frame is not None
    q.captured(frame, 0.0)
    for name in q.due(0.02):
        assert tracker.echoed(name)
    assert tracker.played_ms("item") == 20
    voided = q.clear(0.03)
    tracker.clear()
    assert voided == names[1:]
    assert not any(tracker.echoed(name) for name in voided)
    assert tracker.played_ms("item") == 20


# --- the transport in a real room ---------------------------------------------------------------


def _collect(transport: LiveKitRoomTransport) -> list[TransportEvent]:
    """The events the transport hands its handler, as they come."""
    handler = RecordingHandler()
    transport.listen(handler)
    return handler.events


async def _ended(events: list[TransportEvent]) -> None:
    await until(lambda: events and isinstance(events[-1], CallEnded), 5, "the end")


def _tone(ms: int, amplitude: int = 8000, freq: float = 440.0) -> bytes:
    t = np.arange(24 * ms) / 24000
    return (np.sin(2 * np.pi * freq * t) * amplitude).astype("<i2").tobytes()


async def test_agent_audio_reaches_a_listener_and_marks_echo_in_real_time(
    livekit: LiveKitServer,
) -> None:
    agent_room = await join(livekit, "agent-t1", "transport-play")
    listener = await join(livekit, "alice", "transport-play")
    heard: list[float] = []

    async def listen(track: rtc.Track) -> None:
        async for event in rtc.AudioStream(track, sample_rate=24000, num_channels=1):
            data = np.frombuffer(event.frame.data, dtype=np.int16)
            heard.append(float(np.abs(data).max()) if len(data) else 0.0)

    readers: list[asyncio.Task[None]] = []
    listener.on(
        "track_subscribed",
        lambda track, pub, who: readers.append(asyncio.create_task(listen(track))),
    )
    try:
        async with LiveKitRoomTransport(agent_room) as transport:
            assert transport.track_sid
            events = _collect(transport)
            await until(lambda: readers, 10, "the listener to subscribe to the agent's track")
            start = time.monotonic()
            transport.play(base64.b64encode(_tone(400)).decode(), "m1")
            transport.play(base64.b64encode(_tone(400)).decode(), "m2")
            await until(lambda: sum(isinstance(e, MarkIn) for e in events) == 2, 10, "both marks")
            elapsed = time.monotonic() - start
            marks = [e.name for e in events if isinstance(e, MarkIn)]
            assert marks == ["m1", "m2"]
            # paced like a listener hears it, not as fast as it was queued
            assert elapsed >= 0.75
            await until(lambda: any(level > 2000 for level in heard), 5, "audible audio")
            transport.leave("test_done")
            await _ended(events)
            assert isinstance(events[-1], CallEnded) and events[-1].reason == "test_done"
    finally:
        for task in readers:
            task.cancel()
        await listener.disconnect()
        await agent_room.disconnect()


async def test_clear_echoes_pending_marks_at_once(livekit: LiveKitServer) -> None:
    agent_room = await join(livekit, "agent-t2", "transport-clear")
    try:
        async with LiveKitRoomTransport(agent_room) as transport:
            events = _collect(transport)
            for i in range(5):
                transport.play(base64.b64encode(_tone(1000)).decode(), f"m{i}")
            await asyncio.sleep(0.3)  # the first second of audio is playing
            assert not any(isinstance(e, MarkIn) for e in events)
            cleared_at = time.monotonic()
            transport.clear()
            assert not any(isinstance(e, MarkIn) for e in events)  # not within clear()
            await until(
                lambda: sum(isinstance(e, MarkIn) for e in events) == 5, 1, "the voided marks"
            )
            assert time.monotonic() - cleared_at < 0.5
            assert [e.name for e in events if isinstance(e, MarkIn)] == [f"m{i}" for i in range(5)]
            assert transport.playout.idle
            await transport.hang_up()  # leaves the room
            await _ended(events)
            assert events[-1] == CallEnded("agent_hung_up")
            assert not agent_room.isconnected()
    finally:
        await agent_room.disconnect()


async def test_a_human_is_heard_and_another_agent_is_not(livekit: LiveKitServer) -> None:
    agent_room = await join(livekit, "agent-t3", "transport-hear")
    human = await join(livekit, "bob", "transport-hear")
    other_agent = await join(livekit, "agent-other", "transport-hear")

    async def talk(source: rtc.AudioSource, amplitude: int, freq: float, seconds: float) -> None:
        chunk = _tone(20, amplitude, freq)
        for _ in range(int(seconds / 0.02)):
            await source.capture_frame(rtc.AudioFrame(chunk, 24000, 1, 480))

    try:
        async with LiveKitRoomTransport(agent_room) as transport:
            events = _collect(transport)
            bob_mic, _ = await publish_microphone(human)
            robot_mic, _ = await publish_microphone(other_agent)
            await until(lambda: transport.humans_heard(), 10, "bob's track in the mix")
            await asyncio.gather(talk(bob_mic, 6000, 440, 1.5), talk(robot_mic, 20000, 1000, 1.5))
            assert list(transport.humans_heard().values()) == ["bob"]
            assert is_human(human.local_participant)
            assert not is_human(other_agent.local_participant)
            frames = [base64.b64decode(e.payload) for e in events if isinstance(e, AudioIn)]
            assert {len(frame) for frame in frames} == {960}  # 20 ms of 24 kHz PCM16
            levels = [int(np.abs(np.frombuffer(frame, dtype=np.int16)).max()) for frame in frames]
            # bob's tone comes through (Opus changes the samples, not the level much); the
            # other agent's loud tone is not mixed in, so the level stays near bob's alone
            assert max(levels) > 3000
            assert max(levels) < 12000
            speaking = transport.speaking_human()
            assert speaking is not None and speaking[1] == "bob"
            await human.disconnect()
            await until(lambda: not transport.humans_heard(), 10, "bob to leave the mix")
            transport.leave("done")
            await _ended(events)
    finally:
        await other_agent.disconnect()
        await human.disconnect()
        await agent_room.disconnect()


def test_the_transport_configures_the_session_for_24k_pcm() -> None:
    """What Conversation sends in session.update for this transport's format."""
    from callplane.profiles import AgentProfile, session_config
    from callplane.tools import ToolSet

    assert LiveKitRoomTransport.audio_format == "audio/pcm"
    assert LiveKitRoomTransport.bytes_per_ms == 48.0
    session = session_config(
        AgentProfile(name="web"), ToolSet([]), audio_format=LiveKitRoomTransport.audio_format
    )
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
