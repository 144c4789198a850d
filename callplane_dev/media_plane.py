"""The media plane in the cloud's shape, on loopback: what ``callplane dev --replicas N`` runs.

On Modal the media plane is two web functions (the FastAPI app with the HTTP routes, and the
picows stream server that takes Twilio's media streams), each autoscaled to several
containers, with every request or WebSocket routed to any of them; what must hold across
containers lives in PostgreSQL (call records) and Redis (leases, call streams, outbound limits).
Locally the same parts run the same way:

* ``media``: N processes of ``uvicorn --factory functions.media:create_app_from_env``;
* ``streams``: N processes of ``python -m functions.stream_server``;
* a :class:`~callplane_dev.front.Front` before each set, handing every new connection to the
  next replica in turn (as Modal's router hands it to any container);
* a PostgreSQL cluster initialised once under the data directory, and a Redis server.

Every replica reads the one settings document from ``CALLPLANE_MEDIA_CONFIG``, exactly as a
Modal container reads its secret, so the offline stack exercises the settings, the processes
and the shared stores that get deployed. Agent jobs are started by the media replica that
won the room's lease, as child processes of it (on Modal, as containers of their own).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from callplane.media_settings import ENV_VAR, MediaSettings
from callplane_dev.front import Front
from callplane_dev.postgres import LocalPostgres
from callplane_dev.redis_server import LocalRedis
from callplane_dev.replicas import HttpReady, ReplicaSet, TcpReady

__all__ = ["ReplicatedMediaPlane"]

STREAM_PATH = "/twilio/media"


def media_command(port: int) -> list[str]:
    """One media replica: the FastAPI app, as Modal's ``asgi_app`` serves it."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "functions.media:create_app_from_env",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def stream_command(port: int) -> list[str]:
    """One stream replica: the picows media-stream server."""
    return [
        sys.executable,
        "-m",
        "functions.stream_server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]


class ReplicatedMediaPlane:
    """PostgreSQL, Redis, and ``replicas`` processes of each media service behind a front.

    Use in two steps, because the settings need the fronts' URLs: :meth:`prepare` starts the
    stores and the fronts; :meth:`start` starts the replicas with the settings.
    """

    def __init__(
        self, data_dir: Path, replicas: int, *, media_port: int = 0, stream_port: int = 0
    ) -> None:
        if replicas < 2:
            raise ValueError(
                f"replicas={replicas}: the cloud's shape needs at least 2 of each service; "
                "use the single-process stack for 1"
            )
        self.data_dir = data_dir
        self.count = replicas
        self.postgres = LocalPostgres(data_dir / "postgres")
        self.redis = LocalRedis(data_dir / "redis")
        self.media_front = Front(port=media_port)
        self.stream_front = Front(port=stream_port)
        self.media: ReplicaSet | None = None
        self.streams: ReplicaSet | None = None

    async def prepare(self) -> None:
        """Start PostgreSQL, Redis and both fronts (no replicas behind them yet)."""
        await asyncio.gather(self.postgres.start(), self.redis.start())
        await self.media_front.start()
        await self.stream_front.start()

    @property
    def database_url(self) -> str:
        return self.postgres.url

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def media_url(self) -> str:
        """The media app's front (``http://``): HTTP routes, status callbacks, dispatch."""
        return self.media_front.url

    @property
    def stream_url(self) -> str:
        """The streams' front as Twilio is given it (``ws://.../twilio/media``)."""
        return "ws" + self.stream_front.url.removeprefix("http") + STREAM_PATH

    async def start(self, settings: MediaSettings) -> None:
        """Start every replica with ``settings`` (one document for all, as on Modal), then
        put them behind their fronts."""
        env = {**os.environ, ENV_VAR: settings.model_dump_json()}
        logs = self.data_dir / "logs"
        self.media = ReplicaSet("media", media_command, env, self.count, HttpReady(), logs)
        self.streams = ReplicaSet("streams", stream_command, env, self.count, TcpReady(), logs)
        await asyncio.gather(self.media.start(), self.streams.start())
        self.media_front.set_backends(self.media.addresses)
        self.stream_front.set_backends(self.streams.addresses)

    async def stop(self) -> None:
        """Stop the replicas (SIGTERM: calls end, records are flushed), the fronts, then the
        stores."""
        sets = [s for s in (self.media, self.streams) if s is not None]
        await asyncio.gather(*(s.stop() for s in sets), return_exceptions=True)
        await self.media_front.stop()
        await self.stream_front.stop()
        await asyncio.gather(self.redis.stop(), self.postgres.stop(), return_exceptions=True)

    def describe(self) -> dict[str, Any]:
        """Every replica's own URL, by service, and the stores (no passwords locally)."""
        found: dict[str, Any] = {}
        if self.media is not None:
            found["media"] = [r.url for r in self.media.replicas]
        if self.streams is not None:
            found["streams"] = [
                "ws" + r.url.removeprefix("http") + STREAM_PATH for r in self.streams.replicas
            ]
        return found
