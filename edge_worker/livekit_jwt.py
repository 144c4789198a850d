"""LiveKit's JWTs on the standard library: HS256 encode and verify, access-token claims, and the
webhook check.

The Cloudflare Worker cannot install PyJWT or ``livekit-api``, so the edge does the little JWT
work it needs itself. The claim layout follows ``livekit-api``'s ``AccessToken.to_jwt`` (camelCase
grants under ``video``, ``roomConfig`` in protojson form) and the checks follow its
``TokenVerifier.verify`` plus ``WebhookReceiver.receive`` (HS256 only, issuer equals the API key,
``exp`` required, 60 s leeway on ``exp`` and ``nbf``, ``sha256`` claim equals base64 of the
SHA-256 of the raw body). The tests verify minted tokens with ``livekit-api`` itself and check
webhooks signed the way LiveKit's notifier signs them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from typing import Any

from callplane.bounded_json import JSONBodyError, loads_bounded

__all__ = [
    "WEBHOOK_LEEWAY_S",
    "JWTError",
    "access_token_claims",
    "decode_hs256",
    "encode_hs256",
    "verify_webhook",
]

WEBHOOK_LEEWAY_S = 60
"""``livekit-api``'s default leeway for ``exp`` and ``nbf`` (clock skew between servers)."""

_HEADER = {"alg": "HS256", "typ": "JWT"}
_MAX_TOKEN_CHARS = 8192
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class JWTError(ValueError):
    """A token was refused. ``reason`` is a short code (``malformed``, ``algorithm``,
    ``signature``, ``issuer``, ``expired``, ``not_yet_valid``, ``no_exp``, ``no_sha256``,
    ``body_hash``); the message says what to fix and never contains the token or a secret."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def encode_hs256(claims: Mapping[str, Any], secret: str) -> str:
    """A compact JWS (``header.payload.signature``) over ``claims`` with HMAC-SHA256."""
    signing_input = _segment(_HEADER) + "." + _segment(claims)
    signature = hmac.new(secret.encode(), signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + _b64url(signature)


def decode_hs256(
    token: str,
    secret: str,
    *,
    issuer: str,
    now: float,
    leeway_s: float = WEBHOOK_LEEWAY_S,
) -> dict[str, Any]:
    """The claims of an HS256 token signed with ``secret`` and issued by ``issuer``.

    Raises :class:`JWTError` unless the header names HS256, the signature matches, ``iss`` is
    ``issuer``, ``exp`` is present and not more than ``leeway_s`` in the past, and ``nbf`` (when
    present) is not more than ``leeway_s`` in the future.
    """
    if not isinstance(token, str) or len(token) > _MAX_TOKEN_CHARS or token.count(".") != 2:
        raise JWTError("malformed", "the token is not a compact JWT (header.payload.signature)")
    header_part, payload_part, signature_part = token.split(".")
    header = _json_segment(header_part, "header")
    if header.get("alg") != "HS256":
        raise JWTError("algorithm", f"the token's alg is {header.get('alg')!r}; only HS256 is used")
    expected = hmac.new(
        secret.encode(), f"{header_part}.{payload_part}".encode("ascii"), hashlib.sha256
    ).digest()
    if not hmac.compare_digest(expected, _unb64url(signature_part, "signature")):
        raise JWTError("signature", "the token's signature does not match the API secret")
    claims = _json_segment(payload_part, "payload")
    if claims.get("iss") != issuer:
        raise JWTError("issuer", "the token's iss is not the configured LiveKit API key")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise JWTError("no_exp", "the token has no numeric exp claim")
    if now > exp + leeway_s:
        raise JWTError("expired", "the token has expired")
    nbf = claims.get("nbf")
    if nbf is not None:
        if not isinstance(nbf, int | float) or isinstance(nbf, bool):
            raise JWTError("malformed", "the token's nbf claim is not a number")
        if now < nbf - leeway_s:
            raise JWTError("not_yet_valid", "the token is not valid yet (nbf is in the future)")
    return claims


def verify_webhook(
    body: bytes,
    authorization: str,
    *,
    api_key: str,
    api_secret: str,
    now: float,
    max_bytes: int = 64 * 1024,
) -> dict[str, Any]:
    """The parsed event of a LiveKit webhook whose ``Authorization`` header (the bare JWT, no
    ``Bearer``) is valid for ``body``, byte for byte. Raises :class:`JWTError` otherwise, or
    :class:`ValueError` when the verified body is not a JSON object, is over ``max_bytes`` or
    nests deeper than :data:`callplane.bounded_json.MAX_JSON_DEPTH` (the body is parsed only
    once its signature is verified, and then within those limits)."""
    claims = decode_hs256(authorization, api_secret, issuer=api_key, now=now)
    claimed = claims.get("sha256")
    if not isinstance(claimed, str) or not claimed:
        raise JWTError("no_sha256", "the webhook token has no sha256 claim")
    try:
        claimed_digest = base64.b64decode(claimed)
    except (binascii.Error, ValueError):
        raise JWTError("no_sha256", "the webhook token's sha256 claim is not base64") from None
    if not hmac.compare_digest(hashlib.sha256(body).digest(), claimed_digest):
        raise JWTError("body_hash", "the body does not match the webhook token's sha256 claim")
    event = loads_bounded(body, max_bytes=max_bytes, what="the webhook body")
    if not isinstance(event, dict):
        raise ValueError("the webhook body is not a JSON object")
    return event


def access_token_claims(
    *,
    api_key: str,
    identity: str,
    room: str,
    now: int,
    ttl_s: int,
    name: str | None = None,
    room_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The claims ``livekit-api``'s ``AccessToken`` writes for a participant that may join
    ``room`` (and only it), publish, subscribe and send data, valid from ``now`` for ``ttl_s``
    seconds. ``room_config`` is a ``RoomConfiguration`` in protojson (camelCase) form; LiveKit
    applies it when this participant's join creates the room."""
    claims: dict[str, Any] = {
        "video": {
            "roomJoin": True,
            "room": room,
            "canPublish": True,
            "canSubscribe": True,
            "canPublishData": True,
        },
        "sub": identity,
        "iss": api_key,
        "nbf": now,
        "exp": now + ttl_s,
    }
    if name:
        claims["name"] = name
    if room_config:
        claims["roomConfig"] = dict(room_config)
    return claims


# --------------------------------------------------------------------------- helpers


def _segment(document: Mapping[str, Any]) -> str:
    return _b64url(json.dumps(document, separators=(",", ":")).encode("utf-8"))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str, part: str) -> bytes:
    if not _B64URL.fullmatch(text):
        raise JWTError("malformed", f"the token's {part} is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise JWTError("malformed", f"the token's {part} is not base64url") from None


def _json_segment(text: str, part: str) -> dict[str, Any]:
    # The header is read before the signature is checked: parsed within limits, so that a
    # forged token cannot make the parser recurse without end.
    try:
        value = loads_bounded(
            _unb64url(text, part), max_bytes=_MAX_TOKEN_CHARS, what=f"the token's {part}"
        )
    except JSONBodyError as exc:
        raise JWTError("malformed", exc.message) from None
    if not isinstance(value, dict):
        raise JWTError("malformed", f"the token's {part} is not a JSON object")
    return value
