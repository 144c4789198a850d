"""A real ``livekit-server`` with a real ``redis-server`` for tests, on free loopback ports.

Both binaries come from the offline toolchain (``~/.cache/callplane/tools/bin``, or
``$CALLPLANE_TOOLS/bin``) or PATH; a missing one fails the test with the fix (no skips). WebRTC
stays on loopback: no ICE/TCP listener (it would bind every interface), one UDP port on ``lo``.

Two ways to use it::

    # a fixture in a test module (module scope by default: one server for the module's tests)
    from tests.livekit_server import livekit_server_fixture
    livekit = livekit_server_fixture()

    async def test_something(livekit: LiveKitServer) -> None:
        settings = livekit.settings(idle_timeout_s=2)   # callplane.livekit_settings.LiveKitSettings
        token = livekit.token("alice", "room-1")        # a participant token for rtc.Room.connect
        await room.connect(livekit.url, token)

    # or directly, e.g. when the webhook receiver's URL is only known inside the test
    with livekit_server(tmp_path, webhook_urls=[f"{edge}/livekit/webhook"]) as server:
        ...
"""

from __future__ import annotations

import contextlib
import datetime
import socket
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
from livekit import api
from livekit.api import ParticipantInfo

from callplane.livekit_settings import LiveKitSettings
from callplane_dev.livekit_server import SETUP_HINT, find_tool, livekit_config, tools_dir
from tests.support.ports import free_port, wait_port

API_KEY = "devkey"
# 32+ characters: livekit-server complains about shorter secrets outside dev mode.
API_SECRET = "callplane-test-secret-0123456789abcdef"
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class LiveKitServer:
    """A running server: where it is, its one key pair, and where it logs."""

    url: str  # ws://127.0.0.1:PORT, what rtc clients connect to
    api_key: str
    api_secret: str
    log_path: Path

    @property
    def http_url(self) -> str:
        """The server API (Twirp) origin, for ``livekit.api.LiveKitAPI``."""
        return "http" + self.url.removeprefix("ws")

    def settings(self, **overrides: Any) -> LiveKitSettings:
        """callplane's LiveKitSettings for this server (``overrides`` set the other fields)."""
        return LiveKitSettings(
            url=self.url, api_key=self.api_key, api_secret=self.api_secret, **overrides
        )

    def token(
        self,
        identity: str,
        room: str,
        *,
        name: str | None = None,
        kind: Literal["standard", "sip", "agent"] = "standard",
        attributes: dict[str, str] | None = None,
        ttl: datetime.timedelta | None = None,
    ) -> str:
        """A join token for ``room`` as ``identity``, allowed to publish and subscribe
        (valid for livekit-api's default time unless ``ttl`` says otherwise)."""
        token = (
            api.AccessToken(self.api_key, self.api_secret)
            .with_identity(identity)
            .with_name(name or identity)
            .with_kind(kind)
            .with_grants(api.VideoGrants(room_join=True, room=room, can_update_own_metadata=True))
        )
        if attributes:
            token = token.with_attributes(attributes)
        if ttl is not None:
            token = token.with_ttl(ttl)
        return token.to_jwt()

    def api(self) -> api.LiveKitAPI:
        """A server API client (use as ``async with server.api() as lk``)."""
        return api.LiveKitAPI(self.http_url, self.api_key, self.api_secret)

    async def room_names(self) -> list[str]:
        """The rooms the server has now."""
        async with self.api() as lk:
            listed = await lk.room.list_rooms(api.ListRoomsRequest())
        return [room.name for room in listed.rooms]

    async def participants(self, room: str) -> list[ParticipantInfo]:
        """Who the server says is in ``room`` (nobody if the room does not exist)."""
        async with self.api() as lk:
            rooms = await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))
            if not rooms.rooms:
                return []
            listed = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
        return list(listed.participants)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log, for assertion messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def binary(name: str) -> str:
    """A tool from the toolchain dir or PATH; a missing one is an error saying how to build it."""
    found = find_tool(name)
    if found is None:
        raise RuntimeError(
            f"{name} is not installed: {SETUP_HINT} (looked in {tools_dir()} and PATH)"
        )
    return found


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def server_config(
    http_port: int,
    udp_port: int,
    redis_port: int,
    *,
    api_key: str = API_KEY,
    api_secret: str = API_SECRET,
    webhook_urls: Sequence[str] = (),
) -> str:
    """The livekit-server YAML the local stack uses too: loopback only, one key pair, Redis,
    optional webhooks."""
    return livekit_config(
        http_port=http_port,
        udp_port=udp_port,
        redis_port=redis_port,
        api_key=api_key,
        api_secret=api_secret,
        webhook_urls=webhook_urls,
    )


@contextlib.contextmanager
def livekit_server(work_dir: Path, *, webhook_urls: Sequence[str] = ()) -> Iterator[LiveKitServer]:
    """Start redis-server and livekit-server in ``work_dir``; stop both on exit.

    ``webhook_urls`` get the server's signed webhooks (key ``API_KEY``). The server log is
    ``work_dir/livekit.log``.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    redis_port, http_port = free_port(), free_port()
    udp_port = free_port(socket.SOCK_DGRAM)
    procs: list[subprocess.Popen[bytes]] = []
    log_path = work_dir / "livekit.log"
    try:
        redis = subprocess.Popen(
            [
                binary("redis-server"),
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(work_dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(redis)
        wait_port(redis_port, redis, "redis-server", timeout=START_TIMEOUT_S)
        config = server_config(http_port, udp_port, redis_port, webhook_urls=webhook_urls)
        with log_path.open("wb") as log:
            server = subprocess.Popen(
                [binary("livekit-server"), "--config-body", config],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        procs.append(server)
        wait_port(http_port, server, "livekit-server", timeout=START_TIMEOUT_S, log=log_path)
        yield LiveKitServer(f"ws://127.0.0.1:{http_port}", API_KEY, API_SECRET, log_path)
    finally:
        for proc in reversed(procs):
            _stop(proc)


def livekit_server_fixture(
    scope: Literal["function", "module", "session"] = "module",
    *,
    webhook_urls: Sequence[str] = (),
) -> Callable[..., Iterator[LiveKitServer]]:
    """A pytest fixture yielding a :class:`LiveKitServer`; bind it to a module-level name,
    which becomes the fixture's name (``livekit = livekit_server_fixture()``)."""

    @pytest.fixture(scope=scope)
    def _fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveKitServer]:
        with livekit_server(
            tmp_path_factory.mktemp("livekit"), webhook_urls=webhook_urls
        ) as server:
            yield server

    return _fixture
