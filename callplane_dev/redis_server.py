"""A real ``redis-server`` on loopback, for the local stack's coordination and for tests.

The media containers share their coordination state through Redis in production; locally the
same code talks to this child process, so nothing about Redis is imitated. It runs without
persistence (``--save ''``, ``--appendonly no``): the state is only ever leases and counters
that rebuild themselves.

The server is a plain child process, not one tied to an event loop, so it may be started by one
event loop and stopped by another (a test session's server outlives each test's loop). It can be
stopped and started again on the same port, which is how tests take Redis away from running
code and bring it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from callplane_dev.livekit_server import find_tool, tools_dir

__all__ = ["SETUP_HINT", "LocalRedis", "RedisNotInstalled"]

START_TIMEOUT_S = 30.0
STOP_GRACE_S = 10.0
SETUP_HINT = "run scripts/tools/setup_tools.sh redis"
_POLL_S = 0.02


class RedisNotInstalled(RuntimeError):
    """redis-server is missing; the message says how to install it."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalRedis:
    """``redis-server`` bound to 127.0.0.1 as a child process: ``await start()``,
    ``await stop()``. ``port`` 0 picks a free port at the first start and keeps it, so a
    restart comes back at the same URL. Logs go to ``work_dir/redis.log``."""

    work_dir: Path
    port: int = 0

    def __post_init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``; known once :meth:`start` has picked the port."""
        if not self.port:
            raise RuntimeError("LocalRedis has no port yet: await start() first")
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        """Where the server logs (appended to across restarts)."""
        return self.work_dir / "redis.log"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (a test pauses it to play a silent Redis)."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    async def start(self) -> None:
        """Start the server and return once it answers."""
        if self.running:
            return
        binary = find_tool("redis-server")
        if binary is None:
            raise RedisNotInstalled(
                f"redis-server not found in {tools_dir()} or on PATH: {SETUP_HINT}"
            )
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = _free_port()
        argv = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.work_dir),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self._proc = await asyncio.to_thread(
                subprocess.Popen,
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            await self._wait_until_ready()
        except BaseException:
            await self.stop()
            raise

    async def _wait_until_ready(self) -> None:
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(
                    f"redis-server exited with code {proc.returncode} at start "
                    f"(port {self.port}); {self.log_path}:\n{tail}"
                )
            if await self._answers():
                return
            await asyncio.sleep(_POLL_S)
        raise RuntimeError(
            f"redis-server did not answer on 127.0.0.1:{self.port} in {START_TIMEOUT_S:g} s"
        )

    async def _answers(self) -> bool:
        # Our server answers, not another one already on the port (ours would then exit with
        # "address already in use" a moment later): INFO names the process that answered.
        proc = self._proc
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port), 1.0
            )
        except (OSError, TimeoutError):
            return False
        try:
            writer.write(b"INFO server\r\n")
            await writer.drain()
            header = await asyncio.wait_for(reader.readline(), 1.0)
            if not header.startswith(b"$"):
                return False  # e.g. "-LOADING": not ready yet
            body = await asyncio.wait_for(reader.readexactly(int(header[1:]) + 2), 1.0)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return proc is not None and f"process_id:{proc.pid}\r\n".encode() in body

    async def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after 10 s) and wait for it to exit."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await asyncio.to_thread(proc.wait)
