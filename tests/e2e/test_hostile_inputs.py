"""Hostile input against the running stack in the cloud's shape (two media replicas behind a
front, PostgreSQL and Redis): bodies nested past the parser's recursion limit, oversized and
endless bodies, unsigned callbacks, premium-rate numbers, oversized contexts, webhooks into the
stack's own network, a burst of wrong web keys, and more agent jobs than the caps allow.

Every answer must be the right 4xx with a message naming the limit, never a 5xx; no replica
may log a traceback; a refused ``POST /calls`` dials nothing at the Twilio simulator; the caps
on agent jobs hold whichever replica is asked; and a valid web key still gets tokens from an
address that has just sent a burst of wrong ones.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from livekit import api, rtc

from callplane.bounded_json import MAX_JSON_DEPTH
from callplane_dev.stack import LocalStack
from edge_worker.livekit_routes import MAX_TOKEN_BODY_BYTES, web_key_id
from edge_worker.wire import MAX_BODY_BYTES as EDGE_MAX_BODY_BYTES
from functions.body_limits import MAX_BODY_BYTES as MEDIA_MAX_BODY_BYTES
from functions.outbound import STATUS_PATH
from tests.support.livekit_people import fresh_room, join
from tests.support.stack import agent_jobs, running, stack_livekit, web_token
from tests.support.tokens import sign_webhook
from tests.support.waiting import poll, until

NESTING = f"over the JSON nesting limit of {MAX_JSON_DEPTH} levels"
EDGE_LOGGER = "callplane.edge"
CALLEE = "+14155550123"


def nested(prefix: bytes, levels: int, suffix: bytes = b"}") -> bytes:
    """``prefix`` + ``levels`` of ``[`` and as many ``]`` + ``suffix``: JSON nested far past
    the parser's recursion limit (about 1000 levels) in a few kilobytes."""
    return prefix + b"[" * levels + b"]" * levels + suffix


class Answers:
    """Every answer a test got, so that it can check none was a 5xx."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, str]] = []

    def note(self, what: str, response: httpx.Response) -> httpx.Response:
        self.seen.append((what, response.status_code, response.text[:300]))
        return response

    def assert_no_5xx(self) -> None:
        errors = [seen for seen in self.seen if seen[1] >= 500]
        assert errors == [], errors


def assert_no_traceback(stack: LocalStack, caplog: pytest.LogCaptureFixture) -> None:
    """No replica logged a traceback (their logs: ``<data_dir>/logs``), and the edge, which
    runs in this process, logged no unhandled error."""
    logs = sorted((stack.data_dir / "logs").glob("*.log"))
    assert logs, f"no replica logs under {stack.data_dir / 'logs'}"
    for log in logs:
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, f"{log.name}:\n{text[-3000:]}"
    edge_errors = [
        r.getMessage() for r in caplog.records if r.name == EDGE_LOGGER and r.exc_info is not None
    ]
    assert edge_errors == []


def replica_logs(stack: LocalStack) -> str:
    return "\n".join(
        log.read_text(errors="replace") for log in sorted((stack.data_dir / "logs").glob("*.log"))
    )


async def endless(chunks: int, size: int = 4096) -> AsyncIterator[bytes]:
    """A chunked body (no Content-Length) of ``chunks`` x ``size`` bytes."""
    for _ in range(chunks):
        yield b"a" * size


async def cut_off(
    client: httpx.AsyncClient, path: str, headers: dict[str, str], answers: Answers
) -> None:
    """Stream 80 KiB without a Content-Length to ``path``: the media app stops reading at its
    64 KiB limit and answers 413 with ``Connection: close``. A client still sending when the
    server closes may see the connection reset before it reads that answer (TCP discards what
    it had not read); either way it must not be a 5xx, and the app must go on answering."""
    try:
        answer = answers.note(
            f"chunked {path}", await client.post(path, content=endless(20), headers=headers)
        )
    except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
        pass  # cut off mid-upload, as intended
    else:
        assert answer.status_code == 413, answer.text
        assert f"over the limit of {MEDIA_MAX_BODY_BYTES} bytes" in answer.json()["detail"]
    async with httpx.AsyncClient(base_url=str(client.base_url), timeout=30) as fresh:
        assert (await fresh.get("/healthz")).status_code == 200


# --------------------------------------------------------------------------- media and edge


async def test_hostile_bodies_and_calls_are_refused_naming_the_limit(
    stack: LocalStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=EDGE_LOGGER)
    answers = Answers()
    key = {"Authorization": f"Bearer {stack.creds.media_api_key}"}
    json_type = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=stack.media_url, timeout=30) as media:
        # POST /calls: nested past the recursion limit, with the key and without
        deep = nested(b'{"to": "+14155550123", "profile": "reminders", "context": {"a": ', 30_000)
        deep += b"}"
        assert len(deep) <= MEDIA_MAX_BODY_BYTES
        keyed = answers.note(
            "deep /calls", await media.post("/calls", content=deep, headers={**key, **json_type})
        )
        assert keyed.status_code == 400 and NESTING in keyed.json()["detail"]
        assert "the POST /calls body nests arrays and objects" in keyed.json()["detail"]
        unkeyed = answers.note("deep /calls, no key", await media.post("/calls", content=deep))
        assert unkeyed.status_code == 401

        # bodies over the limit: declared, and streamed without a length
        large = b"{" + b" " * (MEDIA_MAX_BODY_BYTES + 10) + b"}"
        declared = answers.note(
            "large /calls", await media.post("/calls", content=large, headers=key)
        )
        assert declared.status_code == 413
        assert f"over the limit of {MEDIA_MAX_BODY_BYTES} bytes" in declared.json()["detail"]
        await cut_off(media, "/calls", key, answers)

        # Twilio's status route: no signature, no reading; a signature, a bounded read
        unsigned = answers.note(
            "unsigned status", await media.post(STATUS_PATH, content=endless(40))
        )
        assert unsigned.status_code == 403 and "X-Twilio-Signature" in unsigned.text
        forged = {"X-Twilio-Signature": "c2lnbmF0dXJlLW9mLW5vYm9keQ=="}
        await cut_off(media, STATUS_PATH, forged, answers)
        signed_small = answers.note(
            "forged status",
            await media.post(
                STATUS_PATH,
                content=b"CallSid=CA1&CallStatus=completed",
                headers={**forged, "Content-Type": "application/x-www-form-urlencoded"},
            ),
        )
        assert signed_small.status_code == 403

        # POST /calls that would cost or reach the wrong thing: refused, nothing dialled
        async def call(**body: Any) -> httpx.Response:
            document = {"to": CALLEE, "profile": "reminders", **body}
            return answers.note(
                f"/calls {body}", await media.post("/calls", json=document, headers=key)
            )

        for number in ("+19005550100", "+449098790123"):  # US 900, GB 09
            premium = await call(to=number, context={"name": "Amina", "when": "today"})
            assert premium.status_code == 422, premium.text
            refused = premium.json()["refused"]
            assert refused["limit"] == "allowed_number_types"
            assert f"{number} is a PREMIUM_RATE number" in refused["reason"]
            assert "outbound.allowed_number_types" in refused["reason"]
        big = await call(context={"name": "Amina", "when": "today", "notes": "x" * 9000})
        assert big.status_code == 413
        assert big.json()["refused"]["limit"] == "max_context_bytes"
        assert "over the limit of 8192 bytes" in big.json()["refused"]["reason"]
        for url, problem in [
            ("https://169.254.169.254/latest/meta-data/", "169.254.169.254, which is not a public"),
            ("https://10.0.0.8/hook", "10.0.0.8, which is not a public address"),
            ("https://[::ffff:192.168.0.1]/hook", "which is not a public address"),
            ("http://example.com/hook", "is not https"),
            ("https://example.com/hook", "is not one this stack sends webhooks to"),
        ]:
            hook = await call(context={"name": "Amina", "when": "today"}, webhook_url=url)
            assert hook.status_code == 422, (url, hook.text)
            assert hook.json()["refused"]["limit"] == "webhook_hosts"
            assert problem in hook.json()["refused"]["reason"], url

    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=30) as edge:
        for path in ("/twilio/voice", "/twilio/status", "/livekit/webhook", "/token"):
            oversized = answers.note(
                f"edge {path}", await edge.post(path, content=b"a" * (EDGE_MAX_BODY_BYTES + 1))
            )
            assert oversized.status_code == 413, path
            assert f"over the limit of {EDGE_MAX_BODY_BYTES} bytes" in oversized.text

    answers.assert_no_5xx()
    assert stack.simulator.carrier.calls == {}, "Twilio was asked to dial"
    assert_no_traceback(stack, caplog)


# --------------------------------------------------------------------------- the web path


async def dispatch(
    url: str, stack: LocalStack, room: str, web_key: str | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"room": room, "profile": None, "reason": "hostile-inputs-test"}
    if web_key is not None:
        body["web_key"] = web_key
    headers = {"Authorization": f"Bearer {stack.creds.media_api_key}"}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await client.post("/agents/dispatch", json=body, headers=headers)


async def quiet_room(stack: LocalStack, room: str) -> None:
    """A room whose metadata says no agent: the edge dispatches none for it, so only this
    test's dispatches start one."""
    async with stack_livekit(stack).api() as lkapi:
        await lkapi.room.create_room(
            api.CreateRoomRequest(name=room, metadata=json.dumps({"agent": False}))
        )


async def running_rooms(stack: LocalStack) -> list[str]:
    headers = {"Authorization": f"Bearer {stack.creds.media_api_key}"}
    async with httpx.AsyncClient(base_url=stack.media_url, timeout=10) as client:
        jobs = (await client.get("/agents", headers=headers)).json()["agents"]
    return sorted(job["room"] for job in running(jobs))


@pytest.fixture
async def people() -> AsyncIterator[list[rtc.Room]]:
    """Participants the test connects; all leave at the end."""
    joined: list[rtc.Room] = []
    try:
        yield joined
    finally:
        for room in joined:
            if room.isconnected():
                await room.disconnect()


@pytest.mark.timeout(300)
@pytest.mark.stack_options(max_agent_jobs=2, max_agent_jobs_per_web_key=1)
async def test_web_tokens_webhooks_and_agent_caps_hold_against_hostile_use(
    livekit_stack: LocalStack, caplog: pytest.LogCaptureFixture, people: list[rtc.Room]
) -> None:
    stack = livekit_stack
    caplog.set_level(logging.INFO, logger=EDGE_LOGGER)
    answers = Answers()
    web_key = stack.creds.web_key
    assert stack.plane is not None
    replicas = stack.plane.describe()["media"]
    assert len(replicas) == 2

    # POST /token: nested past the recursion limit (within its 4 KiB), with the key and without
    deep = nested(b'{"room": ', 2000)
    assert len(deep) <= MAX_TOKEN_BODY_BYTES
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=30) as edge:
        keyed = answers.note(
            "deep /token",
            await edge.post("/token", content=deep, headers={"Authorization": f"Bearer {web_key}"}),
        )
        assert keyed.status_code == 400 and NESTING in keyed.text
        unkeyed = answers.note("deep /token, no key", await edge.post("/token", content=deep))
        assert unkeyed.status_code == 401

        # a burst of wrong keys from this address: throttled, and the valid key still works
        wrong = {"Authorization": "Bearer wrong-key-0123456789abcdef"}
        body = json.dumps({"room": "hostile"}).encode()
        burst = [
            answers.note("wrong key", await edge.post("/token", content=body, headers=wrong))
            for _ in range(40)
        ]
        statuses = [r.status_code for r in burst]
        assert set(statuses) == {401, 429} and statuses[0] == 401 and statuses[-1] == 429
        throttled = next(r for r in burst if r.status_code == 429)
        assert "too many failed authentications from this address" in throttled.text
        assert throttled.headers["retry-after"].isdigit()
    after_burst = answers.note("valid key after the burst", await web_token(stack, "hostile"))
    assert after_burst.status_code == 200, after_burst.text
    assert after_burst.json()["room"] == "hostile"

    # POST /livekit/webhook: signed and nested past the limit; unsigned
    event = nested(b'{"event": "room_started", "room": {"name": "hostile"}, "x": ', 20_000)
    token = sign_webhook(event, stack.creds.LIVEKIT_API_KEY, stack.creds.livekit_api_secret)
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=30) as edge:
        signed = answers.note(
            "deep signed webhook",
            await edge.post("/livekit/webhook", content=event, headers={"Authorization": token}),
        )
        assert signed.status_code == 400 and NESTING in signed.text
        unsigned = answers.note(
            "deep unsigned webhook", await edge.post("/livekit/webhook", content=event)
        )
        assert unsigned.status_code == 401

    # POST /agents/dispatch nested past the limit, on each replica
    for url in replicas:
        async with httpx.AsyncClient(base_url=url, timeout=30) as media:
            deep_dispatch = answers.note(
                "deep dispatch",
                await media.post(
                    "/agents/dispatch",
                    content=nested(b'{"room": "r", "reason": ', 20_000),
                    headers={"Authorization": f"Bearer {stack.creds.media_api_key}"},
                ),
            )
        assert deep_dispatch.status_code == 400 and NESTING in deep_dispatch.json()["detail"]

    # The caps: 2 agent jobs on the stack, 1 for the web key's rooms, whichever replica asks.
    key_id = web_key_id(web_key)
    server = stack_livekit(stack)
    a, b, c, d = (fresh_room(f"cap-{n}") for n in "abcd")
    for room in (a, b, c, d):
        await quiet_room(stack, room)
    for room in (a, c):  # someone is there, so the agent stays while the test looks
        people.append(await join(server, f"human-{room}", room))

    first = answers.note("dispatch a", await dispatch(replicas[0], stack, a, key_id))
    assert first.status_code == 200 and first.json()["started"] is True, first.text
    over_key = answers.note("dispatch b", await dispatch(replicas[1], stack, b, key_id))
    assert over_key.status_code == 429, over_key.text
    refused = over_key.json()["refused"]
    assert refused["limit"] == "livekit.max_agent_jobs_per_web_key"
    assert refused["reason"].startswith(
        f"1 agent jobs are running for rooms created with web key {key_id}, its cap "
        "(livekit.max_agent_jobs_per_web_key = 1)"
    )

    # The edge's own path: a room a web key's token creates carries the key's id, and its
    # dispatch is refused while the key's one agent runs.
    e = fresh_room("cap-e")
    granted = answers.note("token for e", await web_token(stack, e, "visitor"))
    assert granted.status_code == 200, granted.text
    visitor = rtc.Room()
    people.append(visitor)
    await visitor.connect(granted.json()["url"], granted.json()["token"])

    def refused_at_edge() -> bool:
        prefix = f"edge: agent dispatch for room {e!r}"
        return any(
            r.name == EDGE_LOGGER
            and r.getMessage().startswith(prefix)
            and "HTTP 429" in r.getMessage()
            for r in caplog.records
        )

    await until(refused_at_edge, 60, f"the edge's dispatch for {e} to be refused with 429")
    assert f"no agent was started for room {e!r}" in replica_logs(stack)
    assert f"rooms created with web key {key_id}" in replica_logs(stack)

    third = answers.note("dispatch c", await dispatch(replicas[1], stack, c))
    assert third.status_code == 200 and third.json()["started"] is True, third.text
    for url in replicas:  # the stack is full, on both replicas
        over_stack = answers.note("dispatch d", await dispatch(url, stack, d))
        assert over_stack.status_code == 429, over_stack.text
        assert over_stack.json()["refused"]["limit"] == "livekit.max_agent_jobs"
        assert "2 agent jobs are running on this stack" in over_stack.json()["refused"]["reason"]
    assert await running_rooms(stack) == sorted([a, c])
    assert running(await agent_jobs(stack, e)) == []

    # A job that ends frees its place: the human leaves a, its agent leaves and exits.
    await people[0].disconnect()
    await poll(lambda: running_rooms(stack), lambda rooms: a not in rooms, 60, f"{a}'s job to end")
    freed = answers.note("dispatch d again", await dispatch(replicas[0], stack, d))
    assert freed.status_code == 200 and freed.json()["started"] is True, freed.text

    answers.assert_no_5xx()
    assert_no_traceback(stack, caplog)
