"""Fast checks of the pure parts: TwiML, inventory rules, the playback queue, scripts."""

from __future__ import annotations

import pytest
from twilio.twiml.voice_response import Connect, Dial, VoiceResponse

from callplane_standins.twilio_simulator import caller
from callplane_standins.twilio_simulator.inventory import Inventory, country_of
from callplane_standins.twilio_simulator.playback import PlaybackQueue as _Playback
from callplane_standins.twilio_simulator.state import TwilioApiError
from callplane_standins.twilio_simulator.timeline import ChunkRecord, MarkRecord
from callplane_standins.twilio_simulator.twiml import (
    Dial as DialVerb,
)
from callplane_standins.twilio_simulator.twiml import (
    Hangup,
    Pause,
    Reject,
    Say,
    Stream,
    TwimlError,
    parse_twiml,
)


def test_twiml_from_the_sdk_parses_into_instructions() -> None:
    r = VoiceResponse()
    c = Connect()
    s = c.stream(url="wss://bridge.example/twilio/media", name="bridge")
    s.parameter(name="token", value="abc")
    s.parameter(name="tenant", value="acme")
    r.append(c)
    r.say("Goodbye", voice="alice")
    d = Dial(caller_id="+14155550100")
    d.number("+15550009999")
    r.append(d)
    r.pause(length=2)
    r.hangup()
    assert parse_twiml(str(r)) == [
        Stream("wss://bridge.example/twilio/media", "bridge", {"token": "abc", "tenant": "acme"}),
        Say("Goodbye", voice="alice"),
        DialVerb("+15550009999", "number", "+14155550100"),
        Pause(2.0),
        Hangup(),
    ]
    assert parse_twiml("<Response><Reject/></Response>") == [Reject("rejected")]
    assert parse_twiml("<Response><Dial>+15550001111</Dial></Response>") == [
        DialVerb("+15550001111")
    ]


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ("<Response><Gather/></Response>", "<Gather> is a Twilio verb the simulator does not run"),
        ("<Response><Dance/></Response>", "<Dance> is not a TwiML verb"),
        ("<Response><Say>hi</Response>", "not well-formed XML"),
        ("<Reply/>", "root must be <Response>"),
        ("<Response><Connect><Room>r</Room></Connect></Response>", "<Connect><Room>"),
        ('<Response><Connect><Stream url="https://x"/></Connect></Response>', "wss://"),
        ('<Response><Reject reason="nope"/></Response>', "'nope'"),
        ('<Response><Pause length="soon"/></Response>', "'soon'"),
        ("<Response><Dial/></Response>", "<Dial> needs a number"),
    ],
)
def test_bad_twiml_is_refused_with_a_clear_message(doc: str, needle: str) -> None:
    with pytest.raises(TwimlError) as err:
        parse_twiml(doc)
    assert needle in str(err.value)


def test_inventory_is_deterministic_and_applies_its_rules() -> None:
    inv = Inventory()
    a = [n.phone_number for n in inv.search("US", "local", area_code="415", limit=3)]
    b = [n.phone_number for n in inv.search("US", "local", area_code="415", limit=3)]
    assert a == b == ["+14155550100", "+14155550101", "+14155550102"]
    rest = inv.search("US", "local", area_code="415", taken=a[:2])
    assert rest[0].phone_number == "+14155550102"
    assert inv.search("US", "local", contains="+1212", limit=1)[0].phone_number.startswith("+1212")
    assert inv.search("US", "local", contains="0199$", limit=10)[0].phone_number.endswith("0199")
    assert inv.types_in_stock("PK") == ["mobile"]
    with pytest.raises(TwilioApiError) as err:
        inv.search("PK", "toll_free")
    assert err.value.status == 404 and err.value.code == 20404
    pk = inv.search("PK", "mobile", limit=1)[0]
    with pytest.raises(TwilioApiError) as err:
        inv.check_purchase(pk, None, None)
    assert err.value.code == 21649
    inv.check_purchase(pk, "BU" + "0" * 32, None)
    de = inv.search("DE", "local", limit=1)[0]
    with pytest.raises(TwilioApiError) as err:
        inv.check_purchase(de, None, None)
    assert err.value.code == 21631
    assert (country_of("+923001234567"), country_of("+14155550100"), country_of("+999")) == (
        "PK",
        "US",
        "",
    )


def _chunk(n: int) -> ChunkRecord:
    return ChunkRecord(1, "stream", "MZ1", 0.0, n)


def test_playback_plays_in_order_and_reaches_marks_after_their_audio() -> None:
    q = _Playback()
    m0 = MarkRecord("empty", "MZ1", 0.0)
    q.push_mark(m0)
    q.push_audio(b"\x01" * 240, _chunk(240))
    m1 = MarkRecord("a", "MZ1", 0.0)
    q.push_mark(m1)
    q.push_audio(b"\x02" * 100, _chunk(100))
    m2 = MarkRecord("b", "MZ1", 0.0)
    q.push_mark(m2)

    frame, now, after = q.take(0.0)
    assert frame == b"\x01" * 160 and now == [m0] and after == []
    frame, now, after = q.take(20.0)
    assert frame == b"\x01" * 80 + b"\x02" * 80 and after == [m1]
    assert m1.segment_ms == 30.0 and m2.segment_ms == 12.5
    frame, now, after = q.take(40.0)
    assert frame == b"\x02" * 20 and after == [m2] and q.empty


def test_clear_drops_audio_and_returns_pending_marks() -> None:
    q = _Playback()
    chunk = _chunk(800)
    q.push_audio(b"\x01" * 800, chunk)
    q.push_mark(MarkRecord("x", "MZ1", 0.0))
    q.take(0.0)
    dropped, marks = q.clear()
    assert dropped == 640 and [m.name for m in marks] == ["x"]
    assert chunk.played_bytes == 160 and chunk.dropped_bytes == 640 and q.empty


def test_script_steps_validate_and_load_from_json() -> None:
    steps = caller.script_from_json(
        [
            {"say": "hi"},
            {"wait_for_reply": 3},
            {"interrupt_after": [500, "stop"]},
            {"press": "1#"},
            {"pause": 200},
            {"hang_up": True},
        ]
    )
    assert steps == [
        caller.say("hi"),
        caller.wait_for_reply(3.0),
        caller.interrupt_after(500, "stop"),
        caller.press("1#"),
        caller.pause(200),
        caller.hang_up(),
    ]
    with pytest.raises(caller.CallerScriptError, match="'12a'"):
        caller.press("12a")
    with pytest.raises(caller.CallerScriptError, match="step 1"):
        caller.script_from_json([{"say": "x"}, {"sing": "y"}])
