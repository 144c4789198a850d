"""Cloudflare Python Worker entry: translates Cloudflare's request and response and delegates to
:func:`edge_worker.core.handle`. Nothing else lives here.

NOT RUN in this repository: the ``workers`` module exists only inside Cloudflare's Pyodide
runtime, so the class below has never served a request here. What is exercised locally is the
translation (:func:`to_edge_request`, :func:`load_config`) against stand-in objects with the same
attributes as the SDK's ``Request`` (``url``, ``method``, ``headers.items()``, ``await
bytes()``), and the core itself, which the ASGI adapter serves under uvicorn in the tests.

Configuration: a secret binding named ``CALLPLANE_EDGE_CONFIG`` holding the edge config JSON
(``wrangler secret put CALLPLANE_EDGE_CONFIG``); it is parsed once per isolate. The bundle needs
``edge_worker/`` (without ``asgi.py``) and ``callplane/security.py`` (plus
``callplane/__init__.py``), all stdlib-only.

Per-isolate state: the ``/token`` rate limiter (one :class:`TokenBucket` per isolate, keyed by
``CF-Connecting-IP``, which Cloudflare sets and a client cannot forge; isolates do not share it,
so the effective limit is per isolate). The playground is not bundled: serve ``web/dist`` with
Workers static assets, or the playground routes answer 404 saying it is not built.

Effects: a webhook's :class:`~edge_worker.wire.DispatchAgent` is sent with the runtime's
``fetch`` inside ``self.ctx.waitUntil(...)``, so the answer to LiveKit is not held up by the
media app (retried once on a network error, 5xx or 429, like the ASGI adapter).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlsplit

from edge_worker.config import ENV_VAR, EdgeConfig
from edge_worker.core import EdgeRequest, EdgeResponse, Headers, handle
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
    """The worker's fetch handler (Cloudflare instantiates it with ``self.env`` set)."""

    env: Any
    ctx: Any

    async def fetch(self, request: Any) -> Any:
        config = load_config(self.env)
        response: EdgeResponse = handle(
            config, await to_edge_request(request), now=time.time(), limiter=limiter_for(config)
        )
        for effect in response.effects:
            self.ctx.waitUntil(send_dispatch(config, effect, _fetch))
        return _Response(response.body, status=response.status, headers=response.headers)
