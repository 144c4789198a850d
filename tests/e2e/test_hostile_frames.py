"""Hostile frames on a real media stream, against the stack in the cloud's shape (two stream
replicas behind their front, PostgreSQL, Redis): opened as Twilio opens one (signed webhook,
signed upgrade, the edge's stream token), then fed garbage.

What may be dropped is dropped and counted in the call's record, and the call goes on; what
RFC 6455 says must fail the connection (a text message that is not UTF-8) or what the server
cannot take (a message over its frame limit) closes the stream with the RFC's code, and the
record says so. No replica logs a traceback, and no answer is a 5xx."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import httpx
import pytest

from callplane_dev.stack import LocalStack
from functions.stream_server import MAX_FRAME_BYTES
from tests.e2e.test_phone_calls import WEATHER_ANSWER, stored_record, texts
from tests.e2e.twilio_client import TwilioLikeStream
from tests.support.waiting import until

HUGE = "1" * 5000
"""A number past ``int()``'s default limit of 4300 digits."""

# (what is sent, sent as a text message?, the reason it is dropped for)
DROPPED: list[tuple[str | bytes, bool, str]] = [
    ("{not json", True, "invalid_json"),
    (
        '{"event":"media","media":{"payload":"AAAA","timestamp":"' + HUGE + '"}}',
        True,
        "bad_timestamp",
    ),
    (
        '{"event": "media", "media": {"payload": "AAAA", "timestamp": ' + HUGE + "}}",
        True,
        "oversized_number",
    ),
    ('{"event": "media", "media": {"payload": "AAAA", "timestamp": 1e999}}', True, "bad_timestamp"),
    ('{"event": "dtmf", "dtmf": {"digit": "' + HUGE + '"}}', True, "bad_digit"),
    ('{"event": "mark", "mark": {"name": "\\ud800"}}', True, "bad_text"),  # valid UTF-8 on the wire
    (b"\xff\xfe\x00 not UTF-8, but binary", False, "binary_frame"),
    ('{"event": "party"}', True, "unknown_event"),
    ('{"event": "media", "media": {"payload": "%%%"}}', True, "bad_base64"),
    ('{"event": "media", "media": {"payload": "' + "A" * 20_000 + '"}}', True, "oversized_payload"),
    ('{"event":"media","media":{"payload":"' + "A" * 900_000 + '"}}', True, "oversized_payload"),
    ("[" * 200_000, True, "invalid_json"),  # nested past the decoder's limit
]


def replica_logs(stack: LocalStack) -> str:
    """Everything the media and stream replicas have logged."""
    return "".join(path.read_text(errors="replace") for path in logs_of(stack))


def logs_of(stack: LocalStack) -> list[Path]:
    paths = sorted((stack.data_dir / "logs").glob("*.log"))
    assert {path.name.split("-")[0] for path in paths} == {"media", "streams"}, paths
    return paths


async def served_everywhere(stack: LocalStack, call_sid: str) -> None:
    """Every media replica answers for the call, none with a 5xx."""
    assert stack.plane is not None
    headers = {"Authorization": f"Bearer {stack.creds.media_api_key}"}
    async with httpx.AsyncClient(headers=headers, timeout=10) as http:
        for url in stack.plane.describe()["media"]:
            answer = await http.get(f"{url}/calls/{call_sid}")
            assert answer.status_code == 200, (url, answer.status_code, answer.text[:300])


def no_traceback(stack: LocalStack, caplog: pytest.LogCaptureFixture) -> None:
    logs = replica_logs(stack)
    assert "Traceback" not in logs, logs[-3000:]
    in_process = [r for r in caplog.records if r.exc_info]  # the edge, the engine
    assert not in_process, [r.getMessage() for r in in_process]


async def test_hostile_frames_mid_call_are_dropped_and_counted_and_the_agent_still_answers(
    stack: LocalStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with TwilioLikeStream(stack) as stream:
        await stream.until_agent_quiet()  # the greeting
        for frame, text, _ in DROPPED:
            await stream.send_raw(frame, text=text)
        await stream.say("what is the weather like today")
        heard = await stream.until_agent_quiet()
        assert heard > 2000  # ms of the weather answer
        await stream.stop()
    record = await stored_record(stack, stream.call_sid)
    assert WEATHER_ANSWER in texts(record, "agent")
    assert record["end_reason"] == "caller_hung_up"
    assert record["dropped_frames"] == dict(Counter(reason for _, _, reason in DROPPED))
    await served_everywhere(stack, stream.call_sid)
    assert stack.engine.sessions_opened == 1
    no_traceback(stack, caplog)


async def test_what_must_fail_a_stream_closes_it_with_the_rfc_code_and_the_record_says_why(
    stack: LocalStack, caplog: pytest.LogCaptureFixture
) -> None:
    """A text message that is not UTF-8 (RFC 6455 section 8.1: the connection must fail, code
    1007) and a message over the server's frame limit (1009). Before the stream's start, the
    stream is refused and no Realtime session opens; during a call, the call ends and its
    record names the cause."""
    caplog.set_level(logging.WARNING)
    not_utf8 = b'{"event":"media","media":{"payload":"AAAA"}}\xff'

    before_start = TwilioLikeStream(stack)
    await before_start.open()
    await before_start.send_raw(json.dumps({"event": "connected", "protocol": "Call"}))
    await before_start.send_raw(not_utf8, text=True)
    assert await before_start.closed() == 1007
    assert stack.engine.sessions_opened == 0
    refusal = "refused: the connection ended before its start message (close code 1007: a text"
    await until(lambda: refusal in replica_logs(stack), 10, "the refusal in the stream's log")

    ended: dict[str, str] = {}
    for frame, code in ((not_utf8, 1007), (b"x" * (MAX_FRAME_BYTES + 1), 1009)):
        async with TwilioLikeStream(stack) as stream:
            await stream.until_agent_quiet()  # the greeting: the call is on
            await stream.send_raw(frame, text=True)
            assert await stream.closed() == code
        ended[stream.call_sid] = (await stored_record(stack, stream.call_sid))["end_reason"]
        await served_everywhere(stack, stream.call_sid)
    assert sorted(ended.values()) == ["invalid_utf8", "message_too_big"]
    assert stack.engine.sessions_opened == 2
    no_traceback(stack, caplog)
