"""TwilioMediaStream over the tests' fake socket: each frame reaches the handler as it arrives,
bad frames are counted, what it sends keeps its order while the socket is congested, and a
transfer counts only once Twilio's REST API took it."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callplane.tools import TransferFailed
from callplane.transports import twilio_protocol as tp
from callplane.transports.base import AudioIn, CallEnded, DtmfIn, MarkIn
from callplane.transports.twilio import TwilioMediaStream
from tests.doubles import FakeSocket, RecordingControl, RecordingHandler
from tests.transports.test_twilio_protocol_properties import spellings, twilio_like

START = tp.Start(stream_sid="MZ1", call_sid="CA1", account_sid="AC1")


def stream() -> tuple[FakeSocket, TwilioMediaStream, RecordingHandler, list[str]]:
    socket = FakeSocket()
    invalid: list[str] = []
    transport = TwilioMediaStream(socket, START, None, on_invalid=invalid.append)
    handler = RecordingHandler()
    transport.listen(handler)
    return socket, transport, handler, invalid


def test_frames_reach_the_handler_as_they_arrive_and_stop_ends_the_call_once() -> None:
    socket, _, handler, _ = stream()
    socket.deliver('{"event":"media","media":{"payload":"AAAA","timestamp":"20"}}')  # compact
    socket.deliver({"event": "media", "media": {"payload": "BBBB"}})  # spaced: the parser
    socket.deliver({"event": "mark", "mark": {"name": "m7"}})
    socket.deliver({"event": "dtmf", "dtmf": {"digit": "5"}})
    socket.deliver({"event": "stop", "stop": {"callSid": "CA1"}})
    socket.deliver({"event": "media", "media": {"payload": "CCCC"}})  # after stop: ignored
    socket.peer_close(1000)
    assert handler.events == [
        AudioIn(b"AAAA"),
        AudioIn(b"BBBB"),
        MarkIn("m7"),
        DtmfIn("5"),
        CallEnded("caller_hung_up"),
    ]


def test_frames_before_the_handler_wait_for_it_and_a_close_is_the_end() -> None:
    socket = FakeSocket()
    socket.deliver({"event": "media", "media": {"payload": "AAAA"}})
    transport = TwilioMediaStream(socket, START, None)
    handler = RecordingHandler()
    transport.listen(handler)
    socket.peer_close(None)
    assert handler.events == [AudioIn(b"AAAA"), CallEnded("stream_closed")]


def test_bad_frames_are_dropped_and_counted() -> None:
    socket, transport, handler, invalid = stream()
    socket.deliver("{not json")
    socket.deliver_binary(b"\x00\x01")
    socket.deliver({"event": "media", "media": {"payload": "%%%%"}})
    socket.deliver({"event": "party"})
    assert handler.events == []
    assert invalid == ["invalid_json", "binary_frame", "bad_base64", "unknown_event"]
    assert transport.dropped["binary_frame"] == 1


def test_hostile_frames_after_an_invalid_one_are_dropped_and_the_call_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Numbers thousands of digits long (quoted or bare), infinities, bytes that are not UTF-8,
    a lone surrogate, a second start: each is one dropped frame, and audio still flows."""
    socket, transport, handler, invalid = stream()
    socket.deliver("{not json")
    socket.deliver('{"event":"media","media":{"payload":"AAAA","timestamp":"' + "1" * 5000 + '"}}')
    socket.deliver(
        '{"event": "media", "media": {"payload": "AAAA", "timestamp": ' + "1" * 5000 + "}}"
    )
    socket.deliver('{"event": "media", "media": {"payload": "AAAA", "timestamp": 1e999}}')
    socket.deliver('{"event": "media", "media": {"payload": "AAAA", "timestamp": Infinity}}')
    socket.deliver(b'{"event":"media","media":{"payload":"AAAA"}}\xff')
    socket.deliver('{"event": "mark", "mark": {"name": "\\ud800"}}')
    socket.deliver(tp_start_frame())
    socket.deliver({"event": "media", "media": {"payload": "BBBB"}})
    assert invalid == [
        "invalid_json",
        "bad_timestamp",
        "oversized_number",
        "bad_timestamp",
        "invalid_json",
        "not_utf8",
        "bad_text",
        "repeated_start",
    ]
    assert handler.events == [AudioIn(b"BBBB")]
    assert transport.dropped["bad_timestamp"] == 2
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def tp_start_frame() -> str:
    start = {"streamSid": "MZ1", "callSid": "CA1", "accountSid": "AC1"}
    return json.dumps({"event": "start", "streamSid": "MZ1", "start": start})


def test_a_handler_that_raises_ends_the_call_as_an_internal_error_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    socket = FakeSocket()
    transport = TwilioMediaStream(socket, START, None)
    handler = RecordingHandler(audio_error=RuntimeError("broken handler"))
    transport.listen(handler)
    for _ in range(3):
        socket.deliver('{"event":"media","media":{"payload":"AAAA"}}')
    socket.deliver({"event": "mark", "mark": {"name": "m1"}})
    assert handler.events == [CallEnded("internal_error")]
    failures = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert len(failures) == 1 and "broken handler" in str(failures[0])


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (1000, "stream_closed"),
        (None, "stream_closed"),
        (1007, "invalid_utf8"),
        (1011, "internal_error"),
        (1009, "message_too_big"),
        (1002, "protocol_error"),
    ],
)
def test_the_close_code_says_why_the_stream_ended(code: int | None, reason: str) -> None:
    socket, _, handler, _ = stream()
    socket.peer_close(code)
    assert handler.events == [CallEnded(reason)]


def test_what_is_sent_while_twilio_reads_nothing_arrives_later_in_order() -> None:
    socket, transport, _, _ = stream()
    transport.play("AAAA", "m1")
    socket.congest()
    transport.play("BBBB", "m2")
    transport.clear()
    transport.play("CCCC", "m3")
    assert len(socket.written) == 2 and socket.flow.buffered == 5
    socket.drain()
    frames = [json.loads(text) for text in socket.written]
    assert [(f["event"], f.get("media", f.get("mark"))) for f in frames] == [
        ("media", {"payload": "AAAA"}),
        ("mark", {"name": "m1"}),
        ("media", {"payload": "BBBB"}),
        ("mark", {"name": "m2"}),
        ("clear", None),
        ("media", {"payload": "CCCC"}),
        ("mark", {"name": "m3"}),
    ]
    assert {f["streamSid"] for f in frames} == {"MZ1"}


async def test_a_transfer_twilio_took_moves_the_line() -> None:
    control = RecordingControl("CA1")
    transport = TwilioMediaStream(FakeSocket(), START, control)
    assert await transport.transfer("+15005550006") == "line_moved"
    assert control.transfers == ["+15005550006"]


async def test_a_transfer_twilio_refused_or_could_not_be_asked_for_fails() -> None:
    refusing = TwilioMediaStream(
        FakeSocket(), START, RecordingControl("CA1", refuse_transfers=True)
    )
    with pytest.raises(TransferFailed, match=r"^the phone network refused the transfer to \+1500"):
        await refusing.transfer("+15005550006")
    uncontrolled = TwilioMediaStream(FakeSocket(), START, None)
    with pytest.raises(TransferFailed, match="no Twilio REST credentials are configured"):
        await uncontrolled.transfer("+15005550006")


frames = st.one_of(
    twilio_like().map(lambda frame: spellings(frame)[0].encode("utf-8", "surrogatepass")),
    twilio_like().map(lambda frame: spellings(frame)[1].encode("utf-8", "surrogatepass")),
    st.binary(max_size=300),
    st.just(b'{"event":"media","media":{"payload":"AAAA","timestamp":"' + b"1" * 5000 + b'"}}'),
)


@given(st.lists(st.tuples(st.booleans(), frames), max_size=30))
def test_no_sequence_of_frames_fails_the_transport(sequence: list[tuple[bool, bytes]]) -> None:
    """Whatever Twilio-like, hostile or random frames arrive, text or binary, in any order:
    the handler gets only audio, marks, keys and at most one end (Twilio's stop), never an
    internal error, and each frame is accounted for once: handed on, dropped and counted, or
    (a connected, anything after the stop) ignored."""
    socket, transport, handler, invalid = stream()
    handed_on = dropped = 0
    stopped = False
    for text, data in sequence:
        if not text:
            socket.deliver_binary(data)
            dropped += 1
            continue
        socket.inbox.text(data)
        frame = tp.read(data)
        if stopped:
            continue
        if isinstance(frame, bytes | tp.Media | tp.Mark | tp.Dtmf):
            handed_on += 1
        elif isinstance(frame, tp.Stop):
            stopped = True
        elif isinstance(frame, tp.Invalid | tp.Start):
            dropped += 1
    assert handler.of(CallEnded) == ([CallEnded("caller_hung_up")] if stopped else [])
    assert len([e for e in handler.events if not isinstance(e, CallEnded)]) == handed_on
    assert len(invalid) == sum(transport.dropped.values()) == dropped
