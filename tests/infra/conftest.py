"""Fixtures for the provisioning tests: real local peers only.

* ``sim``: the Twilio simulator, in-process, on a free loopback port.
* ``livekit``: a real ``livekit-server`` (built by scripts/tools/setup_tools.sh) with a real
  ``redis-server`` (the SIP APIs need Redis), both on free loopback ports, per test module.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from callplane.local.twilio.simulator import Simulator

ACCOUNT_SID = "AC" + "5e1f" * 8
AUTH_TOKEN = "infra-test-auth-token"
BUNDLE = "BU" + "b0" * 16
ADDRESS = "AD" + "ad" * 16
TOOLS_BIN = Path(os.environ.get("CALLPLANE_TOOLS", Path.home() / ".cache/callplane/tools")) / "bin"
LIVEKIT_KEY = "devkey"
LIVEKIT_SECRET = "infra-test-secret-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tool(name: str) -> str:
    """A binary from the tools dir or PATH; a missing one fails the test (no skips)."""
    path = TOOLS_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not built: run scripts/tools/setup_tools.sh")
    return found


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout}s")


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
    url: str
    api_key: str
    api_secret: str


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def livekit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveKit]:
    work = tmp_path_factory.mktemp("livekit")
    redis_port, http_port, udp_port = (free_port() for _ in range(3))
    redis = subprocess.Popen(
        [
            tool("redis-server"),
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(work),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs = [redis]
    try:
        wait_port(redis_port, redis, "redis-server")
        body = (
            f"port: {http_port}\nbind_addresses: [127.0.0.1]\n"
            f"keys:\n  {LIVEKIT_KEY}: {LIVEKIT_SECRET}\n"
            f"redis:\n  address: 127.0.0.1:{redis_port}\n"
            # Loopback only: no ICE/TCP listener (it would bind every interface) and UDP on lo.
            f"rtc:\n  tcp_port: 0\n  udp_port: {udp_port}\n  use_external_ip: false\n"
            "  node_ip: 127.0.0.1\n  enable_loopback_candidate: true\n"
            "  interfaces:\n    includes: [lo]\n"
        )
        log = (work / "livekit.log").open("wb")
        server = subprocess.Popen(
            [tool("livekit-server"), "--config-body", body],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(server)
        wait_port(http_port, server, "livekit-server")
        yield LiveKit(f"http://127.0.0.1:{http_port}", LIVEKIT_KEY, LIVEKIT_SECRET)
    finally:
        for proc in reversed(procs):
            _stop(proc)
