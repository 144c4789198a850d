"""Signed playground links: a URL parameter that lets a browser mint a token for one room until
a deadline, without holding a long-lived web key.

A link is ``l1.<expires_at>.<signature>`` where ``signature`` is the unpadded base64url
HMAC-SHA256, keyed with ``livekit.link_secret``, of ``"callplane-web-link\\n<room>\\n<expires_at>"``
(``expires_at`` in whole Unix seconds). Send it as ``POST /token?link=<link>``. Anyone holding the
secret can mint links, e.g.::

    python -c "from edge_worker.web_links import sign_web_link; import time;
    print(sign_web_link('<link_secret>', 'demo', int(time.time()) + 3600))"

Standard library only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

__all__ = ["LINK_VERSION", "sign_web_link", "verify_web_link"]

LINK_VERSION = "l1"
_LINK = re.compile(r"l1\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})")


def sign_web_link(secret: str, room: str, expires_at: int) -> str:
    """A link valid for ``room`` until ``expires_at`` (Unix seconds, inclusive)."""
    if not secret:
        raise ValueError("link_secret is empty: set livekit.link_secret in the edge config")
    if isinstance(expires_at, bool) or not isinstance(expires_at, int) or expires_at < 0:
        raise ValueError(
            f"expires_at={expires_at!r} is invalid: give whole Unix seconds, e.g. "
            "int(time.time()) + 3600"
        )
    return f"{LINK_VERSION}.{expires_at}.{_signature(secret, room, expires_at)}"


def verify_web_link(secret: str, link: str, room: str, *, now: float) -> bool:
    """True when ``link`` was made with ``secret`` for exactly ``room`` and has not expired."""
    match = _LINK.fullmatch(link)
    if match is None or not secret:
        return False
    expires_at = int(match.group(1))
    if now > expires_at:
        return False
    return hmac.compare_digest(match.group(2), _signature(secret, room, expires_at))


def _signature(secret: str, room: str, expires_at: int) -> str:
    message = f"callplane-web-link\n{room}\n{expires_at}".encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
