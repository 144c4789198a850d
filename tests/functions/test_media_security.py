"""The media WebSocket refuses unauthenticated and replayed streams before any Realtime session
opens, on both servers that accept streams: the FastAPI route and the picows stream server.

A stream must come through the per-call URL the edge wrote (Twilio signs the upgrade over it),
carry the token that URL was made for, and be the first stream of its CallSid; the record takes
the call's facts from the token, never from the stream's unsigned custom parameters.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from callplane.profiles import AgentProfile
from callplane.security import mint_stream_token, stream_url
from callplane_standins.realtime_engine.server import EngineServer
from callplane_standins.serving import bind_loopback
from functions.media import create_app
from functions.media_streams import CLOSE_BAD_TOKEN
from functions.stream_server import StreamServer
from tests.servers import serve_asgi
from tests.support.media import (
    PUBLIC_MEDIA_URL,
    STREAM_SECRET,
    TWILIO_AUTH_TOKEN,
    close_code,
    media_settings,
    signed,
    start_frame,
    token_for,
)
from tests.support.waiting import until

PROFILES = {"support": AgentProfile(name="support")}


@dataclass(frozen=True)
class Media:
    """One media server under test: its stream base URL (``ws://…/twilio/media``) and the app
    whose streams it serves (stats, records)."""

    base: str
    app: FastAPI

    def url(self, token: str) -> str:
        """Where Twilio opens ``token``'s stream on this server."""
        return stream_url(self.base, token)

    @property
    def stats(self) -> Any:
        return self.app.state.stats

    def record(self, call_sid: str) -> dict[str, Any] | None:
        store = self.app.state.store
        store.flush_sync()
        found: dict[str, Any] | None = store.get(call_sid)
        return found


@pytest.fixture(params=["asgi", "picows"])
async def media(
    engine: EngineServer, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Media]:
    app = create_app(media_settings(tmp_path, PROFILES, engine=engine))
    if request.param == "asgi":
        async with serve_asgi(app) as base:
            yield Media(base.replace("http://", "ws://") + "/twilio/media", app)
        return
    server = StreamServer(app.state.streams)
    sock = bind_loopback()
    await server.start(sock)
    try:
        yield Media(f"ws://127.0.0.1:{sock.getsockname()[1]}/twilio/media", app)
    finally:
        await server.stop()


async def refused_with(url: str, headers: dict[str, str], frames: list[str]) -> int | None:
    async with connect(url, additional_headers=headers) as ws:
        for frame in frames:
            await ws.send(frame)
        return await close_code(ws)


async def upgrade_status(url: str, headers: dict[str, str]) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, additional_headers=headers):
            pass
    return info.value.response.status_code


async def greeted(ws: ClientConnection) -> None:
    """Wait for the agent's first frame: the call is live (a Realtime session is open)."""
    first = json.loads(await ws.recv())
    assert first["event"] in ("media", "mark")


def stop_frame(call_sid: str) -> str:
    return json.dumps({"event": "stop", "stop": {"callSid": call_sid}, "streamSid": "MZ1"})


async def test_unsigned_and_wrongly_signed_upgrades_are_refused(
    media: Media, engine: EngineServer
) -> None:
    url = media.url(token_for("CA_unsigned"))
    for headers in ({}, {"X-Twilio-Signature": "bm90IGl0"}):
        assert await upgrade_status(url, headers) == 403
    assert engine.sessions_opened == 0


async def test_an_upgrade_signature_admits_only_the_url_it_was_made_for(
    media: Media, engine: EngineServer
) -> None:
    validator = RequestValidator(TWILIO_AUTH_TOKEN)
    # the bare media URL, the same for every call: signed, but it names no call
    bare = {"X-Twilio-Signature": validator.compute_signature(PUBLIC_MEDIA_URL, {})}
    assert await upgrade_status(media.base, bare) == 403
    # a key that is not one, signed over its own URL
    odd = PUBLIC_MEDIA_URL + "/not-a-stream-key"
    odd_signed = {"X-Twilio-Signature": validator.compute_signature(odd, {})}
    assert await upgrade_status(media.base + "/not-a-stream-key", odd_signed) == 403
    # one call's upgrade signature on another call's (or another token's) URL
    first, second = token_for("CA_first"), token_for("CA_first")
    assert await upgrade_status(media.url(second), signed(first)) == 403
    assert media.stats["refused_no_key"] == 2 and media.stats["refused_signature"] == 1
    assert engine.sessions_opened == 0


@pytest.mark.parametrize(
    ("case", "token_for_call", "minted_at"),
    [
        ("garbage token", None, 0.0),
        ("token for another call", "CA_other", 0.0),
        ("expired token", "CA_expired", -120.0),
    ],
)
async def test_bad_stream_tokens_are_refused_before_any_realtime_session(
    media: Media, engine: EngineServer, case: str, token_for_call: str | None, minted_at: float
) -> None:
    call_sid = "CA_expired" if case == "expired token" else "CA_this_call"
    minted = mint_stream_token(
        STREAM_SECRET, token_for_call or call_sid, "support", "local", now=time.time() + minted_at
    )
    token = "garbage" if token_for_call is None else minted
    # the upgrade is Twilio's, for the URL of the token that was minted
    code = await refused_with(
        media.url(minted),
        signed(minted),
        [json.dumps({"event": "connected"}), start_frame(call_sid, token)],
    )
    assert code == CLOSE_BAD_TOKEN, case
    assert engine.sessions_opened == 0, case


async def test_a_captured_upgrade_does_not_carry_a_token_from_a_replayed_webhook(
    media: Media, engine: EngineServer
) -> None:
    """The first webhook's upgrade (URL and signature) with the token a replay of the same
    webhook gets: a good token for the right call, on a URL made for another token."""
    original, replayed = token_for("CA_capture"), token_for("CA_capture")
    code = await refused_with(
        media.url(original), signed(original), [start_frame("CA_capture", replayed)]
    )
    assert code == CLOSE_BAD_TOKEN
    assert media.stats["refused_token_wrong_stream"] == 1
    assert engine.sessions_opened == 0
    # refused before the call was claimed: Twilio's own stream for it still connects
    async with connect(media.url(original), additional_headers=signed(original)) as ws:
        await ws.send(start_frame("CA_capture", original))
        await greeted(ws)
        await ws.send(stop_frame("CA_capture"))
    assert engine.sessions_opened == 1


async def test_a_second_stream_for_a_live_call_is_refused(
    media: Media, engine: EngineServer
) -> None:
    token = token_for("CA_replay")
    async with connect(media.url(token), additional_headers=signed(token)) as ws:
        await ws.send(start_frame("CA_replay", token))
        await greeted(ws)
        code = await refused_with(
            media.url(token), signed(token), [start_frame("CA_replay", token)]
        )
        assert code == CLOSE_BAD_TOKEN
        await ws.send(stop_frame("CA_replay"))
    assert engine.sessions_opened == 1
    assert media.stats["refused_token_replayed"] == 1


async def test_a_finished_call_gets_no_second_stream_even_with_a_fresh_token(
    media: Media, engine: EngineServer
) -> None:
    """After the call ended, the same webhook replayed gives a fresh token and URL; even with
    Twilio's signature on that URL, the call's one stream was used: refused, record unchanged."""
    first = token_for("CA_done", from_="+15557654321", to="+15550001111", country="US")
    async with connect(media.url(first), additional_headers=signed(first)) as ws:
        await ws.send(start_frame("CA_done", first))
        await greeted(ws)
        await ws.send(stop_frame("CA_done"))
    await until(lambda: (media.record("CA_done") or {}).get("status") == "ended", 15, "the end")
    finished = media.record("CA_done")
    assert finished is not None and finished["end_reason"] == "caller_hung_up"

    again = token_for("CA_done", from_="+15557654321", to="+15550001111", country="US")
    code = await refused_with(media.url(again), signed(again), [start_frame("CA_done", again)])
    assert code == CLOSE_BAD_TOKEN
    assert engine.sessions_opened == 1
    assert media.stats["refused_token_replayed"] == 1
    assert media.record("CA_done") == finished


async def test_the_record_takes_the_signed_facts_not_the_unsigned_parameters(
    media: Media, engine: EngineServer
) -> None:
    token = token_for("CA_facts", from_="+15557654321", to="+15550001111", country="US")
    lies = {"from": "+19995550000", "to": "+19995551111", "country": "KP", "profile": "vip"}
    async with connect(media.url(token), additional_headers=signed(token)) as ws:
        await ws.send(start_frame("CA_facts", token, parameters=lies))
        await greeted(ws)
        await ws.send(stop_frame("CA_facts"))
    await until(lambda: (media.record("CA_facts") or {}).get("status") == "ended", 15, "the end")
    record = media.record("CA_facts")
    assert record is not None
    assert (record["from"], record["to"], record["country"]) == (
        "+15557654321",
        "+15550001111",
        "US",
    )
    assert (record["profile"], record["direction"]) == ("support", "inbound")
    assert media.stats["ignored_unsigned_parameters"] == 1
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
            async with connect(other, additional_headers=signed(token_for("CA_path"))):
                pass
        assert info.value.response.status_code == 404
        assert b"/twilio/media/<key>" in info.value.response.body
    finally:
        await server.stop()
