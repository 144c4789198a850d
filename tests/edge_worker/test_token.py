"""POST /token, signed links, the rate limiter, the livekit config section and the playground
routes. Tokens are checked with livekit-api's own TokenVerifier."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from livekit import api

from callplane import livekit_settings
from edge_worker import livekit_routes
from edge_worker.asgi import create_app
from edge_worker.config import EdgeConfig, EdgeConfigError, LiveKitEdgeConfig
from edge_worker.core import EdgeRequest, EdgeResponse, handle
from edge_worker.playground import file_name, load_playground
from edge_worker.rate_limit import TokenBucket
from edge_worker.web_links import sign_web_link, verify_web_link
from tests.servers import serve_asgi

KEY = "APIkeyForTests"
SECRET = "livekit-api-secret-for-tests-0123456789"
WEB_KEY = "web-key-for-tests-0123456789"
LINK_SECRET = "link-secret-for-tests-0123456789"
ORIGIN = "https://app.example.com"
ROOT = Path(__file__).resolve().parents[2]

BASE: dict[str, Any] = {
    "public_url": "https://edge.example.com",
    "twilio_auth_token": "twilio-auth-token",
    "stream_secret": "stream-secret-0123456789",
    "media_urls": {"us": "wss://media.example.com"},
    "numbers": {},
    "default_region": "us",
}
LIVEKIT: dict[str, Any] = {
    "url": "wss://project.livekit.example",
    "api_key": KEY,
    "api_secret": SECRET,
    "web_keys": [WEB_KEY],
    "link_secret": LINK_SECRET,
    "allowed_origins": [ORIGIN, "http://127.0.0.1:5173"],
}


def make_config(**livekit: Any) -> EdgeConfig:
    return EdgeConfig.from_mapping({**BASE, "livekit": {**LIVEKIT, **livekit}})


@pytest.fixture
def config() -> EdgeConfig:
    return make_config()


def post_token(
    config: EdgeConfig,
    body: Any,
    *,
    headers: Mapping[str, str] | None = None,
    query: str = "",
    now: float | None = None,
    limiter: TokenBucket | None = None,
    client: str = "203.0.113.7",
) -> EdgeResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = EdgeRequest(
        "POST",
        "/token",
        query,
        {"Authorization": f"Bearer {WEB_KEY}", **(headers or {})},
        raw,
        client=client,
    )
    return handle(config, request, now=time.time() if now is None else now, limiter=limiter)


def verified(response: EdgeResponse) -> tuple[dict[str, Any], api.access_token.Claims]:
    assert response.status == 200, response.body
    document = json.loads(response.body)
    return document, api.TokenVerifier(KEY, SECRET).verify(document["token"])


# --------------------------------------------------------------------------- tokens


def test_token_grants_that_room_only_with_the_agent_and_profile(config: EdgeConfig) -> None:
    response = post_token(config, {"room": "demo", "identity": "alice", "profile": "support"})
    document, claims = verified(response)
    assert response.headers["cache-control"] == "no-store"
    assert document["url"] == "wss://project.livekit.example"
    assert (document["room"], document["identity"]) == ("demo", "alice")
    assert claims.identity == "alice"
    assert claims.video is not None
    assert (claims.video.room_join, claims.video.room) == (True, "demo")
    assert claims.video.can_publish and claims.video.can_subscribe and claims.video.can_publish_data
    assert not claims.video.room_admin and not claims.video.room_create
    assert claims.room_config is not None
    [agent] = claims.room_config.agents
    assert agent.agent_name == "callplane-agent"
    assert json.loads(agent.metadata) == {"profile": "support"}
    # The room names its web key by id (for the media app's per-key agent cap), never the key.
    key_id = hashlib.sha256(WEB_KEY.encode()).hexdigest()[:16]
    assert key_id == livekit_routes.web_key_id(WEB_KEY)
    assert json.loads(claims.room_config.metadata) == {"profile": "support", "web_key": key_id}
    assert WEB_KEY not in json.dumps(
        jwt.decode(document["token"], options={"verify_signature": False})
    )
    raw = jwt.decode(document["token"], options={"verify_signature": False})
    assert raw["iss"] == KEY and raw["exp"] - raw["nbf"] == 900
    assert document["expires_at"] == raw["exp"]


def test_token_ttl_follows_the_config_and_never_exceeds_15_minutes() -> None:
    document, _ = verified(post_token(make_config(token_ttl_s=120), {"room": "demo"}))
    raw = jwt.decode(document["token"], options={"verify_signature": False})
    assert raw["exp"] - raw["nbf"] == 120
    with pytest.raises(EdgeConfigError, match=r"livekit\.token_ttl_s=901 is invalid.*1 to 900"):
        make_config(token_ttl_s=901)


def test_token_without_agent_asks_for_none(config: EdgeConfig) -> None:
    _, claims = verified(post_token(config, {"room": "demo", "agent": False, "name": "Al"}))
    assert claims.name == "Al"
    assert claims.room_config is not None and list(claims.room_config.agents) == []
    assert json.loads(claims.room_config.metadata) == {"agent": False}


def test_token_default_identity_is_random_web(config: EdgeConfig) -> None:
    first, claims = verified(post_token(config, {"room": "demo"}))
    second, _ = verified(post_token(config, {"room": "demo"}))
    assert re.fullmatch(r"web-[0-9a-f]{12}", first["identity"])
    assert first["identity"] != second["identity"]
    assert claims.identity == first["identity"]
    assert claims.room_config is not None
    assert claims.room_config.agents[0].agent_name == "callplane-agent"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"room": "bad room"}, "room="),
        ({"room": "-x"}, "room="),
        ({}, "room=None"),
        ({"room": "r" * 129}, "room="),
        ({"room": "demo", "identity": "agent-007"}, "identity='agent-007' is reserved"),
        ({"room": "demo", "identity": "phone:+15550001111"}, "identity='phone:+15550001111'"),
        ({"room": "demo", "identity": "a b"}, "identity="),
        ({"room": "demo", "agent": "yes"}, "agent="),
        ({"room": "demo", "profile": "../x"}, "profile="),
        ({"room": "demo", "name": ""}, "name="),
        ({"room": "demo", "admin": True}, "unknown field(s) ['admin']"),
        (["demo"], "JSON object"),
        (b"{nope", "not JSON"),
    ],
)
def test_bad_token_body_is_400_naming_the_field(config: EdgeConfig, body: Any, field: str) -> None:
    response = post_token(config, body)
    assert response.status == 400
    assert field in response.body.decode()


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-key-0123456789", WEB_KEY, f"Basic {WEB_KEY}"]
)
def test_token_without_a_valid_key_is_401(config: EdgeConfig, authorization: str | None) -> None:
    request = EdgeRequest(
        "POST",
        "/token",
        "",
        {} if authorization is None else {"Authorization": authorization},
        json.dumps({"room": "demo"}).encode(),
    )
    response = handle(config, request, now=time.time())
    assert response.status == 401
    assert b'"token"' not in response.body
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_signed_link_authorises_its_room_until_it_expires(config: EdgeConfig) -> None:
    now = time.time()
    link = sign_web_link(LINK_SECRET, "demo", int(now) + 60)
    no_key = {"Authorization": ""}
    ok = post_token(config, {"room": "demo"}, headers=no_key, query=f"link={link}", now=now)
    document, _ = verified(ok)
    assert document["room"] == "demo"
    other_room = post_token(config, {"room": "other"}, headers=no_key, query=f"link={link}")
    assert other_room.status == 401
    late = post_token(config, {"room": "demo"}, headers=no_key, query=f"link={link}", now=now + 61)
    assert late.status == 401
    forged = sign_web_link("another-secret-0123456789", "demo", int(now) + 60)
    assert (
        post_token(config, {"room": "demo"}, headers=no_key, query=f"link={forged}").status == 401
    )
    assert verify_web_link(LINK_SECRET, link, "demo", now=now)
    assert not verify_web_link(LINK_SECRET, link + "x", "demo", now=now)
    with pytest.raises(ValueError, match="expires_at"):
        sign_web_link(LINK_SECRET, "demo", -1)


def test_origin_must_be_allowed_and_cors_is_echoed(config: EdgeConfig) -> None:
    allowed = post_token(config, {"room": "demo"}, headers={"Origin": ORIGIN})
    assert allowed.status == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    denied = post_token(config, {"room": "demo"}, headers={"Origin": "https://evil.example"})
    assert denied.status == 403
    assert "access-control-allow-origin" not in denied.headers
    assert "allowed_origins" in denied.body.decode()
    # Errors for an allowed origin carry CORS headers, so the page can read them.
    unauthorised = post_token(
        config, {"room": "demo"}, headers={"Origin": ORIGIN, "Authorization": "Bearer nope"}
    )
    assert unauthorised.status == 401
    assert unauthorised.headers["access-control-allow-origin"] == ORIGIN


def test_preflight(config: EdgeConfig) -> None:
    def preflight(origin: str | None) -> EdgeResponse:
        headers = {"Access-Control-Request-Method": "POST"}
        if origin is not None:
            headers["Origin"] = origin
        return handle(config, EdgeRequest("OPTIONS", "/token", "", headers), now=time.time())

    ok = preflight(ORIGIN)
    assert ok.status == 204
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in ok.headers["access-control-allow-methods"]
    assert "authorization" in ok.headers["access-control-allow-headers"]
    assert preflight("https://evil.example").status == 403
    assert preflight(None).status == 403


def test_rate_limit_per_client_with_retry_after(config: EdgeConfig) -> None:
    limiter = TokenBucket(2)
    now = 1_000.0
    body = {"room": "demo"}
    assert post_token(config, body, limiter=limiter, now=now).status == 200
    assert post_token(config, body, limiter=limiter, now=now).status == 200
    limited = post_token(config, body, limiter=limiter, now=now)
    assert limited.status == 429
    assert limited.headers["retry-after"] == "30"
    assert limited.body == b"too many token requests from this address; retry in 30 s\n"
    # Other clients are not affected; the bucket refills.
    assert post_token(config, body, limiter=limiter, now=now, client="198.51.100.1").status == 200
    assert post_token(config, body, limiter=limiter, now=now + 30).status == 200


def test_wrong_keys_are_throttled_without_locking_the_valid_key_out(config: EdgeConfig) -> None:
    """Failed authentications and tokens issued are two buckets per address: a burst of wrong
    keys from an address is throttled (429 instead of 401), and a valid key presented from
    that same address still gets its tokens."""
    limiter = TokenBucket(3)
    now = time.time()
    body = {"room": "demo"}
    wrong = {"Authorization": "Bearer wrong-key-0123456789"}
    answers = [post_token(config, body, headers=wrong, limiter=limiter, now=now) for _ in range(6)]
    assert [a.status for a in answers] == [401, 401, 401, 429, 429, 429]
    assert answers[3].body == (
        b"too many failed authentications from this address; retry in 20 s\n"
    )
    assert answers[3].headers["retry-after"] == "20"
    for _ in range(3):  # the valid key is untouched by the failures
        verified(post_token(config, body, limiter=limiter, now=now))
    assert post_token(config, body, limiter=limiter, now=now).status == 429  # its own bucket
    # A signed link that does not match, and no credentials at all, count as failures too.
    link = sign_web_link(LINK_SECRET, "other", int(now) + 60)
    no_key = {"Authorization": ""}
    elsewhere = "198.51.100.9"
    statuses = [
        post_token(
            config,
            body,
            headers=no_key,
            query=f"link={link}",
            limiter=limiter,
            now=now,
            client=elsewhere,
        ).status
        for _ in range(4)
    ]
    assert statuses == [401, 401, 401, 429]


def test_a_hostile_body_is_never_parsed_without_credentials(config: EdgeConfig) -> None:
    """A body nested past the parser's recursion limit (2000 levels; json.loads gives up at
    about 1000): refused naming the nesting limit with a valid key, and never parsed without
    one (401); with a link, the room cannot be read from it, so the link cannot match (401)."""
    deep = b'{"room": ' + b"[" * 2000 + b"]" * 2000 + b"}"  # within the size limit
    assert len(deep) <= livekit_routes.MAX_TOKEN_BODY_BYTES
    no_key = {"Authorization": ""}
    assert post_token(config, deep, headers=no_key).status == 401
    link = sign_web_link(LINK_SECRET, "demo", int(time.time()) + 60)
    assert post_token(config, deep, headers=no_key, query=f"link={link}").status == 401
    keyed = post_token(config, deep)
    assert keyed.status == 400
    assert "over the JSON nesting limit of 32 levels" in keyed.body.decode()
    shallow_but_large = json.dumps({"room": "demo", "name": "n" * 5000}).encode()
    large = post_token(config, shallow_but_large)
    assert large.status == 413
    assert (
        f"the POST /token body is {len(shallow_but_large)} bytes, over the limit of "
        f"{livekit_routes.MAX_TOKEN_BODY_BYTES} bytes"
    ) in large.body.decode()


def test_token_bucket() -> None:
    bucket = TokenBucket(60, burst=2, max_keys=2)
    assert [bucket.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    assert bucket.take("a", 0.5) == pytest.approx(0.5)
    assert bucket.take("a", 1.0) == 0.0
    bucket.take("b", 1.0)
    bucket.take("c", 1.0)  # "a" is forgotten: at most two keys are kept
    assert bucket.take("a", 1.0) == 0.0
    with pytest.raises(ValueError, match="rate_per_minute=0"):
        TokenBucket(0)


def test_routes_without_livekit_are_503() -> None:
    config = EdgeConfig.from_mapping(BASE)
    for method, path in (("POST", "/token"), ("OPTIONS", "/token"), ("POST", "/livekit/webhook")):
        response = handle(config, EdgeRequest(method, path, "", {}, b"{}"), now=time.time())
        assert response.status == 503 and b"livekit" in response.body


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"url": "https://x.example"}, r"livekit\.url='https://x\.example' is invalid"),
        ({"api_key": ""}, r"livekit\.api_key='' is invalid"),
        ({"api_secret": ""}, r"livekit\.api_secret is invalid .*value hidden"),
        ({"web_keys": "one-key-0123456789"}, r"livekit\.web_keys is a str, not a list"),
        ({"web_keys": ["short"]}, r"livekit\.web_keys\[0\] is invalid \(a string of 5"),
        ({"link_secret": "short"}, r"livekit\.link_secret is invalid"),
        ({"allowed_origins": ["https://a.example/app"]}, r"allowed_origins\[0\].*no path"),
        ({"dispatch_url": "https://m.example/agents/dispatch"}, r"must be set together"),
        (
            {"dispatch_url": "ftp://m.example", "dispatch_api_key": "k" * 12},
            r"livekit\.dispatch_url='ftp://m\.example' is invalid",
        ),
        ({"rate_limit_per_minute": 0}, r"rate_limit_per_minute=0 is invalid"),
        ({"agent_name": "bad name"}, r"livekit\.agent_name='bad name' is invalid"),
        ({"colour": "blue"}, r"unknown field\(s\) \['colour'\]"),
    ],
)
def test_livekit_config_errors_name_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(EdgeConfigError, match=message) as caught:
        make_config(**change)
    assert SECRET not in str(caught.value)


def test_livekit_config_hides_secrets_and_requires_the_keys() -> None:
    config = make_config(
        dispatch_url="https://m.example/agents/dispatch", dispatch_api_key="d" * 12
    )
    shown = repr(config)
    for secret in (SECRET, WEB_KEY, LINK_SECRET, "d" * 12):
        assert secret not in shown
    assert isinstance(config.livekit, LiveKitEdgeConfig)
    assert config.livekit.rate_limit_per_minute == 30 and config.livekit.token_ttl_s == 900
    with pytest.raises(EdgeConfigError, match=r"livekit: missing field\(s\) \['api_secret'\]"):
        EdgeConfig.from_mapping({**BASE, "livekit": {"url": "ws://h:7880", "api_key": KEY}})


def test_mirrored_constants_match_the_shared_contract() -> None:
    assert livekit_routes.AGENT_IDENTITY_PREFIX == livekit_settings.AGENT_IDENTITY_PREFIX
    assert livekit_routes.PHONE_IDENTITY_PREFIX == livekit_settings.PHONE_IDENTITY_PREFIX


NEW_STDLIB_ONLY = [
    "wire.py",
    "livekit_jwt.py",
    "livekit_routes.py",
    "web_links.py",
    "rate_limit.py",
    "playground.py",
    "worker.py",
]


@pytest.mark.parametrize("name", NEW_STDLIB_ONLY)
def test_edge_modules_import_only_the_standard_library(name: str) -> None:
    tree = ast.parse((ROOT / "edge_worker" / name).read_text(encoding="utf-8"))
    imported: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            imported.append(node.module)
    outside = [
        module
        for module in imported
        if module.split(".")[0] not in sys.stdlib_module_names
        and module.split(".")[0] not in ("edge_worker", "workers")
        and module not in ("callplane.security", "callplane.bounded_json")
    ]
    assert outside == []


# --------------------------------------------------------------------------- playground

FILES = {
    "index.html": b"<!doctype html><title>callplane</title>",
    "assets/app-1234.js": b"console.log('hi')",
    "assets/app.css": b"body{}",
}


def get(config: EdgeConfig, path: str, files: Mapping[str, bytes] | None = FILES) -> EdgeResponse:
    return handle(config, EdgeRequest("GET", path, "", {}), now=0.0, playground_files=files)


def test_playground_serves_files_with_their_content_types(config: EdgeConfig) -> None:
    index = get(config, "/playground/")
    assert (index.status, index.body) == (200, FILES["index.html"])
    assert index.headers["content-type"] == "text/html; charset=utf-8"
    script = get(config, "/playground/assets/app-1234.js")
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert get(config, "/playground/assets/app.css").headers["content-type"].startswith("text/css")
    assert get(config, "/").status == 302 and get(config, "/").headers["location"] == "/playground/"
    assert get(config, "/playground").headers["location"] == "/playground/"


@pytest.mark.parametrize(
    "path",
    [
        "/playground/../core.py",
        "/playground/assets/../../config.py",
        "/playground/%2e%2e/core.py",
        "/playground/assets%2f..%2f..%2fcore.py",
        "/playground//etc/passwd",
        "/playground/..%5ccore.py",
        "/playground/./index.html",
    ],
)
def test_playground_path_traversal_is_refused(config: EdgeConfig, path: str) -> None:
    response = get(config, path)
    assert response.status in (400, 404)
    assert response.body not in FILES.values()


def test_playground_missing_file_and_unbuilt_playground_are_404(config: EdgeConfig) -> None:
    missing = get(config, "/playground/nope.js")
    assert missing.status == 404 and "'nope.js'" in missing.body.decode()
    unbuilt = get(config, "/playground/", files=None)
    assert unbuilt.status == 404 and "web/dist/index.html" in unbuilt.body.decode()
    assert file_name("") == "index.html" and file_name("a/") == "a/index.html"


async def test_asgi_adapter_loads_web_dist_and_serves_it(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    for name, content in FILES.items():
        (dist / name).write_bytes(content)
    outside = tmp_path / "secret.txt"
    outside.write_text("not for the web")
    (dist / "link.txt").symlink_to(outside)
    assert set(load_playground(dist)) == set(FILES)  # the symlink is not followed
    app = create_app(make_config(), playground_dir=dist)
    async with serve_asgi(app) as base, httpx.AsyncClient(base_url=base) as client:
        page = await client.get("/playground/")
        assert page.status_code == 200 and page.content == FILES["index.html"]
        script = await client.get("/playground/assets/app-1234.js")
        assert script.headers["content-type"] == "text/javascript; charset=utf-8"
        assert (await client.get("/playground/link.txt")).status_code == 404
        assert (await client.get("/playground/%2e%2e/secret.txt")).status_code in (400, 404)
        redirect = await client.get("/", follow_redirects=False)
        assert redirect.status_code == 302
        token = await client.post(
            "/token", json={"room": "demo"}, headers={"Authorization": f"Bearer {WEB_KEY}"}
        )
        assert token.status_code == 200
        api.TokenVerifier(KEY, SECRET).verify(token.json()["token"])
