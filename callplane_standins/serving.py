"""Serving ASGI apps on loopback inside a running event loop (the local stack, the tests).

uvicorn is the server the media plane runs on in production, so the offline stack serves its
apps with it too; this module only adds what embedding needs: a socket bound before the app
exists (so an app can know its own URL), no signal handlers (the host process owns Ctrl-C),
and a bounded stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Generator
from typing import Any

import uvicorn

__all__ = ["EmbeddedServer", "bind_loopback", "is_loopback"]


def is_loopback(host: str) -> bool:
    """True for an IPv4 loopback address (127.0.0.0/8), the only place local parts listen."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.version == 4 and address.is_loopback


def bind_loopback(port: int = 0, host: str = "127.0.0.1") -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one).

    Raises ValueError for a host off loopback and OSError (with the port in the message) when
    the port is taken.
    """
    if not is_loopback(host):
        raise ValueError(
            f"host {host!r} is not an IPv4 loopback address: local parts only listen on "
            "127.0.0.1 (or another 127.x address)"
        )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(512)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class EmbeddedServer:
    """One ASGI app under uvicorn on an already bound socket, in the current event loop."""

    def __init__(self, app: Any, sock: socket.socket, *, ws: str = "websockets-sansio") -> None:
        self.sock = sock
        self.host, self.port = sock.getsockname()[:2]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", ws=ws)
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT``."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self.sock]))
        while not self._server.started:
            if self._task.done():
                self.sock.close()
                self._task.result()
                raise RuntimeError(f"the server on {self.url} stopped during start-up")
            await asyncio.sleep(0.01)

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, let open requests finish for up to ``timeout_s``, then force."""
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=timeout_s)
        except TimeoutError:
            self._server.force_exit = True
            await self._task
        self._task = None

    async def wait(self) -> None:
        """Block until the server stops."""
        if self._task is not None:
            await asyncio.shield(self._task)
