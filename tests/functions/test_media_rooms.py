"""A phone call on a profile with a room joins that LiveKit room through the media app.

The media app runs under uvicorn with a profile that names a room and a ``livekit`` section
pointing at a real livekit-server; the test drives ``/twilio/media/<key>`` like Twilio does
(signed upgrade, ``start`` with a stream token) and checks the room with livekit-api.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from livekit import api
from websockets.asyncio.client import connect

from callplane.media_settings import MediaSettings
from callplane.profiles import AgentProfile
from callplane.rooms.phone_audio import PHONE_FRAME, encode_payload
from callplane.security import stream_url
from callplane_standins.realtime_engine.server import EngineServer
from functions.media import create_app
from functions.media_streams import CLOSE_NO_LIVEKIT
from tests.livekit_server import LiveKitServer, livekit_server_fixture
from tests.servers import serve_asgi
from tests.support.media import MEDIA_API_KEY, close_code, media_settings, signed, token_for
from tests.support.media import start_frame as twilio_start

livekit = livekit_server_fixture()

CALLER = "+15551234567"
ROOM = "support-floor"


def settings_for(
    engine: EngineServer, tmp_path: Path, livekit: LiveKitServer | None
) -> MediaSettings:
    return media_settings(
        tmp_path,
        {"floor": AgentProfile(name="floor", room=ROOM)},
        engine=engine,
        livekit=livekit.settings() if livekit is not None else None,
    )


def floor_token(call_sid: str) -> str:
    """The edge's token for a call from CALLER to the floor's number."""
    return token_for(call_sid, "floor", from_=CALLER, to="+15550001111")


def start_frame(call_sid: str, token: str) -> str:
    return twilio_start(call_sid, token, stream_sid="MZ_floor")


@pytest.fixture
async def media(engine: EngineServer, tmp_path: Path, livekit: LiveKitServer) -> AsyncIterator[str]:
    async with serve_asgi(create_app(settings_for(engine, tmp_path, livekit))) as base:
        yield base


async def phone_in_room(server: LiveKitServer) -> api.ParticipantInfo | None:
    found = await server.participants(ROOM)
    return next((p for p in found if p.identity == "phone:" + CALLER), None)


async def test_a_call_on_a_room_profile_joins_the_room_as_the_caller(
    media: str, livekit: LiveKitServer, engine: EngineServer
) -> None:
    call_sid = "CA_floor_call"
    token = floor_token(call_sid)
    url = stream_url(media.replace("http://", "ws://") + "/twilio/media", token)
    async with connect(url, additional_headers=signed(token)) as ws:
        await ws.send(json.dumps({"event": "connected"}))
        await ws.send(start_frame(call_sid, token))
        silence = encode_payload(np.zeros(PHONE_FRAME, dtype=np.int16))
        deadline = time.monotonic() + 15
        phone = None
        while phone is None or not phone.tracks:
            assert time.monotonic() < deadline, f"no phone participant\n{livekit.log_tail()}"
            await ws.send(json.dumps({"event": "media", "media": {"payload": silence}}))
            await asyncio.sleep(0.1)
            phone = await phone_in_room(livekit)
        assert phone.kind == api.ParticipantInfo.Kind.SIP
        assert phone.attributes["callplane.call_sid"] == call_sid
        assert phone.attributes["callplane.phone"] == CALLER
        async with httpx.AsyncClient() as http:
            live = await http.get(
                f"{media}/calls/{call_sid}", headers={"Authorization": f"Bearer {MEDIA_API_KEY}"}
            )
        assert live.json()["live"] is True
        await ws.send(json.dumps({"event": "stop", "stop": {"callSid": call_sid}}))
        assert await close_code(ws) == 1000

    deadline = time.monotonic() + 10
    while await phone_in_room(livekit) is not None:
        assert time.monotonic() < deadline, "the phone participant stayed after the stream stop"
        await asyncio.sleep(0.1)
    async with httpx.AsyncClient() as http:
        stored = await http.get(
            f"{media}/calls/{call_sid}", headers={"Authorization": f"Bearer {MEDIA_API_KEY}"}
        )
    body = stored.json()
    assert body["live"] is False
    record = body["record"]
    assert record["direction"] == "inbound"
    assert record["profile"] == "floor"
    assert record["context"] == {"room": ROOM}
    assert record["end_reason"] == "caller_hung_up"
    assert record["transcript"] == []
    assert engine.sessions_opened == 0, "a room call must not open a Realtime session"


async def test_a_room_profile_without_livekit_settings_is_refused_at_load(
    engine: EngineServer, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"profiles\.floor\.room='support-floor'.*'livekit'"):
        settings_for(engine, tmp_path, None)


async def test_a_room_call_without_livekit_is_closed_with_a_clear_code(
    engine: EngineServer, tmp_path: Path, livekit: LiveKitServer
) -> None:
    # Settings that bypassed validation (built in code): the handler still refuses the call.
    settings = settings_for(engine, tmp_path, livekit).model_copy(update={"livekit": None})
    async with serve_asgi(create_app(settings)) as base:
        token = floor_token("CA_no_livekit")
        url = stream_url(base.replace("http://", "ws://") + "/twilio/media", token)
        async with connect(url, additional_headers=signed(token)) as ws:
            await ws.send(start_frame("CA_no_livekit", token))
            assert await close_code(ws) == CLOSE_NO_LIVEKIT
    assert engine.sessions_opened == 0
