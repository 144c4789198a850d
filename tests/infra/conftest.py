"""Fixtures for the provisioning tests: real local peers only.

* ``sim``: the Twilio simulator, in-process, on a free loopback port.
* ``livekit``: a real ``livekit-server`` (built by scripts/tools/setup_tools.sh) with a real
  ``redis-server`` (the SIP APIs need Redis), both on free loopback ports, per test module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from callplane_dev.livekit_server import tools_dir
from callplane_standins.twilio_simulator.simulator import Simulator
from tests.livekit_server import binary, livekit_server

ACCOUNT_SID = "AC" + "5e1f" * 8
AUTH_TOKEN = "infra-test-auth-token"
BUNDLE = "BU" + "b0" * 16
ADDRESS = "AD" + "ad" * 16
TOOLS_BIN = tools_dir()


def tool(name: str) -> str:
    """A binary from the tools dir or PATH; a missing one fails the test (no skips)."""
    return binary(name)


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    simulator = Simulator(tmp_path / "twilio.json", ACCOUNT_SID, AUTH_TOKEN)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


@dataclass(frozen=True)
class LiveKit:
    url: str  # http://, the server API origin the providers use
    api_key: str
    api_secret: str


@pytest.fixture(scope="module")
def livekit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveKit]:
    """The shared real server of tests/livekit_server.py, addressed by its API origin."""
    with livekit_server(tmp_path_factory.mktemp("livekit")) as server:
        yield LiveKit(server.http_url, server.api_key, server.api_secret)
