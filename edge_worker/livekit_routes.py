"""The edge's LiveKit routes, as pure functions: web tokens and LiveKit webhooks.

* ``POST /token`` (and its CORS preflight): a browser asks for a LiveKit token for one room.
  Authorised by a web key (``Authorization: Bearer <one of livekit.web_keys>``) or a signed link
  (``?link=``, see :mod:`edge_worker.web_links`); a request with an ``Origin`` header must come
  from ``livekit.allowed_origins``; each client address is rate limited. The token is an HS256
  JWT in ``livekit-api``'s claim format that may join that room only, for at most 15 minutes,
  and (unless ``"agent": false``) asks LiveKit to dispatch the agent with the profile.
* ``POST /livekit/webhook``: LiveKit's room events, verified like ``livekit-api``'s
  ``WebhookReceiver``. ``room_started``, and a human joining, yield a :class:`DispatchAgent`
  effect for the room; the adapter POSTs it to the media app's ``/agents/dispatch``
  (:func:`dispatch_request`), which starts at most one agent per room.

Standard library only; nothing here does I/O or reads a clock: ``now`` comes from the adapter.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

from edge_worker.config import MAX_TOKEN_TTL_S, EdgeConfig, LiveKitEdgeConfig
from edge_worker.livekit_jwt import JWTError, access_token_claims, encode_hs256, verify_webhook
from edge_worker.rate_limit import TokenBucket
from edge_worker.web_links import verify_web_link
from edge_worker.wire import (
    DispatchAgent,
    EdgeRequest,
    EdgeResponse,
    JSONRefused,
    OutboundHTTP,
    json_response,
    read_json,
    text_response,
)

__all__ = [
    "AGENT_IDENTITY_PREFIX",
    "PHONE_IDENTITY_PREFIX",
    "ROOM_PATTERN",
    "dispatch_for_event",
    "dispatch_request",
    "livekit_webhook",
    "token",
    "token_preflight",
]

# Mirrors of callplane.livekit_settings (which needs pydantic, so the Worker cannot import it);
# a test keeps them equal.
AGENT_IDENTITY_PREFIX = "agent-"
PHONE_IDENTITY_PREFIX = "phone:"
ROOM_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
"""Room names and identities: the same pattern as ``AgentProfile.room``."""

_PROFILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
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
    configured (503), origin (403), rate limit (429 with ``Retry-After``), key or link (401),
    body (400 naming the field)."""
    livekit = config.livekit
    if livekit is None:
        return _no_livekit()
    cors = _cors_headers(livekit, request)
    if cors is None:
        return _forbidden_origin(request)
    if limiter is not None:
        wait = limiter.take(request.client or "unknown", now)
        if wait > 0:
            retry_after = str(max(1, int(wait + 0.999)))
            return text_response(
                429,
                f"too many token requests from this address; retry in {retry_after} s",
                headers={**cors, "retry-after": retry_after},
            )
    # Authenticate before validating, so that only a caller with credentials learns what a
    # valid body looks like. A link is bound to a room, so it needs the room the body asks for.
    if not _authorised(livekit, request, _room_hint(request.body), now):
        return _unauthorised(cors)
    body = _token_body(request.body)
    if isinstance(body, str):
        return text_response(400, body, headers=cors)
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
        room_config=_room_config(livekit, profile, agent=agent),
    )
    document = {
        "token": encode_hs256(claims, livekit.api_secret),
        "url": livekit.url,
        "room": room,
        "identity": identity,
        "expires_at": issued + ttl,
    }
    return json_response(200, document, headers=cors)


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


def _token_body(raw: bytes) -> tuple[str, str | None, str | None, str | None, bool] | str:
    """``(room, identity, name, profile, agent)`` or the 400 message naming the bad field."""
    example = '{"room": "demo", "identity": "alice", "profile": "support"}'
    try:
        data = read_json(raw) if raw.strip() else None
    except JSONRefused as exc:
        return f"the body is not JSON the edge reads: {exc}; send an object like {example}"
    if not isinstance(data, dict):
        return f"the body must be a JSON object like {example}"
    unknown = sorted(str(key) for key in data if key not in _TOKEN_FIELDS)
    if unknown:
        return f"unknown field(s) {unknown}; allowed: {list(_TOKEN_FIELDS)}"
    room = data.get("room")
    if not isinstance(room, str) or not ROOM_PATTERN.fullmatch(room):
        return (
            f"room={_shown(room)} is invalid: use 1-128 characters from letters, digits, '_', "
            "'.', ':' and '-', starting with a letter or digit"
        )
    identity = data.get("identity")
    if identity is not None:
        if not isinstance(identity, str) or not ROOM_PATTERN.fullmatch(identity):
            return (
                f"identity={_shown(identity)} is invalid: use 1-128 characters from letters, "
                "digits, '_', '.', ':' and '-', starting with a letter or digit (or leave it "
                "out for a random web-... identity)"
            )
        if identity.startswith((AGENT_IDENTITY_PREFIX, PHONE_IDENTITY_PREFIX)):
            return (
                f"identity={identity!r} is reserved: identities starting with "
                f"{AGENT_IDENTITY_PREFIX!r} or {PHONE_IDENTITY_PREFIX!r} belong to agents and "
                "phone callers; choose another"
            )
    name = data.get("name")
    if name is not None and (
        not isinstance(name, str) or len(name) > _MAX_NAME_CHARS or not name.strip()
    ):
        return (
            f"name={_shown(name)} is invalid: use a display name of 1-{_MAX_NAME_CHARS} characters"
        )
    profile = data.get("profile")
    if profile is not None and (not isinstance(profile, str) or not _PROFILE.fullmatch(profile)):
        return (
            f"profile={_shown(profile)} is invalid: name an agent profile (1-64 characters from "
            "letters, digits, '_', '.' and '-')"
        )
    agent = data.get("agent", True)
    if not isinstance(agent, bool):
        return f"agent={_shown(agent)} is invalid: use true or false"
    return room, identity, name, profile, agent


def _room_hint(raw: bytes) -> str | None:
    try:
        data = read_json(raw)
    except JSONRefused:
        return None
    room = data.get("room") if isinstance(data, dict) else None
    return room if isinstance(room, str) else None


def _room_config(livekit: LiveKitEdgeConfig, profile: str | None, *, agent: bool) -> dict[str, Any]:
    """The ``RoomConfiguration`` (protojson) applied if this join creates the room. With an
    agent: an explicit dispatch of ``agent_name`` carrying the profile, and the profile in the
    room metadata, which is where the webhook route reads it back. Without: room metadata that
    tells the webhook route not to start one."""
    if not agent:
        return {"metadata": json.dumps({"agent": False})}
    metadata = json.dumps({"profile": profile} if profile else {})
    dispatch: dict[str, Any] = {"agentName": livekit.agent_name}
    if profile:
        dispatch["metadata"] = metadata
    config: dict[str, Any] = {"agents": [dispatch]}
    if profile:
        config["metadata"] = metadata
    return config


def _authorised(
    livekit: LiveKitEdgeConfig, request: EdgeRequest, room: str | None, now: float
) -> bool:
    authorization = request.headers.get("authorization", "")
    if authorization.startswith("Bearer "):
        presented = authorization.removeprefix("Bearer ").strip().encode()
        # Compare against every key so the time taken does not tell which one nearly matched.
        matches = [hmac.compare_digest(presented, key.encode()) for key in livekit.web_keys]
        if any(matches):
            return True
    links = parse_qs(request.query).get("link", [])
    if room is None or not links or livekit.link_secret is None:
        return False
    return verify_web_link(livekit.link_secret, links[0], room, now=now)


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
    ``profile`` (JSON ``{"profile": ...}``) is passed on."""
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
    return DispatchAgent(room=name, profile=profile if valid else None, reason=str(kind))


def dispatch_request(livekit: LiveKitEdgeConfig, effect: DispatchAgent) -> OutboundHTTP:
    """The HTTP request that carries out ``effect``: a JSON POST to ``livekit.dispatch_url``
    with the media app's API key. Raises ValueError when no dispatch URL is configured."""
    if livekit.dispatch_url is None or livekit.dispatch_api_key is None:
        raise ValueError("livekit.dispatch_url is not configured; no agent can be dispatched")
    body = {"room": effect.room, "profile": effect.profile, "reason": effect.reason}
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
        parsed = read_json(raw)
    except JSONRefused:
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
