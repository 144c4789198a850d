"""Property tests of the Twilio frame parser: whatever arrives (arbitrary bytes and text, JSON
shaped like Twilio's frames with hostile values in every field, numbers thousands of digits
long), :func:`twilio_protocol.read` and :func:`twilio_protocol.parse` return a frame and raise
nothing, and what they let through is safe to pass on."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from callplane.transports import twilio_protocol as tp

FRAME_TYPES = (tp.Start, tp.Media, tp.Dtmf, tp.Mark, tp.Stop, tp.Connected, tp.Invalid)
SID = re.compile(tp.SID_PATTERN)
BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def assert_safe(frame: bytes | tp.Frame) -> None:
    """What the parser returns may go on as it is: audio is plain base64 of a bounded size,
    numbers are in range, SIDs can be written into outbound frames unescaped, and every text
    field can be stored as UTF-8."""
    if isinstance(frame, bytes):
        assert frame.isascii() and len(frame) % 4 == 0 and len(frame) <= tp.MAX_PAYLOAD_CHARS
        assert BASE64.fullmatch(frame.decode("ascii"))
        base64.b64decode(frame, validate=True)
        return
    assert isinstance(frame, FRAME_TYPES), frame
    if isinstance(frame, tp.Media):
        assert_safe(frame.payload.encode("ascii"))
        assert 0 <= frame.timestamp_ms < 10**tp.MAX_TIMESTAMP_DIGITS
    elif isinstance(frame, tp.Start):
        assert SID.fullmatch(frame.stream_sid) and SID.fullmatch(frame.call_sid)
        assert frame.account_sid == "" or SID.fullmatch(frame.account_sid)
        for name, value in frame.custom_parameters.items():
            name.encode("utf-8")
            value.encode("utf-8")
    elif isinstance(frame, tp.Mark):
        frame.name.encode("utf-8")
    elif isinstance(frame, tp.Dtmf):
        assert frame.digit in "0123456789*#" and len(frame.digit) == 1
    elif isinstance(frame, tp.Invalid):
        assert re.fullmatch(r"[a-z0-9_]+", frame.reason), frame.reason  # a counter's name


@given(st.binary(max_size=2048))
@example(b'{"event":"media","media":{"payload":"AAAA"}}\xff')
@example(b'{"event":"media","media":{"payload":"AAAA","timestamp":"' + b"1" * 5000 + b'"}}')
@example(b"\xef\xbb\xbf{}")  # a byte order mark
@example("[" * 100_000)  # deeper than the decoder's recursion limit
def test_any_bytes_give_a_frame_and_nothing_raises(data: bytes | str) -> None:
    raw = data.encode() if isinstance(data, str) else data
    assert_safe(tp.read(raw))


@given(st.text(max_size=2048))
@example('{"event":"media","media":{"payload":"AAAA","timestamp":"' + "1" * 5000 + '"}}')
@example('{"event": "media", "media": {"payload": "AAAA", "timestamp": 1e999}}')
@example('{"event":"mark","mark":{"name":"\\ud800"}}')  # JSON's spelling of a lone surrogate
@example("\ud800")  # a str no WebSocket message can hold
def test_any_text_gives_a_frame_and_nothing_raises(text: str) -> None:
    assert_safe(tp.parse(text))


# ---- JSON shaped like Twilio's frames, with hostile values


HUGE = "1" * 5000
"""A number past ``int()``'s default digit limit (4300)."""

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["", "0", "40", "AAAA", "//79/A==", "MZ1", "CA1", "\\ud800", HUGE, "5" * 13]),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
payloads = st.one_of(
    st.sampled_from(["", "AAAA", "//79/A==", "f39/f3+A/w==", "AAA\n", "AAA=", "%%%%", "A" * 20000]),
    st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode()),
    json_values,
)
timestamps = st.one_of(
    st.sampled_from(["0", "40", HUGE, "9" * 12, "1" * 13, "-5", " 5", "1_000", "²", "NaN"]),
    st.integers(min_value=-(10**20), max_value=10**20),
    json_values,
)
sids = st.one_of(st.sampled_from(["MZ1", "CA1", "MZ" + "a" * 32, 'MZ"}', "MZ\\", ""]), json_values)


@st.composite
def twilio_like(draw: st.DrawFn) -> dict[str, Any]:
    event = draw(st.sampled_from(["media", "mark", "dtmf", "start", "stop", "connected", "x"]))
    frame: dict[str, Any] = {"event": event}
    if draw(st.booleans()):
        frame["streamSid"] = draw(sids)
    if draw(st.booleans()):
        frame["sequenceNumber"] = draw(st.one_of(st.just("3"), json_values))
    if event == "media":
        media = {"payload": draw(payloads), "timestamp": draw(timestamps)}
        for key in draw(st.sets(st.sampled_from(["track", "chunk"]))):
            media[key] = draw(json_values)
        frame["media"] = draw(st.one_of(st.just(media), json_values))
    elif event == "mark":
        frame["mark"] = draw(st.one_of(st.fixed_dictionaries({"name": json_values}), json_values))
    elif event == "dtmf":
        digits = st.one_of(st.sampled_from(["5", "#", "x", "55", "٣"]), json_values)
        frame["dtmf"] = draw(st.one_of(st.fixed_dictionaries({"digit": digits}), json_values))
    elif event == "start":
        start = {
            "streamSid": draw(sids),
            "callSid": draw(sids),
            "accountSid": draw(sids),
            "customParameters": draw(
                st.one_of(st.dictionaries(st.text(max_size=8), json_values), json_values)
            ),
            "mediaFormat": draw(json_values),
        }
        frame["start"] = draw(st.one_of(st.just(start), json_values))
    if draw(st.booleans()):
        frame[draw(st.text(max_size=8))] = draw(json_values)
    return frame


def spellings(frame: dict[str, Any]) -> list[str]:
    """The frame as Twilio writes it (compact) and as another encoder might (spaced, every
    non-ASCII character escaped)."""
    return [
        json.dumps(frame, separators=(",", ":"), ensure_ascii=False),
        json.dumps(frame, ensure_ascii=True),
    ]


@given(twilio_like())
def test_twilio_shaped_frames_with_hostile_values_give_a_frame_and_nothing_raises(
    frame: dict[str, Any],
) -> None:
    for text in spellings(frame):
        assert_safe(tp.read(text.encode("utf-8", "surrogatepass")))
        assert_safe(tp.parse(text))


@given(
    twilio_like(), st.sampled_from(["1" * 5000, "-" + "9" * 5000, "1" * 40, "1e999", "1.5e-400"])
)
def test_bare_numbers_of_any_length_are_refused_before_conversion(
    frame: dict[str, Any], number: str
) -> None:
    """A JSON number written out in a field: never raising, and refused by the full parser
    when it is longer than any Twilio sends. (The fast branch may take a compact media frame
    whatever else it holds: it converts nothing but the timestamp it checked.)"""
    frame = {**frame, "sequenceNumber": "@@"}
    if isinstance(frame.get("media"), dict):
        frame["media"] = {**frame["media"], "timestamp": "@@"}
    compact, spaced = (text.replace('"@@"', number) for text in spellings(frame))
    assert_safe(tp.parse(compact))
    assert_safe(tp.read(compact.encode("utf-8", "surrogatepass")))
    result = tp.parse(spaced)
    assert_safe(result)
    if len(number) > tp.MAX_NUMBER_CHARS:
        assert result == tp.Invalid("oversized_number")


@given(
    st.binary(min_size=0, max_size=300).map(lambda b: base64.b64encode(b).decode()),
    st.integers(min_value=0, max_value=10**12 - 1),
    st.dictionaries(
        st.sampled_from(["track", "chunk", "sequenceNumber", "streamSid"]),
        st.text(alphabet="abc019 ", max_size=6),
    ),
)
def test_every_spelling_of_a_media_frame_gives_the_same_audio(
    payload: str, timestamp: int, extra: dict[str, str]
) -> None:
    """The fast branch (compact frames, from the bytes) and the full parser (any other
    spelling) agree on a well-formed media frame, whatever other fields it has."""
    media = {**extra, "timestamp": str(timestamp), "payload": payload}
    frame: dict[str, Any] = {"event": "media", **extra, "media": media}
    expected = tp.Media(payload, timestamp)
    for text in spellings(frame):
        assert tp.parse(text) == expected
        read = tp.read(text.encode())
        assert read == payload.encode() or read == expected
