"""The media plane's FastAPI app: Twilio media streams in, Realtime sessions out.

Thin by design: it authenticates the stream and hands the call to
:class:`callplane.conversation.Conversation`. Modal serves this app in the cloud
(``functions/app.py``); uvicorn serves the very same app offline.

Every stream is authenticated twice before any Realtime session opens: the upgrade's
``X-Twilio-Signature`` (over the public URL, so proxies do not matter) and the stream token the
edge put in the TwiML (HMAC, bound to the CallSid, 60 s, single use).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections import Counter
from collections.abc import Awaitable
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from callplane.audio import PCMU, hold_chime
from callplane.conversation import Conversation
from callplane.media_settings import MediaSettings
from callplane.outbound import Dialer, OutboundJob
from callplane.profiles import resolve_tools
from callplane.records import CallRecord, RecordStore
from callplane.rooms.phone import PhoneRoomBridge
from callplane.security import (
    ReplayGuard,
    StreamTokenError,
    validate_twilio_signature,
    verify_stream_token,
)
from callplane.tools import Tool
from callplane.transports import twilio_protocol as tp
from callplane.transports.twilio import CallControl, TwilioMediaStream
from functions.dispatch import Launcher, LocalProcessLauncher, dispatch_routes
from functions.outbound import outbound_routes

log = logging.getLogger("callplane.media")

# Close codes for refused streams (4000-4999 are for applications).
CLOSE_BAD_SIGNATURE = 4401
CLOSE_BAD_TOKEN = 4403
CLOSE_NO_START = 4400
CLOSE_UNKNOWN_PROFILE = 4404
CLOSE_NO_LIVEKIT = 4503  # the profile names a hybrid room but no LiveKit server is configured
START_TIMEOUT_S = 10.0


class _FastAPISocket:
    """Adapts FastAPI's WebSocket to the transport's TextSocket."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    async def receive(self) -> str | bytes | None:
        try:
            message = await self.ws.receive()
        except (WebSocketDisconnect, RuntimeError):
            return None
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        if text is not None:
            return str(text)
        return bytes(message.get("bytes") or b"")

    async def send_text(self, text: str) -> None:
        if self.ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                await self.ws.send_text(text)


def create_app(
    settings: MediaSettings,
    tools: dict[str, Tool] | None = None,
    *,
    launcher: Launcher | None = None,
) -> FastAPI:
    """The media app for these settings; ``tools`` are the registered tool functions.

    ``launcher`` starts the on-demand LiveKit agent jobs: a child process per room by default
    (the offline stack, a laptop), a Modal function call in the cloud (``functions/app.py``)."""
    app = FastAPI(title="callplane media", docs_url=None, redoc_url=None)
    store = RecordStore(settings.records_path)
    replay = ReplayGuard()
    registry = dict(tools or {})
    stats: Counter[str] = Counter()
    live: dict[str, CallRecord] = {}  # CallSid -> the record of a call in progress
    app.state.stats = stats
    app.state.store = store
    app.state.live = live
    filler = PCMU.encode(hold_chime())
    # Resolve every profile's tools at start-up: a bad profile fails now, not mid-call.
    toolsets = {name: resolve_tools(p, registry) for name, p in settings.profiles.items()}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "active_calls": stats["active"]}

    def require_api_key(authorization: str | None) -> None:
        expected = f"Bearer {settings.api_key}"
        if authorization is None or not hmac.compare_digest(authorization, expected):
            raise HTTPException(
                401, "missing or wrong API key: send Authorization: Bearer <api_key>"
            )

    router, dialer = outbound_routes(settings, store, require_api_key)
    app.include_router(router)
    app.state.dialer = dialer
    agents_router, agents = dispatch_routes(
        settings, require_api_key, launcher or LocalProcessLauncher(settings)
    )
    app.include_router(agents_router)
    app.router.on_shutdown.append(agents.shutdown)
    app.state.agents = agents

    @app.get("/calls")
    async def calls(
        authorization: Annotated[str | None, Header()] = None, limit: int = 50
    ) -> dict[str, Any]:
        """Finished calls, newest first (the records in the store)."""
        require_api_key(authorization)
        return {"calls": store.list(limit=min(max(limit, 1), 500))}

    @app.get("/calls/{call_sid}")
    async def call(
        call_sid: str, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """One call's record: live while the call is on (``"live": true``), stored after."""
        require_api_key(authorization)
        record = live.get(call_sid)
        if record is not None:
            return {"live": True, "record": record.to_json()}
        stored = store.get(call_sid)
        if stored is None:
            raise HTTPException(404, f"no call {call_sid!r} on this media app")
        return {"live": False, "record": stored}

    @app.websocket("/twilio/media")
    async def twilio_media(ws: WebSocket) -> None:
        signature = ws.headers.get("x-twilio-signature", "")
        if not validate_twilio_signature(
            settings.twilio_auth_token, settings.public_media_url, {}, signature
        ):
            stats["refused_signature"] += 1
            log.warning(
                "media stream refused: bad or missing X-Twilio-Signature from %s", ws.client
            )
            await ws.close(code=CLOSE_BAD_SIGNATURE)
            return
        await ws.accept()
        socket = _FastAPISocket(ws)
        start = await _read_start(socket)
        if start is None:
            stats["refused_no_start"] += 1
            log.warning("media stream refused: no start message within %.0f s", START_TIMEOUT_S)
            await ws.close(code=CLOSE_NO_START)
            return
        try:
            claims = verify_stream_token(
                settings.stream_secret,
                start.custom_parameters.get("token", ""),
                start.call_sid,
                now=time.time(),
            )
            replay.check_and_remember(claims, now=time.time())
        except StreamTokenError as exc:
            stats[f"refused_token_{exc.reason}"] += 1
            log.warning(
                "media stream for call %s refused: stream token %s", start.call_sid, exc.reason
            )
            await ws.close(code=CLOSE_BAD_TOKEN)
            return
        profile = settings.profiles.get(claims.profile)
        if profile is None:
            stats["refused_profile"] += 1
            log.error("call %s: profile %r is not configured here", start.call_sid, claims.profile)
            await ws.close(code=CLOSE_UNKNOWN_PROFILE)
            return
        params = start.custom_parameters
        context: dict[str, Any] = {}
        answered_by = None
        outbound = params.get("direction") == "outbound"
        if outbound:
            job = await _outbound_job(dialer, start.call_sid)
            if job is not None:  # placed by this app: its profile and context
                profile, context = job.profile, dict(job.request.context)
            answered_by = params.get("answered_by") or None
        livekit = settings.livekit
        if profile.room is not None:
            if livekit is None:
                stats["refused_no_livekit"] += 1
                log.error(
                    "call %s: profile %r joins room %r but the media settings have no 'livekit' "
                    "section; add one (url, api_key, api_secret) or remove the profile's room",
                    start.call_sid,
                    profile.name,
                    profile.room,
                )
                await ws.close(code=CLOSE_NO_LIVEKIT)
                return
            context = {**context, "room": profile.room}
        record = CallRecord(
            call_sid=start.call_sid,
            from_=params.get("from", ""),
            to=params.get("to", ""),
            country=params.get("country", ""),
            profile=profile.name,
            direction="outbound" if outbound else "inbound",
            answered_by=answered_by,
            context=context,
        )
        transport = TwilioMediaStream(
            socket,
            start,
            CallControl(settings.twilio(), start.call_sid),
            on_invalid=lambda r: stats.update([f"dropped_{r}"]),
        )
        running: Awaitable[CallRecord]
        if profile.room is not None and livekit is not None:
            # Hybrid room: the call joins the room and the room's agent answers everyone.
            running = PhoneRoomBridge(transport, livekit, profile, record).run()
        else:
            running = Conversation(
                transport,
                profile,
                toolsets[profile.name],
                settings.realtime(),
                record,
                context=context,
                filler=filler,
                answered_by=answered_by,
            ).run()
        stats["active"] += 1
        live[start.call_sid] = record
        try:
            await running
        finally:
            stats["active"] -= 1
            await store.save_async(record)  # never a blocking commit on the loop
            live.pop(start.call_sid, None)
            if ws.application_state == WebSocketState.CONNECTED:
                # Twilio usually closed the stream first (the call ended); that is not an error.
                with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                    await ws.close()

    return app


def create_app_from_env(launcher: Launcher | None = None) -> FastAPI:
    """Factory for Modal and ``uvicorn --factory``: settings from ``CALLPLANE_MEDIA_CONFIG``,
    tools from the module its ``tools_module`` names."""
    settings = MediaSettings.from_env()
    return create_app(settings, settings.load_tools(), launcher=launcher)


async def _outbound_job(dialer: Dialer, call_sid: str) -> OutboundJob | None:
    """The request behind an outbound call; Calls.create may still be returning its CallSid
    when Twilio already opens the stream, so wait a moment for it."""
    for _ in range(40):
        job = dialer.by_call_sid.get(call_sid)
        if job is not None:
            return job
        await asyncio.sleep(0.05)
    return None


async def _read_start(socket: _FastAPISocket) -> tp.Start | None:
    """Skip ``connected``; return the ``start`` frame, or None if it does not come in time."""
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            for _ in range(3):
                frame = await socket.receive()
                if frame is None or isinstance(frame, bytes):
                    return None
                parsed = tp.parse(frame)
                if isinstance(parsed, tp.Start):
                    return parsed
    except TimeoutError:
        return None
    return None
