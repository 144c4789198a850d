"""On-demand agents through the whole local stack: real webhooks, real jobs, real rooms.

``LocalStack(livekit=True)`` runs a real livekit-server whose signed webhooks go to the edge;
the edge POSTs the media app's ``/agents/dispatch``, which starts one agent job (a child
process) per room. The humans here are Python ``livekit.rtc`` participants that get their
tokens from the edge's ``POST /token`` with the web key, as the playground does, and speak
espeak-ng phrases the local engine recognises.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import signal
import time

import httpx
import pytest
from livekit import api, rtc

from callplane_dev.stack import LocalStack
from tests.e2e.conftest import LIVEKIT_AGENT_IDLE_S
from tests.support.livekit_people import Human, fresh_room, humans
from tests.support.stack import (
    agent_jobs,
    edge_grant,
    running,
    stack_livekit,
    wait_job_ended,
    wait_jobs,
    web_token,
)
from tests.support.tokens import sign_webhook
from tests.support.waiting import poll, until

PHRASE = "what is the weather like today"
# The support profile (the stack's first) calls get_weather; the engine answers from its output.
WEATHER_ANSWER = "Right now it is sunny and seventy two degrees in San Francisco."
AGENT_IDLE_S = LIVEKIT_AGENT_IDLE_S
EXIT_MARGIN_S = 15.0  # leaving, saving the record and exiting, on a busy 2-core machine
EDGE_LOGGER = "callplane.edge"


@pytest.fixture
def stack(livekit_stack: LocalStack) -> LocalStack:
    """The whole local stack with LiveKit (tests/e2e/conftest.py)."""
    return livekit_stack


# --------------------------------------------------------------------------- helpers


async def participants(stack: LocalStack, room: str) -> list[api.ParticipantInfo]:
    """Who the server says is in ``room`` (nobody if the room does not exist)."""
    return await stack_livekit(stack).participants(room)


def is_agent(info: api.ParticipantInfo) -> bool:
    return info.identity.startswith("agent-") or info.kind == api.ParticipantInfo.Kind.AGENT


async def post_webhook(stack: LocalStack, body: bytes, authorization: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/webhook+json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as client:
        return await client.post("/livekit/webhook", headers=headers, content=body)


def dispatches(caplog: pytest.LogCaptureFixture, room: str, reason: str | None = None) -> int:
    """How many agent dispatches the edge has completed for ``room`` (its log says so)."""
    prefix = f"edge: dispatched an agent to room {room!r} ("
    return sum(
        1
        for record in caplog.records
        if record.name == EDGE_LOGGER
        and record.getMessage().startswith(prefix + (f"{reason})" if reason else ""))
    )


async def wait_agent_joined(
    human: Human, *, not_: tuple[str, ...] = (), timeout_s: float = 45
) -> str:
    """The identity of an agent that ``human`` sees in the room, other than ``not_``."""
    await until(
        lambda: any(a not in not_ for a in human.agents()),
        timeout_s,
        f"an agent (other than {not_}) to join the room",
    )
    return next(a for a in human.agents() if a not in not_)


async def ask_weather(human: Human, agent: str) -> None:
    """Wait for the agent's greeting to end, ask the weather and wait for the answer."""
    await until(
        lambda: bool(human.said(agent, "agent")) and human.agent_state(agent) == "listening",
        45,
        f"{agent}'s greeting (states so far: {human.states_of(agent)})",
    )
    human.say(PHRASE)
    await until(
        lambda: bool(human.said(agent, "agent", WEATHER_ANSWER)),
        45,
        f"{agent}'s answer to the weather question (heard: {human.transcripts})",
    )
    assert human.said(agent, "user", PHRASE), human.transcripts


# --------------------------------------------------------------------------- tests


async def test_duplicate_room_started_webhooks_start_one_agent(
    stack: LocalStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=EDGE_LOGGER)
    room = fresh_room("e2e-dup")
    # Creating the room makes the real server send its own signed room_started webhook; five
    # more, identical and signed the way the server signs, race it to the edge.
    async with stack_livekit(stack).api() as lkapi:
        info = await lkapi.room.create_room(api.CreateRoomRequest(name=room))
    body = json.dumps(
        {
            "event": "room_started",
            "room": {"sid": info.sid, "name": room, "creationTime": str(info.creation_time)},
            "id": "EV_" + secrets.token_hex(6),
            "createdAt": str(int(time.time())),
        }
    ).encode()
    token = sign_webhook(body, stack.creds.LIVEKIT_API_KEY, stack.creds.livekit_api_secret)
    responses = await asyncio.gather(*(post_webhook(stack, body, token) for _ in range(5)))
    assert [r.status_code for r in responses] == [200] * 5, [r.text for r in responses]
    assert all(r.json() == {"ok": True, "dispatch": room} for r in responses)

    async with humans(edge_grant(stack, room), "alice") as (alice,):
        # Every dispatch reached the media app: ours, the server's room_started and the
        # server's participant_joined for alice.
        await until(
            lambda: (
                dispatches(caplog, room, "room_started") >= 6
                and dispatches(caplog, room, "participant_joined") >= 1
            ),
            30,
            "the edge to carry out every dispatch",
        )
        jobs = await agent_jobs(stack, room)
        assert len(jobs) == 1, jobs
        [job] = jobs
        assert job["state"] == "running" and job["reason"] == "room_started"

        agent = await wait_agent_joined(alice)
        server_side = [p.identity for p in await participants(stack, room) if is_agent(p)]
        assert server_side == [agent]
        assert alice.agents() == [agent]
        # Later duplicates (a retried webhook) still find the running job.
        again = await post_webhook(stack, body, token)
        assert again.status_code == 200
        await until(
            lambda: dispatches(caplog, room, "room_started") >= 7, 30, "the retried dispatch"
        )
        assert [j["job_id"] for j in await agent_jobs(stack, room)] == [job["job_id"]]
        assert [p.identity for p in await participants(stack, room) if is_agent(p)] == [agent]


async def test_a_killed_agent_is_replaced_while_alice_stays_without_anyone_joining(
    stack: LocalStack,
) -> None:
    room = fresh_room("e2e-crash")
    async with humans(edge_grant(stack, room), "alice") as (alice,):
        [job] = await wait_jobs(
            stack, room, lambda jobs: len(running(jobs)) == 1, 30, "the first agent job"
        )
        first = await wait_agent_joined(alice)
        assert job["handle"].startswith("pid:")
        os.kill(int(job["handle"].removeprefix("pid:")), signal.SIGKILL)

        # The launcher sees the crash and alice still in the room, and starts a new agent:
        # nobody joins, no webhook comes.
        jobs = await wait_jobs(
            stack,
            room,
            lambda jobs: len(jobs) == 2 and len(running(jobs)) == 1,
            30,
            "the crash to be reported and a replacement job to start",
        )
        crashed = next(j for j in jobs if j["job_id"] == job["job_id"])
        assert crashed["state"] == "crashed", crashed
        assert crashed["exit_code"] == -signal.SIGKILL
        assert crashed["ended_at"] is not None
        [replacement] = running(jobs)
        assert replacement["reason"] == "replaced_crashed"
        assert replacement["profile"] == job["profile"]

        # alice, who stayed, is answered by the new agent.
        second = await wait_agent_joined(alice, not_=(first,))
        await ask_weather(alice, second)

        # Someone joining now finds it running: still one agent in the room.
        async with humans(edge_grant(stack, room), "bob") as (bob,):
            assert await wait_agent_joined(bob, not_=(first,)) == second
            assert [j["job_id"] for j in running(await agent_jobs(stack, room))] == [
                replacement["job_id"]
            ]


async def test_an_emptied_room_s_agent_leaves_after_the_idle_timeout(stack: LocalStack) -> None:
    room = fresh_room("e2e-idle")
    async with humans(edge_grant(stack, room), "alice", "bob") as (alice, bob):
        [job] = await wait_jobs(
            stack, room, lambda jobs: len(running(jobs)) == 1, 30, "the agent job"
        )
        agent = await wait_agent_joined(alice)
        # One human leaves: the agent stays for the other, well past its idle timeout.
        await bob.leave()
        await asyncio.sleep(AGENT_IDLE_S + 2)
        [still] = await agent_jobs(stack, room)
        assert still["state"] == "running"
        assert agent in alice.agents()

        await alice.leave()
        ended = await wait_job_ended(stack, room, AGENT_IDLE_S + EXIT_MARGIN_S)
    assert ended["job_id"] == job["job_id"]
    assert (ended["state"], ended["exit_code"]) == ("exited", 0), ended
    # The agent left the room (nobody is in it), and its record says why.
    await poll(lambda: participants(stack, room), lambda found: not found, 15, "an empty room")
    records = [r for r in stack.calls(limit=50) if r["call_sid"].startswith(f"room:{room}:")]
    assert [r["end_reason"] for r in records] == ["room_empty"], records
    # Both humans were there when it joined (in whatever order the server listed them).
    assert sorted(records[0]["context"]["participants"]) == ["alice", "bob"]


def _retarget(token: str, room: str) -> str:
    """``token`` with its room grant changed to ``room`` and its signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["video"]["room"] = room
    edited = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{edited}.{signature}"


async def test_security_through_the_running_stack(
    stack: LocalStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=EDGE_LOGGER)
    key, secret = stack.creds.LIVEKIT_API_KEY, stack.creds.livekit_api_secret

    # Webhooks: forged, unsigned, or signed for another body: 401, and nothing is spawned.
    forged_room = fresh_room("e2e-forged")
    body = json.dumps(
        {
            "event": "room_started",
            "room": {"sid": "RM_forged", "name": forged_room},
            "id": "EV_forged",
            "createdAt": str(int(time.time())),
        }
    ).encode()
    other = body.replace(forged_room.encode(), b"someone-elses-room")
    attempts = {
        "unsigned": None,
        "wrong secret": sign_webhook(body, key, "not-the-livekit-secret-0123456789"),
        "unknown key": sign_webhook(body, "someone-else", secret),
        "another body's signature": sign_webhook(other, key, secret),
        "garbage": "not-a-jwt",
    }
    for what, authorization in attempts.items():
        response = await post_webhook(stack, body, authorization)
        assert response.status_code == 401, (what, response.status_code, response.text)
    assert await agent_jobs(stack, forged_room) == []
    assert dispatches(caplog, forged_room) == 0

    # Tokens: no key or a wrong key is 401 and creates no room; the web key works.
    room_a, room_b = fresh_room("e2e-room-a"), fresh_room("e2e-room-b")
    for presented in (None, "not-the-web-key"):
        refused = await web_token(stack, room_a, key=presented)
        assert refused.status_code == 401, refused.text
        assert "token" not in refused.text
    minted = await web_token(stack, room_a, "mallory")
    assert minted.status_code == 200, minted.text
    grant = minted.json()

    # A token for room A cannot be turned into one for room B: livekit-server refuses it.
    assert stack.livekit is not None
    tampered = _retarget(grant["token"], room_b)
    async with httpx.AsyncClient(base_url=stack.livekit.http_url, timeout=10) as client:
        validate = await client.get("/rtc/validate", params={"access_token": tampered})
        genuine = await client.get("/rtc/validate", params={"access_token": grant["token"]})
    assert validate.status_code == 401, validate.text
    assert genuine.status_code == 200, genuine.text
    intruder = rtc.Room()
    with pytest.raises(rtc.ConnectError):
        await intruder.connect(grant["url"], tampered)
    assert not intruder.isconnected()
    # The genuine token only ever joins room A.
    mallory = rtc.Room()
    await mallory.connect(grant["url"], grant["token"])
    try:
        assert mallory.name == room_a
        assert [p.identity for p in await participants(stack, room_a)] == ["mallory"]
        assert await participants(stack, room_b) == []
    finally:
        await mallory.disconnect()
    assert room_b not in await stack_livekit(stack).room_names()
    assert await agent_jobs(stack, room_b) == []
