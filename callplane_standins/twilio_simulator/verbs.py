"""Running the TwiML verbs of an answered call: ``<Say>``, ``<Pause>``, ``<Dial>`` and
``<Connect><Stream>``.

Each verb runs until it is done or a control request (hang-up, redirect) interrupts it; the
call's state machine (``call.py``) decides what happens next. ``<Hangup>`` and ``<Reject>``
end the document and are handled there.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from callplane_standins.twilio_simulator.caller import synthesize_ulaw
from callplane_standins.twilio_simulator.control import HangupRequest
from callplane_standins.twilio_simulator.media_stream import (
    StreamMessageError,
    StreamSession,
    open_stream,
    parse_bot_message,
    start_message,
    stop_message,
)
from callplane_standins.twilio_simulator.playback import FRAME_MS
from callplane_standins.twilio_simulator.state import CallResource, new_sid, utcnow
from callplane_standins.twilio_simulator.timeline import StreamRecord
from callplane_standins.twilio_simulator.twiml import Dial, Instruction, Pause, Say, Stream

if TYPE_CHECKING:
    from callplane_standins.twilio_simulator.call import LiveCall

__all__ = ["espeak_voice", "run_verb"]


async def run_verb(call: LiveCall, verb: Instruction) -> None:
    """Run one verb of the call's TwiML (``<Hangup>``/``<Reject>`` are not verbs to run)."""
    if isinstance(verb, Stream):
        await _run_stream(call, verb)
    elif isinstance(verb, Say):
        await _run_say(call, verb)
    elif isinstance(verb, Pause):
        await call.control.wait_or_interrupt(call.audio.slots(verb.length_s * 1000))
    elif isinstance(verb, Dial):
        await _run_dial(call, verb)


def espeak_voice(voice: str, language: str) -> str:
    """TwiML ``voice``/``language`` -> an espeak-ng voice spec (best effort)."""
    lang = language.lower()
    if lang.startswith("en-gb"):
        return "en-gb"
    if lang and not lang.startswith("en"):
        return lang.split("-")[0]
    if voice.lower() in ("woman", "alice") or voice.lower().startswith("polly.joanna"):
        return "en-us+f3"
    return "en-us"


async def _run_say(call: LiveCall, say: Say) -> None:
    voice = espeak_voice(say.voice, say.language)
    try:
        audio = await asyncio.to_thread(synthesize_ulaw, say.text, voice)
    except Exception as exc:  # espeak-ng missing or failing: the call goes on silently
        call.error(f"say: could not synthesise {say.text[:40]!r}: {exc}")
        return
    call.note("say", text=say.text, ms=len(audio) / 8)
    repeats = say.loop if say.loop > 0 else 10_000
    for _ in range(repeats):
        call.audio.queue_say(audio)
        await call.control.wait_or_interrupt(call.audio.until_drained())
        if call.control.pending is not None:
            call.audio.drop_playback()
            return


async def _run_dial(call: LiveCall, verb: Dial) -> None:
    call.record = call.record.model_copy(update={"transferred_to": verb.number})
    carrier = call.carrier
    child = CallResource(
        sid=new_sid("CA"),
        account_sid=call.record.account_sid,
        from_number=verb.caller_id or call.record.from_number,
        to=verb.number,
        direction="outbound-dial",
        status="completed",
        parent_call_sid=call.call_sid,
        start_time=utcnow(),
        end_time=utcnow(),
        duration=math.ceil(carrier.dial_hold_s),
    )
    carrier.store.put_call(child)
    call.note("dial", number=verb.number, noun=verb.kind, child_call_sid=child.sid)
    # The dialled party is not simulated: it answers, stays for dial_hold_s, hangs up.
    await call.control.wait_or_interrupt(call.audio.slots(carrier.dial_hold_s * 1000))


async def _read_stream(call: LiveCall, stream: StreamSession) -> None:
    """Hand every message from the stream's server to the call's audio until it closes."""
    try:
        async for message in stream.ws:
            if isinstance(message, bytes):
                call.error("31950: malformed message - binary frame from the stream server")
                continue
            try:
                msg = parse_bot_message(message, stream.stream_sid)
            except StreamMessageError as exc:
                call.error(str(exc))
                continue
            if msg is not None:
                await call.audio.on_bot_message(stream, msg)
    except ConnectionClosed:
        pass


async def _run_stream(call: LiveCall, verb: Stream) -> None:
    """``<Connect><Stream>``: connect, stream until the server closes or the call moves on."""
    url = verb.url
    if urlsplit(url).query:
        call.error(f"31920: stream handshake refused - <Stream url={url!r}> has a query string")
        return
    if verb.track and verb.track != "inbound_track":
        call.error(f"31941: invalid track {verb.track!r} for <Connect><Stream>")
        return
    try:
        ws = await open_stream(url, call.auth_token)
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
        call.error(f"31920: stream WebSocket handshake to {url} failed: {exc}")
        return
    audio = call.audio
    stream_sid = new_sid("MZ")
    record = StreamRecord(stream_sid, url, dict(verb.parameters), call.now_ms())
    call.timeline.streams.append(record)
    stream = StreamSession(ws, stream_sid, record, audio.tick)
    account_sid = call.record.account_sid
    await stream.send_connected()
    await stream.send(start_message(account_sid, call.call_sid, stream_sid, verb.parameters))
    # The first media frame goes out in the next slot, with timestamp 0.
    stream.start_tick = audio.tick
    call.note("stream_started", stream_sid=stream_sid, url=url)
    call.callbacks.stream_event(verb, call.record, stream_sid, "stream-started")
    audio.stream = stream
    reader = asyncio.create_task(_read_stream(call, stream))
    ended_by = "server"
    while not reader.done():
        pending = call.control.pending
        if pending is not None:
            ended_by = pending.by if isinstance(pending, HangupRequest) else "redirect"
            break
        await asyncio.wait({reader}, timeout=FRAME_MS / 1000)
    audio.stream = None
    if not reader.done():
        await stream.send(stop_message(account_sid, call.call_sid, stream_sid))
        call.note("stream_stop_sent", stream_sid=stream_sid)
        await stream.flush()
        stream.closed = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), timeout=2)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    stream.abandon()
    audio.drop_playback()
    record.ended_ms = call.now_ms()
    record.ended_by = ended_by
    record.played_ms = stream.played_bytes / 8
    call.note("stream_ended", stream_sid=stream_sid, ended_by=ended_by)
    call.callbacks.stream_event(verb, call.record, stream_sid, "stream-stopped")
