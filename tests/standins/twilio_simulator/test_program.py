"""The simulator as a standalone program: ``python -m callplane_standins.twilio_simulator``."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from twilio.rest import Client

from tests.standins.twilio_simulator.conftest import ACCOUNT_SID, AUTH_TOKEN, sdk


async def test_runs_as_a_program_and_keeps_its_state(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    env = {**os.environ, "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callplane_standins.twilio_simulator",
        "--state",
        str(state),
        "--port",
        "0",
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        base_url = line.split(" on ")[1].split()[0]
        assert base_url.startswith("http://127.0.0.1:")
        client = Client(ACCOUNT_SID, AUTH_TOKEN)
        client.api.base_url = base_url
        bought = await sdk(client.incoming_phone_numbers.create, phone_number="+13125550100")
        assert bought.phone_number == "+13125550100"
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 10)
    assert proc.returncode == 0
    assert "+13125550100" in state.read_text()
