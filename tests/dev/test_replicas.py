"""Replica sets with real child processes: start-up, failures with their log, fault injection,
and no replica outliving the set or its parent."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from callplane_dev import replicas as replicas_module
from callplane_dev.replicas import HttpReady, ReplicaSet, ReplicaStartError, TcpReady
from tests.support.echo_service import ENV, FAILURE_LINES, command, gone


async def whoami(url: str) -> int:
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(f"{url}/whoami")
    response.raise_for_status()
    return int(response.text)


async def wait_gone(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    """Poll until every pid has ended or ``timeout_s`` passed; the ones still running."""
    for _ in range(int(timeout_s / 0.05)):
        if all(gone(pid) for pid in pids):
            break
        await asyncio.sleep(0.05)
    return [pid for pid in pids if not gone(pid)]


async def test_each_replica_gets_its_own_port_process_and_log(tmp_path: Path) -> None:
    async with ReplicaSet("web", command, ENV, 3, HttpReady("/healthz"), tmp_path) as replicas:
        members = replicas.replicas
        assert [r.index for r in members] == [0, 1, 2]
        assert len({r.port for r in members}) == 3
        assert len({r.pid for r in members}) == 3
        for replica in members:
            assert replica.alive
            assert replica.url == f"http://127.0.0.1:{replica.port}"
            assert await whoami(replica.url) == replica.pid
            log = (tmp_path / f"web-{replica.index}.log").read_text()
            assert f"pid {replica.pid}" in log
        assert replicas.addresses == [("127.0.0.1", r.port) for r in members]


async def test_stop_leaves_no_child_alive(tmp_path: Path) -> None:
    replicas = ReplicaSet("web", command, ENV, 3, TcpReady(), tmp_path)
    await replicas.start()
    pids = [r.pid for r in replicas.replicas]
    await replicas.stop()
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not any(r.alive for r in replicas.replicas)
    assert [r.returncode for r in replicas.replicas] == [-signal.SIGTERM] * 3


async def test_stop_kills_a_replica_that_ignores_sigterm(tmp_path: Path) -> None:
    replicas = ReplicaSet(
        "stubborn",
        lambda port: command(port, "--ignore-term"),
        ENV,
        1,
        HttpReady("/healthz"),
        tmp_path,
    )
    await replicas.start()
    (replica,) = replicas.replicas
    await replicas.stop(grace_s=0.5)
    assert replica.returncode == -signal.SIGKILL
    assert replica.pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(replica.pid, 0)


async def test_a_replica_that_exits_during_start_fails_start_with_its_log_tail(
    tmp_path: Path,
) -> None:
    launched: list[int] = []

    def argv(port: int) -> list[str]:
        # The first replica launched cannot start; the others could.
        launched.append(port)
        return command(port, "--fail-with", "3") if len(launched) == 1 else command(port)

    replicas = ReplicaSet("svc", argv, ENV, 2, HttpReady("/healthz"), tmp_path)
    with pytest.raises(ReplicaStartError) as caught:
        await replicas.start()
    error = caught.value
    failed = next(r for r in replicas.replicas if r.port == launched[0])
    assert error.replica == f"svc-{failed.index}"
    assert error.returncode == 3
    expected = [f"start-up line {n}" for n in range(FAILURE_LINES - 19, FAILURE_LINES + 1)]
    assert error.tail == expected
    message = str(error)
    assert f"svc-{failed.index}" in message
    assert "exited with code 3" in message
    assert all(line in message for line in expected)
    assert f"start-up line {FAILURE_LINES - 20}\n" not in message + "\n"
    # The replica that did come up was stopped again.
    assert not any(r.alive for r in replicas.replicas)
    other = next(r for r in replicas.replicas if r is not failed)
    if other.pid is not None:
        assert await wait_gone([other.pid]) == []


async def test_a_replica_that_never_gets_ready_times_out(tmp_path: Path) -> None:
    # A raw TCP echo never answers GET with an HTTP status line.
    replicas = ReplicaSet(
        "mute",
        lambda port: command(port, "--mode", "tcp"),
        ENV,
        1,
        HttpReady("/healthz"),
        tmp_path,
        start_timeout_s=1.0,
    )
    with pytest.raises(ReplicaStartError, match="did not become ready in time") as caught:
        await replicas.start()
    assert caught.value.returncode is None
    assert "tcp echo on" in str(caught.value)
    assert not replicas.replicas[0].alive


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_a_port_taken_before_the_replica_binds_it_is_replaced(
    tmp_path: Path, taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pick = replicas_module._pick_port
    picks = iter([taken_port])
    monkeypatch.setattr(replicas_module, "_pick_port", lambda: next(picks, None) or real_pick())
    async with ReplicaSet("web", command, ENV, 1, HttpReady("/healthz"), tmp_path) as replicas:
        (replica,) = replicas.replicas
        assert replica.port != taken_port
        assert await whoami(replica.url) == replica.pid
        # The first attempt's failure is in the log, above the running replica's line.
        assert "Address already in use" in replica.log_path.read_text()


async def test_kill_and_restart_keep_the_port(tmp_path: Path) -> None:
    async with ReplicaSet("web", command, ENV, 2, HttpReady("/healthz"), tmp_path) as replicas:
        replica = replicas.replicas[1]
        port, pid = replica.port, replica.pid
        replicas.kill(1)
        assert await replicas.wait_dead(1) == -signal.SIGKILL
        assert not replica.alive
        await replicas.restart(1)
        assert replica.alive
        assert replica.port == port
        assert replica.pid != pid
        assert await whoami(replica.url) == replica.pid
        # Restarting a live replica replaces its process too.
        pid = replica.pid
        await replicas.restart(1)
        assert replica.pid != pid
        assert await whoami(replica.url) == replica.pid


async def test_replicas_die_with_a_killed_parent(tmp_path: Path) -> None:
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.replica_parent",
        str(tmp_path),
        env={**os.environ, **ENV},
        stdout=asyncio.subprocess.PIPE,
    )
    children: list[int] = []
    try:
        assert parent.stdout is not None
        line = await asyncio.wait_for(parent.stdout.readline(), 60)
        children = json.loads(line)
        assert len(children) == 2
        assert not any(gone(pid) for pid in children)
        parent.kill()
        assert await parent.wait() == -signal.SIGKILL
        assert await wait_gone(children) == []
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
        for pid in children:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
