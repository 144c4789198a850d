"""Replays against the whole stack in the cloud's shape (two media and two stream replicas behind
their fronts, PostgreSQL and Redis): what an attacker who captured a call's signed voice
webhook and its media-stream upgrade can do once the call is over, and what a client that
writes its own custom parameters can make a record say. Nothing: no Realtime session opens, the
finished record stays as it was, every refusal is logged, and no replica fails."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import httpx
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from callplane_dev.stack import DEFAULT_CALLER, LocalStack
from callplane_standins.twilio_simulator.caller import say, wait_for_reply
from callplane_standins.twilio_simulator.twiml import Stream, parse_twiml
from functions.media_streams import CLOSE_BAD_TOKEN
from tests.e2e.twilio_client import TwilioLikeStream
from tests.support.waiting import until


class Captured:
    """The voice webhooks the simulator sent, as an eavesdropper would keep them: URL, form and
    the ``X-Twilio-Signature`` that came with them."""

    def __init__(self, stack: LocalStack) -> None:
        self.webhooks: list[tuple[str, dict[str, str], str]] = []
        carrier = stack.simulator.carrier
        send = carrier.http_request
        validator = RequestValidator(stack.creds.auth_token)

        async def recording(
            url: str, method: str, params: Mapping[str, str], auth_token: str
        ) -> str:
            if url.endswith("/twilio/voice"):
                form = dict(params)
                self.webhooks.append((url, form, validator.compute_signature(url, form)))
            return await send(url, method, params, auth_token)

        carrier.http_request = recording  # type: ignore[method-assign]


async def replay_webhook(url: str, form: dict[str, str], signature: str) -> Stream:
    """Send a captured voice webhook again, byte for byte; the stream its TwiML names."""
    async with httpx.AsyncClient() as http:
        answer = await http.post(url, data=form, headers={"X-Twilio-Signature": signature})
    assert answer.status_code == 200, answer.text
    (stream,) = parse_twiml(answer.text)
    assert isinstance(stream, Stream)
    return stream


def start_frame(stack: LocalStack, call_sid: str, parameters: Mapping[str, str]) -> str:
    stream_sid = "MZ" + "e" * 32
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": stream_sid,
            "start": {
                "streamSid": stream_sid,
                "accountSid": stack.creds.account_sid,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "customParameters": dict(parameters),
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )


async def stream_close_code(url: str, signature: str, start: str) -> int | None:
    """Open a media stream as Twilio would (upgrade with ``signature``, ``connected``,
    ``start``) and read until the server closes it: its close code."""
    async with connect(url, additional_headers={"X-Twilio-Signature": signature}) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(start)
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 15)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None


def replica_logs(stack: LocalStack) -> str:
    return "".join(path.read_text() for path in sorted((stack.data_dir / "logs").glob("*.log")))


def assert_no_replica_failed(stack: LocalStack) -> None:
    logs = replica_logs(stack)
    for sign in ("Traceback", "Exception in ASGI application", "media stream failed"):
        assert sign not in logs, f"{sign!r} in the replica logs:\n{logs[-4000:]}"


async def test_a_replayed_webhook_and_a_captured_upgrade_open_nothing_for_a_finished_call(
    stack: LocalStack,
) -> None:
    captured = Captured(stack)
    result = await stack.call(
        stack.number_for("support"),
        [wait_for_reply(), say("goodbye"), wait_for_reply(timeout_s=15)],
    )
    assert result.status == "completed", result.errors
    call_sid = result.call_sid
    await until(lambda: stack.record(call_sid) is not None, 15, "the call's record")
    finished = stack.record(call_sid)
    assert finished is not None and finished["status"] == "ended"
    assert finished["end_reason"] == "agent_hung_up" and finished["transcript"]
    sessions = stack.engine.sessions_opened
    assert sessions == 1
    (webhook,) = [w for w in captured.webhooks if w[1]["CallSid"] == call_sid]
    (original,) = result.timeline.streams  # what Twilio opened: its URL and its start's token
    validator = RequestValidator(stack.creds.auth_token)
    captured_signature = validator.compute_signature(original.url, {})
    original_token = original.custom_parameters["token"]

    # 1. The same signed webhook, a while after the call: a fresh token and a URL of its own.
    replayed = await replay_webhook(*webhook)
    assert replayed.url != original.url
    assert set(replayed.parameters) == {"token"}
    assert replayed.parameters["token"] != original_token
    key = replayed.url.rsplit("/", 1)[1]
    # Even with Twilio's own signature on that URL, on the front and on each replica: refused.
    signature = validator.compute_signature(replayed.url, {})
    start = start_frame(stack, call_sid, replayed.parameters)
    assert stack.plane is not None
    targets = [replayed.url, *(f"{url}/{key}" for url in stack.plane.describe()["streams"])]
    for url in targets:
        assert await stream_close_code(url, signature, start) == CLOSE_BAD_TOKEN, url

    # 2. The captured upgrade (the call's URL and Twilio's signature over it) carrying the
    # replayed webhook's token: the URL was made for another token.
    wrong_stream = start_frame(stack, call_sid, replayed.parameters)
    assert await stream_close_code(original.url, captured_signature, wrong_stream) == (
        CLOSE_BAD_TOKEN
    )

    # 3. The captured upgrade with its own start, exactly as Twilio sent them.
    exact = start_frame(stack, call_sid, original.custom_parameters)
    assert await stream_close_code(original.url, captured_signature, exact) == CLOSE_BAD_TOKEN

    assert stack.engine.sessions_opened == sessions
    assert stack.record(call_sid) == finished  # same transcript, same end, same everything
    logs = replica_logs(stack)
    refusals = [
        line for line in logs.splitlines() if f"media stream for call {call_sid} refused" in line
    ]
    assert len(refusals) == len(targets) + 2, refusals
    assert sum("(replayed)" in line for line in refusals) >= len(targets)
    assert sum("(wrong_stream)" in line for line in refusals) == 1
    assert original_token not in logs and replayed.parameters["token"] not in logs
    assert_no_replica_failed(stack)


async def test_a_streams_own_parameters_cannot_change_what_the_record_says(
    stack: LocalStack,
) -> None:
    """Custom parameters nobody signed claim another caller, country and profile: the record
    keeps what Twilio's signed webhook said."""
    lies = {"from": "+19995550000", "country": "KP", "to": "+19995551111", "profile": "sales"}
    async with TwilioLikeStream(stack, "support", extra_parameters=lies) as stream:
        await stream.until_agent_quiet()  # the greeting: a session opened for this call
        await stream.stop()
    await until(lambda: stack.record(stream.call_sid) is not None, 15, "the call's record")
    record: dict[str, Any] | None = stack.record(stream.call_sid)
    assert record is not None
    assert (record["from"], record["to"], record["country"]) == (
        DEFAULT_CALLER,
        stack.number_for("support"),
        "US",
    )
    assert (record["profile"], record["direction"]) == ("support", "inbound")
    assert stack.engine.sessions_opened == 1
    logs = replica_logs(stack)
    assert (
        f"call {stream.call_sid}: custom parameters from, to, country, profile differ from "
        "what the stream token signs" in logs
    )
    assert_no_replica_failed(stack)
