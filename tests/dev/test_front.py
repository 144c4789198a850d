"""The front before real replica processes: round-robin per connection, a relay that passes
bytes unchanged with bounded buffering, and replicas that die and come back."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from callplane_dev.front import Front
from callplane_dev.replicas import HttpReady, ReplicaSet, TcpReady
from tests.support.echo_service import ENV, command

# The most a slow-reader test sends before giving up on seeing the front push back: far more
# than every kernel buffer on the path can absorb (they autotune to tcp_rmem/tcp_wmem's maxima).
STREAM_LIMIT_BYTES = 512 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024
# What the front may hold per direction: its write buffer limit (64 KiB) plus one read
# (256 KiB), with room to spare; far below the stream's size.
BUFFER_BOUND = 1024 * 1024


async def whoami(url: str) -> int:
    """The pid of the replica that answers, over a fresh connection."""
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(f"{url}/whoami")
    response.raise_for_status()
    return int(response.text)


@pytest.fixture
async def http_replicas(tmp_path: Path) -> AsyncIterator[ReplicaSet]:
    async with ReplicaSet("web", command, ENV, 3, HttpReady("/healthz"), tmp_path) as replicas:
        yield replicas


@pytest.fixture
async def front(http_replicas: ReplicaSet) -> AsyncIterator[Front]:
    async with Front(http_replicas.addresses) as front:
        yield front


async def test_fresh_connections_take_turns_across_replicas(
    http_replicas: ReplicaSet, front: Front
) -> None:
    pids = Counter([await whoami(front.url) for _ in range(9)])
    assert pids == {replica.pid: 3 for replica in http_replicas.replicas}
    stats = front.stats()
    assert stats.connections == {address: 3 for address in http_replicas.addresses}
    assert stats.refused == {}
    assert stats.unserved == 0


async def test_a_kept_alive_connection_stays_on_one_replica(front: Front) -> None:
    async with httpx.AsyncClient(trust_env=False) as client:
        answers = {(await client.get(f"{front.url}/whoami")).text for _ in range(4)}
    assert len(answers) == 1
    assert sum(front.stats().connections.values()) == 1


async def test_a_killed_replica_is_skipped_until_it_is_restarted(
    http_replicas: ReplicaSet, front: Front
) -> None:
    first, dead, third = http_replicas.replicas
    http_replicas.kill(dead.index, signal.SIGKILL)
    assert await http_replicas.wait_dead(dead.index) == -signal.SIGKILL

    pids = Counter([await whoami(front.url) for _ in range(9)])
    assert set(pids) == {first.pid, third.pid}
    assert sum(pids.values()) == 9
    stats = front.stats()
    assert stats.refused[dead.address] >= 1
    assert stats.unserved == 0

    old_pid = dead.pid
    await http_replicas.restart(dead.index)
    assert dead.alive and dead.pid != old_pid
    seen = {await whoami(front.url) for _ in range(3)}
    assert seen == {first.pid, dead.pid, third.pid}


async def test_a_stream_larger_than_every_buffer_round_trips_with_a_slow_reader(
    tmp_path: Path,
) -> None:
    replicas = ReplicaSet(
        "echo", lambda port: command(port, "--mode", "tcp"), ENV, 1, TcpReady(), tmp_path
    )
    async with replicas, Front(replicas.addresses) as front:
        # A small receive buffer on our side, so that what the echo sends back cannot all
        # wait in our kernel.
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.setblocking(False)
        await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", front.port))
        reader, writer = await asyncio.open_connection(sock=client)
        sent = hashlib.sha256()
        sent_bytes = 0

        async def send() -> None:
            # Keep sending, reading nothing back, until the front has had to stop reading one
            # side: however large the kernel's buffers grow, they fill, and then it must.
            nonlocal sent_bytes
            while front.stats().pauses == 0 and sent_bytes < STREAM_LIMIT_BYTES:
                chunk = os.urandom(CHUNK_BYTES)
                sent.update(chunk)
                sent_bytes += len(chunk)
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()

        sending = asyncio.create_task(send())
        for _ in range(3000):
            if front.stats().pauses or sending.done():
                break
            await asyncio.sleep(0.01)
        assert front.stats().pauses >= 1, f"no push-back after {sent_bytes} bytes"

        digest = hashlib.sha256()
        received = 0
        while chunk := await reader.read(64 * 1024):
            digest.update(chunk)
            received += len(chunk)
        await sending
        writer.close()
        await writer.wait_closed()

        assert received == sent_bytes
        assert digest.digest() == sent.digest()
        assert 0 < front.stats().peak_buffered <= BUFFER_BOUND


async def test_a_half_closed_client_still_gets_the_answer(tmp_path: Path) -> None:
    replicas = ReplicaSet(
        "echo", lambda port: command(port, "--mode", "tcp"), ENV, 1, TcpReady(), tmp_path
    )
    async with replicas, Front(replicas.addresses) as front:
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        writer.write(b"last words")
        writer.write_eof()
        assert await reader.read() == b"last words"
        writer.close()
        await writer.wait_closed()
        for _ in range(100):
            if front.stats().active == 0:
                break
            await asyncio.sleep(0.01)
        assert front.stats().active == 0


async def test_websocket_messages_pass_unchanged() -> None:
    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        front = Front([("127.0.0.1", port)])
        async with front, connect(f"ws://127.0.0.1:{front.port}/media") as ws:
            frames = [os.urandom(160) for _ in range(100)]
            for frame in frames:
                await ws.send(frame)
            assert [await ws.recv() for _ in frames] == frames
            await ws.send("text too")
            assert await ws.recv() == "text too"


def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_client_is_closed_when_no_replica_accepts() -> None:
    down = [("127.0.0.1", closed_port()), ("127.0.0.1", closed_port())]
    async with Front(down) as front:
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        stats = front.stats()
        assert stats.unserved == 1
        assert stats.refused == {address: 1 for address in down}
        assert stats.connections == {}


async def test_backends_can_be_replaced_while_running(
    http_replicas: ReplicaSet, front: Front
) -> None:
    only = http_replicas.replicas[2]
    front.set_backends([only.address])
    assert {await whoami(front.url) for _ in range(3)} == {only.pid}
    with pytest.raises(ValueError, match="loopback"):
        front.set_backends([("192.0.2.1", 80)])


async def test_stop_cuts_live_relays(tmp_path: Path) -> None:
    replicas = ReplicaSet(
        "echo", lambda port: command(port, "--mode", "tcp"), ENV, 1, TcpReady(), tmp_path
    )
    async with replicas:
        front = Front(replicas.addresses)
        await front.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        await front.stop()
        assert front.stats().active == 0
        try:
            rest = await asyncio.wait_for(reader.read(), 10)
        except ConnectionResetError:
            rest = b""
        assert rest == b""
        writer.close()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", front.port)
