"""The media plane's FastAPI app: Twilio media streams in, Realtime sessions out.

Thin by design: the HTTP routes (records, outbound calls, agent dispatch) and the ASGI
``/twilio/media/<key>`` route, which hands each stream to
:class:`functions.media_streams.MediaStreams`
(authentication, profiles, the conversation, the record). Modal serves this app in the cloud
(``functions/app.py``); uvicorn serves the very same app offline. The picows stream server
(``functions.stream_server``) accepts media streams for the same ``MediaStreams`` at a fraction
of the per-frame cost.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Query, WebSocket

from callplane.coordination import CoordinationUnavailable
from callplane.media_settings import MediaSettings
from callplane.tools import Tool
from functions.asgi_socket import AsgiSocket
from functions.body_limits import MAX_BODY_BYTES, BodyLimit
from functions.dispatch import Launcher, LocalProcessLauncher, dispatch_routes
from functions.media_streams import CLOSE_BAD_SIGNATURE, MediaStreams
from functions.outbound import outbound_routes

log = logging.getLogger("callplane.media")


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
    # No route buffers more than MAX_BODY_BYTES of a request body (functions/body_limits.py).
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)

    def require_api_key(authorization: str | None) -> None:
        expected = f"Bearer {settings.api_key}"
        if authorization is None or not hmac.compare_digest(authorization, expected):
            raise HTTPException(
                401, "missing or wrong API key: send Authorization: Bearer <api_key>"
            )

    store = settings.open_records()
    coordination = settings.open_coordination()
    router, dialer = outbound_routes(settings, store, coordination.outbound, require_api_key)
    streams = MediaStreams(settings, store, coordination, dict(tools or {}))
    stats, live = streams.stats, streams.live
    app.state.streams = streams
    app.state.stats = stats
    app.state.store = store
    app.state.live = live
    app.state.coordination = coordination

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "active_calls": stats["active"]}

    app.include_router(router)
    app.state.dialer = dialer
    agents_router, agents = dispatch_routes(
        settings,
        require_api_key,
        launcher or LocalProcessLauncher(settings),
        coordination.leases,
    )
    app.include_router(agents_router)
    app.state.agents = agents

    async def shutdown() -> None:
        await dialer.close()
        await agents.shutdown()
        await streams.aclose()
        await asyncio.to_thread(store.close)
        await coordination.aclose()

    app.router.on_shutdown.append(shutdown)
    app.state.shutdown = shutdown

    @app.get("/calls")
    async def calls(
        authorization: Annotated[str | None, Header()] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        since: Annotated[float | None, Query(description="Unix seconds")] = None,
        number: Annotated[str | None, Query(max_length=32)] = None,
        profile: Annotated[str | None, Query(max_length=64)] = None,
        outcome: Annotated[str | None, Query(max_length=64)] = None,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> dict[str, Any]:
        """Every call of the stack, newest first, live ones included (records are written as
        calls go); ``next`` is the cursor of the following page, null on the last."""
        require_api_key(authorization)
        try:
            found, following = await store.list_async(
                limit=limit,
                since=since,
                number=number,
                profile=profile,
                outcome=outcome,
                before=cursor,
            )
        except ValueError as exc:  # a cursor that is not one of ours
            raise HTTPException(422, str(exc)) from None
        return {"calls": found, "next": following}

    @app.get("/calls/{call_sid}")
    async def call(
        call_sid: str, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """One call's record: live while the call is on (``"live": true``), stored after."""
        require_api_key(authorization)
        try:
            current = await streams.live_record(call_sid)
        except CoordinationUnavailable as exc:  # the stored row still answers, as of its last turn
            log.warning("GET /calls/%s: live snapshot unavailable: %s", call_sid, exc)
            current = None
        if current is not None:
            return {"live": True, "record": current}
        stored = await store.get_async(call_sid)
        if stored is None:
            raise HTTPException(404, f"no call {call_sid!r} on this stack")
        return {"live": stored.get("status") == "live", "record": stored}

    async def media_stream(ws: WebSocket, key: str) -> None:
        signature = ws.headers.get("x-twilio-signature", "")
        if not streams.upgrade_allowed(key, signature, ws.client):
            await ws.close(code=CLOSE_BAD_SIGNATURE)
            return
        await ws.accept()
        socket = AsgiSocket(ws)
        socket.start()
        try:
            await streams.serve(socket, key)
        finally:
            await socket.close()

    @app.websocket("/twilio/media/{key}")
    async def twilio_media(ws: WebSocket, key: str) -> None:
        await media_stream(ws, key)

    @app.websocket("/twilio/media")
    async def twilio_media_without_key(ws: WebSocket) -> None:
        # Refused, with a log line that says why: Twilio opens the per-call URL of the TwiML.
        await media_stream(ws, "")

    return app


def create_app_from_env(launcher: Launcher | None = None) -> FastAPI:
    """Factory for Modal and ``uvicorn --factory``: settings from ``CALLPLANE_MEDIA_CONFIG``,
    tools from the module its ``tools_module`` names."""
    settings = MediaSettings.from_env()
    return create_app(settings, settings.load_tools(), launcher=launcher)
