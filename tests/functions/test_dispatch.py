"""The agent launcher: one job per room under duplicates and races, crashes noticed, the API key
and the body checked. Local jobs are real child processes (a stand-in script with the agent
job's CLI shape); the Modal launcher is driven through a fake at modal's API boundary."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI, Header, HTTPException
from modal.exception import OutputExpiredError

import functions.dispatch as dispatch_module
from callplane.livekit_settings import LiveKitSettings
from callplane.media_settings import MediaSettings
from callplane.profiles import AgentProfile
from functions.dispatch import (
    AgentJobs,
    Launcher,
    LocalProcessLauncher,
    ModalLauncher,
    dispatch_routes,
    local_agent_command,
)
from tests.doubles import FakeFunction
from tests.servers import serve_asgi
from tests.support.media import media_settings as base_media_settings
from tests.support.waiting import poll, until

API_KEY = "media-api-key-for-dispatch"
AUTH = {"Authorization": f"Bearer {API_KEY}"}

STAND_IN = textwrap.dedent(
    """
    import json, os, pathlib, sys, time
    mode, room, profile = sys.argv[1:4]
    record = {"room": room, "profile": profile, "config": os.environ["CALLPLANE_MEDIA_CONFIG"]}
    out = pathlib.Path(os.environ["STAND_IN_DIR"]) / f"{os.getpid()}.json"
    # written whole or not at all: the test reads the folder while jobs start
    partial = out.with_suffix(".part")
    partial.write_text(json.dumps(record))
    partial.rename(out)
    if mode == "crash":
        sys.exit(3)
    if mode == "exit":
        sys.exit(0)
    time.sleep(120)
    """
)


def media_settings(tmp_path: Path, *, livekit: bool = True) -> MediaSettings:
    profiles = {"support": AgentProfile(name="support")}
    if livekit:  # a profile naming a room needs LiveKit settings
        profiles["lobby"] = AgentProfile(name="lobby", room="lobby-room")
    return base_media_settings(
        tmp_path,
        profiles,
        api_key=API_KEY,
        livekit=LiveKitSettings(url="ws://127.0.0.1:7880", api_key="devkey", api_secret="secret")
        if livekit
        else None,
    )


def media_app(
    settings: MediaSettings, launcher: Launcher, people: dict[str, list[str]] | None = None
) -> tuple[FastAPI, AgentJobs]:
    """A small app mounting the router the way functions/media.py would; ``people`` is who
    the LiveKit server would list in each room (nobody unless the test says so)."""
    people = {} if people is None else people

    async def humans(room: str) -> list[str]:
        return list(people.get(room, []))

    app = FastAPI()

    def require_api_key(authorization: str | None) -> None:
        if authorization != f"Bearer {settings.api_key}":
            raise HTTPException(401, "missing or wrong API key")

    @app.get("/whoami")
    async def whoami(authorization: Annotated[str | None, Header()] = None) -> dict[str, str]:
        require_api_key(authorization)
        return {"ok": "yes"}

    router, agents = dispatch_routes(settings, require_api_key, launcher, humans=humans)
    app.include_router(router)
    return app, agents


@dataclass
class Media:
    client: httpx.AsyncClient
    agents: AgentJobs
    records: Path
    people: dict[str, list[str]]

    def started(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.records.glob("*.json"))]


def stand_in(tmp_path: Path, mode: Callable[[str], str]) -> Callable[[str, str], Sequence[str]]:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    return lambda room, profile: [sys.executable, str(script), mode(room), room, profile]


def stand_in_launcher(
    tmp_path: Path, settings: MediaSettings, mode: Callable[[str], str] = lambda room: "run"
) -> tuple[LocalProcessLauncher, Path]:
    """A launcher of stand-in jobs, and the folder where each started job leaves its record."""
    records = tmp_path / "jobs"
    records.mkdir()
    launcher = LocalProcessLauncher(
        settings, stand_in(tmp_path, mode), env={**os.environ, "STAND_IN_DIR": str(records)}
    )
    return launcher, records


@pytest.fixture
async def media(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Media]:
    monkeypatch.setattr(dispatch_module, "REPLACE_AFTER_S", 0.05)
    settings = media_settings(tmp_path).model_copy(update={"agent_max_restarts": 2})
    mode = {"crashy": "crash", "crashy-alone": "crash", "brief": "exit"}
    launcher, records = stand_in_launcher(tmp_path, settings, lambda room: mode.get(room, "run"))
    people: dict[str, list[str]] = {}
    app, agents = media_app(settings, launcher, people)
    try:
        async with serve_asgi(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
            yield Media(client, agents, records, people)
    finally:
        await agents.shutdown()


async def wait_for_state(media: Media, job_id: str, state: str) -> dict[str, Any]:
    async def listing() -> list[dict[str, Any]]:
        return list((await media.client.get("/agents", headers=AUTH)).json()["agents"])

    def find(jobs: list[dict[str, Any]]) -> dict[str, Any] | None:
        return next((j for j in jobs if j["job_id"] == job_id and j["state"] == state), None)

    jobs = await poll(listing, find, 10, f"job {job_id} to be {state}", interval=0.02)
    found = find(jobs)
    assert found is not None
    return dict(found)


def pid_of(job: dict[str, Any]) -> int:
    handle = str(job["handle"])
    assert handle.startswith("pid:")
    return int(handle.removeprefix("pid:"))


async def dispatch(media: Media, room: str, **extra: Any) -> httpx.Response:
    body = {"room": room, "profile": None, "reason": "room_started", **extra}
    return await media.client.post("/agents/dispatch", json=body, headers=AUTH)


async def test_five_concurrent_duplicates_start_exactly_one_process(media: Media) -> None:
    answers = await asyncio.gather(*(dispatch(media, "room-a") for _ in range(5)))
    assert [a.status_code for a in answers] == [200] * 5
    bodies = [a.json() for a in answers]
    assert sorted(b["started"] for b in bodies) == [False, False, False, False, True]
    assert {b["job_id"] for b in bodies} == {bodies[0]["job_id"]}
    assert {(b["room"], b["state"]) for b in bodies} == {("room-a", "running")}
    await until(lambda: len(media.started()) == 1, 10, "a stand-in job to start", interval=0.02)
    await asyncio.sleep(0.3)  # a second process would have written its record by now
    [record] = media.started()
    assert (record["room"], record["profile"]) == ("room-a", "support")
    # The child got this app's media settings, complete and valid.
    passed = MediaSettings.from_json(record["config"])
    assert passed.livekit is not None and passed.livekit.api_secret == "secret"
    assert passed.api_key == API_KEY
    listing = (await media.client.get("/agents", headers=AUTH)).json()["agents"]
    assert [(j["room"], j["state"], j["exit_code"]) for j in listing] == [
        ("room-a", "running", None)
    ]
    assert pid_of(listing[0]) > 0 and listing[0]["started_at"] > 0


async def test_a_killed_job_is_replaced_by_the_next_dispatch(media: Media) -> None:
    first = (await dispatch(media, "room-b")).json()
    assert first["started"] is True
    job = await wait_for_state(media, first["job_id"], "running")
    await until(lambda: len(media.started()) == 1, 10, "a stand-in job to start", interval=0.02)
    os.kill(pid_of(job), signal.SIGKILL)
    dead = await wait_for_state(media, first["job_id"], "crashed")
    assert dead["exit_code"] == -signal.SIGKILL
    second = (await dispatch(media, "room-b")).json()
    assert second["started"] is True and second["job_id"] != first["job_id"]
    replacement = await wait_for_state(media, second["job_id"], "running")
    assert pid_of(replacement) != pid_of(job)
    await until(lambda: len(media.started()) == 2, 10, "two stand-in jobs to start", interval=0.02)


async def test_a_job_exiting_non_zero_is_reported_crashed_and_logged(
    media: Media, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="callplane.dispatch")
    answer = (await dispatch(media, "crashy")).json()
    crashed = await wait_for_state(media, answer["job_id"], "crashed")
    assert crashed["exit_code"] == 3 and crashed["ended_at"] >= crashed["started_at"]
    assert any(
        "'crashy'" in r.getMessage() and "exit code 3" in r.getMessage() for r in caplog.records
    )
    again = (await dispatch(media, "crashy")).json()
    assert again["started"] is True and again["job_id"] != answer["job_id"]


async def test_a_killed_job_is_replaced_at_once_while_a_human_is_in_the_room(
    media: Media,
) -> None:
    media.people["room-h"] = ["alice"]
    first = (await dispatch(media, "room-h")).json()
    job = await wait_for_state(media, first["job_id"], "running")
    await until(lambda: len(media.started()) == 1, 10, "a stand-in job to start", interval=0.02)
    os.kill(pid_of(job), signal.SIGKILL)
    await wait_for_state(media, first["job_id"], "crashed")
    # nobody dispatches: the launcher saw the crash and alice still there
    await until(lambda: len(media.started()) == 2, 10, "the replacement to start", interval=0.02)
    [replacement] = [j for j in media.agents.jobs() if j.state == "running"]
    assert replacement.room == "room-h" and replacement.reason == "replaced_crashed"
    assert replacement.job_id != first["job_id"]
    assert await media.agents.leases.holder("room-h") == replacement.job_id
    # a join now finds it running: still one agent
    again = (await dispatch(media, "room-h", reason="participant_joined")).json()
    assert again == {**again, "job_id": replacement.job_id, "started": False}


async def test_a_room_whose_agent_keeps_crashing_is_given_up_after_the_restart_budget(
    media: Media, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="callplane.dispatch")
    media.people["crashy"] = ["alice", "bob"]
    await dispatch(media, "crashy")
    await until(
        lambda: any("giving up" in r.getMessage() for r in caplog.records),
        15,
        "the launcher to give up on the room",
        interval=0.02,
    )
    jobs = [j for j in media.agents.jobs() if j.room == "crashy"]
    # the first job and agent_max_restarts=2 replacements, all crashed; then no more
    assert sorted(j.reason for j in jobs) == [
        "replaced_crashed",
        "replaced_crashed",
        "room_started",
    ]
    assert {j.state for j in jobs} == {"crashed"}
    assert len(media.started()) == 3
    [gave_up] = [r.getMessage() for r in caplog.records if "giving up" in r.getMessage()]
    assert "alice, bob" in gave_up and "2 replacements" in gave_up
    # a join still starts an agent (the budget bounds only the automatic replacements)
    again = (await dispatch(media, "crashy", reason="participant_joined")).json()
    assert again["started"] is True


async def test_a_crashed_job_in_an_empty_room_is_not_replaced(
    media: Media, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="callplane.dispatch")
    answer = (await dispatch(media, "crashy-alone")).json()
    await wait_for_state(media, answer["job_id"], "crashed")
    await until(
        lambda: any("is empty: not replaced" in r.getMessage() for r in caplog.records),
        10,
        "the launcher to see the room empty",
        interval=0.02,
    )
    assert len(media.started()) == 1
    assert [j.state for j in media.agents.jobs()] == ["crashed"]


async def test_a_job_that_exits_normally_is_exited_not_crashed(media: Media) -> None:
    answer = (await dispatch(media, "brief")).json()
    done = await wait_for_state(media, answer["job_id"], "exited")
    assert done["exit_code"] == 0


async def test_rooms_are_independent_and_profiles_are_chosen(media: Media) -> None:
    a = (await dispatch(media, "lobby-room")).json()
    b = (await dispatch(media, "room-c", profile="lobby")).json()
    assert a["started"] and b["started"] and a["job_id"] != b["job_id"]
    await until(lambda: len(media.started()) == 2, 10, "two stand-in jobs to start", interval=0.02)
    assert {(r["room"], r["profile"]) for r in media.started()} == {
        ("lobby-room", "lobby"),
        ("room-c", "lobby"),
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"room": "bad room!", "reason": "x"}, "room"),
        ({"room": "-leading", "reason": "x"}, "room"),
        ({"reason": "x"}, "room"),
        ({"room": "ok"}, "reason"),
        ({"room": "ok", "reason": "x", "extra": 1}, "extra"),
        ({"room": "ok", "reason": "x", "profile": 7}, "profile"),
        ([1, 2], "body"),
    ],
)
async def test_a_bad_body_is_422_naming_the_field(media: Media, body: Any, field: str) -> None:
    answer = await media.client.post("/agents/dispatch", json=body, headers=AUTH)
    assert answer.status_code == 422
    fields = [problem["field"] for problem in answer.json()["detail"]]
    assert field in fields
    assert media.agents.live == {}


async def test_unknown_profile_and_non_json_are_refused(media: Media) -> None:
    unknown = await dispatch(media, "room-d", profile="nope")
    assert unknown.status_code == 422
    assert "profile='nope'" in unknown.json()["detail"]
    assert "support" in unknown.json()["detail"]
    garbage = await media.client.post(
        "/agents/dispatch",
        content=b"{not json",
        headers={**AUTH, "content-type": "application/json"},
    )
    assert garbage.status_code == 400
    assert "not JSON" in garbage.json()["detail"]
    assert media.agents.live == {}


async def test_a_deeply_nested_body_is_400_naming_the_limit(media: Media) -> None:
    deep = b'{"room": "r", "reason": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    answer = await media.client.post(
        "/agents/dispatch", content=deep, headers={**AUTH, "content-type": "application/json"}
    )
    assert answer.status_code == 400
    assert "over the JSON nesting limit of 32 levels" in answer.json()["detail"]
    assert media.agents.live == {}


KEY_A = "0123456789abcdef"
KEY_B = "fedcba9876543210"


@pytest.fixture
async def capped(tmp_path: Path) -> AsyncIterator[Media]:
    """Agent jobs capped at 3 on the stack and 2 per web key."""
    settings = media_settings(tmp_path)
    assert settings.livekit is not None
    livekit = settings.livekit.model_copy(
        update={"max_agent_jobs": 3, "max_agent_jobs_per_web_key": 2}
    )
    settings = settings.model_copy(update={"livekit": livekit})
    launcher, records = stand_in_launcher(tmp_path, settings)
    people: dict[str, list[str]] = {}
    app, agents = media_app(settings, launcher, people)
    try:
        async with serve_asgi(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
            yield Media(client, agents, records, people)
    finally:
        await agents.shutdown()


async def test_the_caps_on_agent_jobs_refuse_with_429_and_start_nothing(capped: Media) -> None:
    media = capped
    assert (await dispatch(media, "key-a-1", web_key=KEY_A)).json()["started"] is True
    assert (await dispatch(media, "key-a-2", web_key=KEY_A)).json()["started"] is True
    # a duplicate for a running room is still answered with its job, at the cap
    again = await dispatch(media, "key-a-1", web_key=KEY_A)
    assert again.status_code == 200 and again.json()["started"] is False
    over_key = await dispatch(media, "key-a-3", web_key=KEY_A)
    assert over_key.status_code == 429
    refused = over_key.json()["refused"]
    assert refused["limit"] == "livekit.max_agent_jobs_per_web_key"
    assert refused["reason"] == (
        f"2 agent jobs are running for rooms created with web key {KEY_A}, its cap "
        "(livekit.max_agent_jobs_per_web_key = 2); no agent was started for room 'key-a-3': "
        "try again when one of them has ended, or raise the cap"
    )
    # another key, and rooms without one, count against the stack's cap only
    assert (await dispatch(media, "key-b-1", web_key=KEY_B)).json()["started"] is True
    over_stack = await dispatch(media, "no-key-1")
    assert over_stack.status_code == 429
    assert over_stack.json()["refused"]["limit"] == "livekit.max_agent_jobs"
    assert "3 agent jobs are running on this stack" in over_stack.json()["refused"]["reason"]
    await until(lambda: len(media.started()) == 3, 10, "three stand-in jobs", interval=0.02)
    assert sorted(media.agents.live) == ["key-a-1", "key-a-2", "key-b-1"]
    # a job that ends frees its place
    ended = media.agents.live["key-a-1"]
    os.kill(int(ended.handle.handle.removeprefix("pid:")), signal.SIGKILL)
    await wait_for_state(media, ended.job_id, "crashed")
    assert (await dispatch(media, "key-a-3", web_key=KEY_A)).json()["started"] is True


@pytest.mark.parametrize("web_key", ["the-key-itself-0123", "0123456789ABCDEF", "abc"])
async def test_a_web_key_that_is_not_an_id_is_422(media: Media, web_key: str) -> None:
    answer = await dispatch(media, "room-k", web_key=web_key)
    assert answer.status_code == 422
    assert [p["field"] for p in answer.json()["detail"]] == ["web_key"]


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}]
)
async def test_no_or_wrong_key_is_401(media: Media, headers: dict[str, str]) -> None:
    body = {"room": "room-e", "profile": None, "reason": "room_started"}
    assert (
        await media.client.post("/agents/dispatch", json=body, headers=headers)
    ).status_code == 401
    assert (await media.client.get("/agents", headers=headers)).status_code == 401
    assert media.agents.live == {}
    assert media.started() == []


async def test_without_livekit_settings_the_routes_answer_503(tmp_path: Path) -> None:
    settings = media_settings(tmp_path, livekit=False)
    launcher = LocalProcessLauncher(settings, stand_in(tmp_path, lambda room: "run"))
    app, agents = media_app(settings, launcher)
    async with serve_asgi(app) as base, httpx.AsyncClient(base_url=base) as client:
        body = {"room": "r", "profile": None, "reason": "room_started"}
        answer = await client.post("/agents/dispatch", json=body, headers=AUTH)
    assert answer.status_code == 503 and "livekit" in answer.json()["detail"]
    assert agents.live == {}


async def test_shutdown_terminates_local_children(tmp_path: Path) -> None:
    settings = media_settings(tmp_path)
    launcher, _ = stand_in_launcher(tmp_path, settings)
    agents = AgentJobs(settings, launcher)
    job, started = await agents.dispatch("room-f", None, "room_started")
    assert started
    pid = int(job.handle.handle.removeprefix("pid:"))
    await agents.shutdown()
    assert job.state == "crashed" and job.exit_code == -signal.SIGTERM
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: no such process any more


def test_default_command_is_the_agent_job_cli() -> None:
    assert local_agent_command("room-1", "support") == [
        sys.executable,
        "-m",
        "functions.agent_job",
        "--room",
        "room-1",
        "--profile",
        "support",
    ]


# --------------------------------------------------------------------------- Modal launcher


async def test_modal_launcher_spawns_once_per_room_and_polls_liveness(tmp_path: Path) -> None:
    function = FakeFunction()
    lookups: list[tuple[Any, ...]] = []

    def from_name(app_name: str, name: str, *, environment_name: str | None = None) -> Any:
        lookups.append((app_name, name, environment_name))
        return function

    launcher = ModalLauncher("callplane-media", environment_name="dev", lookup=from_name)
    agents = AgentJobs(media_settings(tmp_path), launcher)
    results = await asyncio.gather(
        *(agents.dispatch("room-m", None, "room_started") for _ in range(5))
    )
    assert sorted(started for _, started in results) == [False, False, False, False, True]
    job = results[0][0]
    assert function.spawned == [{"room": "room-m", "profile": "support", "job_id": job.job_id}]
    assert lookups == [("callplane-media", "agent_job", "dev")]
    assert job.handle.handle == "modal:fc-1"
    await agents.refresh()
    assert job.state == "running"

    function.calls[0].outcome = RuntimeError("the agent raised")  # the remote exception
    await agents.refresh()
    assert (job.state, job.exit_code) == ("crashed", 1)
    again, started = await agents.dispatch("room-m", None, "participant_joined")
    assert started and again.handle.handle == "modal:fc-2"

    function.calls[1].outcome = OutputExpiredError()
    await agents.refresh()
    assert again.state == "exited"

    third, _ = await agents.dispatch("room-m", None, "participant_joined")
    function.calls[2].outcome = None  # returned normally
    await agents.refresh()
    assert (third.state, third.exit_code) == ("exited", 0)
    await agents.shutdown()
    assert not any(call.cancelled for call in function.calls)  # Modal jobs outlive the app


async def test_a_prewarmed_process_takes_the_room_and_is_replaced(tmp_path: Path) -> None:
    """The warm path: the process started ahead (imports done) is the one that runs the job,
    it runs the real agent job CLI with the room it was handed (here a bad name, which the job
    refuses with exit code 2 before touching LiveKit), and a fresh one is started after it."""
    launcher = LocalProcessLauncher(media_settings(tmp_path))
    assert launcher.prewarm  # the default command with LiveKit configured
    try:
        assert await asyncio.wait_for(launcher.wait_ready(), 60)
        assert launcher._warm is not None
        warm_pid = (await launcher._warm).process.pid
        handle = await launcher.launch("not a room!", "support", "job-1")
        assert handle.handle == f"pid:{warm_pid}"
        assert await asyncio.wait_for(handle.wait(), 30) == 2
        assert await asyncio.wait_for(launcher.wait_ready(), 60)
        assert launcher._warm is not None
        replacement = (await launcher._warm).process
        assert replacement.pid != warm_pid
    finally:
        await launcher.aclose()
    assert replacement.returncode == 0  # EOF on its stdin: it exits without serving
