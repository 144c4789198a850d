"""A small TCP front for the local stack: one loopback port before N replicas of a service.

In the cloud, Modal runs several containers of each function and routes every request or
WebSocket to any of them. The local stack takes the same shape by running each service as
several processes (:class:`callplane_dev.replicas.ReplicaSet`) behind one :class:`Front`, so
code that only works when every call lands in the same process fails locally too.

The front balances per *connection*, like an L4 load balancer: each accepted connection goes
to the next replica in round-robin order and then stays there; the bytes are relayed both ways
unchanged and never parsed. HTTP, keep-alive and WebSocket upgrades therefore pass exactly as
the client sent them. One consequence: a client that keeps an HTTP connection alive sends all
its requests on it to one replica. That is fine because every replica answers the same from
shared state; a test that wants to see several replicas opens fresh connections.

A replica that refuses a connection (it died, or is restarting) is skipped and the next one is
tried, up to all of them; only when none accepts is the client's connection closed. A phone
call's media stream crosses the front at 50 frames a second each way, so the relay is plain
asyncio protocols: no task, no copy and no parsing per chunk, and backpressure through
``pause_reading``/``resume_reading`` so the front holds at most about one transport write
buffer (64 KiB by default) plus one read (up to 256 KiB) per direction, whatever the size of
the stream. asyncio turns Nagle's algorithm off (TCP_NODELAY) on both ends, so a 20 ms frame
is passed on as soon as it arrives rather than held back to fill a segment.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType

from callplane_standins.serving import bind_loopback, is_loopback

__all__ = ["Address", "Front", "FrontStats"]

Address = tuple[str, int]


@dataclass(frozen=True)
class FrontStats:
    """What a :class:`Front` did since it was created.

    ``connections``: relays opened to each backend. ``refused``: connection attempts each
    backend refused or did not answer in time (then the next backend was tried). ``unserved``:
    client connections closed because no backend accepted them. ``active``: relays open now.
    ``peak_buffered``: the most bytes the front held for one direction of one relay; it stays
    near the transports' write buffer limit however much data crosses. ``pauses``: how often
    the front stopped reading one end because the other end could not take more. Together
    they show the backpressure at work.
    """

    connections: Mapping[Address, int]
    refused: Mapping[Address, int]
    unserved: int
    active: int
    peak_buffered: int
    pauses: int


class _Side(asyncio.Protocol):
    """One end of a relay: what it reads it writes to its peer's transport.

    When this side's own transport has too much to send (its peer writes faster than this
    side's socket drains), it pauses reading on the peer, and resumes it once the buffer has
    drained: that is the whole backpressure mechanism. EOF from one end shuts down writing
    towards the other end (a half-close), and the relay closes once both ends have sent EOF
    or either end is gone.
    """

    __slots__ = ("_front", "eof", "lost", "peer", "transport")

    def __init__(self, front: Front, peer: _Side | None = None) -> None:
        self._front = front
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            return
        out = peer.transport
        out.write(data)
        buffered = out.get_write_buffer_size()
        if buffered > self._front._peak_buffered:
            self._front._peak_buffered = buffered

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is None or peer.transport is None:
            return False
        if peer.eof:
            # Both ends are done sending: close both (close() still flushes what is queued).
            peer.transport.close()
            return False
        if not peer.transport.is_closing() and peer.transport.can_write_eof():
            peer.transport.write_eof()
        # Keep this end open: the other direction may still have data on its way.
        return True

    def pause_writing(self) -> None:
        self._front._pauses += 1
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        peer = self.peer
        if peer is not None and peer.transport is not None:
            if exc is None:
                peer.transport.close()
            else:
                # A reset on one end is passed on as a reset, not as a clean end of stream.
                peer.transport.abort()
        self._front._forget(self)


class _ClientSide(_Side):
    """The client's end: reading stays paused until a backend has accepted the connection."""

    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
        self._front._accepted(self)


class _BackendSide(_Side):
    """The backend's end: pairs itself with the client the moment the connection is made, so
    a backend that speaks first (before the connect call returns) loses nothing."""

    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        client = self.peer
        assert client is not None and client.transport is not None
        if client.lost or client.transport.is_closing():
            transport.close()
            return
        client.peer = self


class Front:
    """An asyncio TCP proxy on loopback that hands each connection to the next replica.

    ``backends`` are ``(host, port)`` pairs on loopback; :meth:`set_backends` replaces them at
    runtime (connections already relayed stay where they are). ``connect_timeout_s`` bounds
    how long one backend may take to accept before the next is tried.
    """

    def __init__(
        self,
        backends: Iterable[Address] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self._host = host
        self._requested_port = port
        self._connect_timeout_s = connect_timeout_s
        self._backends: tuple[Address, ...] = ()
        self._cursor = 0
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._clients: set[_Side] = set()
        self._connecting: set[asyncio.Task[None]] = set()
        self._connections: Counter[Address] = Counter()
        self._refused: Counter[Address] = Counter()
        self._unserved = 0
        self._peak_buffered = 0
        self._pauses = 0
        self.set_backends(backends)

    @property
    def backends(self) -> tuple[Address, ...]:
        return self._backends

    def set_backends(self, backends: Iterable[Address]) -> None:
        """Send new connections to ``backends`` from now on, starting with the first.

        Only loopback backends are accepted: the front is part of the local stack and must not
        become a way out of the machine.
        """
        addresses = tuple((str(host), int(port)) for host, port in backends)
        for host, port in addresses:
            if not is_loopback(host):
                raise ValueError(f"backend {host}:{port} is not on IPv4 loopback (127.0.0.0/8)")
        self._backends = addresses
        self._cursor = 0

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the front is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (use ``ws://`` with the same address for WebSockets)."""
        return f"http://{self._host}:{self.port}"

    async def start(self) -> None:
        if self._server is not None:
            return
        sock = bind_loopback(self._requested_port, self._host)
        self._port = sock.getsockname()[1]
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ClientSide(self), sock=sock)

    async def stop(self) -> None:
        """Stop listening and cut every live relay (both ends) and pending connect."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._connecting):
            task.cancel()
        for client in list(self._clients):
            for side in (client, client.peer):
                if side is not None and side.transport is not None:
                    side.transport.abort()
        if self._connecting:
            await asyncio.gather(*self._connecting, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        # Let the aborted transports run their connection_lost callbacks.
        await asyncio.sleep(0)

    async def __aenter__(self) -> Front:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def stats(self) -> FrontStats:
        return FrontStats(
            connections=dict(self._connections),
            refused=dict(self._refused),
            unserved=self._unserved,
            active=len(self._clients),
            peak_buffered=self._peak_buffered,
            pauses=self._pauses,
        )

    # -- connection handling ------------------------------------------------------------------

    def _accepted(self, client: _ClientSide) -> None:
        self._clients.add(client)
        task = asyncio.get_running_loop().create_task(self._connect(client))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    def _forget(self, side: _Side) -> None:
        self._clients.discard(side)

    def _order(self) -> tuple[Address, ...]:
        """The backends to try for the next connection: round-robin from the cursor on."""
        backends = self._backends
        if not backends:
            return ()
        start = self._cursor % len(backends)
        self._cursor = start + 1
        return backends[start:] + backends[:start]

    async def _connect(self, client: _ClientSide) -> None:
        loop = asyncio.get_running_loop()
        for address in self._order():
            if client.lost:
                return
            try:
                transport, _ = await asyncio.wait_for(
                    loop.create_connection(lambda: _BackendSide(self, peer=client), *address),
                    self._connect_timeout_s,
                )
            except (OSError, TimeoutError):
                self._refused[address] += 1
                continue
            self._connections[address] += 1
            if client.peer is None or client.transport is None or client.lost:
                transport.close()
                return
            client.transport.resume_reading()
            return
        self._unserved += 1
        if client.transport is not None:
            client.transport.close()
