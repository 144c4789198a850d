"""The media WebSocket refuses unauthenticated streams before any Realtime session opens, on
both servers that accept streams: the FastAPI route and the picows stream server."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from callplane.profiles import AgentProfile
from callplane.security import mint_stream_token
from callplane_standins.realtime_engine.server import EngineServer
from callplane_standins.serving import bind_loopback
from functions.media import create_app
from functions.media_streams import CLOSE_BAD_TOKEN
from functions.stream_server import StreamServer
from tests.servers import serve_asgi
from tests.support.media import STREAM_SECRET, close_code, media_settings, signed, start_frame

PROFILES = {"support": AgentProfile(name="support")}


@pytest.fixture(params=["asgi", "picows"])
async def media(
    engine: EngineServer, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    app = create_app(media_settings(tmp_path, PROFILES, engine=engine))
    if request.param == "asgi":
        async with serve_asgi(app) as base:
            yield base.replace("http://", "ws://") + "/twilio/media"
        return
    server = StreamServer(app.state.streams)
    sock = bind_loopback()
    await server.start(sock)
    try:
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}/twilio/media"
    finally:
        await server.stop()


async def refused_with(url: str, headers: dict[str, str], frames: list[str]) -> int | None:
    async with connect(url, additional_headers=headers) as ws:
        for frame in frames:
            await ws.send(frame)
        return await close_code(ws)


async def test_unsigned_and_wrongly_signed_upgrades_are_refused(
    media: str, engine: EngineServer
) -> None:
    for headers in ({}, {"X-Twilio-Signature": "bm90IGl0"}):
        with pytest.raises(InvalidStatus) as info:
            async with connect(media, additional_headers=headers):
                pass
        assert info.value.response.status_code == 403
    assert engine.sessions_opened == 0


@pytest.mark.parametrize(
    ("case", "token_for", "minted_at"),
    [
        ("garbage token", None, 0.0),
        ("token for another call", "CA_other", 0.0),
        ("expired token", "CA_expired", -120.0),
    ],
)
async def test_bad_stream_tokens_are_refused_before_any_realtime_session(
    media: str, engine: EngineServer, case: str, token_for: str | None, minted_at: float
) -> None:
    call_sid = "CA_expired" if case == "expired token" else "CA_this_call"
    token = (
        "garbage"
        if token_for is None
        else mint_stream_token(
            STREAM_SECRET, token_for, "support", "local", now=time.time() + minted_at
        )
    )
    code = await refused_with(
        media, signed(), [json.dumps({"event": "connected"}), start_frame(call_sid, token)]
    )
    assert code == CLOSE_BAD_TOKEN, case
    assert engine.sessions_opened == 0, case


async def test_a_replayed_token_is_refused(media: str, engine: EngineServer) -> None:
    token = mint_stream_token(STREAM_SECRET, "CA_replay", "support", "local", now=time.time())
    async with connect(media, additional_headers=signed()) as ws:
        await ws.send(start_frame("CA_replay", token))
        first = json.loads(await ws.recv())  # the agent's greeting starts: the call is live
        assert first["event"] in ("media", "mark")
        code = await refused_with(media, signed(), [start_frame("CA_replay", token)])
        assert code == CLOSE_BAD_TOKEN
        await ws.send(
            json.dumps({"event": "stop", "stop": {"callSid": "CA_replay"}, "streamSid": "MZ1"})
        )
    assert engine.sessions_opened == 1


async def test_the_stream_server_serves_only_the_media_path(
    engine: EngineServer, tmp_path: Path
) -> None:
    server = StreamServer(
        create_app(media_settings(tmp_path, PROFILES, engine=engine)).state.streams
    )
    sock = bind_loopback()
    await server.start(sock)
    other = f"ws://127.0.0.1:{sock.getsockname()[1]}/other"
    try:
        with pytest.raises(InvalidStatus) as info:
            async with connect(other, additional_headers=signed()):
                pass
        assert info.value.response.status_code == 404
        assert b"/twilio/media" in info.value.response.body
    finally:
        await server.stop()
