"""A real ``livekit-server`` with its ``redis-server``, on loopback, for the local stack.

LiveKit Cloud's offline stand-in is LiveKit's own server (built from the Go module proxy by
``scripts/tools/setup_tools.sh``), not an imitation: the browser playground, the agent jobs
and hybrid phone rooms talk to it exactly as they talk to a cloud project. Redis is what the
server needs for its SIP APIs and multi-node state; it runs without persistence.

WebRTC stays on loopback: no ICE/TCP listener (it would bind every interface), one UDP port on
``lo`` and the loopback candidate enabled, so a browser on the same machine connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LiveKitNotInstalled",
    "LocalLiveKit",
    "find_tool",
    "livekit_config",
    "tools_dir",
]

START_TIMEOUT_S = 30.0
SETUP_HINT = "run scripts/tools/setup_tools.sh livekit redis (builds once, then is instant)"


class LiveKitNotInstalled(RuntimeError):
    """livekit-server or redis-server is missing; the message says how to install it."""


def tools_dir() -> Path:
    """Where ``scripts/tools/setup_tools.sh`` puts its binaries."""
    root = os.environ.get("CALLPLANE_TOOLS") or str(Path.home() / ".cache/callplane/tools")
    return Path(root) / "bin"


def find_tool(name: str) -> str | None:
    """``name`` from the toolchain directory, else from PATH, else None."""
    candidate = tools_dir() / name
    if candidate.exists():
        return str(candidate)
    return shutil.which(name)


def livekit_config(
    *,
    http_port: int,
    udp_port: int,
    redis_port: int,
    api_key: str,
    api_secret: str,
    webhook_urls: Sequence[str] = (),
    log_level: str = "info",
) -> str:
    """livekit-server's YAML for one loopback node with one key pair.

    ``webhook_urls`` receive the server's signed webhooks (``room_started``,
    ``participant_joined``, ...), signed with ``api_key``'s secret.
    """
    body = (
        f"port: {http_port}\n"
        "bind_addresses: [127.0.0.1]\n"
        f"keys:\n  {api_key}: {api_secret}\n"
        f"redis:\n  address: 127.0.0.1:{redis_port}\n"
        f"rtc:\n  tcp_port: 0\n  udp_port: {udp_port}\n  use_external_ip: false\n"
        "  node_ip: 127.0.0.1\n  enable_loopback_candidate: true\n"
        "  interfaces:\n    includes: [lo]\n"
        f"logging:\n  level: {log_level}\n"
    )
    if webhook_urls:
        urls = "".join(f"    - {url}\n" for url in webhook_urls)
        body += f"webhook:\n  api_key: {api_key}\n  urls:\n{urls}"
    return body


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalLiveKit:
    """``livekit-server`` + ``redis-server`` as child processes; ``await start()``,
    ``await stop()``. Ports 0 pick free ones. Logs go to ``work_dir``."""

    work_dir: Path
    api_key: str
    api_secret: str
    webhook_urls: Sequence[str] = ()
    http_port: int = 0
    udp_port: int = 0

    def __post_init__(self) -> None:
        self._procs: list[asyncio.subprocess.Process] = []
        self.url = ""

    @property
    def http_url(self) -> str:
        """The server API (Twirp) origin."""
        return "http" + self.url.removeprefix("ws")

    async def start(self) -> None:
        """Start Redis, then the server; return once both accept connections."""
        server_bin, redis_bin = find_tool("livekit-server"), find_tool("redis-server")
        found = {"livekit-server": server_bin, "redis-server": redis_bin}
        missing = [name for name, path in found.items() if path is None]
        if server_bin is None or redis_bin is None:
            raise LiveKitNotInstalled(
                f"{' and '.join(missing)} not found in {tools_dir()} or on PATH: {SETUP_HINT}"
            )
        self.work_dir.mkdir(parents=True, exist_ok=True)
        redis_port = _free_port()
        http_port = self.http_port or _free_port()
        udp_port = self.udp_port or _free_port(socket.SOCK_DGRAM)
        try:
            await self._spawn(
                "redis",
                redis_bin,
                "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.work_dir),
            )  # fmt: skip
            await self._wait_port(redis_port, "redis-server")
            config = livekit_config(
                http_port=http_port,
                udp_port=udp_port,
                redis_port=redis_port,
                api_key=self.api_key,
                api_secret=self.api_secret,
                webhook_urls=self.webhook_urls,
            )
            await self._spawn("livekit", server_bin, "--config-body", config)
            await self._wait_port(http_port, "livekit-server")
        except BaseException:
            await self.stop()
            raise
        self.url = f"ws://127.0.0.1:{http_port}"

    async def _spawn(self, name: str, *argv: str) -> None:
        log = (self.work_dir / f"{name}.log").open("ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
            )
        finally:
            log.close()  # the child holds its own descriptor
        self._procs.append(proc)

    async def _wait_port(self, port: int, what: str) -> None:
        proc = self._procs[-1]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while loop.time() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(
                    f"{what} exited with code {proc.returncode} at start; see {self.work_dir}"
                )
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} in {START_TIMEOUT_S:g} s")

    async def stop(self) -> None:
        """Stop the server, then Redis (SIGTERM, SIGKILL after 10 s)."""
        for proc in reversed(self._procs):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
        self._procs.clear()
