"""Request bodies on the media app: bounded on every route before (or while) they are read,
JSON parsed within the nesting limit, and read only once the caller is checked where the
protocol allows it. The app is driven over raw ASGI where a test must see how much of a body
the app pulled, and over a real uvicorn server otherwise."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI
from twilio.request_validator import RequestValidator

from callplane.outbound import OutboundLimits
from callplane.profiles import AgentProfile
from functions.body_limits import MAX_BODY_BYTES
from functions.media import create_app
from functions.outbound import STATUS_PATH
from tests.servers import serve_asgi
from tests.support.media import MEDIA_API_KEY, TWILIO_AUTH_TOKEN, media_settings

AUTH = {"Authorization": f"Bearer {MEDIA_API_KEY}"}
STATUS_URL = "https://media.example.com" + STATUS_PATH
CHUNK = 1024


class Exchange:
    """One request to the app over raw ASGI: what it answered and how much body it pulled."""

    def __init__(self) -> None:
        self.status = 0
        self.body = b""
        self.pulled_bytes = 0


async def exchange(
    app: FastAPI,
    method: str,
    path: str,
    headers: Mapping[str, str],
    chunks: Iterable[bytes],
) -> Exchange:
    result = Exchange()
    pending = iter(chunks)
    finished = False

    async def receive() -> dict[str, Any]:
        nonlocal finished
        if finished:
            return {"type": "http.disconnect"}
        chunk = next(pending, None)
        if chunk is None:
            finished = True
            return {"type": "http.request", "body": b"", "more_body": False}
        result.pulled_bytes += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            result.status = message["status"]
        elif message["type"] == "http.response.body":
            result.body += message.get("body", b"")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    return result


def endless(total: int = 100 * 1024 * 1024) -> Iterable[bytes]:
    """A body of ``total`` bytes (100 MB by default) in 1 KiB chunks, made as it is pulled."""
    for _ in range(total // CHUNK):
        yield b"a" * CHUNK


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[FastAPI]:
    outbound = OutboundLimits(
        allowed_countries=("US", "GB"),
        calling_hours=(0, 24),
        caller_ids={"default": "+15550001111"},
        max_context_bytes=256,
    )
    settings = media_settings(
        tmp_path,
        {"reminders": AgentProfile(name="reminders")},
        edge_voice_url="https://edge.example.com/twilio/voice",
        outbound=outbound,
    )
    created = create_app(settings)
    try:
        yield created
    finally:
        await created.state.shutdown()


async def test_a_deeply_nested_calls_body_is_400_and_never_read_without_the_key(
    app: FastAPI,
) -> None:
    deep = b'{"to": "+14155550123", "profile": "reminders", "context": {"a": '
    deep += b"[" * 20_000 + b"]" * 20_000 + b"}}"
    assert len(deep) <= MAX_BODY_BYTES
    keyed = await exchange(app, "POST", "/calls", AUTH, [deep])
    assert keyed.status == 400
    assert b"the POST /calls body nests arrays and objects 20002 levels deep" in keyed.body
    assert b"over the JSON nesting limit of 32 levels" in keyed.body
    unkeyed = await exchange(app, "POST", "/calls", {}, endless())
    assert unkeyed.status == 401 and unkeyed.pulled_bytes == 0


async def test_a_declared_oversized_body_is_413_without_reading_it(app: FastAPI) -> None:
    for path in ("/calls", "/agents/dispatch", STATUS_PATH, "/healthz"):
        headers = {**AUTH, "content-length": str(100 * 1024 * 1024)}
        answer = await exchange(app, "POST", path, headers, endless())
        assert answer.status == 413, path
        assert answer.pulled_bytes == 0, path
        assert f"over the limit of {MAX_BODY_BYTES} bytes".encode() in answer.body


async def test_a_chunked_body_is_cut_off_at_the_limit(app: FastAPI) -> None:
    answer = await exchange(app, "POST", "/calls", AUTH, endless())
    assert answer.status == 413
    assert MAX_BODY_BYTES < answer.pulled_bytes <= MAX_BODY_BYTES + CHUNK


def twilio_headers(form: Mapping[str, str]) -> dict[str, str]:
    signature = RequestValidator(TWILIO_AUTH_TOKEN).compute_signature(STATUS_URL, dict(form))
    return {
        "x-twilio-signature": signature,
        "content-type": "application/x-www-form-urlencoded",
    }


async def test_the_status_route_checks_for_a_signature_before_reading_and_bounds_the_body(
    app: FastAPI,
) -> None:
    unsigned = await exchange(app, "POST", STATUS_PATH, {}, endless())
    assert unsigned.status == 403 and unsigned.pulled_bytes == 0
    assert b"missing or malformed X-Twilio-Signature" in unsigned.body
    long_signature = {"x-twilio-signature": "A" * 4096}
    assert (await exchange(app, "POST", STATUS_PATH, long_signature, endless())).pulled_bytes == 0
    # a signature is there to check: the body is read, and cut off at the limit
    signed_endless = await exchange(app, "POST", STATUS_PATH, twilio_headers({}), endless())
    assert signed_endless.status == 413
    assert signed_endless.pulled_bytes <= MAX_BODY_BYTES + CHUNK
    # Twilio's own callback still works
    form = {"CallSid": "CA" + "2" * 32, "CallStatus": "ringing"}
    ok = await exchange(app, "POST", STATUS_PATH, twilio_headers(form), [urlencode(form).encode()])
    assert ok.status == 204
    forged = await exchange(
        app, "POST", STATUS_PATH, twilio_headers({}), [urlencode(form).encode()]
    )
    assert forged.status == 403 and b"invalid X-Twilio-Signature" in forged.body


async def test_post_calls_refusals_name_the_limit_over_http(app: FastAPI) -> None:
    async with serve_asgi(app) as base, httpx.AsyncClient(base_url=base, headers=AUTH) as http:
        premium = await http.post("/calls", json={"to": "+19005550100", "profile": "reminders"})
        large = await http.post(
            "/calls",
            json={"to": "+14155550123", "profile": "reminders", "context": {"n": "x" * 300}},
        )
        hook = await http.post(
            "/calls",
            json={
                "to": "+14155550123",
                "profile": "reminders",
                "webhook_url": "https://169.254.169.254/latest/meta-data",
            },
        )
        garbage = await http.post("/calls", content=b"{nope", headers={"content-type": "json"})
        listed = await http.get("/calls")
    assert premium.status_code == 422
    assert premium.json()["refused"]["limit"] == "allowed_number_types"
    assert "+19005550100 is a PREMIUM_RATE number" in premium.json()["refused"]["reason"]
    assert large.status_code == 413
    assert large.json()["refused"]["limit"] == "max_context_bytes"
    assert hook.status_code == 422 and hook.json()["refused"]["limit"] == "webhook_hosts"
    assert garbage.status_code == 400 and "is not JSON" in garbage.json()["detail"]
    assert listed.json()["calls"] == []  # nothing was placed
    assert app.state.dialer.jobs == {}
