"""The ASGI adapter under a real uvicorn server on loopback, driven with httpx.

The edge is configured with public_url https://edge.example.com while it listens on
127.0.0.1:<random port>: exactly the reverse-proxy case. Twilio's own RequestValidator signs
against the public URL, and only that URL is accepted.
"""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx
import pytest
import uvicorn
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped,unused-ignore]

from callplane.security import ReplayGuard, StreamTokenError, stream_url, verify_stream_token
from edge_worker.asgi import create_app, create_app_from_env
from edge_worker.config import EdgeConfig, EdgeConfigError, NumberRoute
from edge_worker.core import MAX_BODY_BYTES

AUTH_TOKEN = "twilio-auth-token-for-asgi-tests"
SECRET = "stream-secret-for-asgi-tests-0123456789"
PUBLIC = "https://edge.example.com"
CALL = "CA" + "b" * 32
FORM = "application/x-www-form-urlencoded"


@dataclass
class Edge:
    client: httpx.AsyncClient
    base_url: str
    statuses: list[dict[str, str]]


@pytest.fixture
async def edge() -> AsyncIterator[Edge]:
    config = EdgeConfig(
        public_url=PUBLIC,
        twilio_auth_token=AUTH_TOKEN,
        stream_secret=SECRET,
        media_urls={"us": "wss://media.example.com"},
        numbers={"+15550001111": NumberRoute("support", "us")},
        default_region="us",
    )
    statuses: list[dict[str, str]] = []
    app = create_app(config, on_status=statuses.append)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(5):
        while not server.started:  # uvicorn offers no event for this  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
            yield Edge(client, base_url, statuses)
    finally:
        server.should_exit = True
        await task


def signed(url: str, form: dict[str, str]) -> dict[str, str]:
    signature = RequestValidator(AUTH_TOKEN).compute_signature(url, form)
    return {"Content-Type": FORM, "X-Twilio-Signature": signature}


def voice_form(to: str = "+15550001111") -> dict[str, str]:
    return {"AccountSid": "AC" + "0" * 32, "CallSid": CALL, "From": "+15557654321", "To": to}


async def test_voice_webhook_behind_a_proxy(edge: Edge) -> None:
    form = voice_form()
    response = await edge.client.post(
        "/twilio/voice", content=urlencode(form), headers=signed(f"{PUBLIC}/twilio/voice", form)
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/xml"
    stream = ET.fromstring(response.content).find("./Connect/Stream")
    assert stream is not None
    parameters = {p.attrib["name"]: p.attrib["value"] for p in stream}
    assert stream.attrib["url"] == stream_url(
        "wss://media.example.com/twilio/media", parameters["token"]
    )
    # What the media function does with it: verify, then single use.
    guard = ReplayGuard()
    claims = verify_stream_token(SECRET, parameters["token"], CALL, now=time.time())
    assert (claims.profile, claims.from_, claims.to) == ("support", "+15557654321", "+15550001111")
    guard.check_and_remember(claims, now=time.time())
    with pytest.raises(StreamTokenError, match="replayed"):
        guard.check_and_remember(claims, now=time.time())


async def test_signature_over_the_loopback_url_is_refused(edge: Edge) -> None:
    """What the server itself sees (http://127.0.0.1:port) is not what Twilio signed."""
    form = voice_form()
    headers = signed(f"{edge.base_url}/twilio/voice", form)
    response = await edge.client.post("/twilio/voice", content=urlencode(form), headers=headers)
    assert response.status_code == 403
    assert "invalid X-Twilio-Signature" in response.text


async def test_forwarded_headers_cannot_steer_validation(edge: Edge) -> None:
    form = voice_form()
    headers = signed("http://attacker.example/twilio/voice", form)
    headers.update({"X-Forwarded-Proto": "http", "X-Forwarded-Host": "attacker.example"})
    response = await edge.client.post("/twilio/voice", content=urlencode(form), headers=headers)
    assert response.status_code == 403


async def test_unknown_number_is_rejected(edge: Edge) -> None:
    form = voice_form("+15559999999")
    response = await edge.client.post(
        "/twilio/voice", content=urlencode(form), headers=signed(f"{PUBLIC}/twilio/voice", form)
    )
    assert response.status_code == 200
    assert ET.fromstring(response.content)[0].tag == "Reject"


async def test_status_callback_reaches_on_status(edge: Edge) -> None:
    form = {"CallSid": CALL, "CallStatus": "completed", "CallDuration": "7"}
    url = f"{PUBLIC}/twilio/status?region=us"
    response = await edge.client.post(
        "/twilio/status?region=us", content=urlencode(form), headers=signed(url, form)
    )
    assert response.status_code == 204
    assert edge.statuses == [form]
    forged = await edge.client.post(
        "/twilio/status", content=urlencode(form), headers={"X-Twilio-Signature": "x"}
    )
    assert forged.status_code == 403
    assert len(edge.statuses) == 1


async def test_healthz_404_405(edge: Edge) -> None:
    health = await edge.client.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"ok": True})
    assert (await edge.client.get("/nope")).status_code == 404
    wrong = await edge.client.get("/twilio/voice")
    assert (wrong.status_code, wrong.headers["allow"]) == (405, "POST")


async def test_oversized_bodies_are_refused(edge: Edge) -> None:
    big = b"a" * (MAX_BODY_BYTES + 1)
    response = await edge.client.post("/twilio/voice", content=big, headers={"Content-Type": FORM})
    assert response.status_code == 413
    assert f"over the limit of {MAX_BODY_BYTES} bytes" in response.text
    for path in ("/token", "/livekit/webhook", "/twilio/status"):  # every route
        assert (await edge.client.post(path, content=big)).status_code == 413, path

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked transfer
        for _ in range(5):
            yield b"a" * (MAX_BODY_BYTES // 4)

    chunked = await edge.client.post("/twilio/voice", content=chunks())
    assert chunked.status_code == 413


def test_factory_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALLPLANE_EDGE_CONFIG", raising=False)
    with pytest.raises(EdgeConfigError, match="CALLPLANE_EDGE_CONFIG is not set"):
        create_app_from_env()
    monkeypatch.setenv(
        "CALLPLANE_EDGE_CONFIG",
        '{"public_url": "http://127.0.0.1:8787", "twilio_auth_token": "t", '
        '"stream_secret": "0123456789abcdef", "media_urls": {"local": "ws://127.0.0.1:8788"}, '
        '"numbers": {}, "default_region": "local"}',
    )
    assert callable(create_app_from_env())
