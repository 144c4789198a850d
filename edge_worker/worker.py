"""Cloudflare Python Worker entry: translates Cloudflare's request and response and delegates to
:func:`edge_worker.core.handle`. Nothing else lives here.

What runs on Cloudflare is the bundle ``infra/edge_bundle.py`` computes from the imports of its
main module ``worker_entry.py``, which re-exports :class:`Default` (workerd imports the main
module by file name, so it sits at the top of the bundle). ``tests/edge_worker/test_pyodide.py``
runs exactly that bundle in Pyodide 0.28.2 (the interpreter of Cloudflare's Python Workers)
under Node: ``Default`` constructed with ``(ctx, env)``, ``fetch`` given a ``workers.Request``
around a web ``Request``, the answer a ``workers.Response``, effects sent with ``fetch`` inside
``ctx.waitUntil``. The ``workers`` module there is written after Cloudflare's documentation, not
taken from workerd, and workerd itself (its limits, snapshots and bindings) is not run.

Configuration: a secret binding named ``CALLPLANE_EDGE_CONFIG`` holding the edge config JSON
(``pulumi up`` sets it, or ``wrangler secret put CALLPLANE_EDGE_CONFIG``); it is parsed once per
isolate.

Per-isolate state: the ``/token`` rate limiter (one :class:`TokenBucket` per isolate, keyed by
``CF-Connecting-IP``, which Cloudflare sets and a client cannot forge, with failed
authentications and tokens issued in buckets of their own; isolates do not share it, so the
effective limit is per isolate).

Bodies: a declared ``Content-Length`` over the edge's limit is answered 413 before the body is
read; a body without one is read whole (Cloudflare bounds it by its plan's request size) and
then refused by the core if it is over the limit.

The playground (``web/dist``) is served by Cloudflare as static assets under ``/playground/``
before the worker is called; the worker sees only paths that are no asset.

Effects: a webhook's :class:`~edge_worker.wire.DispatchAgent` is sent with the runtime's
``fetch`` from a task handed to ``self.ctx.waitUntil(...)``, so the answer to LiveKit is not held
up by the media app (retried once on a network error, 5xx or 429, like the ASGI adapter).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlsplit

from edge_worker.config import ENV_VAR, EdgeConfig
from edge_worker.core import EdgeRequest, EdgeResponse, Headers, declared_too_large, handle
from edge_worker.livekit_routes import dispatch_request
from edge_worker.rate_limit import TokenBucket
from edge_worker.wire import DispatchAgent


def _cloudflare_sdk() -> tuple[Any, Any, Any]:
    """``(WorkerEntrypoint, Response, fetch)`` on Cloudflare; ``(object, None, None)``
    anywhere else, so that this file imports (for tests and tooling) where the ``workers``
    module does not exist."""
    try:
        import workers  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return object, None, None
    return workers.WorkerEntrypoint, workers.Response, getattr(workers, "fetch", None)


_Entrypoint, _Response, _fetch = _cloudflare_sdk()

_config_cache: dict[str, EdgeConfig] = {}
_limiters: dict[int, TokenBucket] = {}


def load_config(env: Any) -> EdgeConfig:
    """The validated config from the worker's ``CALLPLANE_EDGE_CONFIG`` binding, cached per
    isolate (re-parsed only if the secret's text changes)."""
    text = getattr(env, ENV_VAR, None)
    if not isinstance(text, str) or not text.strip():
        raise RuntimeError(
            f"the worker has no {ENV_VAR} secret: run `wrangler secret put {ENV_VAR}` with the "
            "edge config JSON (see edge_worker/README.md)"
        )
    config = _config_cache.get(text)
    if config is None:
        _config_cache.clear()
        config = _config_cache[text] = EdgeConfig.from_json(text, source=ENV_VAR)
    return config


def limiter_for(config: EdgeConfig) -> TokenBucket | None:
    """This isolate's ``/token`` rate limiter for ``config`` (None without a livekit section)."""
    if config.livekit is None:
        return None
    rate = config.livekit.rate_limit_per_minute
    limiter = _limiters.get(rate)
    if limiter is None:
        _limiters.clear()
        limiter = _limiters[rate] = TokenBucket(rate)
    return limiter


async def to_edge_request(request: Any) -> EdgeRequest:
    """Cloudflare's ``workers.Request`` to an :class:`EdgeRequest`. Only the path and query of
    ``request.url`` are used; the signature URL comes from ``public_url`` as everywhere else.
    The client address is ``CF-Connecting-IP`` (set by Cloudflare's edge)."""
    url = urlsplit(str(request.url))
    method = request.method
    headers = Headers(list(request.headers.items()))
    return EdgeRequest(
        method=str(getattr(method, "value", method)),
        path=url.path or "/",
        query=url.query,
        headers=headers,
        body=bytes(await request.bytes()),
        client=headers.get("cf-connecting-ip", ""),
    )


async def send_dispatch(config: EdgeConfig, effect: DispatchAgent, fetch: Any) -> bool:
    """POST one dispatch with the runtime's ``fetch`` (``fetch(url, method=..., headers=...,
    body=...)`` returning an object with ``status``), retried once on a network error, 5xx or
    429. Returns whether it was accepted; never raises."""
    if config.livekit is None or config.livekit.dispatch_url is None:
        return False
    outbound = dispatch_request(config.livekit, effect)
    for attempt in (1, 2):
        try:
            answer = await fetch(
                outbound.url,
                method=outbound.method,
                headers=dict(outbound.headers),
                body=outbound.body.decode("utf-8"),
            )
            status: int | None = int(answer.status)
        except Exception as exc:  # the runtime's fetch raises JS errors of its own types
            print(f"edge: agent dispatch for room {effect.room!r} failed: {type(exc).__name__}")
            status = None
        if status is not None and 200 <= status < 300:
            return True
        if attempt == 1 and (status is None or status >= 500 or status == 429):
            await asyncio.sleep(1.0)
            continue
        break
    print(f"edge: gave up dispatching an agent to room {effect.room!r} (status {status})")
    return False


class Default(_Entrypoint):  # type: ignore[valid-type,misc]
    """The worker's fetch handler: the runtime constructs it with ``(ctx, env)`` per request."""

    env: Any
    ctx: Any

    async def fetch(self, request: Any) -> Any:
        config = load_config(self.env)
        # A declared body over the edge's limit is refused before it is read.
        refused = declared_too_large(Headers(list(request.headers.items())))
        response: EdgeResponse = refused or handle(
            config, await to_edge_request(request), now=time.time(), limiter=limiter_for(config)
        )
        for effect in response.effects:
            # A task, so that the dispatch runs on the event loop whatever the runtime does with
            # the awaitable it is given; waitUntil keeps the isolate alive until it is done.
            self.ctx.waitUntil(asyncio.ensure_future(send_dispatch(config, effect, _fetch)))
        # No body at all when it is empty: the Fetch standard refuses a body, even an empty one,
        # with a null-body status such as 204 (TypeError); workerd still accepts an empty one
        # but logs a warning for it on every such answer.
        return _Response(response.body or None, status=response.status, headers=response.headers)
