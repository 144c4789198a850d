"""Calls end to end: the simulator's carrier against the test bot, in real time."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from callplane_standins.twilio_simulator import carrier as carrier_module
from callplane_standins.twilio_simulator.caller import (
    Step,
    hang_up,
    interrupt_after,
    pause,
    press,
    say,
    wait_for_reply,
)
from callplane_standins.twilio_simulator.simulator import Simulator
from tests.standins.twilio_simulator.bot import Bot, BotStream, tone
from tests.standins.twilio_simulator.conftest import ACCOUNT_SID, AUTH_TOKEN, CALLER, buy, sdk


def read_wav(path: Path) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]]:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    return data[:, 0].astype(np.int16), data[:, 1].astype(np.int16)


def loud_ms(channel: npt.NDArray[np.int16], threshold: int = 500) -> float:
    """Milliseconds of 1 ms blocks whose peak exceeds ``threshold`` (audible audio)."""
    blocks = channel[: len(channel) // 8 * 8].reshape(-1, 8)
    return float(np.count_nonzero(np.abs(blocks.astype(np.int32)).max(axis=1) > threshold))


async def test_stream_call_end_to_end(sim: Simulator, client: Any, bot: Bot) -> None:
    number = await buy(client, bot)

    async def greet(stream: BotStream) -> None:
        for i in range(1, 4):
            await stream.play(tone(200), mark=f"g{i}")

    bot.behaviour = greet
    script: list[Step] = [
        wait_for_reply(timeout_s=5),
        say("hello there"),
        press("12#"),
        pause(100),
        hang_up(),
    ]
    result = await sim.place_call(CALLER, number.phone_number, script, max_duration_s=15)

    assert result.status == "completed", result.errors
    assert result.hung_up_by == "caller"
    assert result.errors == []

    # The voice webhook: Twilio's parameters, signed over the exact VoiceUrl.
    (hook,) = bot.hits_on("/voice")
    assert hook.signature_valid
    assert hook.form["CallSid"] == result.call_sid
    assert hook.form["CallStatus"] == "ringing" and hook.form["Direction"] == "inbound"
    assert hook.form["From"] == hook.form["Caller"] == CALLER
    assert hook.form["To"] == hook.form["Called"] == number.phone_number
    assert hook.form["ApiVersion"] == "2010-04-01"
    assert hook.form["ToCountry"] == "US" and hook.form["FromCountry"] == "US"
    assert hook.form["ToCity"] == "San Francisco"

    # The stream: signed upgrade, connected/start, custom parameters, µ-law 8 kHz.
    (stream,) = bot.streams
    assert stream.signature_valid
    kinds = [f.msg["event"] for f in stream.frames]
    assert kinds[:2] == ["connected", "start"] and kinds[-1] == "stop"
    start = stream.start
    assert start["customParameters"] == {"token": "tok-123", "tenant": "acme"}
    assert start["callSid"] == result.call_sid and start["streamSid"].startswith("MZ")
    assert start["tracks"] == ["inbound"]
    assert start["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}

    # Caller audio: 160-byte frames every 20 ms with string counters.
    media = stream.events("media")
    assert len(media) > 50
    assert [f.msg["media"]["chunk"] for f in media[:3]] == ["1", "2", "3"]
    assert [f.msg["media"]["timestamp"] for f in media[:3]] == ["0", "20", "40"]
    seqs = [int(f.msg["sequenceNumber"]) for f in stream.frames[1:]]
    assert seqs == list(range(1, len(seqs) + 1))
    assert all(isinstance(f.msg["sequenceNumber"], str) for f in stream.frames[1:])
    span = media[-1].at - media[0].at
    assert 0.018 < span / (len(media) - 1) < 0.022, "media is not paced at 20 ms"
    assert stream.first_speech_at is not None

    # Marks echo as the greeting plays: 200, 400, 600 ms of audio heard.
    echoes = [f for f in stream.events("mark")]
    assert [e.msg["mark"]["name"] for e in echoes] == ["g1", "g2", "g3"]
    assert result.timeline.played_ms_per_mark() == {"g1": 200.0, "g2": 400.0, "g3": 600.0}
    gaps = [echoes[i + 1].at - echoes[i].at for i in range(2)]
    assert all(0.17 < g < 0.23 for g in gaps), gaps
    assert 0.18 < echoes[0].at - stream.mark_sent_at["g1"] < 0.26

    # DTMF arrives as events, in order.
    digits = [f.msg["dtmf"]["digit"] for f in stream.events("dtmf")]
    assert digits == ["1", "2", "#"]

    # Status callbacks, signed, in order, CallDuration at the end.
    statuses = bot.hits_on("/status")
    assert [h.form["CallStatus"] for h in statuses] == [
        "initiated",
        "ringing",
        "in-progress",
        "completed",
    ]
    assert all(h.signature_valid for h in statuses)
    assert statuses[-1].form["CallDuration"] == str(round(result.duration_s))

    # The recording: caller speech on the left, the 600 ms greeting on the right.
    assert result.wav_path is not None
    left, right = read_wav(result.wav_path)
    assert abs(len(left) / 8 - result.duration_s * 1000) < 100
    assert 550 <= loud_ms(right) <= 620
    assert loud_ms(left) > 300

    fetched = await sdk(client.calls(result.call_sid).fetch)
    assert fetched.status == "completed" and fetched.direction == "inbound"
    assert fetched.duration == str(round(result.duration_s))


async def test_clear_drops_queued_audio_and_flushes_marks(
    sim: Simulator, client: Any, bot: Bot
) -> None:
    number = await buy(client, bot)
    cleared_at: list[float] = []

    async def talk_then_yield(stream: BotStream) -> None:
        for i in range(1, 21):  # 2 s of audio in 100 ms chunks, each followed by a mark
            await stream.play(tone(100), mark=f"m{i}")
        await stream.caller_spoke.wait()
        await stream.clear()
        cleared_at.append(asyncio.get_running_loop().time())

    bot.behaviour = talk_then_yield
    script: list[Step] = [interrupt_after(500, "stop please"), pause(200), hang_up()]
    result = await sim.place_call(CALLER, number.phone_number, script, max_duration_s=15)
    assert result.status == "completed", result.errors
    assert result.errors == []

    tl = result.timeline
    (clear,) = tl.clears
    assert 500 <= clear.played_ms <= 700
    assert clear.dropped_bytes > 0 and clear.marks_flushed
    played = [m for m in tl.marks if not m.cleared]
    flushed = [m for m in tl.marks if m.cleared]
    assert len(played) + len(flushed) == 20
    assert [m.name for m in flushed] == clear.marks_flushed
    assert [m.played_ms for m in played] == [100.0 * i for i in range(1, len(played) + 1)]
    for m in flushed:  # echoed at once on the clear, at the position playback had reached
        assert m.echoed_ms is not None and m.echoed_ms - clear.at_ms < 5
        assert m.played_ms == clear.played_ms

    # The bot got every mark back, in the order sent.
    (stream,) = bot.streams
    names = [f.msg["mark"]["name"] for f in stream.events("mark")]
    assert names == [f"m{i}" for i in range(1, 21)]
    assert cleared_at and stream.first_speech_at is not None

    # The WAV holds only what was heard before the clear.
    assert result.wav_path is not None
    _, right = read_wav(result.wav_path)
    assert abs(loud_ms(right) - clear.played_ms) <= 30
    assert tl.heard_ms == clear.played_ms
    heard = sum(c.played_bytes for c in tl.chunks) + sum(c.dropped_bytes for c in tl.chunks)
    assert heard == 20 * 800


async def test_reject_ends_the_call_unanswered(sim: Simulator, client: Any, bot: Bot) -> None:
    number = await buy(client, bot)
    bot.twiml = lambda form: '<?xml version="1.0"?><Response><Reject reason="busy"/></Response>'
    result = await sim.place_call(CALLER, number.phone_number, [pause(1000), hang_up()])
    assert result.status == "busy"
    assert result.hung_up_by == "remote"
    assert result.wav_path is None and bot.streams == []
    assert [h.form["CallStatus"] for h in bot.hits_on("/status")] == [
        "initiated",
        "ringing",
        "busy",
    ]
    fetched = await sdk(client.calls(result.call_sid).fetch)
    assert fetched.status == "busy" and fetched.duration == "0"


async def test_rest_hangup_ends_a_live_call(sim: Simulator, client: Any, bot: Bot) -> None:
    number = await buy(client, bot)
    call = await sim.start_call(CALLER, number.phone_number, [pause(10_000), hang_up()])
    await asyncio.wait_for(bot.stream_started.wait(), 5)
    await asyncio.sleep(0.3)
    updated = await sdk(client.calls(call.call_sid).update, status="completed")
    assert updated.status == "completed"
    result = await call.wait(5)
    assert result.hung_up_by == "rest" and result.status == "completed"
    assert result.duration_s < 2
    (stream,) = bot.streams
    await asyncio.wait_for(stream.stopped.wait(), 2)
    assert stream.frames[-1].msg["event"] == "stop"
    stop = stream.frames[-1].msg
    assert stop["stop"] == {"accountSid": number.account_sid, "callSid": call.call_sid}
    assert result.timeline.streams[0].ended_by == "rest"


async def test_dial_via_rest_update_records_the_transfer(
    sim: Simulator, client: Any, bot: Bot
) -> None:
    number = await buy(client, bot)
    call = await sim.start_call(CALLER, number.phone_number, [pause(10_000), hang_up()])
    await asyncio.wait_for(bot.stream_started.wait(), 5)
    await sdk(
        client.calls(call.call_sid).update,
        twiml="<Response><Dial>+15550009999</Dial></Response>",
    )
    result = await call.wait(5)
    assert result.transferred_to == "+15550009999"
    assert result.status == "completed" and result.hung_up_by == "remote"
    (stream,) = bot.streams
    assert stream.frames[-1].msg["event"] == "stop"
    assert result.timeline.streams[0].ended_by == "redirect"
    children = await sdk(client.calls.list, parent_call_sid=call.call_sid)
    assert [c.to for c in children] == ["+15550009999"]
    assert children[0].direction == "outbound-dial"


async def test_say_then_hangup_without_a_stream(sim: Simulator, client: Any, bot: Bot) -> None:
    number = await buy(client, bot)
    bot.twiml = lambda form: "<Response><Say>Thanks for calling.</Say><Hangup/></Response>"
    result = await sim.place_call(CALLER, number.phone_number, [wait_for_reply(5), hang_up()])
    assert result.status == "completed" and result.hung_up_by == "remote"
    assert bot.streams == []
    assert result.timeline.heard_ms > 500
    assert result.wav_path is not None
    _, right = read_wav(result.wav_path)
    assert loud_ms(right, threshold=300) > 300


async def test_a_long_running_carrier_keeps_only_recent_calls_and_no_finished_audio(
    sim: Simulator, client: Any, bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(carrier_module, "MAX_FINISHED_CALLS", 2)
    number = await buy(client, bot)
    bot.twiml = lambda form: "<Response><Say>Thanks for calling.</Say><Hangup/></Response>"
    results = [
        await sim.place_call(CALLER, number.phone_number, [wait_for_reply(5), hang_up()])
        for _ in range(4)
    ]
    assert [r.status for r in results] == ["completed"] * 4
    # Pruned as each call is placed: at most two finished ones besides the newest stay
    # addressable; each kept one holds its timeline but not its audio, which is on disk.
    kept = sim.carrier.calls
    assert set(kept) == {r.call_sid for r in results[1:]}
    for result in results:
        assert result.wav_path is not None
        _, right = read_wav(result.wav_path)
        assert loud_ms(right, threshold=300) > 300
    for call in kept.values():
        assert not call.live and not call.audio.recorded and call.audio.stream is None
        assert call.timeline.heard_ms > 500


async def test_bad_frames_are_reported_and_dropped(sim: Simulator, client: Any, bot: Bot) -> None:
    number = await buy(client, bot)

    async def misbehave(stream: BotStream) -> None:
        await stream.ws.send_bytes(b"\x00\x01")
        await stream.send({"event": "dance", "streamSid": stream.stream_sid})
        await stream.send({"event": "media", "streamSid": "MZwrong", "media": {"payload": ""}})
        await stream.play(tone(100), mark="ok")
        await asyncio.sleep(0.3)
        await stream.ws.close()

    bot.behaviour = misbehave
    result = await sim.place_call(CALLER, number.phone_number, [pause(3000), hang_up()])
    codes = [e.split(":")[0] for e in result.errors]
    assert codes == ["31950", "31951", "31951"], result.errors
    assert result.timeline.mark("ok") is not None
    assert result.timeline.played_ms_per_mark() == {"ok": 100.0}
    # The server closed the stream: the TwiML ran out, so the call ended from the far side.
    assert result.hung_up_by == "remote" and result.timeline.streams[0].ended_by == "server"


async def test_webhook_problems_fail_the_call(sim: Simulator, client: Any, bot: Bot) -> None:
    number = await buy(client, bot)
    bot.twiml = lambda form: "<Response><Gather/></Response>"
    result = await sim.place_call(CALLER, number.phone_number, [hang_up()])
    assert result.status == "failed"
    assert result.errors[0].startswith("12100") and "<Gather>" in result.errors[0]

    bot.twiml = lambda form: (
        f'<Response><Connect><Stream url="{bot.media_url}?x=1"/></Connect></Response>'
    )
    result = await sim.place_call(CALLER, number.phone_number, [hang_up()])
    assert result.errors[0].startswith("31920") and "query string" in result.errors[0]


async def test_outbound_call_created_over_rest(sim: Simulator, client: Any, bot: Bot) -> None:
    agent = await buy(client, bot, "+14155550101")
    person = await buy(client, bot, "+12125550101")

    async def greet(stream: BotStream) -> None:
        await stream.play(tone(300), mark="hello")

    bot.behaviour = greet
    created = await sdk(
        client.calls.create,
        to=person.phone_number,
        from_=agent.phone_number,
        twiml=bot.connect_twiml({}),
        status_callback=f"{bot.base}/status",
        status_callback_event=["initiated", "ringing", "answered", "completed"],
        machine_detection="Enable",
    )
    assert created.status == "queued" and created.direction == "outbound-api"
    result = await sim.wait_for_call(created.sid, timeout_s=10)
    assert result.status == "completed", result.errors
    # The default callee listens to the bot's first turn, then hangs up.
    assert result.hung_up_by == "caller"
    assert result.timeline.played_ms_per_mark() == {"hello": 300.0}
    assert bot.streams[0].start["callSid"] == created.sid
    statuses = [h.form["CallStatus"] for h in bot.hits_on("/status")]
    assert statuses == ["initiated", "ringing", "in-progress", "completed"]
    assert bot.hits_on("/status")[2].form["AnsweredBy"] == "human"

    nobody = await sdk(
        client.calls.create, to="+15550001234", from_=agent.phone_number, url=f"{bot.base}/voice"
    )
    missed = await sim.wait_for_call(nobody.sid, timeout_s=5)
    assert missed.status == "no-answer" and missed.wav_path is None


async def test_scripted_call_over_the_simulator_http_endpoint(
    sim: Simulator, client: Any, bot: Bot
) -> None:
    number = await buy(client, bot)

    async def greet(stream: BotStream) -> None:
        await stream.play(tone(200), mark="hi")

    bot.behaviour = greet
    body = {
        "from": CALLER,
        "to": number.phone_number,
        "script": [{"wait_for_reply": 5}, {"press": "9"}, {"hang_up": True}],
    }
    async with httpx.AsyncClient(auth=(ACCOUNT_SID, AUTH_TOKEN), timeout=15) as http:
        resp = await http.post(f"{sim.base_url}/_simulator/Calls", json=body)
        assert resp.status_code == 200, resp.text
        result = resp.json()
        assert result["status"] == "completed" and result["hung_up_by"] == "caller"
        assert result["from"] == CALLER and result["wav_path"].endswith(".wav")
        assert [m["name"] for m in result["timeline"]["marks"]] == ["hi"]
        again = await http.get(f"{sim.base_url}/_simulator/Calls/{result['call_sid']}")
        assert again.json()["call_sid"] == result["call_sid"]
        bad = await http.post(
            f"{sim.base_url}/_simulator/Calls", json={**body, "script": [{"sing": 1}]}
        )
        assert bad.status_code == 400 and "sing" in bad.json()["message"]
    assert [f.msg["dtmf"]["digit"] for f in bot.streams[0].events("dtmf")] == ["9"]


async def test_redirect_to_a_url_and_stream_status_callbacks(
    sim: Simulator, client: Any, bot: Bot
) -> None:
    number = await buy(client, bot)
    bot.twiml = lambda form: (
        f'<Response><Connect><Stream url="{bot.media_url}" name="agent" '
        f'statusCallback="{bot.base}/status"/></Connect></Response>'
    )
    call = await sim.start_call(CALLER, number.phone_number, [pause(10_000), hang_up()])
    await asyncio.wait_for(bot.stream_started.wait(), 5)
    bot.twiml = lambda form: "<Response><Say>One moment.</Say></Response>"
    await sdk(client.calls(call.call_sid).update, url=f"{bot.base}/voice", method="POST")
    result = await call.wait(10)
    assert result.status == "completed" and result.hung_up_by == "remote", result.errors
    _, second = bot.hits_on("/voice")
    assert second.signature_valid and second.form["CallStatus"] == "in-progress"
    assert result.timeline.heard_ms > 300  # the <Say> after the redirect
    stream_events = [
        h.form["StreamEvent"] for h in bot.hits_on("/status") if "StreamEvent" in h.form
    ]
    assert stream_events == ["stream-started", "stream-stopped"]


async def test_max_duration_hangs_up_for_the_caller(sim: Simulator, client: Any, bot: Bot) -> None:
    number = await buy(client, bot)
    result = await sim.place_call(CALLER, number.phone_number, [pause(5000)], max_duration_s=0.4)
    assert result.hung_up_by == "caller" and result.duration_s < 1
    assert result.timeline.of_kind("max_duration")
