"""TwilioMediaStream over the tests' fake socket: each frame reaches the handler as it arrives,
bad frames are counted, what it sends keeps its order while the socket is congested, and a
transfer counts only once Twilio's REST API took it."""

from __future__ import annotations

import json

import pytest

from callplane.tools import TransferFailed
from callplane.transports import twilio_protocol as tp
from callplane.transports.base import AudioIn, CallEnded, DtmfIn, MarkIn
from callplane.transports.twilio import TwilioMediaStream
from tests.doubles import FakeSocket, RecordingControl, RecordingHandler

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
