"""Fixtures for the playground tests: the built page, a stand-in edge serving it, a real LiveKit.

The stand-in edge is deliberately tiny: it serves web/dist under /playground/ and answers
``POST /token`` with the JSON contract the real edge honours (``{"room", "profile", "agent"}`` in,
``{"token", "url", "room", "identity", "expires_at"}`` out), minting a real livekit-api token for
the test's real livekit-server. That lets these tests prove the page's side of the contract
while the edge's own route is written and tested elsewhere.
"""

from __future__ import annotations

import datetime
import secrets
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

from tests.livekit_server import LiveKitServer, livekit_server_fixture
from tests.servers import serve_asgi

REPO = Path(__file__).resolve().parents[2]
DIST = REPO / "web" / "dist"
DIST_FILES = {
    "index.html": "text/html; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}
WEB_KEY = "web-test-key-0123456789"
SIGNED_LINK = "link-test-0123456789"

livekit = livekit_server_fixture()


@pytest.fixture(scope="session")
def dist() -> Path:
    """web/dist, built (or found up to date) by the same script setup uses."""
    result = subprocess.run(
        [str(REPO / "scripts" / "build_web.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"scripts/build_web.sh failed:\n{result.stdout}{result.stderr}"
    return DIST


@dataclass
class TokenEndpoint:
    """The stand-in edge's token minting and what it was asked."""

    livekit: LiveKitServer | None
    key: str = WEB_KEY
    link: str = SIGNED_LINK
    requests: list[dict[str, Any]] = field(default_factory=list)
    identities: list[str] = field(default_factory=list)
    refusal: int | None = None
    """When set, every request is refused with this status (as the edge would: 403, 429)."""

    def authorised(self, request: Request) -> bool:
        return (
            request.headers.get("authorization") == f"Bearer {self.key}"
            or request.query_params.get("link") == self.link
        )

    def mint(self, room: str) -> dict[str, Any]:
        if self.livekit is None:
            raise HTTPException(503, "no LiveKit server in this test")
        identity = f"web-{secrets.token_hex(3)}"
        self.identities.append(identity)
        ttl = datetime.timedelta(minutes=5)
        token = self.livekit.token(identity, room, name="Web user", ttl=ttl)
        expires = datetime.datetime.now(datetime.UTC) + ttl
        return {
            "token": token,
            "url": self.livekit.url,
            "room": room,
            "identity": identity,
            "expires_at": expires.isoformat(timespec="seconds"),
        }


def site_app(dist: Path, endpoint: TokenEndpoint) -> FastAPI:
    """The page under /playground/ and a token endpoint at /token, like the edge."""
    app = FastAPI()

    @app.get("/playground")
    async def playground_redirect() -> RedirectResponse:
        return RedirectResponse("/playground/")

    @app.get("/playground/")
    async def playground_index() -> FileResponse:
        return FileResponse(dist / "index.html", media_type=DIST_FILES["index.html"])

    @app.get("/playground/{name}")
    async def playground_file(name: str) -> FileResponse:
        if name not in DIST_FILES:
            raise HTTPException(404)
        return FileResponse(dist / name, media_type=DIST_FILES[name])

    @app.post("/token")
    async def token(request: Request) -> JSONResponse:
        body = await request.json()
        endpoint.requests.append(
            {
                "body": body,
                "authorization": request.headers.get("authorization"),
                "link": request.query_params.get("link"),
            }
        )
        if not endpoint.authorised(request):
            return JSONResponse({"detail": "invalid web key"}, status_code=401)
        if endpoint.refusal == 429:
            return JSONResponse(
                {"detail": "rate limited"}, status_code=429, headers={"Retry-After": "7"}
            )
        if endpoint.refusal is not None:
            return JSONResponse({"detail": "refused"}, status_code=endpoint.refusal)
        room = body.get("room")
        if not isinstance(room, str) or not room:
            return JSONResponse({"detail": "room is required"}, status_code=400)
        return JSONResponse(endpoint.mint(room))

    return app


@dataclass(frozen=True)
class Site:
    origin: str
    endpoint: TokenEndpoint

    def playground(self, **params: str) -> str:
        """The playground URL with query parameters (``key=``, ``room=``, …)."""
        query = f"?{urlencode(params)}" if params else ""
        return f"{self.origin}/playground/{query}"


@pytest.fixture
async def site(dist: Path) -> AsyncIterator[Site]:
    """The stand-in edge without a LiveKit server (page loading, token errors)."""
    endpoint = TokenEndpoint(livekit=None)
    async with serve_asgi(site_app(dist, endpoint)) as origin:
        yield Site(origin, endpoint)


@pytest.fixture
async def live_site(dist: Path, livekit: LiveKitServer) -> AsyncIterator[Site]:
    """The stand-in edge minting tokens for the module's real livekit-server."""
    endpoint = TokenEndpoint(livekit=livekit)
    async with serve_asgi(site_app(dist, endpoint)) as origin:
        yield Site(origin, endpoint)
