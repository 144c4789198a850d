"""Several copies of one service as child processes, the way Modal runs several containers.

A :class:`ReplicaSet` starts ``count`` processes of the same command line, each on its own
loopback port, waits until every one answers, and can kill, restart and stop them. Put a
:class:`callplane_dev.front.Front` before them and the local stack has the shape of the cloud:
any request may land on any replica, and state that only lives in one process shows up as a
bug locally instead of in production.

Ports. The set picks each replica's port itself, by binding port 0 on 127.0.0.1 and closing
the socket. That is racy: between the close and the child's own bind another process may take
the port. Rather than pretend otherwise, start-up retries: when a replica exits during start
and its port turns out to be taken (something else listens on it, or the log says "address
already in use"), it is started again on a fresh port, a few times. Ports handed out and not
yet released are remembered so two replicas of this process never get the same one.

Children and the stack's lifetime. Replicas stay in the stack's session and process group, so
a Ctrl-C in the terminal reaches them as it reaches the stack. On Linux each child also asks
the kernel (``prctl(PR_SET_PDEATHSIG, SIGTERM)``, set between fork and exec) to send it
SIGTERM when its parent dies, so a stack that is SIGKILLed, or crashes, does not leave
orphaned replicas holding ports. The kernel ties that signal to the *thread* that forked the
child: replicas are forked from the event loop's thread, so they end with it, which is also
when the stack ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

__all__ = [
    "HttpReady",
    "ReadyCheck",
    "Replica",
    "ReplicaSet",
    "ReplicaStartError",
    "TcpReady",
]

log = logging.getLogger("callplane.replicas")

HOST = "127.0.0.1"
LOG_TAIL_LINES = 20
# How often a replica is started on a fresh port when the one picked for it was taken.
PORT_ATTEMPTS = 5
_POLL_S = 0.05
_PROBE_TIMEOUT_S = 2.0
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class HttpReady:
    """A replica is ready when ``GET path`` answers with any status below 500.

    Below 500 rather than 2xx: a service whose health route needs credentials still proves
    it is up by answering 401 or 404.
    """

    path: str = "/healthz"


@dataclass(frozen=True)
class TcpReady:
    """A replica is ready when its port accepts a TCP connection (for non-HTTP services)."""


ReadyCheck = HttpReady | TcpReady


class ReplicaStartError(RuntimeError):
    """A replica did not become ready: it exited (``returncode`` set) or timed out (None).

    The message names the replica and carries the last lines of its log, because that is
    where the reason is.
    """

    def __init__(
        self,
        replica: str,
        port: int,
        returncode: int | None,
        log_path: Path,
        tail: Sequence[str],
        *,
        port_taken: bool = False,
    ) -> None:
        self.replica = replica
        self.port = port
        self.returncode = returncode
        self.log_path = log_path
        self.tail = list(tail)
        self.port_taken = port_taken
        if returncode is None:
            what = "did not become ready in time"
        else:
            what = f"exited with code {returncode} during start"
        lines = "\n".join(f"    {line}" for line in self.tail) or "    (empty)"
        super().__init__(
            f"replica {replica} (port {port}) {what}; last {LOG_TAIL_LINES} lines of "
            f"{log_path}:\n{lines}"
        )


class Replica:
    """One copy of the service: where it listens and which process serves it now.

    The object stays the same across :meth:`ReplicaSet.restart`; ``pid`` changes.
    """

    def __init__(self, name: str, index: int, log_path: Path) -> None:
        self.name = name
        self.index = index
        self.log_path = log_path
        self.port = 0
        self.process: asyncio.subprocess.Process | None = None

    @property
    def label(self) -> str:
        return f"{self.name}-{self.index}"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    @property
    def alive(self) -> bool:
        """Started and not yet seen to exit (an exit is noticed by the event loop shortly
        after it happens; :meth:`ReplicaSet.wait_dead` waits for it)."""
        return self.process is not None and self.process.returncode is None

    def __repr__(self) -> str:
        return f"Replica({self.label}, port={self.port}, pid={self.pid}, alive={self.alive})"


# Ports given to replicas in this process and not yet released.
_handed_out: set[int] = set()


def _pick_port() -> int:
    """A loopback port nobody listened on a moment ago (see the module doc for the race)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise OSError(errno.EADDRINUSE, "no free loopback port found")


def _port_taken(port: int) -> bool:
    """Whether another socket listens on ``port`` (SO_REUSEADDR: lingering TIME_WAIT
    connections of a dead replica do not count, as they do not stop a server from binding)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


@functools.cache
def _prctl() -> Any:
    """libc's ``prctl`` on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGTERM when its parent dies (Linux).

    ``prctl`` is looked up beforehand, in the parent, so the child between fork and exec only
    makes one plain call. If the parent died before the call took effect the child would never
    be told, so it checks its parent is still the same process and ends itself otherwise.
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()
    term = int(signal.SIGTERM)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, term, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), term)

    return preexec


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except OSError:
        return []
    return data.decode("utf-8", errors="replace").splitlines()[-lines:]


async def _http_ready(port: int, path: str) -> bool:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, port), _PROBE_TIMEOUT_S
        )
    except (OSError, TimeoutError):
        return False
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n"
        writer.write(request.encode("ascii"))
        line = await asyncio.wait_for(reader.readline(), _PROBE_TIMEOUT_S)
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = line.split()
    return (
        len(parts) >= 2
        and parts[0].startswith(b"HTTP/")
        and parts[1].isdigit()
        and int(parts[1]) < 500
    )


async def _tcp_ready(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), _PROBE_TIMEOUT_S)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class ReplicaSet:
    """``count`` copies of one service, each a child process on its own loopback port.

    ``argv(port)`` gives the command line for a replica listening on ``port``. ``env`` is
    added to (and overrides) this process's environment, so children find the same Python,
    PATH and virtualenv as the stack. Each replica writes stdout and stderr to
    ``<log_dir>/<name>-<i>.log`` (a restart appends to it). ``start_timeout_s`` bounds how
    long one replica may take to become ready: a replica imports the whole media plane, which
    takes a few seconds on an idle machine and many times that on a loaded one, so the bound
    is generous (a ready replica is used at once; only a broken one waits it out).
    """

    def __init__(
        self,
        name: str,
        argv: Callable[[int], Sequence[str]],
        env: Mapping[str, str],
        count: int,
        ready: ReadyCheck,
        log_dir: Path,
        start_timeout_s: float = 90.0,
    ) -> None:
        if count < 1:
            raise ValueError("a replica set needs at least one replica")
        self.name = name
        self._argv = argv
        self._env = dict(env)
        self._ready = ready
        self._log_dir = Path(log_dir)
        self._start_timeout_s = start_timeout_s
        self._replicas = [Replica(name, i, self._log_dir / f"{name}-{i}.log") for i in range(count)]

    @property
    def replicas(self) -> list[Replica]:
        return list(self._replicas)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every replica, in order: what a front forwards to."""
        return [replica.address for replica in self._replicas]

    async def start(self) -> None:
        """Start every replica at once and return when all are ready.

        If any fails, the others are stopped and the first failure (by index) is raised as
        :class:`ReplicaStartError`.
        """
        self._log_dir.mkdir(parents=True, exist_ok=True)
        try:
            results = await asyncio.gather(
                *(self._start_new(replica) for replica in self._replicas),
                return_exceptions=True,
            )
        except BaseException:
            # Cancelled while starting: leave no replica behind.
            await self.stop(grace_s=2.0)
            raise
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.stop(grace_s=2.0)
            raise failures[0]

    async def _start_new(self, replica: Replica) -> None:
        replica.log_path.write_bytes(b"")
        for attempt in range(1, PORT_ATTEMPTS + 1):
            replica.port = _pick_port()
            try:
                await self._launch(replica)
                return
            except ReplicaStartError as exc:
                _handed_out.discard(replica.port)
                if not exc.port_taken or attempt == PORT_ATTEMPTS:
                    raise
                log.info("%s: port %d was taken, trying another", replica.label, replica.port)

    async def _launch(self, replica: Replica) -> None:
        """Start ``replica``'s process on ``replica.port`` and wait until it is ready."""
        env = {**os.environ, **self._env}
        with replica.log_path.open("ab") as logfile:
            process = await asyncio.create_subprocess_exec(
                *self._argv(replica.port),
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent(),
            )
        replica.process = process
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._start_timeout_s
        while True:
            if process.returncode is not None:
                await self._fail(replica, process.returncode)
            if await self._probe(replica.port):
                if process.returncode is None:
                    return
                continue
            if loop.time() >= deadline:
                await self._terminate(process, grace_s=2.0)
                await self._fail(replica, None)
            await asyncio.sleep(_POLL_S)

    async def _fail(self, replica: Replica, returncode: int | None) -> NoReturn:
        tail = _log_tail(replica.log_path)
        taken = returncode is not None and (
            _port_taken(replica.port)
            or any("address already in use" in line.lower() for line in tail)
        )
        raise ReplicaStartError(
            replica.label, replica.port, returncode, replica.log_path, tail, port_taken=taken
        )

    async def _probe(self, port: int) -> bool:
        if isinstance(self._ready, HttpReady):
            return await _http_ready(port, self._ready.path)
        return await _tcp_ready(port)

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to replica ``index`` (for fault tests); nothing if it is not running."""
        process = self._replicas[index].process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)

    async def wait_dead(self, index: int, timeout_s: float = 10.0) -> int:
        """Wait until replica ``index`` has exited; its exit code (negative: the signal)."""
        process = self._replicas[index].process
        if process is None:
            raise RuntimeError(f"replica {self._replicas[index].label} was never started")
        return await asyncio.wait_for(process.wait(), timeout_s)

    async def restart(self, index: int, grace_s: float = 10.0) -> None:
        """Start a fresh process for replica ``index`` on the same port (stopping the old one
        first if it still runs) and wait until it is ready.

        The port stays so a front keeps forwarding to it; there is no retry on another port,
        so this raises :class:`ReplicaStartError` if something else took the port meanwhile.
        """
        replica = self._replicas[index]
        if replica.process is not None:
            await self._terminate(replica.process, grace_s)
        await self._launch(replica)

    async def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every replica, SIGKILL those still running after ``grace_s``, and wait for
        all of them, so none outlives this call."""
        await asyncio.gather(
            *(
                self._terminate(replica.process, grace_s)
                for replica in self._replicas
                if replica.process is not None
            )
        )
        for replica in self._replicas:
            _handed_out.discard(replica.port)

    @staticmethod
    async def _terminate(process: asyncio.subprocess.Process, grace_s: float) -> None:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), grace_s)
                return
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        await process.wait()

    async def __aenter__(self) -> ReplicaSet:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
