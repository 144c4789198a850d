"""The media plane's FastAPI app: Twilio media streams in, Realtime sessions out.

Thin by design: the HTTP routes (records, outbound calls, agent dispatch) and the ASGI
``/twilio/media`` route, which hands each stream to :class:`functions.media_streams.MediaStreams`
(authentication, profiles, the conversation, the record). Modal serves this app in the cloud
(``functions/app.py``); uvicorn serves the very same app offline. The picows stream server
(``functions.stream_server``) accepts media streams for the same ``MediaStreams`` at a fraction
of the per-frame cost.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, WebSocket

from callplane.media_settings import MediaSettings
from callplane.records import RecordStore
from callplane.tools import Tool
from functions.asgi_socket import AsgiSocket
from functions.dispatch import Launcher, LocalProcessLauncher, dispatch_routes
from functions.media_streams import CLOSE_BAD_SIGNATURE, MediaStreams
from functions.outbound import outbound_routes


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

    def require_api_key(authorization: str | None) -> None:
        expected = f"Bearer {settings.api_key}"
        if authorization is None or not hmac.compare_digest(authorization, expected):
            raise HTTPException(
                401, "missing or wrong API key: send Authorization: Bearer <api_key>"
            )

    store = RecordStore(settings.records_path)
    router, dialer = outbound_routes(settings, store, require_api_key)
    streams = MediaStreams(settings, store, dialer, dict(tools or {}))
    stats, live = streams.stats, streams.live
    app.state.streams = streams
    app.state.stats = stats
    app.state.store = store
    app.state.live = live

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "active_calls": stats["active"]}

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
        if not streams.upgrade_allowed(ws.headers.get("x-twilio-signature", ""), ws.client):
            await ws.close(code=CLOSE_BAD_SIGNATURE)
            return
        await ws.accept()
        socket = AsgiSocket(ws)
        socket.start()
        try:
            await streams.serve(socket)
        finally:
            await socket.close()

    return app


def create_app_from_env(launcher: Launcher | None = None) -> FastAPI:
    """Factory for Modal and ``uvicorn --factory``: settings from ``CALLPLANE_MEDIA_CONFIG``,
    tools from the module its ``tools_module`` names."""
    settings = MediaSettings.from_env()
    return create_app(settings, settings.load_tools(), launcher=launcher)
