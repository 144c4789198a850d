"""POST /livekit/webhook: verified like livekit-api's WebhookReceiver, signed here the way
LiveKit's notifier signs (livekit-api's AccessToken with a sha256 claim); the ASGI adapter's
dispatch POST to a real loopback server; and the whole path, edge to launcher, end to end."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from livekit import api

from edge_worker import livekit_routes
from edge_worker.asgi import EdgeApp, create_app
from edge_worker.config import EdgeConfig
from edge_worker.core import EdgeRequest, EdgeResponse, handle
from edge_worker.livekit_jwt import JWTError, decode_hs256, encode_hs256, verify_webhook
from edge_worker.wire import DispatchAgent
from tests.functions.test_dispatch import media_app, media_settings, stand_in_launcher
from tests.servers import serve_asgi
from tests.support.tokens import sign_webhook

KEY = "APIkeyForWebhooks"
SECRET = "livekit-webhook-secret-0123456789"
DISPATCH_KEY = "media-api-key-for-dispatch"

BASE: dict[str, Any] = {
    "public_url": "https://edge.example.com",
    "twilio_auth_token": "twilio-auth-token",
    "stream_secret": "stream-secret-0123456789",
    "media_urls": {"us": "wss://media.example.com"},
    "numbers": {},
    "default_region": "us",
}


def make_config(
    dispatch_url: str | None = "https://media.example.com/agents/dispatch",
) -> EdgeConfig:
    livekit: dict[str, Any] = {"url": "ws://127.0.0.1:7880", "api_key": KEY, "api_secret": SECRET}
    if dispatch_url is not None:
        livekit |= {"dispatch_url": dispatch_url, "dispatch_api_key": DISPATCH_KEY}
    return EdgeConfig.from_mapping({**BASE, "livekit": livekit})


def event_body(event: str, room: str = "demo", metadata: str = "", **extra: Any) -> bytes:
    document: dict[str, Any] = {
        "event": event,
        "room": {"sid": "RM_1", "name": room, "creationTime": "1700000000"},
        "id": "EV_1",
        "createdAt": "1700000000",
        **extra,
    }
    if metadata:
        document["room"]["metadata"] = metadata
    return json.dumps(document).encode()


def sign(
    body: bytes,
    *,
    key: str = KEY,
    secret: str = SECRET,
    ttl: datetime.timedelta = datetime.timedelta(minutes=5),
) -> str:
    """The token LiveKit's notifier puts in Authorization (bare, no Bearer)."""
    return sign_webhook(body, key, secret, ttl)


def post(
    config: EdgeConfig, body: bytes, authorization: str | None, now: float | None = None
) -> EdgeResponse:
    headers = {"Content-Type": "application/webhook+json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    request = EdgeRequest("POST", "/livekit/webhook", "", headers, body)
    return handle(config, request, now=time.time() if now is None else now)


@pytest.fixture
def config() -> EdgeConfig:
    return make_config()


# --------------------------------------------------------------------------- the core


def test_room_started_dispatches_with_the_rooms_profile(config: EdgeConfig) -> None:
    body = event_body("room_started", metadata=json.dumps({"profile": "support"}))
    token = sign(body)
    # The signing matches LiveKit's: livekit-api's own receiver accepts it.
    assert api.WebhookReceiver(api.TokenVerifier(KEY, SECRET)).receive(body.decode(), token)
    response = post(config, body, token)
    assert response.status == 200
    assert json.loads(response.body) == {"ok": True, "dispatch": "demo"}
    assert response.effects == (DispatchAgent("demo", "support", "room_started"),)


@pytest.mark.parametrize(
    ("participant", "dispatched"),
    [
        ({"identity": "alice", "kind": "STANDARD"}, True),
        ({"identity": "web-1a2b3c"}, True),  # protojson omits the default kind
        ({"identity": "phone:+15550001111", "kind": "SIP"}, True),
        ({"identity": "agent-demo"}, False),
        ({"identity": "someone", "kind": "AGENT"}, False),
        ({"identity": "someone", "kind": 4}, False),
    ],
)
def test_participant_joined_dispatches_for_humans_only(
    config: EdgeConfig, participant: dict[str, Any], dispatched: bool
) -> None:
    body = event_body("participant_joined", participant={"sid": "PA_1", **participant})
    response = post(config, body, sign(body))
    assert response.status == 200
    expected = (DispatchAgent("demo", None, "participant_joined"),) if dispatched else ()
    assert response.effects == expected


@pytest.mark.parametrize(
    "body",
    [
        event_body("room_finished"),
        event_body("participant_left", participant={"identity": "alice"}),
        event_body("track_published", participant={"identity": "alice"}),
        event_body("room_started", metadata=json.dumps({"agent": False})),
        event_body("room_started", room="bad room"),
        json.dumps({"event": "room_started"}).encode(),
    ],
)
def test_other_events_are_a_200_no_op(config: EdgeConfig, body: bytes) -> None:
    response = post(config, body, sign(body))
    assert response.status == 200
    assert response.effects == ()
    assert json.loads(response.body)["dispatch"] is None


def test_metadata_that_is_not_a_profile_passes_no_profile(config: EdgeConfig) -> None:
    for metadata in ("not json", json.dumps(["x"]), json.dumps({"profile": "../etc"})):
        body = event_body("room_started", metadata=metadata)
        assert post(config, body, sign(body)).effects == (
            DispatchAgent("demo", None, "room_started"),
        )


def test_the_web_key_id_in_the_room_metadata_is_passed_on(config: EdgeConfig) -> None:
    """The id the edge's token wrote into the room metadata reaches the dispatch (for the media
    app's per-key cap); anything that is not such an id is dropped."""
    key_id = livekit_routes.web_key_id("some-web-key-0123456789")
    body = event_body("room_started", metadata=json.dumps({"profile": "sales", "web_key": key_id}))
    (effect,) = post(config, body, sign(body)).effects
    assert effect == DispatchAgent("demo", "sales", "room_started", web_key=key_id)
    request = livekit_routes.dispatch_request(config.livekit, effect)  # type: ignore[arg-type]
    assert json.loads(request.body) == {
        "room": "demo",
        "profile": "sales",
        "reason": "room_started",
        "web_key": key_id,
    }
    for bad in ("the-key-itself-0123456789", 12, key_id.upper()):
        body = event_body("room_started", metadata=json.dumps({"web_key": bad}))
        assert post(config, body, sign(body)).effects == (
            DispatchAgent("demo", None, "room_started"),
        )
    no_key = livekit_routes.dispatch_request(
        config.livekit,  # type: ignore[arg-type]
        DispatchAgent("demo", None, "room_started"),
    )
    assert "web_key" not in json.loads(no_key.body)


def test_a_deeply_nested_body_is_400_after_verification_and_never_parsed_before(
    config: EdgeConfig,
) -> None:
    deep = b'{"event": "room_started", "x": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    signed = post(config, deep, sign(deep))
    assert signed.status == 400 and signed.effects == ()
    assert "over the JSON nesting limit of 32 levels" in signed.body.decode()
    assert post(config, deep, None).status == 401
    assert post(config, deep, sign(b"another body")).status == 401
    # Deep room metadata in a verified event is no profile, not an error.
    body = event_body("room_started", metadata="[" * 5000)
    assert post(config, body, sign(body)).effects == (DispatchAgent("demo", None, "room_started"),)


def test_a_forged_token_with_a_deeply_nested_header_is_401(config: EdgeConfig) -> None:
    """The JWT header is parsed before the signature can be checked: within limits."""
    header = base64.urlsafe_b64encode(b"[" * 4000).rstrip(b"=").decode()
    _, payload, signature = sign(event_body("room_started")).split(".")
    response = post(config, event_body("room_started"), f"{header}.{payload}.{signature}")
    assert response.status == 401
    assert "over the JSON nesting limit" in response.body.decode()


def test_without_a_dispatch_url_webhooks_are_verified_but_dispatch_nothing() -> None:
    config = make_config(dispatch_url=None)
    body = event_body("room_started")
    ok = post(config, body, sign(body))
    assert (ok.status, ok.effects) == (200, ())
    assert post(config, body, sign(body, secret="x" * 32)).status == 401


def unsigned_jwt(claims: dict[str, Any]) -> str:
    def part(document: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def forged_tokens(body: bytes) -> dict[str, str | None]:
    now = int(time.time())
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    claims = {"iss": KEY, "sub": "", "nbf": now, "exp": now + 300, "sha256": digest}
    header, payload, _ = sign(body).split(".")
    return {
        "unsigned": None,
        "empty": "",
        "other secret": sign(body, secret="another-secret-0123456789abcdefghij"),
        "other key": sign(body, key="SomeoneElse"),
        "expired": sign(body, ttl=datetime.timedelta(seconds=-61 - 60)),
        "alg none": unsigned_jwt(claims),
        "signature stripped": f"{header}.{payload}.",
        "no sha256": api.AccessToken(KEY, SECRET).to_jwt(),
        "no exp": encode_hs256({k: v for k, v in claims.items() if k != "exp"}, SECRET),
        "other body": sign(body + b" "),
        "bearer prefix": "Bearer " + sign(body),
        "garbage": "not-a-jwt",
    }


@pytest.mark.parametrize("case", list(forged_tokens(b"x")))
def test_forged_unsigned_expired_or_tampered_webhooks_are_401(
    config: EdgeConfig, case: str
) -> None:
    body = event_body("room_started")
    token = forged_tokens(body)[case]
    response = post(config, body, token)
    assert response.status == 401, case
    assert response.effects == ()
    assert SECRET not in response.body.decode()


def test_a_tampered_body_is_401(config: EdgeConfig) -> None:
    body = event_body("room_started", room="demo")
    token = sign(body)
    tampered = body.replace(b'"demo"', b'"evil"')
    response = post(config, tampered, token)
    assert response.status == 401 and response.effects == ()
    assert b"sha256" in response.body
    with pytest.raises(Exception, match="hash mismatch"):  # livekit-api agrees
        api.WebhookReceiver(api.TokenVerifier(KEY, SECRET)).receive(tampered.decode(), token)


def test_leeway_is_60_seconds() -> None:
    now = 1_700_000_000
    token = encode_hs256({"iss": KEY, "nbf": now, "exp": now + 10}, SECRET)
    assert decode_hs256(token, SECRET, issuer=KEY, now=now + 70)["exp"] == now + 10
    with pytest.raises(JWTError) as expired:
        decode_hs256(token, SECRET, issuer=KEY, now=now + 71)
    assert expired.value.reason == "expired"
    with pytest.raises(JWTError) as early:
        decode_hs256(token, SECRET, issuer=KEY, now=now - 61)
    assert early.value.reason == "not_yet_valid"


def test_our_jwts_are_standard_hs256() -> None:
    now = int(time.time())
    token = encode_hs256({"iss": KEY, "sub": "x", "nbf": now, "exp": now + 60}, SECRET)
    assert jwt.decode(token, SECRET, algorithms=["HS256"], issuer=KEY)["sub"] == "x"
    body = b'{"event":"room_started","room":{"name":"demo"}}'
    assert verify_webhook(body, sign(body), api_key=KEY, api_secret=SECRET, now=now)["event"] == (
        "room_started"
    )


# --------------------------------------------------------------------------- the ASGI adapter


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Recorder:
    """A raw ASGI app that records each request and answers with the next status in line."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append((scope["method"], scope["path"], headers, body))
        status = self.statuses.pop(0) if self.statuses else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


async def send_webhooks(app: EdgeApp, bodies: list[bytes]) -> list[httpx.Response]:
    async with serve_asgi(app) as edge, httpx.AsyncClient(base_url=edge, timeout=10) as client:
        answers = await asyncio.gather(
            *(
                client.post(
                    "/livekit/webhook",
                    content=body,
                    headers={
                        "Authorization": sign(body),
                        "Content-Type": "application/webhook+json",
                    },
                )
                for body in bodies
            )
        )
        async with asyncio.timeout(15):
            await app.drain()
    return list(answers)


async def test_asgi_adapter_posts_the_dispatch_to_the_media_app() -> None:
    recorder = Recorder([])
    async with serve_asgi(recorder) as media:
        app = create_app(make_config(media + "/agents/dispatch"), playground_files={})
        body = event_body("room_started", metadata=json.dumps({"profile": "support"}))
        [answer] = await send_webhooks(app, [body])
    assert answer.status_code == 200
    [(method, path, headers, sent)] = recorder.requests
    assert (method, path) == ("POST", "/agents/dispatch")
    assert headers["authorization"] == f"Bearer {DISPATCH_KEY}"
    assert headers["content-type"] == "application/json"
    assert json.loads(sent) == {"room": "demo", "profile": "support", "reason": "room_started"}


async def test_a_failed_dispatch_is_retried_once_then_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="callplane.edge")
    recorder = Recorder([503, 200])
    async with serve_asgi(recorder) as media:
        app = create_app(
            make_config(media + "/agents/dispatch"), playground_files={}, dispatch_retry_delay_s=0
        )
        await send_webhooks(app, [event_body("room_started")])
        assert len(recorder.requests) == 2  # 503, then the retry succeeded
        recorder.statuses = [500, 500]
        await send_webhooks(app, [event_body("room_started", room="other")])
        assert len(recorder.requests) == 4
        recorder.statuses = [401]
        await send_webhooks(app, [event_body("room_started", room="third")])
        assert len(recorder.requests) == 5  # a 4xx is not retried
    messages = [r.getMessage() for r in caplog.records]
    assert any("gave up dispatching an agent to room 'other'" in m for m in messages)
    assert any("room 'third'" in m and "HTTP 401" in m for m in messages)
    assert not any(DISPATCH_KEY in m for m in messages)


async def test_a_forged_webhook_sends_nothing() -> None:
    recorder = Recorder([])
    async with serve_asgi(recorder) as media:
        app = create_app(make_config(media + "/agents/dispatch"), playground_files={})
        body = event_body("room_started")
        async with serve_asgi(app) as edge, httpx.AsyncClient(base_url=edge) as client:
            forged = sign(body, secret="forged-secret-0123456789abcdefghijk")
            answer = await client.post(
                "/livekit/webhook", content=body, headers={"Authorization": forged}
            )
            await app.drain()
    assert answer.status_code == 401
    assert recorder.requests == []


async def test_end_to_end_five_duplicate_webhooks_start_one_agent(tmp_path: Path) -> None:
    settings = media_settings(tmp_path)
    launcher, records = stand_in_launcher(tmp_path, settings)
    media, agents = media_app(settings, launcher)
    try:
        async with serve_asgi(media) as media_base:
            config = EdgeConfig.from_mapping(
                {
                    **BASE,
                    "livekit": {
                        "url": "ws://127.0.0.1:7880",
                        "api_key": KEY,
                        "api_secret": SECRET,
                        "dispatch_url": media_base + "/agents/dispatch",
                        "dispatch_api_key": settings.api_key,
                    },
                }
            )
            edge = create_app(config, playground_files={})
            body = event_body("room_started", room="e2e-room")
            answers = await send_webhooks(edge, [body] * 5)
            assert [a.status_code for a in answers] == [200] * 5
            async with httpx.AsyncClient(base_url=media_base) as client:
                listing = await client.get(
                    "/agents", headers={"Authorization": f"Bearer {settings.api_key}"}
                )
            jobs = listing.json()["agents"]
            assert [(j["room"], j["state"]) for j in jobs] == [("e2e-room", "running")]
            async with asyncio.timeout(10):
                while not list(records.glob("*.json")):  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)  # a second job would have written its record by now
            started = [json.loads(p.read_text()) for p in records.glob("*.json")]
            assert [(s["room"], s["profile"]) for s in started] == [("e2e-room", "support")]
    finally:
        await agents.shutdown()
