"""The edge's LiveKit routes, as pure functions: web tokens and LiveKit webhooks.

* ``POST /token`` (and its CORS preflight): a browser asks for a LiveKit token for one room.
  Authorised by a web key (``Authorization: Bearer <one of livekit.web_keys>``) or a signed link
  (``?link=``, see :mod:`edge_worker.web_links`); a request with an ``Origin`` header must come
  from ``livekit.allowed_origins``; each client address is rate limited, failed
  authentications and tokens issued in buckets of their own. The token is an HS256 JWT in
  ``livekit-api``'s claim format that may join that room only, for at most 15 minutes, and
  (unless ``"agent": false``) asks LiveKit to dispatch the agent with the profile; the room
  metadata names the profile and the id of the web key that asked (never the key itself).
* ``POST /livekit/webhook``: LiveKit's room events, verified like ``livekit-api``'s
  ``WebhookReceiver``. ``room_started``, and a human joining, yield a :class:`DispatchAgent`
  effect for the room; the adapter POSTs it to the media app's ``/agents/dispatch``
  (:func:`dispatch_request`), which starts at most one agent per room, and caps the agent jobs
  of the stack and of each web key.

Standard library only; nothing here does I/O or reads a clock: ``now`` comes from the adapter.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple
from urllib.parse import parse_qs

from callplane.bounded_json import JSONBodyError, loads_bounded
from edge_worker.config import MAX_TOKEN_TTL_S, EdgeConfig, LiveKitEdgeConfig
from edge_worker.livekit_jwt import JWTError, access_token_claims, encode_hs256, verify_webhook
from edge_worker.rate_limit import TokenBucket
from edge_worker.web_links import verify_web_link
from edge_worker.wire import (
    MAX_BODY_BYTES,
    DispatchAgent,
    EdgeRequest,
    EdgeResponse,
    OutboundHTTP,
    json_response,
    text_response,
)

__all__ = [
    "AGENT_IDENTITY_PREFIX",
    "FAILED_AUTH_PREFIX",
    "MAX_TOKEN_BODY_BYTES",
    "PHONE_IDENTITY_PREFIX",
    "ROOM_PATTERN",
    "TOKENS_PREFIX",
    "dispatch_for_event",
    "dispatch_request",
    "livekit_webhook",
    "token",
    "token_preflight",
    "web_key_id",
]

# Mirrors of callplane.livekit_settings (which needs pydantic, so the Worker cannot import it);
# a test keeps them equal.
AGENT_IDENTITY_PREFIX = "agent-"
PHONE_IDENTITY_PREFIX = "phone:"
ROOM_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
"""Room names and identities: the same pattern as ``AgentProfile.room``."""

MAX_TOKEN_BODY_BYTES = 4096
"""The largest ``POST /token`` body: its five fields fit in a few hundred bytes."""

TOKENS_PREFIX = "tokens:"
FAILED_AUTH_PREFIX = "failed-auth:"
"""The rate limiter keys a client address under these: tokens issued and failed
authentications are two buckets, so a burst of wrong keys from an address throttles the
failures without locking a valid key at that address out."""

_PROFILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_WEB_KEY_ID = re.compile(r"[0-9a-f]{16}")
_MAX_NAME_CHARS = 128
_TOKEN_FIELDS = ("room", "identity", "name", "profile", "agent")
_DISPATCH_EVENTS = ("room_started", "participant_joined")
_AGENT_KINDS = ("AGENT", 4)  # protojson writes enum names; numbers are accepted too
_PREFLIGHT_MAX_AGE_S = "600"

IdentityFactory = Callable[[], str]


def _new_identity() -> str:
    return "web-" + secrets.token_hex(6)


# --------------------------------------------------------------------------- POST /token


def token(
    config: EdgeConfig,
    request: EdgeRequest,
    now: float,
    limiter: TokenBucket | None,
    new_identity: IdentityFactory = _new_identity,
) -> EdgeResponse:
    """Mint a web participant's token; see the module docstring for the checks, in order:
    configured (503), origin (403), key or link (401; 429 with ``Retry-After`` once this address
    has failed too often), tokens issued to this address (429 with ``Retry-After``), body (413
    over :data:`MAX_TOKEN_BODY_BYTES`, 400 naming the field or the nesting limit).

    The body is parsed only after a web key was accepted, or, for a signed link (which is bound
    to a room), within the size and nesting limits to find the room the link must match."""
    livekit = config.livekit
    if livekit is None:
        return _no_livekit()
    cors = _cors_headers(livekit, request)
    if cors is None:
        return _forbidden_origin(request)
    client = request.client or "unknown"
    key = _authorised(livekit, request, now)
    if key is None:
        # Counted apart from tokens issued: wrong keys throttle the failures from this address,
        # never the valid key another user of the address presents.
        wait = limiter.take(FAILED_AUTH_PREFIX + client, now) if limiter is not None else 0.0
        if wait > 0:
            return _too_many("too many failed authentications from this address", wait, cors)
        return _unauthorised(cors)
    wait = limiter.take(TOKENS_PREFIX + client, now) if limiter is not None else 0.0
    if wait > 0:
        return _too_many("too many token requests from this address", wait, cors)
    body = _token_body(request.body)
    if isinstance(body, _BadBody):
        return text_response(body.status, body.message, headers=cors)
    room, identity, name, profile, agent = body
    identity = identity or new_identity()
    issued = int(now)
    ttl = min(livekit.token_ttl_s, MAX_TOKEN_TTL_S)
    claims = access_token_claims(
        api_key=livekit.api_key,
        identity=identity,
        room=room,
        now=issued,
        ttl_s=ttl,
        name=name,
        room_config=_room_config(livekit, profile, agent=agent, web_key=key or None),
    )
    document = {
        "token": encode_hs256(claims, livekit.api_secret),
        "url": livekit.url,
        "room": room,
        "identity": identity,
        "expires_at": issued + ttl,
    }
    return json_response(200, document, headers=cors)


def web_key_id(key: str) -> str:
    """The public id of a web key: 16 hex digits of its SHA-256. It goes into the metadata of
    the rooms the key's tokens create, so that the media app can count a key's agent jobs
    without the key itself ever leaving the edge."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def token_preflight(config: EdgeConfig, request: EdgeRequest) -> EdgeResponse:
    """``OPTIONS /token``: the CORS preflight a browser sends before a JSON POST with a key."""
    livekit = config.livekit
    if livekit is None:
        return _no_livekit()
    cors = _cors_headers(livekit, request)
    if cors is None or "origin" not in request.headers:
        return _forbidden_origin(request)
    headers = {
        **cors,
        "access-control-allow-methods": "POST, OPTIONS",
        "access-control-allow-headers": "authorization, content-type",
        "access-control-max-age": _PREFLIGHT_MAX_AGE_S,
    }
    return EdgeResponse(204, headers, b"")


TokenBody = tuple[str, str | None, str | None, str | None, bool]


class _BadBody(NamedTuple):
    """Why a token request's body is refused: the status and the message naming the field."""

    status: int
    message: str


def _token_body(raw: bytes) -> TokenBody | _BadBody:
    """``(room, identity, name, profile, agent)``, or the refusal naming the bad field or the
    broken limit."""
    example = '{"room": "demo", "identity": "alice", "profile": "support"}'
    if not raw.strip():
        return _BadBody(400, f"the body is empty; send a JSON object like {example}")
    try:
        data = loads_bounded(raw, max_bytes=MAX_TOKEN_BODY_BYTES, what="the POST /token body")
    except JSONBodyError as exc:
        return _BadBody(exc.status, f"{exc.message}, like {example}")
    if not isinstance(data, dict):
        return _BadBody(400, f"the body must be a JSON object like {example}")
    unknown = sorted(str(key) for key in data if key not in _TOKEN_FIELDS)
    if unknown:
        return _BadBody(400, f"unknown field(s) {unknown}; allowed: {list(_TOKEN_FIELDS)}")
    room = data.get("room")
    if not isinstance(room, str) or not ROOM_PATTERN.fullmatch(room):
        return _BadBody(
            400,
            (
                f"room={_shown(room)} is invalid: use 1-128 characters from letters, digits, '_', "
                "'.', ':' and '-', starting with a letter or digit"
            ),
        )
    identity = data.get("identity")
    if identity is not None:
        if not isinstance(identity, str) or not ROOM_PATTERN.fullmatch(identity):
            return _BadBody(
                400,
                (
                    f"identity={_shown(identity)} is invalid: use 1-128 characters from letters, "
                    "digits, '_', '.', ':' and '-', starting with a letter or digit (or leave it "
                    "out for a random web-... identity)"
                ),
            )
        if identity.startswith((AGENT_IDENTITY_PREFIX, PHONE_IDENTITY_PREFIX)):
            return _BadBody(
                400,
                (
                    f"identity={identity!r} is reserved: identities starting with "
                    f"{AGENT_IDENTITY_PREFIX!r} or {PHONE_IDENTITY_PREFIX!r} belong to agents and "
                    "phone callers; choose another"
                ),
            )
    name = data.get("name")
    if name is not None and (
        not isinstance(name, str) or len(name) > _MAX_NAME_CHARS or not name.strip()
    ):
        return _BadBody(
            400,
            f"name={_shown(name)} is invalid: use a display name of 1-{_MAX_NAME_CHARS} characters",
        )
    profile = data.get("profile")
    if profile is not None and (not isinstance(profile, str) or not _PROFILE.fullmatch(profile)):
        return _BadBody(
            400,
            f"profile={_shown(profile)} is invalid: name an agent profile (1-64 characters "
            "from letters, digits, '_', '.' and '-')",
        )
    agent = data.get("agent", True)
    if not isinstance(agent, bool):
        return _BadBody(400, f"agent={_shown(agent)} is invalid: use true or false")
    return room, identity, name, profile, agent


def _room_hint(raw: bytes) -> str | None:
    """The room a link-authorised request asks for, read within the body limits (None if the
    body cannot be read as an object with a string ``room``: the link then fails)."""
    try:
        data = loads_bounded(raw, max_bytes=MAX_TOKEN_BODY_BYTES)
    except JSONBodyError:
        return None
    room = data.get("room") if isinstance(data, dict) else None
    return room if isinstance(room, str) else None


def _room_config(
    livekit: LiveKitEdgeConfig, profile: str | None, *, agent: bool, web_key: str | None
) -> dict[str, Any]:
    """The ``RoomConfiguration`` (protojson) applied if this join creates the room. With an
    agent: an explicit dispatch of ``agent_name`` carrying the profile, and room metadata with
    the profile and the id of the web key (``web_key``, the key itself when the request came
    with one), which is where the webhook route reads them back. Without: room metadata that
    tells the webhook route not to start one."""
    if not agent:
        return {"metadata": json.dumps({"agent": False})}
    dispatch: dict[str, Any] = {"agentName": livekit.agent_name}
    if profile:
        dispatch["metadata"] = json.dumps({"profile": profile})
    config: dict[str, Any] = {"agents": [dispatch]}
    metadata: dict[str, str] = {}
    if profile:
        metadata["profile"] = profile
    if web_key:
        metadata["web_key"] = web_key_id(web_key)
    if metadata:
        config["metadata"] = json.dumps(metadata)
    return config


def _authorised(livekit: LiveKitEdgeConfig, request: EdgeRequest, now: float) -> str | None:
    """The web key the request presented (``Authorization: Bearer``), ``""`` for a valid
    signed link, None when neither authorises it. Only a link needs the body (the room it is
    bound to), and only then is the body read."""
    authorization = request.headers.get("authorization", "")
    if authorization.startswith("Bearer "):
        presented = authorization.removeprefix("Bearer ").strip().encode()
        # Compare against every key so the time taken does not tell which one nearly matched.
        matches = [hmac.compare_digest(presented, key.encode()) for key in livekit.web_keys]
        if any(matches):
            return livekit.web_keys[matches.index(True)]
    links = parse_qs(request.query).get("link", [])
    if not links or livekit.link_secret is None:
        return None
    room = _room_hint(request.body)
    if room is None or not verify_web_link(livekit.link_secret, links[0], room, now=now):
        return None
    return ""


def _cors_headers(livekit: LiveKitEdgeConfig, request: EdgeRequest) -> dict[str, str] | None:
    """CORS headers to echo for an allowed ``Origin``, ``{}`` without one (not a browser
    request), or None for an origin that is not allowed."""
    origin = request.headers.get("origin")
    if origin is None:
        return {}
    if origin not in livekit.allowed_origins:
        return None
    return {"access-control-allow-origin": origin, "vary": "Origin"}


def _forbidden_origin(request: EdgeRequest) -> EdgeResponse:
    origin = request.headers.get("origin")
    return text_response(
        403,
        f"origin {_shown(origin)} may not ask for tokens: add it to livekit.allowed_origins "
        "in the edge config",
    )


def _too_many(what: str, wait: float, cors: Mapping[str, str]) -> EdgeResponse:
    retry_after = str(max(1, int(wait + 0.999)))
    return text_response(
        429,
        f"{what}; retry in {retry_after} s",
        headers={**cors, "retry-after": retry_after},
    )


def _unauthorised(cors: Mapping[str, str]) -> EdgeResponse:
    return text_response(
        401,
        "missing or invalid credentials: send Authorization: Bearer <web key> or "
        "?link=<signed link for this room>",
        headers={**cors, "www-authenticate": 'Bearer realm="callplane"'},
    )


# --------------------------------------------------------------------------- POST /livekit/webhook


def livekit_webhook(config: EdgeConfig, request: EdgeRequest, now: float) -> EdgeResponse:
    """Verify a LiveKit webhook and answer 200, with a :class:`DispatchAgent` effect when the
    event calls for an agent (and a dispatch URL is configured). 401 for a missing, forged,
    expired or body-mismatched token; 400 for a verified body that is not a JSON object."""
    livekit = config.livekit
    if livekit is None:
        return _no_livekit()
    authorization = request.headers.get("authorization", "")
    if not authorization:
        return text_response(
            401, "missing Authorization header: only the LiveKit server may call this URL"
        )
    try:
        event = verify_webhook(
            request.body,
            authorization,
            api_key=livekit.api_key,
            api_secret=livekit.api_secret,
            now=now,
            max_bytes=MAX_BODY_BYTES,
        )
    except JWTError as exc:
        return text_response(
            401,
            f"webhook refused ({exc.reason}): {exc}; the LiveKit server's webhook.api_key and "
            "its secret must be livekit.api_key and livekit.api_secret",
        )
    except ValueError as exc:
        return text_response(400, f"webhook refused: {exc}")
    effect = dispatch_for_event(event)
    if effect is None or livekit.dispatch_url is None:
        return json_response(200, {"ok": True, "dispatch": None})
    return json_response(200, {"ok": True, "dispatch": effect.room}, effects=(effect,))


def dispatch_for_event(event: Mapping[str, Any]) -> DispatchAgent | None:
    """The agent dispatch a verified webhook event asks for, if any: ``room_started``, or
    ``participant_joined`` of a human (identity not ``agent-…``, kind not ``AGENT``), in a room
    with a valid name whose metadata does not say ``"agent": false``. The room metadata's
    ``profile`` and ``web_key`` (JSON ``{"profile": ..., "web_key": ...}``) are passed on."""
    kind = event.get("event")
    if kind not in _DISPATCH_EVENTS:
        return None
    room = event.get("room")
    if not isinstance(room, Mapping):
        return None
    name = room.get("name")
    if not isinstance(name, str) or not ROOM_PATTERN.fullmatch(name):
        return None
    if kind == "participant_joined":
        participant = event.get("participant")
        if not isinstance(participant, Mapping):
            return None
        identity = participant.get("identity")
        if not isinstance(identity, str) or identity.startswith(AGENT_IDENTITY_PREFIX):
            return None
        if participant.get("kind") in _AGENT_KINDS:
            return None
    metadata = _metadata(room.get("metadata"))
    if metadata.get("agent") is False:
        return None
    profile = metadata.get("profile")
    valid = isinstance(profile, str) and _PROFILE.fullmatch(profile) is not None
    web_key = metadata.get("web_key")
    known = isinstance(web_key, str) and _WEB_KEY_ID.fullmatch(web_key) is not None
    return DispatchAgent(
        room=name,
        profile=profile if valid else None,
        reason=str(kind),
        web_key=web_key if known else None,
    )


def dispatch_request(livekit: LiveKitEdgeConfig, effect: DispatchAgent) -> OutboundHTTP:
    """The HTTP request that carries out ``effect``: a JSON POST to ``livekit.dispatch_url``
    with the media app's API key, ``{"room", "profile", "reason"}`` plus ``web_key`` (the key's
    id) when a web key's token created the room. Raises ValueError when no dispatch URL is
    configured."""
    if livekit.dispatch_url is None or livekit.dispatch_api_key is None:
        raise ValueError("livekit.dispatch_url is not configured; no agent can be dispatched")
    body: dict[str, Any] = {"room": effect.room, "profile": effect.profile, "reason": effect.reason}
    if effect.web_key is not None:
        body["web_key"] = effect.web_key
    return OutboundHTTP(
        method="POST",
        url=livekit.dispatch_url,
        headers={
            "authorization": f"Bearer {livekit.dispatch_api_key}",
            "content-type": "application/json",
        },
        body=json.dumps(body, separators=(",", ":")).encode("utf-8"),
    )


# --------------------------------------------------------------------------- helpers


def _metadata(raw: object) -> dict[str, Any]:
    if not isinstance(raw, str) or not raw.strip():
        return {}
    try:
        parsed = loads_bounded(raw.encode("utf-8"), max_bytes=MAX_BODY_BYTES)
    except JSONBodyError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _no_livekit() -> EdgeResponse:
    return text_response(
        503, "LiveKit is not configured on this edge: add a livekit section to the edge config"
    )


def _shown(value: object) -> str:
    """A request value for an error message, cut short (it is the client's own input)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
