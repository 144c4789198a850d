"""Webhook signatures and stream tokens: every inbound request to callplane is authenticated here.

Standard library only, on purpose: the Cloudflare Python Worker (Pyodide) bundles this file as
is, and the media function imports the very same functions, so the edge that mints a stream token
and the media plane that checks it can never disagree about the format.

Two independent mechanisms:

* **Twilio request signatures** (``X-Twilio-Signature``): proves a webhook or a media-stream
  WebSocket upgrade came from Twilio. Implemented from Twilio's published algorithm and
  cross-checked in the tests against ``twilio.request_validator.RequestValidator``.
* **Stream tokens**: the edge puts a short-lived HMAC token in the TwiML
  ``<Parameter name="token">``; Twilio hands it back in the media stream's ``start`` message.
  It binds the stream to the CallSid the edge answered, to the agent profile and media region the
  edge chose, to the call's numbers, country, direction and answering-machine result as the
  signed voice webhook gave them (a stream's other custom parameters are not signed by anyone,
  so the media plane takes these from the token), and to a 60-second window.

**Binding the upgrade to the call.** The stream URL in the TwiML is the media URL plus a
per-call key, :func:`stream_url` (``…/twilio/media/<key>``, the key being the token's own
HMAC). Twilio signs the WebSocket upgrade over that exact URL, so a captured upgrade signature
admits only the token it was issued with, never one minted later, not even by a replayed voice
webhook for the same call (Twilio refuses a query string in ``<Stream url>``, hence a path
segment). The media plane checks that the ``start`` message's token is the one the URL was made
for (:func:`stream_key_matches`), and admits one media stream per CallSid, ever (see
``callplane.coordination.CallStreams``).

Token format (version ``cp2``)::

    cp2.<payload>.<signature>

``payload`` is unpadded URL-safe base64 of compact JSON ``{"c": call_sid, "p": profile,
"r": region, "e": expires_at, "n": nonce, "f": from, "t": to, "k": country, "d": direction,
"a": answered_by}``; ``signature`` is unpadded URL-safe base64 of
``HMAC-SHA256(secret, "cp2." + payload)``. The token uses only ``[A-Za-z0-9_.-]``, so it
survives XML attributes, JSON and URLs unchanged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import json
import math
import re
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "STREAM_TOKEN_VERSION",
    "ReplayGuard",
    "SignatureAlgorithm",
    "StreamClaims",
    "StreamTokenError",
    "StreamTokenReason",
    "is_stream_key",
    "mint_stream_token",
    "stream_key",
    "stream_key_matches",
    "stream_url",
    "twilio_signature",
    "twilio_url_variants",
    "validate_twilio_signature",
    "verify_stream_token",
]

SignatureAlgorithm = Literal["HMAC_SHA1", "HMAC_SHA256"]
"""``HMAC_SHA1`` with the account Auth Token is Twilio's default; ``HMAC_SHA256`` is used with a
SharedKey secret when the request carries ``X-Twilio-Webhooks-Signature-Settings``."""

Params = Mapping[str, str | Sequence[str]]

_HASHES = {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}
_DEFAULT_PORTS = {"https": "443", "wss": "443", "http": "80", "ws": "80"}


# --------------------------------------------------------------------------- Twilio signatures


def twilio_signature(
    auth_token: str,
    url: str,
    params: Params | None = None,
    *,
    algorithm: SignatureAlgorithm = "HMAC_SHA1",
) -> str:
    """The ``X-Twilio-Signature`` Twilio would send for a request to ``url`` with ``params``.

    Twilio's algorithm: the full URL (scheme, host, path and query), then every POST parameter
    as name followed by value with no separator, names sorted; a repeated name contributes its
    *distinct* values in sorted order (this matches the official SDK, which de-duplicates). The
    string is signed with HMAC-SHA1 keyed by the Auth Token and base64-encoded. GET requests
    and JSON bodies (``bodySHA256``) are signed with no params.

    Used by the local Twilio simulator to sign what it sends, and by
    :func:`validate_twilio_signature` to check what arrives.
    """
    digest = _HASHES.get(algorithm)
    if digest is None:
        raise ValueError(
            f"algorithm={algorithm!r} is not a Twilio signature algorithm; "
            f"use one of {sorted(_HASHES)}"
        )
    parts = [url]
    if params:
        for name in sorted(params):
            value = params[name]
            values = [value] if isinstance(value, str) else list(value)
            for item in sorted(set(values)):
                parts.append(name)
                parts.append(item)
    mac = hmac.new(auth_token.encode("utf-8"), "".join(parts).encode("utf-8"), digest)
    return base64.b64encode(mac.digest()).decode("ascii")


def twilio_url_variants(url: str) -> list[str]:
    """``url`` as given, plus the same URL with its default port added or removed.

    Twilio is not consistent about whether the signed URL carries the scheme's default port
    (``:443`` for ``https``/``wss``, ``:80`` for ``http``/``ws``), so a validator must accept
    both. A non-default port is part of the URL Twilio requested and is never removed (the
    official SDK strips any port; callplane stays strict), and other schemes get no variants.
    The URL is otherwise kept byte for byte: no normalisation that could change what was signed.
    """
    scheme, sep, rest = url.partition("://")
    default = _DEFAULT_PORTS.get(scheme.lower()) if sep else None
    if default is None:
        return [url]
    end = len(rest)
    for stop in "/?#":
        index = rest.find(stop)
        if index != -1:
            end = min(end, index)
    authority, tail = rest[:end], rest[end:]
    userinfo, at, hostport = authority.rpartition("@")
    prefix = f"{scheme}://{userinfo}{at}"
    if hostport.startswith("["):  # IPv6 literal: [::1]:443
        close = hostport.find("]") + 1 or len(hostport)
        host, after = hostport[:close], hostport[close:]
        port = after[1:] if after.startswith(":") else None
    elif ":" in hostport:
        host, _, port = hostport.rpartition(":")
    else:
        host, port = hostport, None
    if not host:
        return [url]
    if port is None:
        other = f"{prefix}{host}:{default}{tail}"
    elif port == default:
        other = f"{prefix}{host}{tail}"
    else:
        return [url]
    return [url, other]


def validate_twilio_signature(
    auth_token: str,
    url: str,
    params: Params | None,
    signature: str | None,
    *,
    body: bytes | str | None = None,
    algorithm: SignatureAlgorithm = "HMAC_SHA1",
) -> bool:
    """True if ``signature`` is Twilio's signature of a request to ``url`` with ``params``.

    ``url`` must be the public URL Twilio requested (what is configured on the number or in the
    TwiML), not what a server behind a proxy sees. Every variant from
    :func:`twilio_url_variants` is tried; comparisons are constant-time.

    JSON bodies: when the URL's query has ``bodySHA256`` and ``body`` (the raw request body) is
    given, the body's SHA-256 hex digest must equal that value and the signature is checked with
    no params, as Twilio signs such requests. Without ``body``, ``params`` are used as for a form.

    Returns False (never raises) for a missing, empty or non-ASCII signature, so a caller can map
    False straight to HTTP 403 or a WebSocket close.
    """
    if not signature or not isinstance(signature, str):
        return False
    try:
        expected_signature = signature.encode("ascii")
    except UnicodeEncodeError:
        return False
    body_ok = True
    if body is not None:
        hashes = parse_qs(urlsplit(url).query, keep_blank_values=True).get("bodySHA256")
        if hashes:
            raw = body.encode("utf-8") if isinstance(body, str) else body
            computed = hashlib.sha256(raw).hexdigest().encode("ascii")
            body_ok = hmac.compare_digest(computed, hashes[0].encode("utf-8", "replace"))
            params = None
    matched = False
    for variant in twilio_url_variants(url):
        candidate = twilio_signature(auth_token, variant, params, algorithm=algorithm)
        matched |= hmac.compare_digest(candidate.encode("ascii"), expected_signature)
    return body_ok and matched


# --------------------------------------------------------------------------- stream tokens

STREAM_TOKEN_VERSION = "cp2"
"""Prefix of every stream token; bump it when the payload changes so old verifiers refuse
new tokens as ``malformed`` instead of misreading them."""

_MAX_TOKEN_CHARS = 4096
_MAX_TTL_S = 3600
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_STREAM_KEY = re.compile(r"[A-Za-z0-9_-]{43}")  # an unpadded base64url HMAC-SHA256
_DIRECTIONS = ("inbound", "outbound")

StreamTokenReason = Literal[
    "malformed", "bad_signature", "expired", "wrong_call", "wrong_stream", "replayed"
]

_FIXES: dict[str, str] = {
    "malformed": (
        "pass the 'token' custom parameter from the stream's start message unchanged; it must "
        f"look like '{STREAM_TOKEN_VERSION}.<payload>.<signature>'"
    ),
    "bad_signature": (
        "the edge worker and the media function must share the same stream_secret; "
        "check both deployments' secrets"
    ),
    "expired": (
        "the media stream must connect within the token's lifetime (60 s) after the voice "
        "webhook; check for a slow reconnect or clock skew between the edge and media hosts"
    ),
    "wrong_call": (
        "a token admits only the call it was minted for; do not reuse TwiML across calls"
    ),
    "wrong_stream": (
        "open the <Stream url> of the TwiML that carried the token, unchanged: its last path "
        "segment is the key of that token and admits no other"
    ),
    "replayed": (
        "a call gets one media stream, ever; a repeated stream, a replayed token or a replayed "
        "voice webhook for the same CallSid cannot open another"
    ),
}


class StreamTokenError(ValueError):
    """A stream token was refused. ``reason`` is machine-readable (for counters and close codes);
    the message names the reason and the fix, and never contains the token itself."""

    reason: StreamTokenReason

    def __init__(self, reason: StreamTokenReason, detail: str) -> None:
        self.reason = reason
        super().__init__(f"stream token refused ({reason}): {detail}. Fix: {_FIXES[reason]}")


@dataclass(frozen=True)
class StreamClaims:
    """What a verified stream token says: the call it admits, the agent profile and media region
    the edge routed it to, when it stops being valid (Unix seconds), its nonce, and the call's
    facts as Twilio's signed voice webhook gave them to the edge: the caller (``from_``), the
    called number (``to``), the country (the caller's, or the callee's for an outbound call),
    the direction (``inbound`` or ``outbound``) and the answering-machine result (``answered_by``,
    empty when Twilio sent none). Records take these, never a stream's unsigned parameters."""

    call_sid: str
    profile: str
    region: str
    expires_at: int
    nonce: str
    from_: str = ""
    to: str = ""
    country: str = ""
    direction: str = "inbound"
    answered_by: str = ""


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded URL-safe base64")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, signed_part: str) -> bytes:
    return hmac.new(secret.encode("utf-8"), signed_part.encode("ascii"), hashlib.sha256).digest()


def _require_text(field: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field}={value!r} is invalid: {field} must be a non-empty string")
    return value


def mint_stream_token(
    secret: str,
    call_sid: str,
    profile: str,
    region: str,
    *,
    now: float,
    ttl_s: int = 60,
    nonce: str | None = None,
    from_: str = "",
    to: str = "",
    country: str = "",
    direction: str = "inbound",
    answered_by: str = "",
) -> str:
    """A signed token admitting one media stream for ``call_sid``.

    The edge calls this when it answers the voice webhook and puts the result in the TwiML
    ``<Parameter name="token">`` (and its key in the stream URL, :func:`stream_url`); the media
    function checks it with :func:`verify_stream_token`. ``from_``, ``to``, ``country``,
    ``direction`` and ``answered_by`` are the call's facts from the signed webhook, signed here
    so that the media plane can trust them (see :class:`StreamClaims`). ``now`` is passed in
    (Unix seconds) so the function is pure and testable; ``nonce`` defaults to 96 random bits
    and exists as a parameter only for deterministic tests. The token expires at
    ``floor(now + ttl_s)``: never later than ``ttl_s`` seconds from now.
    """
    if not isinstance(secret, str) or not secret:
        raise ValueError(
            "stream secret is empty: set stream_secret to a long random string shared by the "
            "edge worker and the media function"
        )
    _require_text("call_sid", call_sid)
    _require_text("profile", profile)
    _require_text("region", region)
    for name, value in (
        ("from_", from_),
        ("to", to),
        ("country", country),
        ("answered_by", answered_by),
    ):
        if not isinstance(value, str):
            raise ValueError(f"{name}={value!r} is invalid: {name} must be a string (may be empty)")
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction={direction!r} is invalid: use 'inbound' or 'outbound'")
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 0 < ttl_s <= _MAX_TTL_S:
        raise ValueError(
            f"ttl_s={ttl_s!r} is invalid: use a whole number of seconds from 1 to {_MAX_TTL_S} "
            "(stream tokens are meant to be short-lived; 60 is the default)"
        )
    if not math.isfinite(now):
        raise ValueError(f"now={now!r} is invalid: pass the current Unix time, e.g. time.time()")
    claims = {
        "c": call_sid,
        "p": profile,
        "r": region,
        "e": math.floor(now + ttl_s),
        "n": _require_text("nonce", nonce) if nonce is not None else secrets.token_urlsafe(12),
        "f": from_,
        "t": to,
        "k": country,
        "d": direction,
        "a": answered_by,
    }
    payload = _b64encode(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
    signed_part = f"{STREAM_TOKEN_VERSION}.{payload}"
    return f"{signed_part}.{_b64encode(_sign(secret, signed_part))}"


def verify_stream_token(secret: str, token: str, call_sid: str, *, now: float) -> StreamClaims:
    """Check a stream token and return its claims, or raise :class:`StreamTokenError`.

    Checks, in order: shape (``malformed``), HMAC in constant time (``bad_signature``), the
    CallSid of the stream it arrived on (``wrong_call``) and the clock (``expired``: refused once
    ``now >= expires_at``). That the stream URL was made for this token is
    :func:`stream_key_matches`; single use is not checked here, because it needs state: the
    media plane admits one stream per CallSid in its shared state (:class:`ReplayGuard` does it
    per token in one process).
    """
    if not isinstance(secret, str) or not secret:
        raise ValueError(
            "stream secret is empty: configure the same stream_secret as the edge worker"
        )
    if not isinstance(token, str) or not token:
        raise StreamTokenError("malformed", "no token was presented")
    if len(token) > _MAX_TOKEN_CHARS:
        raise StreamTokenError("malformed", f"the token is {len(token)} characters long")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != STREAM_TOKEN_VERSION:
        raise StreamTokenError(
            "malformed", f"expected 3 dot-separated parts starting with '{STREAM_TOKEN_VERSION}'"
        )
    try:
        presented = _b64decode(parts[2])
        raw_payload = _b64decode(parts[1])
    except (ValueError, binascii.Error):
        raise StreamTokenError("malformed", "the token is not URL-safe base64") from None
    expected = _sign(secret, f"{parts[0]}.{parts[1]}")
    if not hmac.compare_digest(expected, presented):
        raise StreamTokenError("bad_signature", "the token's HMAC does not match")
    try:
        data = json.loads(raw_payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise StreamTokenError("malformed", "the signed payload is not JSON") from None
    if not isinstance(data, dict):
        raise StreamTokenError("malformed", "the signed payload is not a JSON object")
    text_fields = {"c": "call_sid", "p": "profile", "r": "region", "n": "nonce"}
    for key, name in text_fields.items():
        if not isinstance(data.get(key), str) or not data[key]:
            raise StreamTokenError("malformed", f"the signed payload has no {name}")
    call_fields = {"f": "from", "t": "to", "k": "country", "a": "answered_by"}
    for key, name in call_fields.items():
        if not isinstance(data.get(key), str):
            raise StreamTokenError("malformed", f"the signed payload has no {name}")
    if data.get("d") not in _DIRECTIONS:
        raise StreamTokenError("malformed", "the signed payload has no direction")
    expires_at = data.get("e")
    if isinstance(expires_at, bool) or not isinstance(expires_at, int):
        raise StreamTokenError("malformed", "the signed payload has no integer expiry")
    claims = StreamClaims(
        call_sid=data["c"],
        profile=data["p"],
        region=data["r"],
        expires_at=expires_at,
        nonce=data["n"],
        from_=data["f"],
        to=data["t"],
        country=data["k"],
        direction=data["d"],
        answered_by=data["a"],
    )
    if claims.call_sid != call_sid:
        raise StreamTokenError(
            "wrong_call",
            f"the token was minted for call {claims.call_sid!r} but arrived on call {call_sid!r}",
        )
    if now >= claims.expires_at:
        raise StreamTokenError(
            "expired",
            f"the token expired at {claims.expires_at} and it is now {math.floor(now)} "
            f"({now - claims.expires_at:.1f} s late)",
        )
    return claims


def stream_key(token: str) -> str:
    """The per-call key of ``token``'s stream URL: the token's own HMAC, 43 URL-safe characters.

    Only the edge, holding the stream secret, can mint a token and so a key; Twilio signs the
    upgrade over the URL that carries it. Raises ValueError for something that is not shaped
    like a stream token (the edge only ever passes its own).
    """
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3 or parts[0] != STREAM_TOKEN_VERSION or not _STREAM_KEY.fullmatch(parts[2]):
        raise ValueError(
            f"not a '{STREAM_TOKEN_VERSION}' stream token: pass what mint_stream_token returned"
        )
    return parts[2]


def stream_url(media_url: str, token: str) -> str:
    """The ``<Stream url>`` for ``token``: ``media_url`` (``wss://host/twilio/media``) plus ``/``
    and :func:`stream_key`. One URL per token, so Twilio's upgrade signature is per call."""
    return f"{media_url}/{stream_key(token)}"


def stream_key_matches(key: str, token: str) -> bool:
    """True if ``key`` (the stream URL's last path segment, which Twilio's upgrade signature
    covers) was made for ``token`` (from the stream's ``start`` message). Constant-time; False
    for anything malformed, never raises."""
    if not isinstance(key, str) or not _STREAM_KEY.fullmatch(key):
        return False
    try:
        expected = stream_key(token)
    except ValueError:
        return False
    return hmac.compare_digest(expected.encode("ascii"), key.encode("ascii"))


def is_stream_key(text: str) -> bool:
    """True if ``text`` has the shape of a stream URL key (43 URL-safe base64 characters): what
    a server checks on the upgrade's path before it computes any signature."""
    return isinstance(text, str) and _STREAM_KEY.fullmatch(text) is not None


class ReplayGuard:
    """Remembers the nonces of accepted stream tokens until they expire, so a token admits one
    stream in this process.

    Memory is bounded twice: entries are pruned as soon as their token expires (a min-heap keyed
    by expiry), and at most ``max_entries`` live nonces are kept, evicting those closest to
    expiry first. The state is per process and per token: a replayed voice webhook mints a new
    token for the same call. The media plane therefore admits one stream per CallSid in its
    shared state (``callplane.coordination.CallStreams``), which covers every container and
    every token of a call. Thread-safe.
    """

    def __init__(self, max_entries: int = 65_536) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries={max_entries!r} is invalid: use a positive integer")
        self.max_entries = max_entries
        self._expiry: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """How many nonces are remembered right now (expired ones go at the next check)."""
        return len(self._expiry)

    def check_and_remember(self, claims: StreamClaims, *, now: float) -> None:
        """Accept ``claims`` once: raises :class:`StreamTokenError` with reason ``replayed`` if
        its nonce was already accepted and has not expired (``expired`` if it already expired)."""
        with self._lock:
            self._prune(now)
            if claims.nonce in self._expiry:
                raise StreamTokenError(
                    "replayed", f"the token for call {claims.call_sid!r} was already used"
                )
            if now >= claims.expires_at:
                raise StreamTokenError(
                    "expired", f"the token expired at {claims.expires_at}, before its first use"
                )
            while len(self._expiry) >= self.max_entries:
                _, oldest = heapq.heappop(self._heap)
                self._expiry.pop(oldest, None)
            self._expiry[claims.nonce] = claims.expires_at
            heapq.heappush(self._heap, (claims.expires_at, claims.nonce))

    def _prune(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, nonce = heapq.heappop(self._heap)
            self._expiry.pop(nonce, None)
