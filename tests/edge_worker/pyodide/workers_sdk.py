"""The ``workers`` module of Cloudflare's Python Workers, as its documentation describes it, for
running the edge's bundle in Pyodide under Node (``tests/edge_worker/test_pyodide.py``).

``harness.mjs`` installs this file as ``workers`` in Pyodide's site-packages, where the Workers
runtime puts its own. It holds what the documented API gives a worker and the edge uses, as a
thin layer over the web platform objects Node provides (``Request``, ``Response``, ``Headers``,
``fetch``), which are the APIs workerd implements too:

* ``WorkerEntrypoint``: the runtime constructs the worker's class with ``(ctx, env)`` and keeps
  them as ``self.ctx`` and ``self.env``;
* ``Request``: wraps the JS request the handler receives: ``url``, ``method`` (an
  ``http.HTTPMethod``), ``headers`` (an ``http.client.HTTPMessage``), ``await bytes()`` and
  ``await text()``;
* ``Response(body, status=, headers=)``: builds a JS ``Response`` (``bytes`` bodies are handed
  over as a buffer, as the runtime does, so an empty ``bytes`` body is still a body);
* ``fetch(url, method=, headers=, body=)``: the JS ``fetch``, answered as a ``Response``.

It runs inside Pyodide only: ``js`` and ``pyodide`` exist there and nowhere else.
"""

from __future__ import annotations

import http.client
from http import HTTPMethod
from typing import Any

import js  # type: ignore[import-not-found]
from pyodide.ffi import create_proxy, to_js  # type: ignore[import-not-found]

__all__ = ["Request", "Response", "WorkerEntrypoint", "fetch"]


class WorkerEntrypoint:
    """Base class of a worker's ``Default`` entrypoint: constructed with ``(ctx, env)``."""

    def __init__(self, ctx: Any, env: Any) -> None:
        self.ctx = ctx
        self.env = env


class Request:
    """The incoming request, over the JS ``Request`` the runtime receives."""

    def __init__(self, js_request: Any) -> None:
        self.js_object = js_request

    @property
    def url(self) -> str:
        return str(self.js_object.url)

    @property
    def method(self) -> HTTPMethod:
        return HTTPMethod[str(self.js_object.method)]

    @property
    def headers(self) -> http.client.HTTPMessage:
        message = http.client.HTTPMessage()
        for name, value in self.js_object.headers:
            message[str(name)] = str(value).strip()
        return message

    async def bytes(self) -> bytes:
        buffer = await self.js_object.arrayBuffer()
        return bytes(buffer.to_bytes())

    async def text(self) -> str:
        return str(await self.js_object.text())


class Response:
    """An HTTP response, as a JS ``Response`` (``js_object``) that the runtime sends."""

    def __init__(
        self,
        body: str | bytes | None = None,
        status: int | None = None,
        headers: dict[str, str] | list[tuple[str, str]] | None = None,
        *,
        js_response: Any = None,
    ) -> None:
        if js_response is not None:
            self.js_object = js_response
            return
        options: dict[str, Any] = {}
        if status:
            options["status"] = int(status)
        if headers:
            pairs = list(headers.items()) if isinstance(headers, dict) else list(headers)
            options["headers"] = js.Headers.new(to_js([list(pair) for pair in pairs]))
        if isinstance(body, bytes):
            proxy = create_proxy(body)
            buffer = proxy.getBuffer()
            try:
                self.js_object = js.Response.new(buffer.data, **options)
            finally:
                buffer.release()
                proxy.destroy()
        else:
            self.js_object = js.Response.new(body, **options)

    @property
    def status(self) -> int:
        return int(self.js_object.status)

    async def text(self) -> str:
        return str(await self.js_object.text())


async def fetch(resource: str, **options: Any) -> Response:
    """The runtime's ``fetch``: ``options`` are the JS ``fetch`` init (``method``, ``headers``
    as a dict, ``body``)."""
    init = to_js(options, dict_converter=js.Object.fromEntries)
    return Response(js_response=await js.fetch(resource, init))
