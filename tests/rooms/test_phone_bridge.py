"""The hybrid-room phone bridge: its pure audio pieces, then calls through a real livekit-server.

The end-to-end tests run the bridge against a real ``livekit-server`` (with Redis) on loopback:
a fake Twilio side (an in-memory socket fed with ``start`` and µ-law tone frames) joins a room
through the bridge, and a Python ``livekit.rtc`` participant in the same room checks what it
hears from ``phone:+E164`` and what it says reaches the fake Twilio side.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt
import pytest
from livekit import api, rtc

from callplane.audio import rms
from callplane.livekit_settings import TRANSFER_RPC, LiveKitSettings
from callplane.profiles import AgentProfile
from callplane.records import CallRecord
from callplane.rooms.agent import agent_token
from callplane.rooms.agent_transport import LiveKitRoomTransport
from callplane.rooms.pacer import FramePacer
from callplane.rooms.phone import (
    BridgeTuning,
    PhoneRoomBridge,
    join_token,
    person_on_the_line,
    phone_identity,
)
from callplane.rooms.phone_audio import (
    PHONE_FRAME,
    ROOM_FRAME,
    Downsampler,
    Upsampler,
    decode_payload,
    encode_payload,
)
from callplane.tools import TransferFailed
from callplane.transports import twilio_protocol as tp
from callplane.transports.twilio import CallControl, TwilioMediaStream
from tests.doubles import FakeSocket, RecordingControl
from tests.livekit_server import LiveKitServer, livekit_server_fixture
from tests.support.livekit_people import join, publish_microphone
from tests.support.ports import free_port
from tests.support.waiting import until

livekit = livekit_server_fixture()

CALLER = "+15551234567"
Int16Array = npt.NDArray[np.int16]


def tone(freq: float, rate: int, seconds: float, amplitude: float = 8000.0) -> Int16Array:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * math.pi * freq * t)).astype(np.int16)


def dominant_hz(pcm: Int16Array, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(pcm.size)))
    return float(np.argmax(spectrum) * rate / pcm.size)


def band_rms(pcm: Int16Array, rate: int, freq: float, width: float = 50.0) -> float:
    """RMS of the part of ``pcm`` within ``width`` Hz of ``freq`` (full scale = 1)."""
    spectrum = np.fft.rfft(pcm.astype(np.float64))
    freqs = np.fft.rfftfreq(pcm.size, 1 / rate)
    spectrum[np.abs(freqs - freq) > width] = 0
    band = np.fft.irfft(spectrum, pcm.size)
    return float(np.sqrt(np.mean(band**2))) / 32768.0


# --------------------------------------------------------------------------------------
# Pure pieces
# --------------------------------------------------------------------------------------


def test_upsampler_gives_six_samples_per_input_sample_and_keeps_the_tone() -> None:
    up = Upsampler()
    source = tone(1000, 8000, 1.0)
    chunks = [up.process(source[i : i + PHONE_FRAME]) for i in range(0, source.size, PHONE_FRAME)]
    assert {c.size for c in chunks} == {ROOM_FRAME}
    assert up.process(source[:7]).size == 42
    assert up.process(np.zeros(0, dtype=np.int16)).size == 0
    out = np.concatenate(chunks)[4800:]  # past the filter's start-up
    assert abs(dominant_hz(out, 48000) - 1000) < 5
    assert 0.95 < rms(out) / rms(source) < 1.05
    # The image at 8 kHz - 1 kHz that zero-order interpolation would leave is filtered out.
    assert band_rms(out, 48000, 7000) < 0.001 * rms(out)


def test_downsampler_gives_one_sample_per_six_whatever_the_chunking() -> None:
    source = tone(1000, 48000, 1.0)
    whole = Downsampler()
    frames = [whole.process(source[i : i + ROOM_FRAME]) for i in range(0, source.size, ROOM_FRAME)]
    assert {f.size for f in frames} == {PHONE_FRAME}
    odd = Downsampler()
    pieces = np.concatenate([odd.process(source[i : i + 333]) for i in range(0, source.size, 333)])
    assert np.array_equal(pieces, np.concatenate(frames))
    out = np.concatenate(frames)[800:]
    assert abs(dominant_hz(out, 8000) - 1000) < 5
    assert 0.95 < rms(out) / rms(source) < 1.05


def test_downsampler_rejects_what_would_alias_into_the_phone_band() -> None:
    down = Downsampler()
    source = tone(6000, 48000, 1.0)  # would fold to 2 kHz without the low-pass
    out = np.concatenate(
        [down.process(source[i : i + ROOM_FRAME]) for i in range(0, source.size, ROOM_FRAME)]
    )
    assert rms(out[800:]) < 0.01 * rms(source)


def test_downsampler_reset_forgets_old_audio() -> None:
    down = Downsampler()
    down.process(tone(1000, 48000, 0.1, amplitude=30000))
    down.reset()
    assert not down.process(np.zeros(ROOM_FRAME, dtype=np.int16)).any()


def test_payloads_round_trip_through_mu_law() -> None:
    pcm = tone(440, 8000, 0.02)
    payload = encode_payload(pcm)
    assert len(payload) == 216  # 160 bytes of base64
    back = decode_payload(payload)
    assert back.size == PHONE_FRAME
    assert np.max(np.abs(back.astype(np.int32) - pcm)) < 300  # µ-law step at this level


def test_pacer_sends_one_frame_per_period_and_catches_up_a_little() -> None:
    pacer = FramePacer(0.02, start=100.0, max_burst=3)
    assert pacer.due(100.0) == 1
    assert pacer.due(100.005) == 0
    assert pacer.next_at == pytest.approx(100.02)
    assert pacer.due(100.021) == 1
    assert pacer.due(100.085) == 3  # 100.04, 100.06 and 100.08 were due
    assert pacer.due(101.0) == 3  # a stall: three frames, the rest are skipped
    assert pacer.skipped > 40
    assert pacer.next_at == pytest.approx(101.02)


def test_pacer_never_runs_ahead_of_real_time() -> None:
    rng = np.random.default_rng(7)
    pacer = FramePacer(0.02, start=0.0, max_burst=3)
    now, sent = 0.0, 0
    while now < 60.0:
        sent += pacer.due(now)
        assert sent <= now / 0.02 + 1
        now += float(rng.exponential(0.02))
    # ...and keeps up with it: only frames owed beyond a burst after a long wake-up are lost.
    assert sent > 0.9 * now / 0.02
    assert pacer.skipped > 0


def test_pacer_refuses_a_zero_period() -> None:
    with pytest.raises(ValueError, match="period_s=0"):
        FramePacer(0.0, start=0.0)


def test_bridge_tuning_names_the_bad_field() -> None:
    with pytest.raises(ValueError, match="prime_ms=300"):
        BridgeTuning(prime_ms=300, max_buffer_ms=200)


def test_identity_is_the_callers_number_or_the_call() -> None:
    assert phone_identity(CALLER, "CA1") == "phone:+15551234567"
    inbound = CallRecord(call_sid="CA1", from_=CALLER, to="+15550001111")
    outbound = CallRecord(call_sid="CA2", from_="+15550001111", to=CALLER, direction="outbound")
    assert person_on_the_line(inbound) == person_on_the_line(outbound) == CALLER
    assert phone_identity("anonymous", "CA1") == "phone:unknown-CA1"
    assert phone_identity("", "CA2") == "phone:unknown-CA2"


def test_join_token_dispatches_the_agent_and_names_the_call() -> None:
    settings = LiveKitSettings(url="ws://127.0.0.1:7880", api_key="key", api_secret="s" * 32)
    token = join_token(
        settings,
        room="lobby",
        identity="phone:+15551234567",
        profile="support",
        call_sid="CA9",
        phone=CALLER,
    )
    claims = api.TokenVerifier("key", "s" * 32).verify(token)
    assert claims.identity == "phone:+15551234567"
    assert claims.kind == "sip"
    assert claims.video is not None
    assert claims.video.room_join and claims.video.room == "lobby"
    assert claims.attributes == {
        "callplane.phone": CALLER,
        "callplane.call_sid": "CA9",
        "callplane.profile": "support",
    }
    assert claims.room_config is not None
    (agent,) = claims.room_config.agents
    assert agent.agent_name == "callplane-agent"
    assert json.loads(agent.metadata) == {"profile": "support"}


def test_a_profile_without_a_room_is_refused() -> None:
    settings = LiveKitSettings(url="ws://127.0.0.1:7880", api_key="key", api_secret="s" * 32)
    fake = FakeTwilio()
    with pytest.raises(ValueError, match="profile 'plain' has no room"):
        PhoneRoomBridge(
            fake.stream(), settings, AgentProfile(name="plain"), CallRecord(call_sid="CA0")
        )


# --------------------------------------------------------------------------------------
# Through a real livekit-server
# --------------------------------------------------------------------------------------


class FakeTwilio(FakeSocket):
    """Twilio's side of a media stream, in memory: frames in, frames out with arrival times;
    every mark is echoed as soon as it arrives (nothing is left to play)."""

    def __init__(self, call_sid: str = "CA_room_call") -> None:
        super().__init__()
        self.call_sid = call_sid
        self.sent: list[tuple[float, str]] = []
        self.marks: list[str] = []

    def _write(self, text: str | bytes) -> None:
        super()._write(text)
        self.sent.append((time.monotonic(), self.written[-1]))
        parsed = tp.parse(self.written[-1])
        if isinstance(parsed, tp.Mark):
            self.marks.append(parsed.name)
            echo = {"event": "mark", "streamSid": "MZ_room", "mark": {"name": parsed.name}}
            asyncio.get_running_loop().call_soon(self.deliver, echo)

    def stream(self, control: CallControl | None = None) -> TwilioMediaStream:
        start = tp.Start(
            stream_sid="MZ_room",
            call_sid=self.call_sid,
            account_sid="AC" + "0" * 32,
            custom_parameters={"from": CALLER},
        )
        return TwilioMediaStream(self, start, control)

    async def speak(self, pcm: Int16Array) -> None:
        """Send ``pcm`` (8 kHz) as 20 ms media frames at real-time pace."""
        for n, i in enumerate(range(0, pcm.size - PHONE_FRAME + 1, PHONE_FRAME)):
            payload = encode_payload(pcm[i : i + PHONE_FRAME])
            frame = {"event": "media", "media": {"payload": payload, "timestamp": str(n * 20)}}
            self.deliver(frame)
            await asyncio.sleep(0.02)

    def press(self, digit: str) -> None:
        self.deliver({"event": "dtmf", "dtmf": {"digit": digit}})

    def hang_up(self) -> None:
        self.deliver({"event": "stop", "stop": {"callSid": self.call_sid}})

    def media(self) -> list[tuple[float, Int16Array]]:
        """The media frames the bridge sent, decoded, with when they arrived."""
        out = []
        for at, text in self.sent:
            parsed = tp.parse(text)
            if isinstance(parsed, tp.Mark):
                continue
            assert isinstance(parsed, tp.Media), text
            out.append((at, decode_payload(parsed.payload)))
        return out


@dataclass
class Listener:
    """A web user in the room: hears the phone participant and can talk."""

    room: rtc.Room
    heard: list[Int16Array] = field(default_factory=list)
    left: set[str] = field(default_factory=set)
    digits: list[tuple[str, int]] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def join(cls, server: LiveKitServer, room_name: str, hear: str) -> Listener:
        listener = cls(rtc.Room())

        def subscribed(
            track: rtc.Track, _: rtc.RemoteTrackPublication, who: rtc.RemoteParticipant
        ) -> None:
            if who.identity == hear and isinstance(track, rtc.RemoteAudioTrack):
                listener.tasks.append(asyncio.create_task(listener._collect(track)))

        listener.room.on("track_subscribed", subscribed)
        listener.room.on(
            "participant_disconnected",
            lambda who: listener.left.add(who.identity),
        )
        listener.room.on(
            "sip_dtmf_received", lambda dtmf: listener.digits.append((dtmf.digit, dtmf.code))
        )
        await join(server, "web-alice", room_name, room=listener.room)
        return listener

    async def _collect(self, track: rtc.RemoteAudioTrack) -> None:
        async for event in rtc.AudioStream(track, sample_rate=48000, num_channels=1):
            self.heard.append(np.frombuffer(event.frame.data, dtype=np.int16).copy())

    async def talk(self, pcm: Int16Array) -> None:
        """Publish ``pcm`` (48 kHz) as a microphone track, in real time."""
        source, _ = await publish_microphone(self.room, 48000)
        for i in range(0, pcm.size - ROOM_FRAME + 1, ROOM_FRAME):
            chunk = pcm[i : i + ROOM_FRAME]
            await source.capture_frame(rtc.AudioFrame(chunk.tobytes(), 48000, 1, ROOM_FRAME))
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.room.disconnect()


@dataclass
class BridgedCall:
    fake: FakeTwilio
    control: RecordingControl
    record: CallRecord
    task: asyncio.Task[CallRecord]


class StartCall(Protocol):
    def __call__(self, room: str, *, refuse_transfers: bool = False) -> Awaitable[BridgedCall]:
        """Bridge a call into ``room``; Twilio refuses its transfers if asked to."""
        ...


BILLING = "+15005550006"


@pytest.fixture
async def call(livekit: LiveKitServer, request: pytest.FixtureRequest) -> AsyncIterator[StartCall]:
    """Start a bridged call into a room; yields a starter, cancels leftovers at the end."""
    tasks: list[asyncio.Task[CallRecord]] = []

    async def start(room: str, *, refuse_transfers: bool = False) -> BridgedCall:
        fake = FakeTwilio(call_sid=f"CA_{request.node.name[:20]}")
        control = RecordingControl(fake.call_sid, refuse_transfers=refuse_transfers)
        record = CallRecord(
            call_sid=fake.call_sid, from_=CALLER, profile="lobby", context={"room": room}
        )
        profile = AgentProfile(name="lobby", room=room, transfer_targets={"billing": BILLING})
        bridge = PhoneRoomBridge(fake.stream(control), livekit.settings(), profile, record)
        task = asyncio.create_task(bridge.run())
        tasks.append(task)
        return BridgedCall(fake, control, record, task)

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_caller_and_web_user_hear_each_other_and_the_stream_stop_leaves_the_room(
    livekit: LiveKitServer, call: StartCall
) -> None:
    room = "hybrid-both-ways"
    bridged = await call(room)
    fake, control, record = bridged.fake, bridged.control, bridged.record
    # The phone participant is in the room, published, with the call's attributes.
    deadline = time.monotonic() + 15
    while True:
        found = {p.identity: p for p in await livekit.participants(room)}
        phone = found.get("phone:" + CALLER)
        if phone is not None and phone.tracks:
            break
        assert time.monotonic() < deadline, f"phone never joined: {found}\n{livekit.log_tail()}"
        await asyncio.sleep(0.1)
    assert phone.kind == api.ParticipantInfo.Kind.SIP
    assert phone.attributes["callplane.call_sid"] == fake.call_sid

    listener = await Listener.join(livekit, room, hear="phone:" + CALLER)
    try:
        talk = asyncio.create_task(listener.talk(tone(1000, 48000, 3.0)))
        await fake.speak(tone(440, 8000, 3.0))
        await talk

        heard = np.concatenate(listener.heard) if listener.heard else np.zeros(0, np.int16)
        assert heard.size > 48000, f"the web user heard {heard.size / 48000:.2f} s of the phone"
        assert rms(heard) > 0.02
        assert abs(dominant_hz(heard[-48000:], 48000) - 440) < 20

        media = fake.media()
        assert len(media) > 50, f"only {len(media)} media frames reached Twilio"
        assert {pcm.size for _, pcm in media} == {PHONE_FRAME}
        to_caller = np.concatenate([pcm for _, pcm in media])
        assert rms(to_caller) > 0.02
        assert abs(dominant_hz(to_caller[-8000:], 8000) - 1000) < 20
        # Real-time pace: never more frames than 20 ms slots since the first (plus a burst).
        first = media[0][0]
        for n, (at, _) in enumerate(media):
            assert n <= (at - first) / 0.02 + 4, f"frame {n} arrived {at - first:.3f} s in"

        fake.press("#")  # keys reach the room as SIP DTMF (the agent decides what they mean)
        await until(lambda: listener.digits == [("#", 11)], 10, "the DTMF to reach the room")
        assert record.dtmf == ["#"]

        fake.hang_up()
        done = await asyncio.wait_for(bridged.task, 10)
        assert done is record
        assert record.end_reason == "caller_hung_up"
        assert record.ended_at is not None
        await until(lambda: "phone:" + CALLER in listener.left, 10, "the phone to leave")
        assert not control.hung_up.is_set()  # Twilio ended the call; nothing to hang up
        remaining = [p.identity for p in await livekit.participants(room)]
        assert remaining == ["web-alice"]
    finally:
        await listener.close()


async def test_the_room_closing_hangs_the_call_up(livekit: LiveKitServer, call: StartCall) -> None:
    room = "hybrid-room-closes"
    listener = await Listener.join(livekit, room, hear="phone:" + CALLER)
    try:
        bridged = await call(room)
        speaking = asyncio.create_task(bridged.fake.speak(tone(440, 8000, 10.0)))
        await until(lambda: bool(listener.heard), 15, "the listener to hear the phone")
        async with livekit.api() as lk:
            await lk.room.delete_room(api.DeleteRoomRequest(room=room))
        await asyncio.wait_for(bridged.control.hung_up.wait(), 10)
        record = await asyncio.wait_for(bridged.task, 10)
        speaking.cancel()
        assert record.end_reason == "room_closed (ROOM_DELETED)"
        assert record.context == {"room": room}
    finally:
        await listener.close()


async def test_an_unreachable_livekit_hangs_the_call_up() -> None:
    dead = LiveKitSettings(url=f"ws://127.0.0.1:{free_port()}", api_key="key", api_secret="s" * 32)
    fake = FakeTwilio(call_sid="CA_unreachable")
    control = RecordingControl(fake.call_sid)
    record = CallRecord(call_sid=fake.call_sid, from_=CALLER)
    bridge = PhoneRoomBridge(
        fake.stream(control),
        dead,
        AgentProfile(name="lobby", room="nowhere"),
        record,
        BridgeTuning(connect_timeout_s=5),
    )
    await asyncio.wait_for(bridge.run(), 15)
    assert control.hung_up.is_set()
    assert record.end_reason == "livekit_unavailable"
    assert not fake.sent


# --------------------------------------------------------------------------------------
# Transfers: the room's agent asks the phone bridge to move the call
# --------------------------------------------------------------------------------------


async def phone_in(livekit: LiveKitServer, room: str) -> None:
    deadline = time.monotonic() + 15
    while "phone:" + CALLER not in {p.identity for p in await livekit.participants(room)}:
        assert time.monotonic() < deadline, f"the phone never joined\n{livekit.log_tail()}"
        await asyncio.sleep(0.1)


async def agent_in(livekit: LiveKitServer, room: str) -> LiveKitRoomTransport:
    """The room's agent, joined with the token an agent job uses, as its transport: once it
    sees the phone caller."""
    agent_room = rtc.Room()
    await agent_room.connect(
        livekit.url, agent_token(livekit.settings(), room, "agent-test", name="agent")
    )
    transport = LiveKitRoomTransport(agent_room)
    await until(lambda: bool(transport.phone_callers()), 10, "the agent to see the phone caller")
    return transport


async def test_the_agent_transfers_the_phone_caller_and_the_bridge_moves_the_call(
    livekit: LiveKitServer, call: StartCall
) -> None:
    room = "hybrid-transfer"
    bridged = await call(room)
    await phone_in(livekit, room)
    agent = await agent_in(livekit, room)
    try:
        assert agent.phone_callers() == ["phone:" + CALLER]
        outcome = await agent.transfer("billing")
        assert outcome == "participant_moved"
        assert bridged.control.transfers == [BILLING]
        # the caller heard the room out first: a mark was sent and echoed before the move
        assert bridged.fake.marks == ["before-transfer-1"]
        assert bridged.record.transferred_to == BILLING
        bridged.fake.hang_up()  # Twilio ends the stream as the call moves to <Dial>
        record = await asyncio.wait_for(bridged.task, 10)
        assert record.end_reason == "transferred" and record.transferred_to == BILLING
        assert not bridged.control.hung_up.is_set()  # hanging up would end the moved call
        await until(lambda: not agent.phone_callers(), 10, "the phone caller to leave")
    finally:
        await agent.room.disconnect()


async def test_a_transfer_twilio_refuses_leaves_the_caller_in_the_room(
    livekit: LiveKitServer, call: StartCall
) -> None:
    room = "hybrid-transfer-refused"
    bridged = await call(room, refuse_transfers=True)
    await phone_in(livekit, room)
    agent = await agent_in(livekit, room)
    try:
        with pytest.raises(TransferFailed) as failed:
            await agent.transfer(BILLING)
        assert str(failed.value) == (
            f"phone:{CALLER} was not transferred: the phone network refused the transfer to "
            f"{BILLING}"
        )
        with pytest.raises(TransferFailed, match="neither a department"):
            await agent.transfer("the front desk")  # the bridge applies the profile's rule
        assert not bridged.task.done()
        assert bridged.record.transferred_to is None
        bridged.fake.hang_up()
        record = await asyncio.wait_for(bridged.task, 10)
        assert record.end_reason == "caller_hung_up"
    finally:
        await agent.room.disconnect()


async def test_only_the_rooms_agent_may_transfer_a_phone_caller(
    livekit: LiveKitServer, call: StartCall
) -> None:
    room = "hybrid-transfer-by-a-web-user"
    bridged = await call(room)
    await phone_in(livekit, room)
    web = await join(livekit, "web-mallory", room)
    try:
        with pytest.raises(rtc.RpcError) as refused:
            await web.local_participant.perform_rpc(
                destination_identity="phone:" + CALLER,
                method=TRANSFER_RPC,
                payload=json.dumps({"to": "+19005550199"}),
            )
        assert refused.value.message == "only the room's agent may transfer a phone caller"
        assert bridged.control.transfers == []
        assert not bridged.task.done()
    finally:
        await web.disconnect()


async def test_a_room_without_a_phone_caller_has_nobody_to_transfer() -> None:
    transport = LiveKitRoomTransport(rtc.Room())  # nobody in it
    assert transport.phone_callers() == []
    with pytest.raises(TransferFailed, match="nobody in this room is on a phone line"):
        await transport.transfer(BILLING)
