"""A phone call on a profile with a room joins that LiveKit room through the media app.

The media app runs under uvicorn with a profile that names a room and a ``livekit`` section
pointing at a real livekit-server; the test drives ``/twilio/media`` like Twilio does (signed
upgrade, ``start`` with a stream token) and checks the room with livekit-api.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from livekit import api
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from callplane.media_settings import MediaSettings
from callplane.profiles import AgentProfile
from callplane.rooms.phone_audio import PHONE_FRAME, encode_payload
from callplane.security import mint_stream_token
from callplane_standins.realtime_engine.server import EngineServer
from functions.media import create_app
from functions.media_streams import CLOSE_NO_LIVEKIT
from tests.livekit_server import LiveKitServer, livekit_server_fixture
from tests.servers import serve_asgi

livekit = livekit_server_fixture()

AUTH_TOKEN = "twilio-auth-token-for-tests"
SECRET = "stream-secret-for-tests-0123456789"
PUBLIC_URL = "wss://media.example.com/twilio/media"
API_KEY = "calls-api-key"
CALLER = "+15551234567"
ROOM = "support-floor"


def settings_for(
    engine: EngineServer, tmp_path: Path, livekit: LiveKitServer | None
) -> MediaSettings:
    fields: dict[str, Any] = {
        "public_media_url": PUBLIC_URL,
        "stream_secret": SECRET,
        "api_key": API_KEY,
        "twilio_account_sid": "AC" + "0" * 32,
        "twilio_auth_token": AUTH_TOKEN,
        "realtime_url": engine.url,
        "realtime_api_key": "test",
        "profiles": {"floor": AgentProfile(name="floor", room=ROOM)},
        "records_path": tmp_path / "records.sqlite3",
    }
    if livekit is not None:
        fields["livekit"] = livekit.settings()
    return MediaSettings(**fields)


def signed() -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL, {})}


def start_frame(call_sid: str) -> str:
    token = mint_stream_token(SECRET, call_sid, "floor", "local", now=time.time())
    return json.dumps(
        {
            "event": "start",
            "streamSid": "MZ_floor",
            "start": {
                "streamSid": "MZ_floor",
                "accountSid": "AC" + "0" * 32,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "customParameters": {"token": token, "from": CALLER, "to": "+15550001111"},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )


@pytest.fixture
async def media(engine: EngineServer, tmp_path: Path, livekit: LiveKitServer) -> AsyncIterator[str]:
    async with serve_asgi(create_app(settings_for(engine, tmp_path, livekit))) as base:
        yield base


async def close_code(ws: ClientConnection) -> int | None:
    """Read until the server closes the stream; its close code."""
    try:
        while True:
            await ws.recv()
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


async def phone_in_room(server: LiveKitServer) -> api.ParticipantInfo | None:
    async with server.api() as lk:
        found = await lk.room.list_participants(api.ListParticipantsRequest(room=ROOM))
    return next((p for p in found.participants if p.identity == "phone:" + CALLER), None)


async def test_a_call_on_a_room_profile_joins_the_room_as_the_caller(
    media: str, livekit: LiveKitServer, engine: EngineServer
) -> None:
    call_sid = "CA_floor_call"
    url = media.replace("http://", "ws://") + "/twilio/media"
    async with connect(url, additional_headers=signed()) as ws:
        await ws.send(json.dumps({"event": "connected"}))
        await ws.send(start_frame(call_sid))
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
                f"{media}/calls/{call_sid}", headers={"Authorization": f"Bearer {API_KEY}"}
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
            f"{media}/calls/{call_sid}", headers={"Authorization": f"Bearer {API_KEY}"}
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
        url = base.replace("http://", "ws://") + "/twilio/media"
        async with connect(url, additional_headers=signed()) as ws:
            await ws.send(start_frame("CA_no_livekit"))
            assert await close_code(ws) == CLOSE_NO_LIVEKIT
    assert engine.sessions_opened == 0
