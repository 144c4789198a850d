"""A Twilio media stream, from its upgrade to its call record, whichever server accepted it.

Two servers accept media streams: the media app's FastAPI route (``/twilio/media`` on the ASGI
app, what ``modal.asgi_app`` serves, through :mod:`functions.asgi_socket`) and the picows
stream server (``functions.stream_server``, the bridge's fast path). Both hand the same
:class:`MediaStreams` the upgrade's signature and then a
:class:`~callplane.transports.socket.MessageSocket`, so authentication, profiles, records and
the conversation are one piece of code with two thin adapters.

Every stream is authenticated twice before any Realtime session opens: the upgrade's
``X-Twilio-Signature`` (over the public URL, so proxies do not matter) and the stream token the
edge put in the TwiML (HMAC, bound to the CallSid, 60 s, single use).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable
from typing import Any

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
from callplane.transports.socket import MessageSocket
from callplane.transports.twilio import CallControl, TwilioMediaStream

log = logging.getLogger("callplane.media")

# Close codes for refused streams (4000-4999 are for applications).
CLOSE_BAD_SIGNATURE = 4401
CLOSE_BAD_TOKEN = 4403
CLOSE_NO_START = 4400
CLOSE_UNKNOWN_PROFILE = 4404
CLOSE_NO_LIVEKIT = 4503  # the profile names a hybrid room but no LiveKit server is configured
START_TIMEOUT_S = 10.0


class MediaStreams:
    """The media app's calls: live records, stats and the handling of each stream."""

    def __init__(
        self,
        settings: MediaSettings,
        store: RecordStore,
        dialer: Dialer | None,
        tools: dict[str, Tool],
    ) -> None:
        self.settings = settings
        self.store = store
        self.dialer = dialer
        self.replay = ReplayGuard()
        self.stats: Counter[str] = Counter()
        self.live: dict[str, CallRecord] = {}  # CallSid -> the record of a call in progress
        self.filler = PCMU.encode(hold_chime())
        # Resolve every profile's tools at start-up: a bad profile fails now, not mid-call.
        self.toolsets = {name: resolve_tools(p, tools) for name, p in settings.profiles.items()}

    def upgrade_allowed(self, signature: str, peer: object) -> bool:
        """Check the upgrade's X-Twilio-Signature (over the public media URL, no params)."""
        if validate_twilio_signature(
            self.settings.twilio_auth_token, self.settings.public_media_url, {}, signature
        ):
            return True
        self.stats["refused_signature"] += 1
        log.warning("media stream refused: bad or missing X-Twilio-Signature from %s", peer)
        return False

    async def serve(self, socket: MessageSocket) -> None:
        """One accepted stream: check its start and token, run the call, save its record."""
        settings, stats = self.settings, self.stats
        start = await _read_start(socket)
        if start is None:
            stats["refused_no_start"] += 1
            log.warning("media stream refused: no start message within %.0f s", START_TIMEOUT_S)
            await socket.close(CLOSE_NO_START)
            return
        try:
            claims = verify_stream_token(
                settings.stream_secret,
                start.custom_parameters.get("token", ""),
                start.call_sid,
                now=time.time(),
            )
            self.replay.check_and_remember(claims, now=time.time())
        except StreamTokenError as exc:
            stats[f"refused_token_{exc.reason}"] += 1
            log.warning(
                "media stream for call %s refused: stream token %s", start.call_sid, exc.reason
            )
            await socket.close(CLOSE_BAD_TOKEN)
            return
        profile = settings.profiles.get(claims.profile)
        if profile is None:
            stats["refused_profile"] += 1
            log.error("call %s: profile %r is not configured here", start.call_sid, claims.profile)
            await socket.close(CLOSE_UNKNOWN_PROFILE)
            return
        params = start.custom_parameters
        context: dict[str, Any] = {}
        answered_by = None
        outbound = params.get("direction") == "outbound"
        if outbound and self.dialer is not None:
            job = await _outbound_job(self.dialer, start.call_sid)
            if job is not None:  # placed by this app: its profile and context
                profile, context = job.profile, dict(job.request.context)
        if outbound:
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
                await socket.close(CLOSE_NO_LIVEKIT)
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
                self.toolsets[profile.name],
                settings.realtime(),
                record,
                context=context,
                filler=self.filler,
                answered_by=answered_by,
            ).run()
        stats["active"] += 1
        self.live[start.call_sid] = record
        try:
            await running
        finally:
            stats["active"] -= 1
            await self.store.save_async(record)  # never a blocking commit on the loop
            self.live.pop(start.call_sid, None)
            # Twilio usually closed the stream first (the call ended); that is not an error.
            await socket.close()


async def _outbound_job(dialer: Dialer, call_sid: str) -> OutboundJob | None:
    """The request behind an outbound call; Calls.create may still be returning its CallSid
    when Twilio already opens the stream, so wait a moment for it."""
    for _ in range(40):
        job = dialer.by_call_sid.get(call_sid)
        if job is not None:
            return job
        await asyncio.sleep(0.05)
    return None


async def _read_start(socket: MessageSocket) -> tp.Start | None:
    """Skip ``connected``; return the ``start`` frame, or None if it does not come in time.
    What follows ``start`` stays held in the socket for the call's transport."""
    reader = _StartReader(socket)
    socket.listen(reader)
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            return await reader.start
    except TimeoutError:
        return None
    finally:
        reader.stop()


class _StartReader:
    """Listens to a new stream until its ``start`` (at most three frames), then lets go."""

    def __init__(self, socket: MessageSocket) -> None:
        self.socket = socket
        self.start: asyncio.Future[tp.Start | None] = asyncio.get_running_loop().create_future()
        self._frames = 0

    def on_text(self, data: bytes) -> None:
        self._frames += 1
        parsed = tp.parse(data.decode("utf-8", "replace"))
        if isinstance(parsed, tp.Start):
            self._found(parsed)
        elif self._frames >= 3:
            self._found(None)

    def on_binary(self, data: bytes) -> None:
        self._found(None)

    def on_close(self, code: int | None, reason: str) -> None:
        self._found(None)

    def _found(self, start: tp.Start | None) -> None:
        self.stop()  # frames after this one wait in the socket for the transport
        if not self.start.done():
            self.start.set_result(start)

    def stop(self) -> None:
        if not self.start.done():
            self.socket.listen(None)
