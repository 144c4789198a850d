from __future__ import annotations

import json

from callplane.transports import twilio_protocol as tp


def test_media_start_mark_dtmf_stop_parse() -> None:
    start = tp.parse(
        json.dumps(
            {
                "event": "start",
                "sequenceNumber": "1",
                "streamSid": "MZ1",
                "start": {
                    "streamSid": "MZ1",
                    "accountSid": "AC1",
                    "callSid": "CA1",
                    "tracks": ["inbound"],
                    "customParameters": {"token": "t"},
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
            }
        )
    )
    assert start == tp.Start(
        "MZ1",
        "CA1",
        "AC1",
        {"token": "t"},
        {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    )
    media = tp.parse(
        '{"event":"media","sequenceNumber":"3","media":{"track":"inbound","chunk":"1","timestamp":"5","payload":"//79/A=="},"streamSid":"MZ1"}'
    )
    assert media == tp.Media("//79/A==", 5)
    assert tp.parse('{"event":"mark","streamSid":"MZ1","mark":{"name":"m7"}}') == tp.Mark("m7")
    assert tp.parse(
        '{"event":"dtmf","streamSid":"MZ1","dtmf":{"track":"inbound_track","digit":"5"}}'
    ) == tp.Dtmf("5")
    assert tp.parse('{"event":"stop","stop":{"callSid":"CA1"},"streamSid":"MZ1"}') == tp.Stop()


def test_bad_frames_are_invalid_with_a_reason() -> None:
    assert tp.parse("{nope") == tp.Invalid("invalid_json")
    assert tp.parse("[1]") == tp.Invalid("not_an_object")
    assert tp.parse('{"event":"party"}') == tp.Invalid("unknown_event")
    assert tp.parse('{"event":"media","media":{"payload":"%%%%"}}') == tp.Invalid("bad_base64")
    assert tp.parse('{"event":"media","media":{"payload":"' + "A" * 20000 + '"}}') == tp.Invalid(
        "oversized_payload"
    )
    assert tp.parse('{"event":"media"}') == tp.Invalid("malformed_media")
    assert tp.parse('{"event":"dtmf","dtmf":{"digit":"x"}}') == tp.Invalid("bad_digit")


def test_outbound_frames_are_valid_json_in_twilio_shape() -> None:
    assert json.loads(tp.media_frame("MZ1", "AAA=")) == {
        "event": "media",
        "streamSid": "MZ1",
        "media": {"payload": "AAA="},
    }
    assert json.loads(tp.mark_frame("MZ1", "m1")) == {
        "event": "mark",
        "streamSid": "MZ1",
        "mark": {"name": "m1"},
    }
    assert json.loads(tp.clear_frame("MZ1")) == {"event": "clear", "streamSid": "MZ1"}


def test_the_media_fast_path_agrees_with_the_full_parser() -> None:
    """Compact media frames skip the JSON decoder; every other spelling of the same frame must
    give the same result, and a frame the fast path cannot vouch for must still be judged."""
    payload = "f39/f3+A/w=="
    compact = (
        '{"event":"media","sequenceNumber":"3","media":{"track":"inbound","chunk":"1",'
        '"timestamp":"40","payload":"' + payload + '"},"streamSid":"MZ1"}'
    )
    spaced = json.dumps(json.loads(compact))
    escaped = compact.replace("f39/", "f39\\/")  # JSON may escape "/"; still the same payload
    assert tp.parse(compact) == tp.parse(spaced) == tp.parse(escaped) == tp.Media(payload, 40)
    assert tp.parse(compact[:-1]) == tp.Invalid("invalid_json")  # truncated: not taken
    two = compact.replace('"streamSid"', '"payload":"AAAA","streamSid"')
    # a second "payload" (here outside "media"): the fast path declines, the full parser reads
    # the frame's real structure
    assert tp.parse(two) == tp.Media(payload, 40)
    odd = compact.replace(payload, "f39/f3+A/w=")  # not a multiple of 4
    assert tp.parse(odd) == tp.Invalid("bad_base64")
    bad_ts = compact.replace('"timestamp":"40"', '"timestamp":"x"')
    assert tp.parse(bad_ts) == tp.Invalid("bad_timestamp")


def test_the_bytes_fast_path_takes_exactly_what_parse_takes_as_compact_media() -> None:
    """``media_payload`` (the stream server's per-frame path, on the frame's bytes) returns
    the payload the full parser would, and declines whatever the full parser must judge."""
    payload = "f39/f3+A/w=="
    compact = (
        '{"event":"media","sequenceNumber":"3","media":{"track":"inbound","chunk":"1",'
        '"timestamp":"40","payload":"' + payload + '"},"streamSid":"MZ1"}'
    )
    assert tp.media_payload(compact.encode()) == payload.encode()
    declined = [
        json.dumps(json.loads(compact)),  # spaced: not Twilio's compact shape
        compact.replace("f39/", "f39\\/"),  # a JSON escape in the payload
        compact[:-1],  # truncated
        compact.replace('"streamSid"', '"payload":"AAAA","streamSid"'),  # a second payload
        compact.replace(payload, "f39/f3+A/w="),  # not a multiple of 4
        compact.replace(payload, "f39=f3+A/w=="),  # padding inside
        compact.replace(payload, "f39/f3+A/==="),  # three padding characters
        compact.replace(payload, "f39/f3+A/wA\n"),  # a raw newline
        compact.replace('"timestamp":"40"', '"timestamp":"x"'),
        compact.replace('"timestamp":"40"', '"timestamp":"²"'),  # a digit, but not ASCII
        compact.replace('"MZ1"', '"MZ\u00e91"'),  # not ASCII outside the payload
    ]
    for text in declined:
        assert tp.media_payload(text.encode()) is None, text
    # not UTF-8 at all: the fast path never takes it
    assert tp.media_payload(compact.encode().replace(b"MZ1", b"MZ\xff")) is None


def test_a_payload_ending_in_a_newline_is_bad_base64_in_the_full_parser() -> None:
    """``$`` in a regex also matches before a final newline; the check must not let one
    through to the append event, where it would be raw in a JSON string."""
    frame = '{"event":"media","media":{"payload":"AAA\\n"}}'
    assert tp.parse(frame) == tp.Invalid("bad_base64")
    assert tp.parse('{"event":"media","media":{"payload":"AAA="}}') == tp.Media("AAA=", 0)
