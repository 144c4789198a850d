"""Twilio Media Streams frames: parse what Twilio sends, build what it accepts.

Pure functions, no I/O. Outbound frames are built by string concatenation because they are on
the per-chunk path and their only variable parts are a SID, a mark name and base64, none of
which need JSON escaping.
"""

from __future__ import annotations

import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

# One media frame is normally 160 bytes (20 ms); Twilio never sends more than a few hundred.
# Anything far larger is garbage and is dropped before decoding.
MAX_PAYLOAD_CHARS = 16 * 1024
# fullmatch, not match with "$": "$" also matches before a final newline, which would reach
# the append event raw and make it invalid JSON.
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


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
    """A frame that was dropped, with why (counted by the transport, never fatal)."""

    reason: str


Frame = Start | Media | Dtmf | Mark | Stop | Connected | Invalid


_MEDIA_PREFIX = b'{"event":"media",'
_PAYLOAD_KEY = b'"payload":"'
_TIMESTAMP_KEY = b'"timestamp":"'
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def media_payload(data: bytes) -> bytes | None:
    """The base64 payload of a media frame in exactly Twilio's compact shape, read without the
    JSON decoder; None for anything else, which the full parser (:func:`parse`) then judges.

    Media frames are nearly every frame a call sends (50 a second), and ``json.loads`` of one
    costs several times what slicing out its payload does. Only a frame that starts as Twilio
    writes them, ends with ``}``, has one payload whose characters are plain base64 (no JSON
    escapes) and a digit-only timestamp, all of it ASCII, is taken here. Bytes rather than
    text, so that the stream server hands the frame over as it arrived and the payload goes on
    into the append event without a decode and an encode; ASCII only, so that a frame that is
    not valid UTF-8 is never taken.
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
        if stop <= at or not data[at:stop].isdigit():  # bytes.isdigit: ASCII digits only
            return None
    return payload


def _media_fast(text: str) -> Media | None:
    """:func:`media_payload` for a frame given as text (the media app's route)."""
    if not text.isascii():
        return None
    data = text.encode("ascii")
    payload = media_payload(data)
    if payload is None:
        return None
    timestamp = 0
    at = data.find(_TIMESTAMP_KEY)
    if at >= 0:  # media_payload checked that digits follow
        at += len(_TIMESTAMP_KEY)
        timestamp = int(data[at : data.find(b'"', at)])
    return Media(payload.decode("ascii"), timestamp)


def parse(text: str) -> Frame:
    """Parse one text frame from Twilio."""
    fast = _media_fast(text)
    if fast is not None:
        return fast
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):
        return Invalid("invalid_json")
    if not isinstance(msg, dict):
        return Invalid("not_an_object")
    event = msg.get("event")
    try:
        if event == "media":
            media = msg["media"]
            payload = media["payload"]
            if not isinstance(payload, str) or len(payload) > MAX_PAYLOAD_CHARS:
                return Invalid("oversized_payload" if isinstance(payload, str) else "bad_payload")
            if len(payload) % 4 or not _BASE64.fullmatch(payload):
                return Invalid("bad_base64")
            return Media(payload, int(media.get("timestamp") or 0))
        if event == "mark":
            return Mark(str(msg["mark"]["name"]))
        if event == "dtmf":
            digit = str(msg["dtmf"]["digit"])
            return (
                Dtmf(digit)
                if digit in set("0123456789*#") and len(digit) == 1
                else Invalid("bad_digit")
            )
        if event == "start":
            start = msg["start"]
            return Start(
                stream_sid=str(start.get("streamSid") or msg.get("streamSid")),
                call_sid=str(start["callSid"]),
                account_sid=str(start.get("accountSid") or ""),
                custom_parameters={
                    str(k): str(v) for k, v in (start.get("customParameters") or {}).items()
                },
                media_format=dict(start.get("mediaFormat") or {}),
            )
        if event == "stop":
            return Stop()
        if event == "connected":
            return Connected()
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error):
        return Invalid(f"malformed_{event}")
    return Invalid("unknown_event")


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
