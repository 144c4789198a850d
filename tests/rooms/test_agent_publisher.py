"""RoomPublisher's wire protocol, against an in-memory participant that records what a room
would receive (the real room is exercised in test_agent_room.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from callplane.rooms.publisher import RoomPublisher


@dataclass
class Writer:
    attributes: dict[str, str]
    chunks: list[str] = field(default_factory=list)
    closed: bool = False

    async def write(self, text: str) -> None:
        assert not self.closed
        self.chunks.append(text)

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class RecordingParticipant:
    attributes: list[dict[str, str]] = field(default_factory=list)
    streams: list[Writer] = field(default_factory=list)
    sent: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    fail: bool = False

    async def set_attributes(self, attributes: dict[str, str]) -> None:
        if self.fail:
            raise ConnectionError("room gone")
        await asyncio.sleep(0)
        self.attributes.append(attributes)

    async def stream_text(self, *, topic: str, attributes: dict[str, str]) -> Writer:
        assert topic == "lk.transcription"
        writer = Writer(attributes)
        self.streams.append(writer)
        return writer

    async def send_text(self, text: str, *, topic: str, attributes: dict[str, str]) -> object:
        assert topic == "lk.transcription"
        self.sent.append((text, attributes))
        return None


async def test_states_are_published_in_order_and_coalesced() -> None:
    room = RecordingParticipant()
    publisher = RoomPublisher(room, lambda: "TR_agent", lambda: None)
    publisher.start()
    publisher.on_state("listening")
    publisher.on_state("thinking")  # before the worker ran: only the newest counts
    publisher.on_state("speaking")
    await asyncio.sleep(0.01)
    publisher.on_state("listening")
    await publisher.aclose()
    assert room.attributes == [{"lk.agent.state": "speaking"}, {"lk.agent.state": "listening"}]


async def test_agent_text_streams_incrementally_then_a_final_replaces_it() -> None:
    room = RecordingParticipant()
    publisher = RoomPublisher(room, lambda: "TR_agent", lambda: None)
    publisher.start()
    publisher.on_transcript("agent", "It is", False, "item_1")
    publisher.on_transcript("agent", "It is sunny", False, "item_1")
    publisher.on_transcript("agent", "It is sunny.", True, "item_1")
    await publisher.aclose()
    (stream,) = room.streams
    assert stream.chunks == ["It is", " sunny"]  # each chunk appends
    assert stream.closed
    assert stream.attributes == {
        "lk.segment_id": "item_1",
        "callplane.speaker": "agent",
        "lk.transcribed_track_id": "TR_agent",
        "lk.transcription_final": "false",
    }
    assert room.sent == [
        (
            "It is sunny.",
            {
                "lk.segment_id": "item_1",
                "callplane.speaker": "agent",
                "lk.transcribed_track_id": "TR_agent",
                "lk.transcription_final": "true",
            },
        )
    ]


async def test_user_text_names_who_spoke_when_it_began() -> None:
    room = RecordingParticipant()
    speaker: list[tuple[str, str] | None] = [("TR_bob", "bob")]
    publisher = RoomPublisher(room, lambda: "TR_agent", lambda: speaker[0])
    publisher.start()
    publisher.on_transcript("user", "what is", False, "item_2")
    speaker[0] = ("TR_alice", "alice")  # someone else is louder by the time it completes
    publisher.on_transcript("user", "what is the weather", True, "item_2")
    publisher.on_transcript("user", "hello", True, "item_3")  # no interim: final only
    speaker[0] = None
    publisher.on_transcript("user", "hm", True, "item_4")  # nobody known
    await publisher.aclose()
    finals = [(text, attrs.get("callplane.participant")) for text, attrs in room.sent]
    assert finals == [("what is the weather", "bob"), ("hello", "alice"), ("hm", None)]
    assert room.sent[0][1]["lk.transcribed_track_id"] == "TR_bob"
    assert "lk.transcribed_track_id" not in room.sent[2][1]


async def test_a_room_that_went_away_does_not_break_the_call() -> None:
    room = RecordingParticipant(fail=True)
    publisher = RoomPublisher(room, lambda: None, lambda: None)
    publisher.start()
    publisher.on_state("listening")
    await asyncio.sleep(0.01)
    publisher.on_state("speaking")
    publisher.on_transcript("agent", "still here", True, "item_5")
    await publisher.aclose()
    assert room.attributes == []
    assert room.sent[0][0] == "still here"  # text still goes out when only attributes fail
