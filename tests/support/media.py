"""The media app as tests meet it: :class:`MediaSettings` for a test, and a media stream the
way Twilio opens one (the edge's token, the signed WebSocket upgrade to the token's stream URL,
the ``start`` frame, the close code)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from callplane.livekit_settings import LiveKitSettings
from callplane.media_settings import MediaSettings
from callplane.profiles import AgentProfile
from callplane.security import mint_stream_token, stream_url
from callplane_standins.realtime_engine.server import EngineServer

PUBLIC_MEDIA_URL = "wss://media.example.com/twilio/media"
STREAM_SECRET = "stream-secret-for-tests-0123456789"
MEDIA_API_KEY = "calls-api-key"
ACCOUNT_SID = "AC" + "0" * 32
TWILIO_AUTH_TOKEN = "twilio-auth-token-for-tests"


def media_settings(
    tmp_path: Path,
    profiles: Mapping[str, AgentProfile],
    *,
    engine: EngineServer | None = None,
    livekit: LiveKitSettings | None = None,
    **fields: Any,
) -> MediaSettings:
    """Settings with the constants above, records under ``tmp_path``, Realtime on ``engine``
    (if given) and ``livekit`` (if given); ``fields`` set anything else."""
    values: dict[str, Any] = {
        "public_media_url": PUBLIC_MEDIA_URL,
        "stream_secret": STREAM_SECRET,
        "api_key": MEDIA_API_KEY,
        "twilio_account_sid": ACCOUNT_SID,
        "twilio_auth_token": TWILIO_AUTH_TOKEN,
        "realtime_api_key": "test",
        "profiles": dict(profiles),
        "records_path": tmp_path / "records.sqlite3",
    }
    if engine is not None:
        values["realtime_url"] = engine.url
    if livekit is not None:
        values["livekit"] = livekit
    return MediaSettings(**{**values, **fields})


def signed(token: str) -> dict[str, str]:
    """The ``X-Twilio-Signature`` header Twilio puts on the upgrade of ``token``'s stream: over
    its public URL, ``PUBLIC_MEDIA_URL`` plus the token's key, as the edge writes it."""
    url = stream_url(PUBLIC_MEDIA_URL, token)
    signature = RequestValidator(TWILIO_AUTH_TOKEN).compute_signature(url, {})
    return {"X-Twilio-Signature": signature}


def token_for(call_sid: str, profile: str = "support", **claims: Any) -> str:
    """A stream token for ``call_sid`` as the edge mints it now, region ``local``; ``claims``
    are the call's signed facts (``from_``, ``to``, ``country``, ``direction``, ...)."""
    return mint_stream_token(STREAM_SECRET, call_sid, profile, "local", now=time.time(), **claims)


def start_frame(
    call_sid: str,
    token: str,
    *,
    stream_sid: str = "MZ1",
    parameters: Mapping[str, str] | None = None,
) -> str:
    """Twilio's ``start`` message for ``call_sid`` carrying the stream ``token`` (and
    ``parameters``) as custom parameters."""
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": stream_sid,
            "start": {
                "streamSid": stream_sid,
                "accountSid": ACCOUNT_SID,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "customParameters": {"token": token, **(parameters or {})},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )


async def close_code(ws: ClientConnection) -> int | None:
    """Read until the server closes the stream; its close code."""
    try:
        while True:
            await ws.recv()
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


def agent_room_settings(
    tmp_path: Path, engine: EngineServer, livekit: LiveKitSettings
) -> MediaSettings:
    """Settings for an agent job in a room: a ``web`` profile that greets and a ``quiet`` one
    that does not, Realtime on ``engine``, rooms on ``livekit``."""
    profiles = {
        "web": AgentProfile(name="web", greeting="Greet the user."),
        "quiet": AgentProfile(name="quiet", greeting=None),
    }
    return media_settings(tmp_path, profiles, engine=engine, livekit=livekit)
