"""The edge core's HTTP vocabulary: requests, responses and the side effects a response asks for.

Standard library only. The core never does I/O; when an answer needs something done elsewhere
(today: asking the media plane to start an agent), it returns that as an effect in
:attr:`EdgeResponse.effects` and the adapter carries it out (a background task under uvicorn,
``ctx.waitUntil`` on Cloudflare). Effects are plain data, so tests can assert on them without
any network.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from callplane.bounded_json import MAX_JSON_NUMBER_CHARS, JSONValueRefused, loads_strict

MAX_BODY_BYTES = 64 * 1024
"""The largest request body the edge takes, on every route: Twilio's webhooks and LiveKit's
events are a few kilobytes, and a web token request is a few hundred bytes. The adapters refuse
a larger one before reading it (413); the core checks again."""

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_JSON_NUMBER_CHARS",
    "DispatchAgent",
    "EdgeRequest",
    "EdgeResponse",
    "Headers",
    "JSONRefused",
    "OutboundHTTP",
    "json_response",
    "read_json",
    "text_response",
]


class JSONRefused(ValueError):
    """Text that :func:`read_json` does not read, with why (the message names the problem and
    quotes none of the text)."""


def read_json(text: str | bytes) -> Any:
    """The JSON value of ``text`` (UTF-8 if bytes), read as strictly as RFC 8259 writes it, or
    :class:`JSONRefused`: never another exception, whatever a client sent.

    Refused: bytes that are not UTF-8 (``json.loads`` would guess UTF-16 or UTF-32 from them),
    text that is not JSON, ``NaN`` and ``Infinity`` (Python's decoder takes them, JSON has
    none), a number longer than :data:`MAX_JSON_NUMBER_CHARS` characters or too large for a
    float, and nesting deeper than the decoder can follow.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise JSONRefused("it is not UTF-8 text") from None
    try:
        return loads_strict(text)
    except JSONValueRefused as exc:
        raise JSONRefused(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise JSONRefused(
            f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise JSONRefused("it is nested too deeply") from None
    except ValueError as exc:  # what the decoder raises besides, for any other reason
        raise JSONRefused(f"not valid JSON ({exc})") from None


class Headers(Mapping[str, str]):
    """Read-only, case-insensitive HTTP headers. Repeated names are joined with ``", "`` as HTTP
    allows, so adapters can pass raw header lists."""

    def __init__(self, source: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        items = source.items() if isinstance(source, Mapping) else source
        merged: dict[str, str] = {}
        for name, value in items:
            key = name.lower()
            merged[key] = f"{merged[key]}, {value}" if key in merged else value
        self._items = merged

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({sorted(self._items)})"  # names only: values may carry credentials


@dataclass
class EdgeRequest:
    """An HTTP request as the core sees it. ``path`` is the request path as sent (no query);
    ``query`` is the raw query string without ``?``. ``headers`` may be any mapping or list of
    pairs; it is wrapped in :class:`Headers` for case-insensitive lookup. ``client`` is the
    peer's address as the adapter knows it (the socket peer under uvicorn, ``CF-Connecting-IP``
    on Cloudflare); it keys rate limits and is never trusted for anything else."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes = b""
    client: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.headers, Headers):
            self.headers = Headers(self.headers)


@dataclass(frozen=True)
class DispatchAgent:
    """Effect: ask the media plane to make sure one agent is in ``room``. The media app's
    launcher is idempotent per room, so duplicate effects (LiveKit retries its webhooks, several
    humans join at once) are harmless. ``web_key`` is the id of the web key whose token created
    the room (see :func:`edge_worker.livekit_routes.web_key_id`), for the media app's per-key
    cap on agent jobs; None for rooms made otherwise."""

    room: str
    profile: str | None
    reason: str
    web_key: str | None = None


@dataclass(frozen=True)
class OutboundHTTP:
    """An HTTP request for an adapter to send, built by the core from an effect. ``headers``
    carry credentials: log the URL, never the headers."""

    method: str
    url: str
    headers: Mapping[str, str] = field(repr=False)
    body: bytes = field(repr=False)


@dataclass
class EdgeResponse:
    """An HTTP response for an adapter to send as is, then run its ``effects``."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    effects: tuple[DispatchAgent, ...] = ()


def text_response(
    status: int, message: str, *, headers: Mapping[str, str] | None = None
) -> EdgeResponse:
    """A plain-text answer; ``message`` names the problem and must never hold a secret."""
    merged = {"content-type": "text/plain; charset=utf-8", **(headers or {})}
    return EdgeResponse(status, merged, (message + "\n").encode("utf-8"))


def json_response(
    status: int,
    document: Mapping[str, Any],
    *,
    headers: Mapping[str, str] | None = None,
    effects: tuple[DispatchAgent, ...] = (),
) -> EdgeResponse:
    """A JSON answer that no cache may keep (these carry tokens or per-request state)."""
    merged = {"content-type": "application/json", "cache-control": "no-store", **(headers or {})}
    body = json.dumps(document, separators=(",", ":")).encode("utf-8")
    return EdgeResponse(status, merged, body, effects)
