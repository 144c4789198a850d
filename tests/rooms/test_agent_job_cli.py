"""``python -m functions.agent_job`` as the launcher runs it: a child process, settings from
``CALLPLANE_MEDIA_CONFIG``, a real livekit-server and the real local engine."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from callplane.records import RecordStore
from callplane_standins.realtime_engine.server import EngineServer
from tests.livekit_server import LiveKitServer, livekit_server_fixture
from tests.rooms.test_agent_room import media_settings
from tests.support.livekit_people import humans, minted
from tests.support.waiting import until

livekit = livekit_server_fixture()
REPO = Path(__file__).resolve().parents[2]


async def spawn(config: str | None, *args: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if k != "CALLPLANE_MEDIA_CONFIG"}
    if config is not None:
        env["CALLPLANE_MEDIA_CONFIG"] = config
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "functions.agent_job",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process, timeout: float = 30) -> tuple[int, str]:
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, stderr.decode()


async def test_a_job_nobody_joins_exits_0_after_the_idle_timeout(
    livekit: LiveKitServer, engine: EngineServer, tmp_path: Path
) -> None:
    settings = media_settings(livekit, engine, tmp_path)
    proc = await spawn(settings.model_dump_json(), "--room", "cli-empty", "--job-id", "j1")
    code, stderr = await finish(proc)
    assert code == 0, stderr
    record = RecordStore(settings.records_url).get("room:cli-empty:j1")
    assert record is not None and record["end_reason"] == "nobody_came"
    assert "left room cli-empty: nobody_came" in stderr  # logs go to stderr


async def test_sigterm_makes_a_serving_job_leave_and_exit_0(
    livekit: LiveKitServer, engine: EngineServer, tmp_path: Path
) -> None:
    settings = media_settings(livekit, engine, tmp_path)
    config = settings.model_dump_json()
    async with humans(minted(livekit, "cli-room"), "alice") as (alice,):
        proc = await spawn(config, "--room", "cli-room", "--profile", "quiet", "--job-id", "j2")
        try:
            await until(lambda: alice.agent_state() == "listening", 20, "the agent to listen")
        except AssertionError:
            proc.kill()
            raise
        proc.send_signal(signal.SIGTERM)
        code, stderr = await finish(proc)
        assert code == 0, stderr
        await until(lambda: alice.agent_state() is None, 10, "the agent to leave")
    record = RecordStore(settings.records_url).get("room:cli-room:j2")
    assert record is not None
    assert record["end_reason"] == "job_stopped" and record["profile"] == "quiet"
    assert record["from"] == "alice"


async def test_bad_configuration_exits_2_with_a_one_line_reason(
    livekit: LiveKitServer, engine: EngineServer, tmp_path: Path
) -> None:
    code, stderr = await finish(await spawn(None, "--room", "r"))
    assert code == 2
    assert stderr.strip().splitlines()[-1] == (
        "agent_job: cannot serve room 'r': CALLPLANE_MEDIA_CONFIG is not set: put the media "
        "settings JSON in it"
    )
    settings = media_settings(livekit, engine, tmp_path)
    code, stderr = await finish(
        await spawn(settings.model_dump_json(), "--room", "r", "--profile", "nope")
    )
    assert code == 2
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("agent_job: cannot serve room 'r': profile='nope' is not a")
