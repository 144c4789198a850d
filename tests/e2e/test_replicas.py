"""The local stack in the cloud's shape: two processes of the media app and two of the stream
server behind a front each, with real PostgreSQL and Redis shared by all of them. Calls, limits,
tokens and records are driven from outside the way Twilio, a team's backend and an attacker
would, and checked on every replica."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from callplane.coordination import connect as coordination
from callplane.outbound import OutboundLimits, spend_day
from callplane_dev.stack import DEFAULT_CALLER, LocalStack, NumberPlan, StackOptions
from callplane_standins.realtime_engine.context import Direction
from callplane_standins.twilio_simulator.callee import human
from callplane_standins.twilio_simulator.caller import (
    Step,
    hang_up,
    pause,
    say,
    wait_for_reply,
)
from callplane_standins.twilio_simulator.twiml import Stream, parse_twiml
from tests.conftest import ConformanceLog
from tests.support.stack import live_calls_peak
from tests.support.waiting import until

HEARTBEAT_S = 0.5
LOST_AFTER_S = 3.0
CONTEXT = {"name": "Amina", "when": "tomorrow at 3 pm"}
REMINDER = "Hello Amina, this is a reminder of your appointment tomorrow at three pm."


def cloud_options(tmp_path: Path, observe: Any, **changes: Any) -> StackOptions:
    base: dict[str, Any] = {
        "data_dir": tmp_path / "stack",
        "replicas": 2,
        "engine_observer": observe,
        "write_dev_file": False,
        "numbers": [NumberPlan("support")],
        "call_heartbeat_s": HEARTBEAT_S,
        "call_lost_after_s": LOST_AFTER_S,
        "outbound": OutboundLimits(
            allowed_countries=("US",), calling_hours=(0, 24), max_concurrent=5, max_queued=100
        ),
    }
    return StackOptions(**{**base, **changes})


@contextlib.asynccontextmanager
async def throwaway(options: StackOptions) -> AsyncIterator[LocalStack]:
    """A stack in the cloud's shape whose PostgreSQL cluster is deleted afterwards."""
    async with LocalStack(options) as running:
        assert running.plane is not None
        postgres = running.plane.postgres
        yield running
    await postgres.discard()


@pytest.fixture
async def cloud(tmp_path: Path, conformance: ConformanceLog) -> AsyncIterator[LocalStack]:
    def observe(direction: Direction, event: Mapping[str, Any]) -> None:
        conformance(direction, event)

    async with LocalStack(cloud_options(tmp_path, observe)) as running:
        assert running.plane is not None
        postgres = running.plane.postgres
        yield running
    await postgres.discard()  # a throwaway cluster, perhaps kept outside tmp_path
    conformance.count()
    assert not conformance.violations, conformance.violations[:20]


def replica_urls(stack: LocalStack, service: str) -> list[str]:
    assert stack.plane is not None
    urls: list[str] = stack.plane.describe()[service]
    assert len(urls) == 2
    return urls


def auth(stack: LocalStack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.creds.media_api_key}"}


async def listed(base_url: str, stack: LocalStack, **query: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base_url, headers=auth(stack), timeout=10) as http:
        answer = await http.get("/calls", params={"limit": 100, **query})
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


async def one_call(base_url: str, stack: LocalStack, call_sid: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base_url, headers=auth(stack), timeout=10) as http:
        answer = await http.get(f"/calls/{call_sid}")
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


async def request_call(base_url: str, stack: LocalStack, to: str) -> httpx.Response:
    body = {"to": to, "profile": "reminders", "context": CONTEXT}
    async with httpx.AsyncClient(base_url=base_url, headers=auth(stack), timeout=10) as http:
        return await http.post("/calls", json=body)


async def outbound_done(base_url: str, stack: LocalStack, job_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base_url, headers=auth(stack), timeout=10) as http:
        while True:
            job: dict[str, Any] = (await http.get(f"/outbound/{job_id}")).json()
            if job["done"]:
                return job
            await asyncio.sleep(0.2)


def ended(stack: LocalStack, call_sid: str) -> dict[str, Any] | None:
    return stack.record(call_sid)


def has_record(stack: LocalStack, call_sid: str) -> Callable[[], bool]:
    """For ``until``: the call's record is closed in the shared database."""
    return lambda: stack.record(call_sid) is not None


def row(stack: LocalStack, call_sid: str) -> dict[str, Any]:
    """The call's row as it stands, live or not."""
    assert stack.store is not None
    found = stack.store.get(call_sid)
    assert found is not None, f"no row for {call_sid}"
    return found


async def test_calls_on_two_replicas_are_listed_the_same_by_each(cloud: LocalStack) -> None:
    """Four phone calls and one outbound call spread over both stream replicas; afterwards
    GET /calls and GET /calls/{sid} answer the same on each media replica."""
    script: list[Step] = [
        wait_for_reply(),
        say("what is the weather like today"),
        wait_for_reply(),
        hang_up(),
    ]
    number = cloud.number_for("support")
    results = await asyncio.gather(*(cloud.call(number, script) for _ in range(4)))
    assert [r.status for r in results] == ["completed"] * 4, [r.errors for r in results]
    cloud.simulator.set_callee("+14155550140", human(wait_for_reply(), hang_up(), rings=1))
    media = replica_urls(cloud, "media")
    placed = await request_call(media[0], cloud, "+14155550140")
    assert placed.status_code == 202, placed.text
    job = await asyncio.wait_for(outbound_done(media[1], cloud, placed.json()["id"]), 60)
    assert job["outcome"] == "human"
    sids = {r.call_sid for r in results} | {job["attempts"][0]["call_sid"]}
    for sid in sids:
        await until(has_record(cloud, sid), 15, f"{sid}'s record")
    pages = [await listed(url, cloud) for url in media]
    for page in pages:
        assert {c["call_sid"] for c in page["calls"]} >= sids
    assert pages[0]["calls"] == pages[1]["calls"]
    outbound = [c for c in pages[0]["calls"] if c["direction"] == "outbound"]
    assert [c["transcript"][0]["text"] for c in outbound] == [REMINDER]
    for sid in sids:
        answers = [await one_call(url, cloud, sid) for url in media]
        assert answers[0] == answers[1] and answers[0]["live"] is False
        assert answers[0]["record"]["status"] == "ended"
    # both stream replicas took calls: the front spread them
    assert cloud.plane is not None
    served = cloud.plane.stream_front.stats().connections
    assert len([n for n in served.values() if n > 0]) == 2, served
    # filters and pages
    only_outbound = await listed(media[1], cloud, number="+14155550140")
    assert [c["call_sid"] for c in only_outbound["calls"]] == [job["attempts"][0]["call_sid"]]
    first = await listed(media[0], cloud, limit=2)
    second = await listed(media[1], cloud, limit=100, cursor=first["next"])
    assert first["next"] is not None
    assert [c["call_sid"] for c in first["calls"] + second["calls"]] == [
        c["call_sid"] for c in pages[0]["calls"]
    ]


async def test_thirty_outbound_calls_hold_the_limit_across_replicas(
    cloud: LocalStack,
) -> None:
    """30 requests at once, alternating between the two media replicas, with a limit of 5
    live calls for the stack: never more than 5 live at the simulator, all 30 complete, every
    final status came from a callback (whichever replica it reached), and every greeting
    carries its own request's context, whichever stream replica took the call."""
    media = replica_urls(cloud, "media")
    callees = [f"+1415555{i:04d}" for i in range(300, 330)]
    for number in callees:
        cloud.simulator.set_callee(number, human(wait_for_reply(), hang_up(), rings=1))
    answers = await asyncio.gather(
        *(request_call(media[i % 2], cloud, n) for i, n in enumerate(callees))
    )
    assert [a.status_code for a in answers] == [202] * 30, [a.text for a in answers]
    async with live_calls_peak(cloud) as peak:
        jobs = await asyncio.wait_for(
            asyncio.gather(
                *(
                    outbound_done(media[(i + 1) % 2], cloud, a.json()["id"])
                    for i, a in enumerate(answers)
                )
            ),
            240,
        )
    assert [j["outcome"] for j in jobs] == ["human"] * 30
    assert 1 <= peak.most <= 5, peak.most
    assert all(a["status_from"] == "callback" for j in jobs for a in j["attempts"])
    for j in jobs:
        sid = j["attempts"][-1]["call_sid"]
        await until(has_record(cloud, sid), 15, f"{sid}'s record")
        record = ended(cloud, sid)
        assert record is not None and record["transcript"][0]["text"] == REMINDER
        assert record["context"] == CONTEXT


async def test_a_daily_budget_counts_the_spend_of_both_replicas(
    tmp_path: Path, conformance: ConformanceLog
) -> None:
    limits = OutboundLimits(
        allowed_countries=("US",), calling_hours=(0, 24), daily_budget_usd=0.0001
    )
    options = cloud_options(tmp_path, conformance, outbound=limits)
    async with throwaway(options) as stack:
        media = replica_urls(stack, "media")
        for number in ("+14155550150", "+14155550151"):
            stack.simulator.set_callee(number, human(wait_for_reply(), hang_up(), rings=1))
        placed = [
            await request_call(media[0], stack, "+14155550150"),
            await request_call(media[1], stack, "+14155550151"),
        ]
        assert [p.status_code for p in placed] == [202, 202], [p.text for p in placed]
        jobs = [
            await asyncio.wait_for(outbound_done(media[i], stack, p.json()["id"]), 60)
            for i, p in enumerate(placed)
        ]
        costs = []
        for j in jobs:
            sid = j["attempts"][0]["call_sid"]
            await until(has_record(stack, sid), 15, f"{sid}'s record")
            record = ended(stack, sid)
            assert record is not None
            costs.append(record["cost_usd"]["total"])
        assert stack.plane is not None
        shared = coordination(stack.plane.redis_url)
        try:
            spent = await shared.outbound.spent(spend_day(time.time()))
        finally:
            await shared.aclose()
        assert spent == pytest.approx(sum(costs)) and all(c > 0 for c in costs)
        for url in media:
            refused = await request_call(url, stack, "+14155550152")
            assert refused.status_code == 429, refused.text
            assert refused.json()["refused"]["limit"] == "daily_budget_usd"


async def _twiml_stream(stack: LocalStack, call_sid: str) -> Stream:
    validator = RequestValidator(stack.creds.auth_token)
    voice_url = stack.edge_url + "/twilio/voice"
    form = {
        "CallSid": call_sid,
        "AccountSid": stack.creds.account_sid,
        "From": DEFAULT_CALLER,
        "To": stack.number_for("support"),
        "FromCountry": "US",
        "CallStatus": "ringing",
        "Direction": "inbound",
    }
    signature = validator.compute_signature(voice_url, form)
    async with httpx.AsyncClient() as http:
        answer = await http.post(voice_url, data=form, headers={"X-Twilio-Signature": signature})
    answer.raise_for_status()
    (stream,) = parse_twiml(answer.text)
    assert isinstance(stream, Stream)
    return stream


def _start_frame(stack: LocalStack, call_sid: str, parameters: Mapping[str, str]) -> str:
    stream_sid = "MZ" + "1" * 32
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


async def _drain(ws: Any) -> None:
    """Read until the server closes (ConnectionClosed)."""
    while True:
        await ws.recv()


async def test_a_stream_token_used_on_one_replica_is_refused_on_the_other(
    cloud: LocalStack,
) -> None:
    """The same signed upgrade and token, sent to replica A and then replayed to replica B:
    A serves the call (a Realtime session opens), B closes with 4403 before opening any."""
    call_sid = "CA" + "7" * 32
    stream = await _twiml_stream(cloud, call_sid)
    validator = RequestValidator(cloud.creds.auth_token)
    headers = {"X-Twilio-Signature": validator.compute_signature(stream.url, {})}
    start = _start_frame(cloud, call_sid, stream.parameters)
    key = stream.url.rsplit("/", 1)[1]  # the call's stream URL is the front's, plus its key
    first, second = (f"{url}/{key}" for url in replica_urls(cloud, "streams"))
    async with ws_connect(first, additional_headers=headers) as served:
        await served.send(start)
        greeting = json.loads(await asyncio.wait_for(served.recv(), 10))
        assert greeting["event"] in ("media", "mark")
        opened = cloud.engine.sessions_opened
        assert opened == 1
        async with ws_connect(second, additional_headers=headers) as replayed:
            await replayed.send(start)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(_drain(replayed), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
        assert cloud.engine.sessions_opened == opened


async def test_a_killed_stream_replica_leaves_its_call_recorded_as_lost(
    cloud: LocalStack,
) -> None:
    """SIGKILL the stream replica that serves a call after the caller's first turn: the other
    containers close its record as lost, with what was said up to the kill; a call on the
    surviving replica is intact."""
    assert cloud.plane is not None and cloud.plane.streams is not None
    number = cloud.number_for("support")
    long_call = asyncio.create_task(
        cloud.call(
            number,
            [
                wait_for_reply(),
                say("what is the weather like today"),
                wait_for_reply(),
                pause(30_000),
                hang_up(),
            ],
            max_s=60,
        )
    )
    calls = cloud.simulator.carrier.calls
    await until(lambda: len(calls) == 1, 10, "the call to start")
    (sid,) = list(calls)

    def said_twice() -> bool:
        found = cloud.store.get(sid) if cloud.store is not None else None
        return found is not None and len(found["transcript"]) >= 3

    await until(said_twice, 30, "the weather answer in the live record")
    before = row(cloud, sid)
    assert before["status"] == "live"
    victim = next(
        r for r in cloud.plane.streams.replicas if before["served_by"].endswith(f":{r.pid}")
    )
    cloud.plane.streams.kill(victim.index)
    await cloud.plane.streams.wait_dead(victim.index)
    await until(
        lambda: row(cloud, sid)["status"] == "lost",
        LOST_AFTER_S + 10,
        "the killed container's call to be closed as lost",
    )
    lost = row(cloud, sid)
    assert lost["end_reason"] == "container_lost"
    assert lost["transcript"] == before["transcript"]  # everything said up to the kill
    long_call.cancel()
    await asyncio.gather(long_call, return_exceptions=True)
    # the survivor still serves: a new call completes and is recorded whole
    result = await cloud.call(number, [wait_for_reply(), hang_up()])
    assert result.status == "completed", result.errors
    await until(lambda: ended(cloud, result.call_sid) is not None, 15, "the new call's record")
    record = ended(cloud, result.call_sid)
    assert record is not None and record["end_reason"] and record["transcript"]


async def test_a_postgres_outage_during_calls_loses_no_record(cloud: LocalStack) -> None:
    """PostgreSQL stopped for 30 s while ten calls go on, then started: every record is
    complete (the writes were held in order and replayed)."""
    assert cloud.plane is not None
    number = cloud.number_for("support")
    script: list[Step] = [
        wait_for_reply(),
        say("what is the weather like today"),
        wait_for_reply(),
        pause(4_000),
        say("goodbye"),
        wait_for_reply(timeout_s=15),
    ]
    calls = [asyncio.create_task(cloud.call(number, script, max_s=90)) for _ in range(10)]
    await asyncio.sleep(1.0)
    await cloud.plane.postgres.stop()
    outage_ends = time.monotonic() + 30
    results = []
    try:
        results = await asyncio.gather(*calls)
    finally:
        await asyncio.sleep(max(0.0, outage_ends - time.monotonic()))
        await cloud.plane.postgres.start()
    assert [r.status for r in results] == ["completed"] * 10, [r.errors for r in results]
    for r in results:
        await until(has_record(cloud, r.call_sid), 60, f"{r.call_sid}")
        record = ended(cloud, r.call_sid)
        assert record is not None and record["end_reason"] == "agent_hung_up"
        said = [line["text"] for line in record["transcript"] if line["role"] == "caller"]
        assert said == ["what is the weather like today", "goodbye"]
        assert [c["name"] for c in record["tool_calls"]] == ["get_weather", "end_call"]


async def test_without_redis_new_calls_are_refused_and_a_live_call_finishes(
    cloud: LocalStack,
) -> None:
    assert cloud.plane is not None
    number = cloud.number_for("support")
    live = asyncio.create_task(
        cloud.call(
            number, [wait_for_reply(), pause(3_000), say("goodbye"), wait_for_reply(timeout_s=15)]
        )
    )
    await until(lambda: cloud.engine.sessions_opened >= 1, 15, "the first call's session")
    await cloud.plane.redis.stop()
    try:
        media = replica_urls(cloud, "media")
        refused = await request_call(media[0], cloud, "+14155550160")
        assert refused.status_code == 503, refused.text
        assert "Redis at redis://127.0.0.1" in refused.text
        opened = cloud.engine.sessions_opened
        newcomer = await cloud.call(number, [wait_for_reply(timeout_s=5), hang_up()], max_s=20)
        assert cloud.engine.sessions_opened == opened  # refused before any Realtime session
        assert newcomer.timeline.heard_ms == 0
        first = await live
        assert first.status == "completed" and first.hung_up_by == "rest", first.errors
    finally:
        await cloud.plane.redis.start()
    await until(lambda: ended(cloud, first.call_sid) is not None, 15, "the live call's record")
    record = ended(cloud, first.call_sid)
    assert record is not None and record["end_reason"] == "agent_hung_up"
    logs = "".join(p.read_text() for p in (cloud.data_dir / "logs").glob("streams-*.log"))
    assert "cannot be checked for an earlier media stream: Redis at redis://127.0.0.1" in logs


async def dispatch(base_url: str, stack: LocalStack, room: str, reason: str) -> dict[str, Any]:
    body = {"room": room, "reason": reason}
    async with httpx.AsyncClient(base_url=base_url, headers=auth(stack), timeout=30) as http:
        answer = await http.post("/agents/dispatch", json=body)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


async def room_jobs(base_url: str, stack: LocalStack, room: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=base_url, headers=auth(stack), timeout=10) as http:
        answer = await http.get("/agents")
    assert answer.status_code == 200, answer.text
    return [job for job in answer.json()["agents"] if job["room"] == room]


async def test_duplicate_dispatches_on_two_replicas_start_one_agent(
    tmp_path: Path, conformance: ConformanceLog
) -> None:
    """Five room_started and five participant_joined dispatches, alternating between the two
    media replicas, start exactly one agent job; both replicas list it. The job SIGKILLed: the
    next join, on the other replica, starts exactly one new one."""
    options = cloud_options(tmp_path, conformance, livekit=True, agent_idle_timeout_s=30.0)
    async with throwaway(options) as stack:
        media = replica_urls(stack, "media")
        room = f"replicas-{time.time_ns()}"
        answers = await asyncio.gather(
            *(
                dispatch(media[i % 2], stack, room, reason)
                for i, reason in enumerate(["room_started", "participant_joined"] * 5)
            )
        )
        assert sum(a["started"] for a in answers) == 1, answers
        assert len({a["job_id"] for a in answers}) == 1
        lists = [await room_jobs(url, stack, room) for url in media]
        assert lists[0] == lists[1] and [j["state"] for j in lists[0]] == ["running"]
        (job,) = lists[0]
        pid = int(job["handle"].removeprefix("pid:"))
        os.kill(pid, signal.SIGKILL)  # the agent process, a child of one media replica

        async def replaced() -> bool:
            states = [j["state"] for j in await room_jobs(media[0], stack, room)]
            return states == ["crashed"]

        deadline = time.monotonic() + 30
        while not await replaced():
            assert time.monotonic() < deadline, await room_jobs(media[0], stack, room)
            await asyncio.sleep(0.2)
        again = await asyncio.gather(
            *(dispatch(media[(i + 1) % 2], stack, room, "participant_joined") for i in range(5))
        )
        assert sum(a["started"] for a in again) == 1, again
        assert len({a["job_id"] for a in again}) == 1 and again[0]["job_id"] != job["job_id"]
        states = sorted(j["state"] for j in await room_jobs(media[1], stack, room))
        assert states == ["crashed", "running"]
