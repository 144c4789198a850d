"""The ``callplane`` command, run as a user runs it: a real process on a loopback port."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI

CALLPLANE = [sys.executable, "-m", "callplane_dev"]


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


@pytest.fixture
def dev_stack(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any], Path]]:
    """`callplane dev --json` as a user starts it, in its own process."""
    data_dir = tmp_path / "stack"
    proc = subprocess.Popen(
        [*CALLPLANE, "dev", "--json", "--any-ports", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, (
        f"callplane dev printed nothing; stderr: {proc.stderr.read() if proc.stderr else ''}"
    )
    try:
        yield proc, json.loads(line), data_dir
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=20)


def test_dev_prints_every_part_and_call_follows_a_call_live(
    dev_stack: tuple[subprocess.Popen[str], dict[str, Any], Path],
) -> None:
    proc, parts, data_dir = dev_stack
    assert set(parts) >= {"engine", "twilio", "edge", "media", "numbers"}
    assert {n["profile"] for n in parts["numbers"]} == {"support", "sales"}
    assert (data_dir / "dev.json").stat().st_mode & 0o077 == 0, "dev.json holds credentials"
    result = subprocess.run(
        [
            *CALLPLANE,
            "call",
            "support",
            "--say",
            "what is the weather like today",
            "--say",
            "goodbye",
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    said = [line for line in lines if line.startswith(("agent ", "caller", "tool "))]
    assert said[:2] == [
        "agent  Hello, thanks for calling. How can I help you today?",
        "caller what is the weather like today",
    ]
    assert "tool   get_weather" in "\n".join(said)
    assert "agent_hung_up" in result.stderr and "get_weather, end_call" in result.stderr
    # Ctrl-C stops every part and removes dev.json
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    assert not (data_dir / "dev.json").exists()


def test_call_to_a_number_the_stack_does_not_have_names_the_ones_it_has(
    dev_stack: tuple[subprocess.Popen[str], dict[str, Any], Path],
) -> None:
    _, parts, data_dir = dev_stack
    result = run_cli("call", "+19995550123", "--data-dir", str(data_dir))
    assert result.returncode == 2
    for n in parts["numbers"]:
        assert n["number"] in result.stderr
    assert "is not a number of the local stack" in result.stderr


def test_the_demo_runs_a_whole_call_and_stops_cleanly(tmp_path: Path) -> None:
    result = subprocess.run(
        [*CALLPLANE, "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr
    assert "demo complete" in result.stderr
    assert "Right now it is sunny and seventy two degrees in San Francisco." in result.stderr
    wavs = list((tmp_path / ".callplane" / "demo" / "recordings").glob("*.wav"))
    assert len(wavs) == 1 and wavs[0].stat().st_size > 100_000


def test_dial_has_the_agent_call_a_person_and_prints_the_outcome(
    dev_stack: tuple[subprocess.Popen[str], dict[str, Any], Path],
) -> None:
    _, _, data_dir = dev_stack
    context = json.dumps({"name": "Amina", "when": "tomorrow at 3 pm"})
    result = run_cli(
        "dial",
        "+14155550123",
        "--profile",
        "reminders",
        "--context",
        context,
        "--callee",
        "human",
        "--rings",
        "3",
        "--data-dir",
        str(data_dir),
    )
    assert result.returncode == 0, result.stderr
    assert "answered by human" in result.stderr
    assert "Hello Amina, this is a reminder of your appointment tomorrow at three pm." in (
        result.stderr
    )
    assert "outcome: human after 1 attempt(s)" in result.stderr
    refused = run_cli(
        "dial", "+4930231250000", "--profile", "reminders", "--data-dir", str(data_dir)
    )
    assert refused.returncode == 2
    assert "refused by allowed_countries" in refused.stderr and "'DE'" in refused.stderr


def _cli_without_pocketsphinx(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in an interpreter where the `local` extra's pocketsphinx cannot be imported, as
    after a production install."""
    program = (
        "import sys\n"
        "sys.modules['pocketsphinx'] = None\n"
        "from callplane_dev.cli import app\n"
        f"app({list(args)!r})\n"
    )
    return subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


def test_without_the_local_extra_a_command_says_how_to_install_it() -> None:
    result = _cli_without_pocketsphinx("dev")
    assert result.returncode == 2
    assert "pip install 'callplane[local]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_without_the_local_extra_help_still_works() -> None:
    result = _cli_without_pocketsphinx("--help")
    assert result.returncode == 0
    assert "engine" in result.stdout and "dev" in result.stdout
