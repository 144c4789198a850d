"""Twilio Media Streams frames: parse what Twilio sends, build what it accepts.

Pure functions, no I/O. Outbound frames are built by string concatenation because they are on
the per-chunk path and their only variable parts are a SID, a mark name and base64, none of
which need JSON escaping (a stream SID is checked to be plain letters and digits when its
``start`` is read, see :data:`SID_PATTERN`).

Inbound frames come from the network, so the parser is total: :func:`read` (a frame's bytes, the
transport's path) and :func:`parse` (a frame's text) return a :data:`Frame` for any input and
raise nothing. Whatever they cannot vouch for is :class:`Invalid` with a reason that the
transport counts. Numbers are length-checked before they are converted, so that a frame with a
thousand-digit number costs no more than any other bad frame and never reaches ``int()``'s
digit limit.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

# One media frame is normally 160 bytes (20 ms); Twilio never sends more than a few hundred.
# Anything far larger is garbage and is dropped before decoding.
MAX_PAYLOAD_CHARS = 16 * 1024
# A media frame's timestamp is milliseconds since the stream started, sent as a string of
# digits: 12 digits is 31 years. A longer one is refused before it is converted.
MAX_TIMESTAMP_DIGITS = 12
# Any JSON number in a frame: Twilio's are a few digits (most of its numbers are strings). A
# longer spelling is refused before ``int()`` or ``float()`` sees it.
MAX_NUMBER_CHARS = 32
_TIMESTAMP_END = 10**MAX_TIMESTAMP_DIGITS
SID_PATTERN = r"[A-Za-z0-9_-]{1,64}"
"""What a stream, call or account SID may be: Twilio's are two letters and 32 hex digits. The
stream SID goes into every frame sent back, unescaped, so nothing else is accepted."""
_SID = re.compile(SID_PATTERN)
# fullmatch, not match with "$": "$" also matches before a final newline, which would reach
# the append event raw and make it invalid JSON.
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_DIGITS = set("0123456789*#")


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    custom_parameters: dict[str, str] = field(default_factory=dict)
    media_format: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~1 µs more per frame to build
class Media:
    payload: str
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class Mark:
    name: str


@dataclass(frozen=True, slots=True)
class Stop:
    pass


@dataclass(frozen=True, slots=True)
class Connected:
    pass


@dataclass(frozen=True, slots=True)
class Invalid:
    """A frame that was dropped, with why (counted by the transport, never fatal).

    ``reason`` is one of a few fixed words (safe as a counter's name); ``detail`` says more
    where there is more to say (an ``unparsable`` frame's error), for a log line."""

    reason: str
    detail: str = field(default="", compare=False)


Frame = Start | Media | Dtmf | Mark | Stop | Connected | Invalid


_MEDIA_PREFIX = b'{"event":"media",'
_PAYLOAD_KEY = b'"payload":"'
_TIMESTAMP_KEY = b'"timestamp":"'
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def media_payload(data: bytes) -> bytes | None:
    """The base64 payload of a media frame in exactly Twilio's compact shape, read without the
    JSON decoder; None for anything else, which the full parser then judges. The fast branch of
    :func:`read` (and of :func:`parse`); it raises nothing (bytes methods only).

    Media frames are nearly every frame a call sends (50 a second), and ``json.loads`` of one
    costs several times what slicing out its payload does. Only a frame that starts as Twilio
    writes them, ends with ``}``, has one payload whose characters are plain base64 (no JSON
    escapes) and a timestamp of at most :data:`MAX_TIMESTAMP_DIGITS` digits, all of it ASCII,
    is taken here. Bytes rather than text, so that the stream server hands the frame over as it
    arrived and the payload goes on into the append event without a decode and an encode;
    ASCII only, so that a frame that is not valid UTF-8 is never taken.
    """
    if not data.startswith(_MEDIA_PREFIX) or not data.endswith(b"}") or not data.isascii():
        return None
    start = data.find(_PAYLOAD_KEY)
    if start < 0:
        return None
    start += len(_PAYLOAD_KEY)
    end = data.find(b'"', start)
    # no second payload key: after ``end``, since the payload itself holds no quote
    if end < 0 or (end - start) % 4 or end - start > MAX_PAYLOAD_CHARS:
        return None
    if data.find(_PAYLOAD_KEY, end) >= 0:
        return None
    payload = data[start:end]
    # The base64 check without a regex: what is left after deleting the alphabet (one C pass)
    # may only be the padding, at the end.
    rest = payload.translate(None, _BASE64_ALPHABET)
    if rest and not ((rest == b"=" or rest == b"==") and payload.endswith(rest)):
        return None
    at = data.find(_TIMESTAMP_KEY)
    if at >= 0:
        at += len(_TIMESTAMP_KEY)
        stop = data.find(b'"', at)
        # bytes.isdigit: ASCII digits only; the length bound keeps int() cheap and in range
        if stop <= at or stop - at > MAX_TIMESTAMP_DIGITS or not data[at:stop].isdigit():
            return None
    return payload


def read(data: bytes) -> bytes | Frame:
    """One text message from Twilio, as the bytes it arrived in: a compact media frame's
    base64 payload (ASCII bytes, ready for the append event: the per-frame case, a branch
    that skips the JSON decoder), or any other frame parsed. Never raises.

    The bytes are expected to be UTF-8 (a WebSocket fails a connection whose text message is
    not, see :mod:`callplane.transports.socket`); bytes that are not anyway are
    ``Invalid("not_utf8")``. Any failure the checks below did not foresee is
    ``Invalid("unparsable")`` with the error as its detail: one frame is lost, never the call.
    """
    try:
        payload = media_payload(data)
        if payload is not None:
            return payload
        return _parse(data.decode("utf-8"))
    except UnicodeDecodeError:
        return Invalid("not_utf8")
    except Exception as exc:  # the parser's one boundary: no frame, however built, escapes it
        return Invalid("unparsable", _describe(exc))


def parse(text: str) -> Frame:
    """One text message from Twilio, given as text (tests and tools); the same judgement as
    :func:`read`, a compact media frame included. Never raises."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: no WebSocket text message holds them
        return Invalid("not_utf8")
    try:
        frame = read(data)
        if isinstance(frame, bytes):
            return Media(frame.decode("ascii"), _compact_timestamp(data))
        return frame
    except Exception as exc:  # the same boundary for the text form's own step
        return Invalid("unparsable", _describe(exc))


def _compact_timestamp(data: bytes) -> int:
    """The timestamp of a frame :func:`media_payload` took (it checked the digits: at most
    :data:`MAX_TIMESTAMP_DIGITS` of them), 0 if it has none."""
    at = data.find(_TIMESTAMP_KEY)
    if at < 0:
        return 0
    at += len(_TIMESTAMP_KEY)
    return int(data[at : data.find(b'"', at)])


class _Refused(ValueError):
    """A frame the parser refuses for ``reason`` (raised from deep inside, caught in
    :func:`_parse`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _number(text: str) -> str:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Refused("oversized_number")
    return text


def _int(text: str) -> int:
    return int(_number(text))


def _float(text: str) -> float:
    return float(_number(text))


def _constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259), though Python's decoder takes them by default.
    raise _Refused("invalid_json")


def _parse(text: str) -> Frame:
    """The full parser: JSON, then the fields of the event it names."""
    try:
        msg = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except _Refused as refused:
        return Invalid(refused.reason)
    except (ValueError, RecursionError):
        return Invalid("invalid_json")
    if not isinstance(msg, dict):
        return Invalid("not_an_object")
    event = msg.get("event")
    try:
        if event == "media":
            media = _object(msg["media"])
            payload = media["payload"]
            if not isinstance(payload, str):
                return Invalid("bad_payload")
            if len(payload) > MAX_PAYLOAD_CHARS:
                return Invalid("oversized_payload")
            if len(payload) % 4 or not _BASE64.fullmatch(payload):
                return Invalid("bad_base64")
            return Media(payload, _timestamp(media.get("timestamp")))
        if event == "mark":
            return Mark(_text(_object(msg["mark"])["name"]))
        if event == "dtmf":
            digit = _object(msg["dtmf"])["digit"]
            if not isinstance(digit, str) or len(digit) != 1 or digit not in _DIGITS:
                return Invalid("bad_digit")
            return Dtmf(digit)
        if event == "start":
            start = _object(msg["start"])
            parameters = _object(start.get("customParameters") or {})
            return Start(
                stream_sid=_sid(start.get("streamSid") or msg.get("streamSid")),
                call_sid=_sid(start["callSid"]),
                account_sid=_sid(start["accountSid"]) if start.get("accountSid") else "",
                custom_parameters={_text(name): _text(value) for name, value in parameters.items()},
                media_format=_object(start.get("mediaFormat") or {}),
            )
        if event == "stop":
            return Stop()
        if event == "connected":
            return Connected()
    except _Refused as refused:
        return Invalid(refused.reason)
    except (KeyError, TypeError):  # a field missing, or of the wrong kind
        return Invalid(f"malformed_{event}")
    return Invalid("unknown_event")


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("not an object")
    return value


def _timestamp(value: Any) -> int:
    """A media frame's timestamp: a string of at most :data:`MAX_TIMESTAMP_DIGITS` ASCII
    digits, as Twilio sends it, or such a whole number; none (or empty) is 0."""
    if value is None or value == "":
        return 0
    if isinstance(value, str):
        if len(value) <= MAX_TIMESTAMP_DIGITS and value.isascii() and value.isdigit():
            return int(value)
    elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _TIMESTAMP_END:
        return value
    raise _Refused("bad_timestamp")


def _text(value: Any) -> str:
    """A string field that goes on (into records, logs, the conversation): it must be one, and
    encodable as UTF-8 (JSON can spell lone surrogates, ``"\\ud800"``, which cannot be stored)."""
    if not isinstance(value, str):
        raise TypeError("not a string")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _Refused("bad_text") from None
    return value


def _sid(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")
    if not _SID.fullmatch(value):
        raise _Refused("bad_sid")
    return value


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def media_frame(stream_sid: str, payload_b64: str) -> str:
    return (
        '{"event":"media","streamSid":"'
        + stream_sid
        + '","media":{"payload":"'
        + payload_b64
        + '"}}'
    )


def mark_frame(stream_sid: str, name: str) -> str:
    return '{"event":"mark","streamSid":"' + stream_sid + '","mark":{"name":"' + name + '"}}'


def clear_frame(stream_sid: str) -> str:
    return '{"event":"clear","streamSid":"' + stream_sid + '"}'
