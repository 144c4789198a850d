"""The edge core as a plain ASGI app, for uvicorn: the local stand-in for the Cloudflare Worker.

No framework: it reads the body, builds an :class:`~edge_worker.core.EdgeRequest`, calls
:func:`~edge_worker.core.handle` and sends the response, so the offline stack runs exactly the
code that runs on Cloudflare.

Proxies: ``X-Forwarded-Proto``, ``X-Forwarded-Host``, ``Host`` and the socket address are never
used to rebuild the URL Twilio signed. The signature URL is always ``config.public_url`` plus the
request path (and query), so the app validates correctly behind any reverse proxy, load balancer
or tunnel that forwards the path unchanged, and a client cannot steer validation by forging those
headers. A proxy that mounts the edge under a prefix must strip it and put it in ``public_url``.

Effects: a LiveKit webhook that calls for an agent comes back with a
:class:`~edge_worker.wire.DispatchAgent` effect. After the response is sent, the adapter POSTs
:func:`~edge_worker.livekit_routes.dispatch_request` for it to the media app's
``/agents/dispatch`` in a background task (standard library HTTP in a worker thread), retried once
on a network error, a 5xx or a 429; failures are logged with the room, never with the key.

State the core must not hold lives here, per app: the ``/token`` rate limiter
(:class:`~edge_worker.rate_limit.TokenBucket`, keyed by the socket peer's address, with
failed authentications and tokens issued in buckets of their own; behind a proxy that address
is the proxy, so put the limit at the proxy or on Cloudflare) and the playground's files, read
once from ``web/dist/`` at start-up when that folder exists.

Bodies: a declared ``Content-Length`` over :data:`~edge_worker.wire.MAX_BODY_BYTES` is answered
413 without reading the body, and a body sent without one (chunked) is cut off and refused at
that size, on every route.

Run it with ``uvicorn --factory edge_worker.asgi:create_app_from_env`` and the config JSON in
``CALLPLANE_EDGE_CONFIG``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from edge_worker.config import EdgeConfig, LiveKitEdgeConfig
from edge_worker.core import (
    MAX_BODY_BYTES,
    EdgeRequest,
    EdgeResponse,
    Headers,
    StatusHandler,
    declared_too_large,
    handle,
)
from edge_worker.livekit_routes import dispatch_request
from edge_worker.playground import load_playground
from edge_worker.rate_limit import TokenBucket
from edge_worker.wire import DispatchAgent, OutboundHTTP

__all__ = ["DEFAULT_PLAYGROUND_DIR", "ASGIApp", "EdgeApp", "create_app", "create_app_from_env"]

DEFAULT_PLAYGROUND_DIR = Path(__file__).resolve().parent.parent / "web" / "dist"
"""Where the built playground is looked for: ``web/dist/`` at the repository root."""

DISPATCH_TIMEOUT_S = 10.0

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("callplane.edge")


class EdgeApp:
    """The ASGI app (an instance is the ASGI callable). Besides serving, it owns the per-app
    state the pure core must not hold, and the background dispatches it started:
    :meth:`drain` waits for them (tests, orderly shutdown)."""

    def __init__(
        self,
        config: EdgeConfig,
        on_status: StatusHandler | None,
        clock: Callable[[], float],
        playground_files: Mapping[str, bytes],
        dispatch_retry_delay_s: float,
    ) -> None:
        self.config = config
        self.on_status = on_status
        self.clock = clock
        self.playground_files = playground_files
        self.dispatch_retry_delay_s = dispatch_retry_delay_s
        livekit = config.livekit
        self.limiter = TokenBucket(livekit.rate_limit_per_minute) if livekit else None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send, self.drain)
        elif kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})

    async def drain(self) -> None:
        """Wait until every dispatch started so far has finished (sent, or given up)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", [])]
        client = scope.get("client")
        request = EdgeRequest(
            method=str(scope["method"]),
            # raw_path is the path exactly as sent (percent-encoding intact), which is what
            # Twilio signed; scope["path"] is already decoded.
            path=(scope.get("raw_path") or scope["path"].encode("utf-8")).decode("latin-1"),
            query=bytes(scope.get("query_string", b"")).decode("latin-1"),
            headers=Headers(headers),
            client=str(client[0]) if client else "",
        )
        refused = declared_too_large(request.headers)
        if refused is not None:
            response = refused
        else:
            body = await _read_body(receive)
            if body is None:
                response = _too_large()
            else:
                request.body = body
                try:
                    response = handle(
                        self.config,
                        request,
                        now=self.clock(),
                        on_status=self.on_status,
                        limiter=self.limiter,
                        playground_files=self.playground_files,
                    )
                except Exception:
                    log.exception("edge: unhandled error on %s %s", request.method, request.path)
                    response = EdgeResponse(
                        500, {"content-type": "text/plain"}, b"internal error\n"
                    )
        if response.status >= 400:
            # The first line of the body names the problem; it never holds a secret or a token.
            reason = (response.body.decode("utf-8", "replace").splitlines() or [""])[0]
            log.warning(
                "edge: %s %s -> %d: %s", request.method, request.path, response.status, reason
            )
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
        for effect in response.effects:
            self._start(effect)

    def _start(self, effect: DispatchAgent) -> None:
        livekit = self.config.livekit
        if livekit is None or livekit.dispatch_url is None:
            return
        task = asyncio.create_task(
            _dispatch(livekit, effect, self.dispatch_retry_delay_s),
            name=f"edge-dispatch-{effect.room}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def create_app(
    config: EdgeConfig,
    on_status: StatusHandler | None = None,
    *,
    clock: Callable[[], float] = time.time,
    playground_files: Mapping[str, bytes] | None = None,
    playground_dir: Path = DEFAULT_PLAYGROUND_DIR,
    dispatch_retry_delay_s: float = 1.0,
) -> EdgeApp:
    """An ASGI app answering with :func:`edge_worker.core.handle`.

    ``on_status`` is called inline on the event loop for each verified status callback: keep it
    quick (append, enqueue). ``clock`` stamps and checks tokens; tests may pin it.
    ``playground_files`` overrides the playground (name to bytes); otherwise every file under
    ``playground_dir`` is read now, once (none if the folder does not exist).
    ``dispatch_retry_delay_s`` is the pause before the one retry of a failed agent dispatch.
    """
    files = load_playground(playground_dir) if playground_files is None else playground_files
    if files:
        log.info("edge: serving the playground (%d files) at /playground/", len(files))
    return EdgeApp(config, on_status, clock, files, dispatch_retry_delay_s)


def create_app_from_env() -> ASGIApp:
    """Factory for ``uvicorn --factory``: the config comes from ``CALLPLANE_EDGE_CONFIG``."""
    return create_app(EdgeConfig.from_env())


async def _dispatch(
    livekit: LiveKitEdgeConfig, effect: DispatchAgent, retry_delay_s: float
) -> None:
    """Carry out one dispatch: POST, and once more after ``retry_delay_s`` if it failed in a
    way that may pass (network, 5xx, 429). Never raises; the outcome is logged."""
    outbound = dispatch_request(livekit, effect)
    for attempt in (1, 2):
        status, problem = await asyncio.to_thread(_send, outbound)
        if problem is None:
            log.info(
                "edge: dispatched an agent to room %r (%s): %d", effect.room, effect.reason, status
            )
            return
        retryable = status is None or status >= 500 or status == 429
        log.warning(
            "edge: agent dispatch for room %r to %s failed (attempt %d): %s",
            effect.room,
            outbound.url,
            attempt,
            problem,
        )
        if not retryable or attempt == 2:
            break
        await asyncio.sleep(retry_delay_s)
    log.error("edge: gave up dispatching an agent to room %r", effect.room)


def _send(outbound: OutboundHTTP) -> tuple[int | None, str | None]:
    """Blocking HTTP send (run in a thread): ``(status, None)`` on a 2xx, otherwise
    ``(status or None, what went wrong)``."""
    request = urllib.request.Request(
        outbound.url, data=outbound.body, headers=dict(outbound.headers), method=outbound.method
    )
    try:
        with urllib.request.urlopen(request, timeout=DISPATCH_TIMEOUT_S) as answer:
            return int(answer.status), None
    except urllib.error.HTTPError as exc:
        return exc.code, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        return None, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"


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
    message = (
        f"the body is over the limit of {MAX_BODY_BYTES} bytes; no request to the edge is that "
        "large (webhooks are a few kilobytes)\n"
    )
    return EdgeResponse(413, {"content-type": "text/plain; charset=utf-8"}, message.encode())


async def _lifespan(receive: Receive, send: Send, drain: Callable[[], Awaitable[None]]) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            try:
                async with asyncio.timeout(2 * DISPATCH_TIMEOUT_S):
                    await drain()
            except TimeoutError:
                log.warning("edge: shutting down with agent dispatches still in flight")
            await send({"type": "lifespan.shutdown.complete"})
            return
