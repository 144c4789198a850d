"""Fault injection for the Twilio simulator: make chosen REST requests fail or answer slowly.

Provisioning code must survive Twilio saying no (21649 bundle required, 404 no inventory) and an
``up`` killed while a purchase is in flight. Both are hard to provoke against a well-behaved
simulator, so a test (or a developer) arms a fault::

    POST /_simulator/faults  {"method": "POST", "path": "*/IncomingPhoneNumbers.json",
                              "params": {"PhoneNumber": "+92*"},
                              "status": 400, "code": 21649, "message": "Bundle required",
                              "times": 1}
    POST /_simulator/faults  {"method": "POST", "path": "*/IncomingPhoneNumbers.json",
                              "delay_s": 60}
    GET /_simulator/faults             what is armed, and how often each fault fired
    DELETE /_simulator/faults          disarm everything
    DELETE /_simulator/faults/{id}     disarm one

A fault matches a request by ``method`` (any if left out), ``path`` (an ``fnmatch`` glob over
the URL path) and ``params`` (globs over form-body or query parameters, all of which must match).
With ``status`` it answers Twilio's error JSON (``code``, ``message``) instead of running the
request: nothing changes in the state, as with a real refusal. Without ``status`` the request
runs normally and ``delay_s`` holds its response back: the effect (a number bought) has happened
but the client does not know yet, which is exactly the window in which a killed ``pulumi up``
loses track of a purchase. With both, the error comes after the delay. ``times`` limits how many
requests the fault applies to (default: until disarmed).

The routes answer only clients on loopback and only with an account's credentials: a fault is
a test instrument, never something a peer on the network can arm.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import secrets
import threading
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["Fault", "FaultError", "FaultMiddleware", "Faults", "fault_from_json"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_DELAY_S = 600.0
_FIELDS = ("method", "path", "params", "status", "code", "message", "delay_s", "times")


class FaultError(ValueError):
    """A fault description is invalid; the message names the field, the value and the fix."""


@dataclass
class Fault:
    """One armed fault (see the module docstring for the fields' meaning)."""

    path: str
    method: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    status: int | None = None
    code: int | None = None
    message: str | None = None
    delay_s: float = 0.0
    times: int | None = None
    id: str = field(default_factory=lambda: "FA" + secrets.token_hex(8))
    hits: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path.startswith(("/", "*")):
            raise FaultError(
                f"path={self.path!r} is invalid: give a glob over the URL path, e.g. "
                "'*/IncomingPhoneNumbers.json'"
            )
        if self.method is not None:
            if not isinstance(self.method, str) or self.method.upper() not in (
                "GET",
                "POST",
                "DELETE",
            ):
                raise FaultError(f"method={self.method!r} is invalid: use GET, POST or DELETE")
            self.method = self.method.upper()
        if not isinstance(self.params, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.params.items()
        ):
            raise FaultError(
                f"params={self.params!r} is invalid: give an object of parameter name to glob, "
                'e.g. {"PhoneNumber": "+92*"}'
            )
        if self.status is not None and (
            isinstance(self.status, bool)
            or not isinstance(self.status, int)
            or not 400 <= self.status <= 599
        ):
            raise FaultError(f"status={self.status!r} is invalid: use an HTTP error, 400 to 599")
        code = self.code
        if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
            raise FaultError(f"code={self.code!r} is invalid: use a Twilio error code, e.g. 21649")
        if self.status is None and (self.code is not None or self.message is not None):
            raise FaultError(
                "code and message need status: give the HTTP status the error comes with, e.g. "
                '"status": 400'
            )
        delay = self.delay_s
        if (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not 0 <= delay <= MAX_DELAY_S
        ):
            raise FaultError(f"delay_s={delay!r} is invalid: use seconds from 0 to {MAX_DELAY_S}")
        self.delay_s = float(delay)
        if self.times is not None and (
            isinstance(self.times, bool) or not isinstance(self.times, int) or self.times < 1
        ):
            raise FaultError(
                f"times={self.times!r} is invalid: use a count of 1 or more, or leave it out "
                "(until disarmed)"
            )
        if self.status is None and self.delay_s == 0:
            raise FaultError(
                "the fault does nothing: give status (answer an error instead of running the "
                "request) and/or delay_s (hold the response back)"
            )

    def matches(self, method: str, path: str, params: Mapping[str, list[str]]) -> bool:
        if self.method is not None and method != self.method:
            return False
        if not fnmatch.fnmatchcase(path, self.path):
            return False
        return all(
            any(fnmatch.fnmatchcase(v, pattern) for v in params.get(name, []))
            for name, pattern in self.params.items()
        )

    def error_json(self) -> dict[str, object]:
        code = self.code if self.code is not None else 20500
        return {
            "code": code,
            "message": self.message or f"fault {self.id} injected by the simulator",
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": self.status,
        }

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "method": self.method,
            "path": self.path,
            "params": dict(self.params),
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "delay_s": self.delay_s,
            "times": self.times,
            "hits": self.hits,
        }


def fault_from_json(body: object) -> Fault:
    """A :class:`Fault` from the JSON of ``POST /_simulator/faults``; unknown keys refused."""
    if not isinstance(body, dict):
        raise FaultError(f"the fault is a {type(body).__name__}, not a JSON object")
    unknown = sorted(set(body) - set(_FIELDS))
    if unknown:
        raise FaultError(f"unknown fields {unknown}: the known ones are {list(_FIELDS)}")
    if "path" not in body:
        raise FaultError("path is missing: give a glob over the URL path")
    return Fault(**body)


class Faults:
    """The armed faults of one simulator; safe to use from tests in other threads."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def remove(self, fault_id: str) -> bool:
        with self._lock:
            before = len(self._faults)
            self._faults = [f for f in self._faults if f.id != fault_id]
            return len(self._faults) != before

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def armed(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def take(self, method: str, path: str, params: Mapping[str, list[str]]) -> Fault | None:
        """The first armed fault matching the request, counted as fired (and disarmed once it
        has fired ``times`` times)."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path, params):
                    fault.hits += 1
                    if fault.times is not None and fault.hits >= fault.times:
                        self._faults.remove(fault)
                    return fault
        return None

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._faults)


class FaultMiddleware:
    """ASGI middleware applying :class:`Faults` to every request outside ``/_simulator/``."""

    def __init__(self, app: ASGIApp, faults: Faults) -> None:
        self.app = app
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or not self.faults or path.startswith("/_simulator/"):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        params: dict[str, list[str]] = {}
        raw_query = bytes(scope.get("query_string", b"")).decode("latin-1")
        form = body.decode("latin-1") if _is_form(scope) else ""
        for text in (raw_query, form):
            for key, value in parse_qsl(text, keep_blank_values=True):
                params.setdefault(key, []).append(value)
        fault = self.faults.take(str(scope["method"]).upper(), path, params)
        replay = _replay(body, receive)
        if fault is None:
            await self.app(scope, replay, send)
            return
        if fault.status is not None:
            if fault.delay_s:
                await asyncio.sleep(fault.delay_s)
            payload = json.dumps(fault.error_json()).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": fault.status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": payload})
            return
        held: list[Message] = []

        async def hold(message: Message) -> None:
            held.append(message)

        await self.app(scope, replay, hold)
        await asyncio.sleep(fault.delay_s)
        for message in held:
            await send(message)


def _is_form(scope: Scope) -> bool:
    for key, value in scope.get("headers", []):
        if key.lower() == b"content-type":
            return bytes(value).lower().startswith(b"application/x-www-form-urlencoded")
    return False


async def _read_body(receive: Receive) -> bytes:
    """The whole request body (read up front: a fault may match on its form parameters)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunks.append(bytes(message.get("body", b"")))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the already-read body to the app, then defers to the client."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
