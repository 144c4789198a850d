"""The ``callplane`` command, run as a user runs it: a real process on a loopback port."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import AsyncOpenAI

CALLPLANE = [sys.executable, "-m", "callplane"]


@pytest.fixture
def engine_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen(
        [*CALLPLANE, "engine", "--port", "0", "--api-key", "cli-key"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.stderr is not None
    base_url = None
    for line in proc.stderr:
        if m := re.search(r'websocket_base_url="(ws://[^"]+)"', line):
            base_url = m.group(1)
            break
    assert base_url, "the engine never printed its URL"
    try:
        yield proc, base_url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_engine_command_serves_the_sdk(
    engine_process: tuple[subprocess.Popen[str], str],
) -> None:
    _, base_url = engine_process
    client = AsyncOpenAI(api_key="cli-key", websocket_base_url=base_url)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        event = await asyncio.wait_for(conn.recv(), 10)
        assert event.type == "session.created"
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "hello"}],
            }
        )
        await conn.response.create()
        async for ev in conn:
            if ev.type == "response.output_text.done":
                assert ev.text == "Hello! Yes, I can hear you. How can I help you today?"
                break


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CALLPLANE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_a_bad_mode_is_refused_with_the_fix() -> None:
    result = run_cli("engine", "--mode", "fast")
    assert result.returncode != 0
    assert "'fast' is not a mode; use 'script' or 'load'" in result.stderr


def test_a_bad_script_is_refused_naming_the_file_and_field(tmp_path: Path) -> None:
    script = tmp_path / "s.toml"
    script.write_text('greeting = "hi"\nfallback = "?"\n')
    result = run_cli("engine", "--script", str(script))
    assert result.returncode != 0
    assert "followup" in result.stderr and "rules" in result.stderr
