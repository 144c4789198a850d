"""Cloudflare Python Worker entry: translates Cloudflare's request and response and delegates to
:func:`edge_worker.core.handle`. Nothing else lives here.

NOT RUN in this repository: the ``workers`` module exists only inside Cloudflare's Pyodide
runtime, so the class below has never served a request here. What is exercised locally is the
translation (:func:`to_edge_request`, :func:`load_config`) against stand-in objects with the same
attributes as the SDK's ``Request`` (``url``, ``method``, ``headers.items()``, ``await
bytes()``), and the core itself, which the ASGI adapter serves under uvicorn in the tests.

Configuration: a secret binding named ``CALLPLANE_EDGE_CONFIG`` holding the edge config JSON
(``wrangler secret put CALLPLANE_EDGE_CONFIG``); it is parsed once per isolate. The bundle needs
``edge_worker/`` and ``callplane/security.py`` (plus ``callplane/__init__.py``), all stdlib-only.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from edge_worker.config import ENV_VAR, EdgeConfig
from edge_worker.core import EdgeRequest, EdgeResponse, Headers, handle


def _cloudflare_sdk() -> tuple[Any, Any]:
    """``(WorkerEntrypoint, Response)`` on Cloudflare; ``(object, None)`` anywhere else, so
    that this file imports (for tests and tooling) where the ``workers`` module does not exist."""
    try:
        import workers  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return object, None
    return workers.WorkerEntrypoint, workers.Response


_Entrypoint, _Response = _cloudflare_sdk()

_config_cache: dict[str, EdgeConfig] = {}


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


async def to_edge_request(request: Any) -> EdgeRequest:
    """Cloudflare's ``workers.Request`` to an :class:`EdgeRequest`. Only the path and query of
    ``request.url`` are used; the signature URL comes from ``public_url`` as everywhere else."""
    url = urlsplit(str(request.url))
    method = request.method
    return EdgeRequest(
        method=str(getattr(method, "value", method)),
        path=url.path or "/",
        query=url.query,
        headers=Headers(list(request.headers.items())),
        body=bytes(await request.bytes()),
    )


class Default(_Entrypoint):  # type: ignore[valid-type,misc]
    """The worker's fetch handler (Cloudflare instantiates it with ``self.env`` set)."""

    env: Any

    async def fetch(self, request: Any) -> Any:
        response: EdgeResponse = handle(
            load_config(self.env), await to_edge_request(request), now=time.time()
        )
        return _Response(response.body, status=response.status, headers=response.headers)
