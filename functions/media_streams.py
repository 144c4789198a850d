"""A Twilio media stream, from its upgrade to its call record, whichever server accepted it.

Two servers accept media streams: the media app's FastAPI route (``/twilio/media`` on the ASGI
app, what ``modal.asgi_app`` serves, through :mod:`functions.asgi_socket`) and the picows
stream server (``functions.stream_server``, the bridge's fast path). Both hand the same
:class:`MediaStreams` the upgrade's signature and then a
:class:`~callplane.transports.socket.MessageSocket`, so authentication, profiles, records and
the conversation are one piece of code with two thin adapters.

Before any Realtime session opens, every stream must pass, in order:

1. the upgrade's ``X-Twilio-Signature``, over the public URL of this call's stream,
   ``public_media_url + "/" + key`` (so proxies do not matter, and the signature is good for
   this one URL: the edge puts a new key in each call's TwiML);
2. the stream token from the ``start`` message (HMAC, bound to the CallSid, 60 s);
3. the URL's key is that token's (:func:`~callplane.security.stream_key_matches`), so a captured
   upgrade cannot carry any other token, not even one from a replayed voice webhook;
4. the call's claim in the shared state: one media stream per CallSid, ever
   (:class:`~callplane.coordination.CallStreams`, in Redis when the app has several
   containers, so it holds on whichever container a replay lands and after the container that
   served the call is gone).

The call's record takes its numbers, country, direction and answering-machine result from the
token, which the edge signed from Twilio's signed webhook, never from the stream's other custom
parameters, which nobody signs; a parameter that disagrees with the token is logged.
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
from callplane.coordination import Coordination, CoordinationUnavailable
from callplane.media_settings import MediaSettings
from callplane.outbound import spend_day
from callplane.profiles import resolve_tools
from callplane.records import CallRecord, RecordStore
from callplane.rooms.phone import PhoneRoomBridge
from callplane.security import (
    StreamClaims,
    StreamTokenError,
    is_stream_key,
    stream_key_matches,
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
CLOSE_BAD_TOKEN = 4403  # also a second stream for a call that already had one
CLOSE_NO_START = 4400
CLOSE_UNKNOWN_PROFILE = 4404
CLOSE_NO_LIVEKIT = 4503  # the profile names a hybrid room but no LiveKit server is configured
CLOSE_UNAVAILABLE = 4504  # the shared state (Redis) is unreachable: the call cannot be claimed
START_TIMEOUT_S = 10.0

SIGNED_PARAMETERS = {
    "from": "from_",
    "to": "to",
    "country": "country",
    "profile": "profile",
    "direction": "direction",
    "answered_by": "answered_by",
}
"""Custom parameter -> the stream-token claim that decides it. The edge sends only ``token``; a
stream that carries any of these anyway is compared with the token, and the token wins."""


class MediaStreams:
    """The media app's calls: live records, stats and the handling of each stream.

    State that must hold across containers goes through ``coordination`` (which CallSids had
    their media stream, which outbound request a CallSid belongs to, the day's outbound spend,
    live-call snapshots);
    records go to ``store`` as the call goes. What stays here is this container's own: its live
    calls and its counters."""

    def __init__(
        self,
        settings: MediaSettings,
        store: RecordStore,
        coordination: Coordination,
        tools: dict[str, Tool],
    ) -> None:
        self.settings = settings
        self.store = store
        self.coordination = coordination
        self.stats: Counter[str] = Counter()
        self.live: dict[str, CallRecord] = {}  # CallSid -> the record of a call in progress
        self.filler = PCMU.encode(hold_chime())
        # Resolve every profile's tools at start-up: a bad profile fails now, not mid-call.
        self.toolsets = {name: resolve_tools(p, tools) for name, p in settings.profiles.items()}
        self._board: asyncio.Task[None] | None = None

    def upgrade_allowed(self, key: str, signature: str, peer: object) -> bool:
        """Check the upgrade to ``/twilio/media/<key>``: ``key`` must have a stream key's shape
        and X-Twilio-Signature must be Twilio's over ``public_media_url + "/" + key``, the URL
        the edge put in this call's TwiML (no params). ``key`` is empty for the bare path."""
        if not is_stream_key(key):
            self.stats["refused_no_key"] += 1
            log.warning(
                "media stream refused: the URL from %s has no per-call key; Twilio opens "
                "%s/<key> as the edge writes it in the TwiML, so deploy the edge and the media "
                "function from the same version",
                peer,
                self.settings.public_media_url,
            )
            return False
        url = f"{self.settings.public_media_url}/{key}"
        if validate_twilio_signature(self.settings.twilio_auth_token, url, {}, signature):
            return True
        self.stats["refused_signature"] += 1
        log.warning("media stream refused: bad or missing X-Twilio-Signature from %s", peer)
        return False

    async def live_record(self, call_sid: str) -> dict[str, Any] | None:
        """A live call's record as of now, from this container or the one that serves it."""
        record = self.live.get(call_sid)
        if record is not None:
            return record.to_json()
        return await self.coordination.live.get(call_sid)

    async def serve(self, socket: MessageSocket, key: str) -> None:
        """One accepted stream, upgraded at the URL with ``key`` (checked by
        :meth:`upgrade_allowed`): check its start, its token and its call's claim, run the call,
        record it as it goes."""
        settings, stats = self.settings, self.stats
        start = await _read_start(socket)
        if start is None:
            stats["refused_no_start"] += 1
            if socket.closed:
                log.warning(
                    "media stream refused: the connection ended before its start message "
                    "(close code %s%s)",
                    socket.close_code,
                    f": {socket.close_reason}" if socket.close_reason else "",
                )
            else:
                log.warning(
                    "media stream refused: no start message in its first 3 frames or within %.0f s",
                    START_TIMEOUT_S,
                )
            await socket.close(CLOSE_NO_START)
            return
        try:
            claims = await self._admit(start, key)
        except StreamTokenError as exc:
            stats[f"refused_token_{exc.reason}"] += 1
            # The message names the reason, the call and the fix; never the token or its key.
            log.warning("media stream for call %s refused: %s", start.call_sid, exc)
            await socket.close(CLOSE_BAD_TOKEN)
            return
        except CoordinationUnavailable as exc:
            stats["refused_coordination"] += 1
            log.error(
                "media stream for call %s refused: the call cannot be checked for an earlier "
                "media stream: %s",
                start.call_sid,
                exc,
            )
            await socket.close(CLOSE_UNAVAILABLE)
            return
        self._compare_unsigned(start, claims)
        profile = settings.profiles.get(claims.profile)
        if profile is None:
            stats["refused_profile"] += 1
            log.error("call %s: profile %r is not configured here", start.call_sid, claims.profile)
            await socket.close(CLOSE_UNKNOWN_PROFILE)
            return
        context: dict[str, Any] = {}
        answered_by = None
        outbound = claims.direction == "outbound"
        if outbound:
            job = await self._outbound_job(start.call_sid)
            if job is not None:  # the request behind the call, whichever container placed it
                profile = settings.profiles.get(str(job.get("profile"))) or profile
                context = dict(job.get("context") or {})
            answered_by = claims.answered_by or None
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
            from_=claims.from_,
            to=claims.to,
            country=claims.country,
            profile=profile.name,
            direction="outbound" if outbound else "inbound",
            answered_by=answered_by,
            context=context,
        )

        def dropped(reason: str) -> None:
            stats[f"dropped_{reason}"] += 1
            record.frame_dropped(reason)

        transport = TwilioMediaStream(
            socket, start, CallControl(settings.twilio(), start.call_sid), on_invalid=dropped
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
        # Written as it goes: a row now, each finished turn, tool call and interruption as it
        # happens (on the store's writer thread, never per audio frame), heartbeats meanwhile.
        self.store.call_started(record)
        record.watch(self.store.call_progress)
        self._ensure_board()
        try:
            await running
        finally:
            stats["active"] -= 1
            record.watch(None)
            self.store.call_finished(record)
            self.live.pop(start.call_sid, None)
            await self._ended(record)
            # The end is committed before the stream closes (a few ms; the writer does not
            # wait for its commit gap when flushed); an outage holds it back 2 s at most, and
            # the write stays queued until the database is back.
            await self.store.flush(timeout_s=2.0)
            # Twilio usually closed the stream first (the call ended); that is not an error.
            await socket.close()

    async def _admit(self, start: tp.Start, key: str) -> StreamClaims:
        """The claims of a stream that may open a session, or :class:`StreamTokenError`: a bad
        token, a URL made for another token (``wrong_stream``), or a call that already had its
        media stream (``replayed``). Raises :class:`CoordinationUnavailable` when the call's
        claim cannot be taken."""
        token = start.custom_parameters.get("token", "")
        claims = verify_stream_token(
            self.settings.stream_secret, token, start.call_sid, now=time.time()
        )
        if not stream_key_matches(key, token):
            raise StreamTokenError(
                "wrong_stream",
                f"the stream URL was signed for another token than the one call "
                f"{start.call_sid!r} presented",
            )
        # Taken once and never given back: the claim outlives the call and any token for it
        # (CALL_STREAM_KEEP_S), in Redis when several containers serve streams. The stream SID
        # comes from the client: cut and quoted, it only tells a reader of the logs which one.
        this = f"stream {start.stream_sid[:40]!r} on {self.store.owner}"
        first = await self.coordination.streams.claim(claims.call_sid, this)
        if first is not None:
            raise StreamTokenError(
                "replayed", f"call {claims.call_sid!r} already had its media stream ({first})"
            )
        return claims

    def _compare_unsigned(self, start: tp.Start, claims: StreamClaims) -> None:
        """Log a stream whose unsigned custom parameters disagree with its signed token (the
        token's values are the ones used): someone other than the edge wrote them."""
        params = start.custom_parameters
        differ = [
            name
            for name, claim in SIGNED_PARAMETERS.items()
            if name in params and params[name] != getattr(claims, claim)
        ]
        if differ:
            self.stats["ignored_unsigned_parameters"] += 1
            log.warning(
                "call %s: custom parameters %s differ from what the stream token signs; the "
                "token's values are recorded",
                start.call_sid,
                ", ".join(differ),
            )

    async def _ended(self, record: CallRecord) -> None:
        """What other containers must learn when a call ends: its live snapshot goes, and an
        outbound call's cost counts against the stack's daily budget."""
        try:
            await self.coordination.live.delete(record.call_sid)
            if record.direction == "outbound":
                cost = float(record.cost_usd.get("total") or 0.0)
                await self.coordination.outbound.add_spend(spend_day(record.started_at), cost)
        except CoordinationUnavailable as exc:
            log.error("call %s: its end is not shared: %s", record.call_sid, exc)

    async def _outbound_job(self, call_sid: str) -> dict[str, Any] | None:
        """The request behind an outbound call, as the container that placed it saved it.
        ``Calls.create`` may still be returning the CallSid when Twilio already opens the
        stream, so wait a moment for it."""
        state = self.coordination.outbound
        try:
            for _ in range(40):
                job_id = await state.job_for_call(call_sid)
                if job_id is not None:
                    return await state.load_job(job_id)
                await asyncio.sleep(0.05)
        except CoordinationUnavailable as exc:
            log.error("call %s: its outbound request cannot be read: %s", call_sid, exc)
        return None

    def _ensure_board(self) -> None:
        if self._board is None or self._board.done():
            self._board = asyncio.get_running_loop().create_task(
                self._publish_live(), name="live-calls"
            )

    async def _publish_live(self) -> None:
        """Every heartbeat, share this container's live calls (``GET /calls/{sid}`` on any
        container reads them); a snapshot outlives a dead container by three heartbeats."""
        every = self.settings.call_heartbeat_s
        warned = False
        while self.live:
            try:
                snapshots = {sid: record.to_json() for sid, record in self.live.items()}
                await self.coordination.live.put_many(snapshots, ttl_s=3 * every)
                warned = False
            except CoordinationUnavailable as exc:
                if not warned:  # once per outage; the calls go on
                    log.error("live calls not shared: %s", exc)
                    warned = True
            await asyncio.sleep(every)

    async def aclose(self) -> None:
        """Stop sharing live calls (the app is stopping)."""
        if self._board is not None:
            self._board.cancel()
            await asyncio.gather(self._board, return_exceptions=True)


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
        parsed = tp.read(data)  # raises nothing, whatever the frame
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
