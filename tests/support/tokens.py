"""LiveKit credentials as tests present them: the edge's ``POST /token`` answer, and the
signature LiveKit's notifier puts on a webhook. (A join token minted for a test's own
livekit-server is :meth:`tests.livekit_server.LiveKitServer.token`.)"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from typing import Any

import httpx
from livekit import api


async def edge_token(
    edge_url: str, room: str, identity: str | None = None, *, key: str | None
) -> httpx.Response:
    """The edge's ``POST /token`` for ``room`` (and ``identity``), presenting ``key`` as the
    bearer web key (none if ``key`` is None)."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    body: dict[str, Any] = {"room": room}
    if identity is not None:
        body["identity"] = identity
    async with httpx.AsyncClient(base_url=edge_url, timeout=10) as client:
        return await client.post("/token", headers=headers, content=json.dumps(body))


def sign_webhook(
    body: bytes,
    key: str,
    secret: str,
    ttl: datetime.timedelta = datetime.timedelta(minutes=5),
) -> str:
    """The Authorization value LiveKit's notifier sends (bare, no Bearer): a JWT whose sha256
    claim is the body's digest."""
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return api.AccessToken(key, secret).with_sha256(digest).with_ttl(ttl).to_jwt()
