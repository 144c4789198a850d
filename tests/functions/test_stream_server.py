"""``python -m functions.stream_server``, the command the Modal ``media_streams`` function runs:
settings from CALLPLANE_MEDIA_CONFIG, a signed stream with a good token becomes a call."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from callplane.profiles import AgentProfile
from callplane.security import stream_url
from callplane_standins.realtime_engine.server import EngineServer
from tests.support.media import media_settings, signed, start_frame, token_for
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stream_server(engine: EngineServer, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    config = media_settings(
        tmp_path, {"support": AgentProfile(name="support")}, engine=engine
    ).model_dump(mode="json")
    env = {**os.environ, "CALLPLANE_MEDIA_CONFIG": json.dumps(config)}
    command = [sys.executable, "-m", "functions.stream_server", "--port", str(port)]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        yield f"ws://127.0.0.1:{port}/twilio/media"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
        assert f"media streams on ws://127.0.0.1:{port}/twilio/media/<key>" in err, err[-2000:]


async def test_a_signed_stream_with_a_good_token_is_answered_by_the_agent(
    stream_server: str, engine: EngineServer
) -> None:
    token = token_for("CA_cli")
    deadline = time.monotonic() + 30
    while True:  # the process is starting
        try:
            ws = await connect(stream_url(stream_server, token), additional_headers=signed(token))
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    async with ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(start_frame("CA_cli", token))
        first = json.loads(await asyncio.wait_for(ws.recv(), 15))
        assert first["event"] == "media" and first["streamSid"] == "MZ1"  # the greeting
        await ws.send(json.dumps({"event": "stop", "streamSid": "MZ1", "stop": {}}))
    assert engine.sessions_opened == 1
