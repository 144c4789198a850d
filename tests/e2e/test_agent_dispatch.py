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
import contextlib
import datetime
import hashlib
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from livekit import api, rtc

from callplane_dev.stack import LocalStack
from callplane_standins.realtime_engine.speech import speak
from tests.e2e.conftest import LIVEKIT_AGENT_IDLE_S

PHRASE = "what is the weather like today"
# The support profile (the stack's first) calls get_weather; the engine answers from its output.
WEATHER_ANSWER = "Right now it is sunny and seventy two degrees in San Francisco."
AGENT_IDLE_S = LIVEKIT_AGENT_IDLE_S
EXIT_MARGIN_S = 15.0  # leaving, saving the record and exiting, on a busy 2-core machine
RATE = 24_000
FRAME = 480  # 20 ms
EDGE_LOGGER = "callplane.edge"


def _room(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


@pytest.fixture
def stack(livekit_stack: LocalStack) -> LocalStack:
    """The whole local stack with LiveKit (tests/e2e/conftest.py)."""
    return livekit_stack


# --------------------------------------------------------------------------- helpers


async def until(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.05)


async def agent_jobs(stack: LocalStack, room: str) -> list[dict[str, Any]]:
    """``GET /agents`` on the media app (with its API key), this room's jobs only."""
    async with httpx.AsyncClient(base_url=stack.media_url, timeout=10) as client:
        response = await client.get(
            "/agents", headers={"Authorization": f"Bearer {stack.creds.media_api_key}"}
        )
    assert response.status_code == 200, response.text
    jobs: list[dict[str, Any]] = response.json()["agents"]
    return [job for job in jobs if job["room"] == room]


async def wait_jobs(
    stack: LocalStack,
    room: str,
    predicate: Callable[[list[dict[str, Any]]], bool],
    timeout_s: float,
    what: str,
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = await agent_jobs(stack, room)
        if predicate(jobs):
            return jobs
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}: {jobs}")
        await asyncio.sleep(0.1)


def running(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [job for job in jobs if job["state"] == "running"]


def lk_api(stack: LocalStack) -> api.LiveKitAPI:
    assert stack.livekit is not None
    return api.LiveKitAPI(
        stack.livekit.http_url, stack.creds.LIVEKIT_API_KEY, stack.creds.livekit_api_secret
    )


async def participants(stack: LocalStack, room: str) -> list[api.ParticipantInfo]:
    """Who the server says is in ``room`` (nobody if the room does not exist)."""
    async with lk_api(stack) as lkapi:
        rooms = await lkapi.room.list_rooms(api.ListRoomsRequest(names=[room]))
        if not rooms.rooms:
            return []
        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
    return list(listed.participants)


def is_agent(info: api.ParticipantInfo) -> bool:
    return info.identity.startswith("agent-") or info.kind == api.ParticipantInfo.Kind.AGENT


async def edge_token(
    stack: LocalStack, room: str, identity: str | None = None, *, key: str | None = "web"
) -> httpx.Response:
    """The edge's ``POST /token``, with the stack's web key unless ``key`` says otherwise."""
    headers = {"Content-Type": "application/json"}
    if key == "web":
        headers["Authorization"] = f"Bearer {stack.creds.web_key}"
    elif key is not None:
        headers["Authorization"] = f"Bearer {key}"
    body: dict[str, Any] = {"room": room}
    if identity is not None:
        body["identity"] = identity
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10) as client:
        return await client.post("/token", headers=headers, content=json.dumps(body))


def sign_webhook(body: bytes, key: str, secret: str) -> str:
    """The Authorization value LiveKit's notifier sends: a JWT whose sha256 claim is the
    body's digest."""
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return (
        api.AccessToken(key, secret)
        .with_sha256(digest)
        .with_ttl(datetime.timedelta(minutes=5))
        .to_jwt()
    )


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


@dataclass
class Transcript:
    sender: str
    speaker: str
    final: bool
    text: str


@dataclass
class Human:
    """A web user in Python: joins with an edge token, publishes a microphone that is silent
    unless it is saying something, and follows the agents' state and transcripts."""

    identity: str
    room: rtc.Room = field(default_factory=rtc.Room)
    transcripts: list[Transcript] = field(default_factory=list)
    states: dict[str, list[str]] = field(default_factory=dict)
    _speech: list[bytes] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def join(self, stack: LocalStack, room: str) -> None:
        response = await edge_token(stack, room, self.identity)
        assert response.status_code == 200, response.text
        grant = response.json()
        assert grant["room"] == room and grant["identity"] == self.identity
        self.room.on("participant_attributes_changed", self._on_attributes)
        self.room.register_text_stream_handler("lk.transcription", self._on_text)
        await self.room.connect(grant["url"], grant["token"])
        source = rtc.AudioSource(RATE, 1)
        track = rtc.LocalAudioTrack.create_audio_track("mic", source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self.room.local_participant.publish_track(track, options)
        self._tasks.append(asyncio.create_task(self._microphone(source)))

    async def leave(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.room.disconnect()

    def say(self, text: str) -> None:
        pcm = speak(text, "en-us", RATE).astype("<i2").tobytes()
        self._speech.extend(pcm[i : i + FRAME * 2] for i in range(0, len(pcm), FRAME * 2))

    async def _microphone(self, source: rtc.AudioSource) -> None:
        silence = bytes(FRAME * 2)
        while True:
            chunk = self._speech.pop(0) if self._speech else silence
            await source.capture_frame(
                rtc.AudioFrame(chunk.ljust(FRAME * 2, b"\0"), RATE, 1, FRAME)
            )

    def _on_attributes(self, changed: dict[str, str], participant: rtc.Participant) -> None:
        if "lk.agent.state" in changed:
            self.states.setdefault(participant.identity, []).append(changed["lk.agent.state"])

    def _on_text(self, reader: rtc.TextStreamReader, sender: str) -> None:
        async def read() -> None:
            text = await reader.read_all()
            attributes = dict(reader.info.attributes or {})
            self.transcripts.append(
                Transcript(
                    sender,
                    attributes.get("callplane.speaker", ""),
                    attributes.get("lk.transcription_final") == "true",
                    text,
                )
            )

        self._tasks.append(asyncio.create_task(read()))

    def agents(self) -> list[str]:
        """Identities of the agents this participant sees in the room."""
        return [
            p.identity
            for p in self.room.remote_participants.values()
            if p.identity.startswith("agent-")
            or p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        ]

    def agent_state(self, identity: str) -> str | None:
        for participant in self.room.remote_participants.values():
            if participant.identity == identity:
                return participant.attributes.get("lk.agent.state")
        return None

    def said(self, identity: str, speaker: str, text: str | None = None) -> list[str]:
        return [
            t.text
            for t in self.transcripts
            if t.sender == identity
            and t.speaker == speaker
            and t.final
            and (text is None or t.text == text)
        ]


@contextlib.asynccontextmanager
async def humans(stack: LocalStack, room: str, *names: str) -> AsyncIterator[list[Human]]:
    """Humans that join ``room`` one after another and leave at the end (if still there)."""
    people = [Human(name) for name in names]
    try:
        for person in people:
            await person.join(stack, room)
        yield people
    finally:
        for person in people:
            if person.room.isconnected():
                await person.leave()


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
        f"{agent}'s greeting (states so far: {human.states.get(agent)})",
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
    room = _room("e2e-dup")
    # Creating the room makes the real server send its own signed room_started webhook; five
    # more, identical and signed the way the server signs, race it to the edge.
    async with lk_api(stack) as lkapi:
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

    async with humans(stack, room, "alice") as (alice,):
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


async def test_a_killed_agent_is_replaced_on_the_next_join(stack: LocalStack) -> None:
    room = _room("e2e-crash")
    async with humans(stack, room, "alice") as (alice,):
        [job] = await wait_jobs(
            stack, room, lambda jobs: len(running(jobs)) == 1, 30, "the first agent job"
        )
        first = await wait_agent_joined(alice)
        assert job["handle"].startswith("pid:")
        os.kill(int(job["handle"].removeprefix("pid:")), signal.SIGKILL)

        [crashed] = await wait_jobs(
            stack,
            room,
            lambda jobs: len(jobs) == 1 and jobs[0]["state"] != "running",
            20,
            "the killed job to be reported",
        )
        assert crashed["job_id"] == job["job_id"]
        assert crashed["state"] == "crashed", crashed
        assert crashed["exit_code"] == -signal.SIGKILL
        assert crashed["ended_at"] is not None

        # The next human to join brings a new agent, which answers.
        async with humans(stack, room, "bob") as (bob,):
            jobs = await wait_jobs(
                stack, room, lambda jobs: len(running(jobs)) == 1, 30, "a replacement job"
            )
            [replacement] = running(jobs)
            assert replacement["job_id"] != job["job_id"]
            assert replacement["reason"] == "participant_joined"
            assert {j["job_id"]: j["state"] for j in jobs} == {
                replacement["job_id"]: "running",
                job["job_id"]: "crashed",
            }
            second = await wait_agent_joined(bob, not_=(first,))
            await ask_weather(bob, second)
            # alice, who stayed, hears the new agent too.
            assert alice.said(second, "agent", WEATHER_ANSWER)


async def test_an_emptied_room_s_agent_leaves_after_the_idle_timeout(stack: LocalStack) -> None:
    room = _room("e2e-idle")
    async with humans(stack, room, "alice", "bob") as (alice, bob):
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
        [ended] = await wait_jobs(
            stack,
            room,
            lambda jobs: len(jobs) == 1 and jobs[0]["state"] != "running",
            AGENT_IDLE_S + EXIT_MARGIN_S,
            "the agent job to exit after the last human left",
        )
    assert ended["job_id"] == job["job_id"]
    assert (ended["state"], ended["exit_code"]) == ("exited", 0), ended
    # The agent left the room (nobody is in it), and its record says why.
    deadline = time.monotonic() + 15
    while await participants(stack, room):
        assert time.monotonic() < deadline, await participants(stack, room)
        await asyncio.sleep(0.2)
    records = [
        r
        for r in stack.media_app.state.store.list(limit=50)
        if r["call_sid"].startswith(f"room:{room}:")
    ]
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
    forged_room = _room("e2e-forged")
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
    room_a, room_b = _room("e2e-room-a"), _room("e2e-room-b")
    for presented in (None, "not-the-web-key"):
        refused = await edge_token(stack, room_a, key=presented)
        assert refused.status_code == 401, refused.text
        assert "token" not in refused.text
    minted = await edge_token(stack, room_a, "mallory")
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
    async with lk_api(stack) as lkapi:
        names = [r.name for r in (await lkapi.room.list_rooms(api.ListRoomsRequest())).rooms]
    assert room_b not in names
    assert await agent_jobs(stack, room_b) == []
