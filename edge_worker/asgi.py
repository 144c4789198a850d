"""The edge core as a plain ASGI app, for uvicorn: the local stand-in for the Cloudflare Worker.

No framework: it reads the body, builds an :class:`~edge_worker.core.EdgeRequest`, calls
:func:`~edge_worker.core.handle` and sends the response, so the offline stack runs exactly the
code that runs on Cloudflare.

Proxies: ``X-Forwarded-Proto``, ``X-Forwarded-Host``, ``Host`` and the socket address are never
used to rebuild the URL Twilio signed. The signature URL is always ``config.public_url`` plus the
request path (and query), so the app validates correctly behind any reverse proxy, load balancer
or tunnel that forwards the path unchanged, and a client cannot steer validation by forging those
headers. A proxy that mounts the edge under a prefix must strip it and put it in ``public_url``.

Run it with ``uvicorn --factory edge_worker.asgi:create_app_from_env`` and the config JSON in
``CALLPLANE_EDGE_CONFIG``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from edge_worker.config import EdgeConfig
from edge_worker.core import (
    MAX_BODY_BYTES,
    EdgeRequest,
    EdgeResponse,
    Headers,
    StatusHandler,
    handle,
)

__all__ = ["ASGIApp", "create_app", "create_app_from_env"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("callplane.edge")


def create_app(
    config: EdgeConfig,
    on_status: StatusHandler | None = None,
    *,
    clock: Callable[[], float] = time.time,
) -> ASGIApp:
    """An ASGI app answering with :func:`edge_worker.core.handle`.

    ``on_status`` is called inline on the event loop for each verified status callback: keep it
    quick (append, enqueue). ``clock`` stamps stream tokens; tests may pin it.
    """

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
        elif kind == "http":
            await _http(config, on_status, clock, scope, receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})

    return app


def create_app_from_env() -> ASGIApp:
    """Factory for ``uvicorn --factory``: the config comes from ``CALLPLANE_EDGE_CONFIG``."""
    return create_app(EdgeConfig.from_env())


async def _http(
    config: EdgeConfig,
    on_status: StatusHandler | None,
    clock: Callable[[], float],
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", [])]
    request = EdgeRequest(
        method=str(scope["method"]),
        # raw_path is the path exactly as sent (percent-encoding intact), which is what Twilio
        # signed; scope["path"] is already decoded.
        path=(scope.get("raw_path") or scope["path"].encode("utf-8")).decode("latin-1"),
        query=bytes(scope.get("query_string", b"")).decode("latin-1"),
        headers=Headers(headers),
    )
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > MAX_BODY_BYTES:
        response = _too_large()
    else:
        body = await _read_body(receive)
        if body is None:
            response = _too_large()
        else:
            request.body = body
            try:
                response = handle(config, request, now=clock(), on_status=on_status)
            except Exception:
                log.exception("edge: unhandled error on %s %s", request.method, request.path)
                response = EdgeResponse(500, {"content-type": "text/plain"}, b"internal error\n")
    if response.status >= 400:
        # The first line of the body names the problem; it never holds a secret or a token.
        reason = (response.body.decode("utf-8", "replace").splitlines() or [""])[0]
        log.warning("edge: %s %s -> %d: %s", request.method, request.path, response.status, reason)
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [
                (name.encode("latin-1"), value.encode("latin-1"))
                for name, value in {
                    **response.headers,
                    "content-length": str(len(response.body)),
                }.items()
            ],
        }
    )
    await send({"type": "http.response.body", "body": response.body})


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body, or None once it grows past MAX_BODY_BYTES (chunked uploads included)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large() -> EdgeResponse:
    message = f"the body is over {MAX_BODY_BYTES} bytes; Twilio never sends that\n"
    return EdgeResponse(413, {"content-type": "text/plain; charset=utf-8"}, message.encode())


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
