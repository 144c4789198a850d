"""Request bodies on the media app: bounded on every route, JSON parsed within limits.

Every HTTP route of the media app goes through :class:`BodyLimit`: a declared
``Content-Length`` over the limit (or one that is not a number) is answered 413 before the app
sees the request, and a body sent without one (chunked) is cut off at the limit and answered
413 too, so no route ever buffers more than :data:`MAX_BODY_BYTES`, whatever it does with the
body. A 413 closes the connection (``Connection: close``): the rest of the body is never read,
so a client that is still sending may see the connection reset before it reads the answer.

Routes that take JSON parse it with :func:`read_json`, which measures the nesting before parsing
(:mod:`callplane.bounded_json`), so a body of nested brackets is a 400 naming the limit rather
than a ``RecursionError``.

Routes read the body only after they have checked the caller where the protocol allows it: the
API key (``POST /calls``, ``POST /agents/dispatch``), or for Twilio's status callbacks the
presence of ``X-Twilio-Signature`` (the signature itself is over the form body, so the body must
be read, within the limit, to check it).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import HTTPException, Request

from callplane.bounded_json import JSONBodyError, loads_bounded

__all__ = ["MAX_BODY_BYTES", "BodyLimit", "BodyTooLarge", "read_json"]

MAX_BODY_BYTES = 64 * 1024
"""The largest request body the media app takes. Its bodies are small: a ``POST /calls`` body
with its ``context`` (itself limited by ``outbound.max_context_bytes``), a dispatch of a few
names, Twilio's status callbacks of a kilobyte or two."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(Exception):
    """Raised from ``receive`` once the body a client streams passes the limit; the
    :class:`BodyLimit` around the app answers 413 for it."""


def _too_large(limit: int) -> bytes:
    detail = (
        f"the request body is over the limit of {limit} bytes; the media app takes no larger "
        "body (send less, e.g. a smaller context)"
    )
    return json.dumps({"detail": detail}).encode()


class BodyLimit:
    """ASGI middleware: at most ``max_bytes`` of body on any HTTP request (see the module
    docstring). WebSockets and lifespan pass through untouched."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _answer_413(send, self.max_bytes)
            return
        received = 0
        started = False

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(f"over {self.max_bytes} bytes")
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracked_send)
        except BodyTooLarge:
            if started:  # the route answered before it read the whole body: nothing to add
                return
            await _answer_413(send, self.max_bytes)


async def read_json(request: Request, what: str) -> Any:
    """The request's JSON body, read (within :class:`BodyLimit`) and parsed within the size and
    nesting limits; an :class:`~fastapi.HTTPException` (413 or 400) naming the limit or the
    problem otherwise. ``what`` names the body in messages (``"the POST /calls body"``)."""
    raw = await request.body()
    try:
        return loads_bounded(raw, max_bytes=MAX_BODY_BYTES, what=what)
    except JSONBodyError as exc:
        raise HTTPException(exc.status, exc.message) from None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1").strip()
    return None


async def _answer_413(send: Send, limit: int) -> None:
    body = _too_large(limit)
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
