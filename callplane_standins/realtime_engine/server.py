"""The engine's WebSocket endpoint: ``ws://HOST:PORT/v1/realtime?model=…``.

Authentication and the beta refusal mirror OpenAI's production answers, so a client that works
here fails the same way on the real API when it is misconfigured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from callplane_standins.realtime_engine.context import EngineContext, EngineSettings, EventObserver
from callplane_standins.realtime_engine.protocol import DEFAULT_MODEL, RealtimeError
from callplane_standins.realtime_engine.session import RealtimeSession

log = logging.getLogger("callplane.engine")

REALTIME_PATH = "/v1/realtime"
BETA_CLOSE_CODE = 4000
# Base64 of a 15 MiB append plus its JSON envelope.
MAX_FRAME_BYTES = 21 * 1024 * 1024


def _json_response(status: HTTPStatus, message: str, code: str, type_: str) -> Response:
    body = json.dumps(
        {"error": {"message": message, "type": type_, "param": None, "code": code}}
    ).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return Response(status.value, status.phrase, headers, body)


class EngineServer:
    """An engine listening on loopback; use as an async context manager or start/stop."""

    def __init__(
        self,
        settings: EngineSettings | None = None,
        *,
        observer: EventObserver | None = None,
        context: EngineContext | None = None,
    ) -> None:
        self.settings = settings or EngineSettings()
        self.ctx = context or EngineContext.create(self.settings, observer)
        self._server: Server | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.sessions: set[RealtimeSession] = set()
        self.sessions_opened = 0
        self._connections: set[ServerConnection] = set()

    @property
    def base_url(self) -> str:
        """What to pass as the ``openai`` SDK's ``websocket_base_url``."""
        return f"ws://{self.host}:{self.port}/v1"

    @property
    def url(self) -> str:
        return f"{self.base_url}/realtime"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            max_size=MAX_FRAME_BYTES,
            compression=None,
        )
        sock = next(iter(self._server.sockets))
        self.host, self.port = sock.getsockname()[:2]
        log.info("engine listening on %s (mode %s)", self.url, self.settings.mode)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def drop_connections(self, code: int = 1011, reason: str = "engine fault") -> int:
        """Close every open Realtime socket from the server side, as an outage would; return
        how many were closed. Fault injection for reconnect tests and drills; the engine keeps
        accepting new connections."""
        victims = list(self._connections)
        await asyncio.gather(*(ws.close(code, reason) for ws in victims), return_exceptions=True)
        return len(victims)

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def __aenter__(self) -> EngineServer:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path.rstrip("/")
        if path != REALTIME_PATH:
            return _json_response(
                HTTPStatus.NOT_FOUND,
                f"Invalid URL (GET {path}); the Realtime endpoint is {REALTIME_PATH}.",
                "not_found",
                "invalid_request_error",
            )
        auth = request.headers.get("Authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return _json_response(
                HTTPStatus.UNAUTHORIZED,
                "You didn't provide an API key. Provide it in an Authorization header "
                "(Authorization: Bearer YOUR_KEY).",
                "missing_api_key",
                "invalid_request_error",
            )
        if self.settings.api_key is not None and key.strip() != self.settings.api_key:
            return _json_response(
                HTTPStatus.UNAUTHORIZED,
                "Incorrect API key provided. This engine was started with --api-key; use that key.",
                "invalid_api_key",
                "invalid_request_error",
            )
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        query = parse_qs(urlsplit(request.path).query)
        model = (query.get("model") or [DEFAULT_MODEL])[0]
        session = RealtimeSession(self.ctx, lambda event: ws.send(json.dumps(event)), model)
        if request.headers.get("OpenAI-Beta"):
            await self._refuse_beta(ws, session)
            return
        self.sessions.add(session)
        self.sessions_opened += 1
        self._connections.add(ws)
        try:
            await session.start()
            async for message in ws:
                if isinstance(message, str):
                    await session.handle_text(message)
                else:
                    await session.handle_binary(message)
        except ConnectionClosed:
            pass
        finally:
            self.sessions.discard(session)
            self._connections.discard(ws)
            with contextlib.suppress(Exception):
                await session.close()

    async def _refuse_beta(self, ws: ServerConnection, session: RealtimeSession) -> None:
        """Production has retired the beta shape: answer as it does, then close with 4000."""
        err = RealtimeError(
            "The Realtime API beta shape has been disabled. Connect without the OpenAI-Beta "
            "header and use the GA events and session shape at /v1/realtime.",
            code="beta_api_shape_disabled",
        )
        with contextlib.suppress(ConnectionClosed):
            await session.send(err.event(None))
            await ws.close(BETA_CLOSE_CODE, "beta_api_shape_disabled")


async def run_engine(
    settings: EngineSettings, host: str, port: int, ready: Callable[[EngineServer], None]
) -> None:
    """Serve until cancelled (the CLI's entry point); ``ready`` is called once listening."""
    server = EngineServer(settings)
    await server.start(host, port)
    try:
        ready(server)
        await asyncio.Future()
    finally:
        await server.stop()
