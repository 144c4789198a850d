"""The agent job: one callplane agent serving one LiveKit room, then its call record.

A job joins the room as an agent participant (identity ``agent-<job id>``, kind agent, its own
short-lived token minted from the stack's API key), waits for the first human, and runs the
conversation core over :class:`~callplane.rooms.agent_transport.LiveKitRoomTransport` with a
:class:`~callplane.rooms.publisher.RoomPublisher` showing its state and transcripts. It ends

* when the last human has been gone for ``livekit.idle_timeout_s`` (the grace period lets a
  reloaded page or a dropped phone caller come back to the same conversation), or
* when nobody came within ``livekit.idle_timeout_s`` of the job joining, or
* when the agent hangs up (the profile's ``end_call`` tool), the room is closed, or the host
  sets ``stop`` (SIGTERM in :mod:`functions.agent_job`).

The profile is chosen by :func:`callplane.profiles.choose_profile` (the ``profile`` argument,
else the room's metadata ``{"profile": ...}``, else the profile hosting this room, else the
first), the rule ``POST /agents/dispatch`` applies too. The record (``call_sid``
``room:<room>:<job id>``) is saved in the media plane's record store whatever the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import re
import uuid
from collections.abc import Awaitable, Mapping

from livekit import api, rtc

from callplane.audio import PCM24K, hold_chime
from callplane.conversation import Conversation
from callplane.livekit_settings import AGENT_IDENTITY_PREFIX, LiveKitSettings
from callplane.media_settings import MediaSettings
from callplane.profiles import AgentProfile, choose_profile, resolve_tools
from callplane.records import CallRecord
from callplane.rooms.agent_transport import LiveKitRoomTransport, is_phone_caller
from callplane.rooms.mixer import SAMPLE_RATE
from callplane.rooms.presence import Presence
from callplane.rooms.publisher import STATE_ATTRIBUTE, RoomPublisher
from callplane.tools import Tool, ToolSet

log = logging.getLogger("callplane.rooms.agent")

JOIN_TOKEN_TTL = datetime.timedelta(minutes=15)
"""The agent's token only has to get it in; the server refreshes it while it is connected."""
CONNECT_TIMEOUT_S = 10.0
ROOM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")  # as AgentProfile.room


class AgentJobError(RuntimeError):
    """The job cannot serve the room (bad settings, bad room metadata, LiveKit unreachable)."""


def agent_identity(job_id: str) -> str:
    return AGENT_IDENTITY_PREFIX + job_id


def agent_token(settings: LiveKitSettings, room: str, identity: str, *, name: str) -> str:
    """A join token for the agent: kind agent, may publish, subscribe and set its attributes,
    and joins with ``lk.agent.state=initializing`` already set."""
    grants = api.VideoGrants(
        room_join=True,
        room=room,
        agent=True,
        can_publish=True,
        can_subscribe=True,
        can_publish_data=True,
        can_update_own_metadata=True,
    )
    return (
        api.AccessToken(settings.api_key, settings.api_secret)
        .with_identity(identity)
        .with_name(name)
        .with_kind("agent")
        .with_grants(grants)
        .with_attributes({STATE_ATTRIBUTE: "initializing"})
        .with_ttl(JOIN_TOKEN_TTL)
        .to_jwt()
    )


PHONE_ONLY_TOOLS = frozenset({"transfer_call"})
"""Tools that act on a phone line, and so only work while a phone caller is in the room."""


def tools_for_room(toolset: ToolSet, *, phone_caller_present: bool) -> ToolSet:
    """The profile's tools that the room's agent offers the model right now.

    Every tool the model is offered is something it may promise the people in the room.
    ``transfer_call`` moves a phone call to another number: in a room of web users only there
    is no call to move, so the model must not be offered it, or it would announce transfers
    that cannot happen. In a hybrid room it is offered while a phone caller is present, and
    withdrawn when the last one leaves (:meth:`~callplane.conversation.Conversation.
    offer_tools` updates the live session as people come and go).
    """
    return toolset if phone_caller_present else toolset.without(PHONE_ONLY_TOOLS)


def _profile_for(
    profiles: Mapping[str, AgentProfile], room: str, requested: str | None, room_metadata: str = ""
) -> AgentProfile:
    """The room's profile by :func:`callplane.profiles.choose_profile`; an unknown name is an
    :class:`AgentJobError`, so that the job refuses to start with the reason."""
    try:
        return profiles[
            choose_profile(profiles, room, requested=requested, room_metadata=room_metadata)
        ]
    except ValueError as exc:
        raise AgentJobError(str(exc)) from None


def check_room_name(room: str) -> str:
    if not ROOM_NAME.match(room):
        raise AgentJobError(
            f"room={room!r} is not a valid room name: use 1-128 letters, digits and _ . : -, "
            "starting with a letter or digit"
        )
    return room


async def run_agent(
    settings: MediaSettings,
    tools: Mapping[str, Tool],
    room: str,
    profile: str | None = None,
    *,
    job_id: str | None = None,
    stop: asyncio.Event | None = None,
) -> CallRecord:
    """Serve ``room`` until it is done (see the module docs); return the saved call record.

    Raises :class:`AgentJobError` when the job cannot start (no LiveKit settings, a bad room
    name or profile, the server unreachable); a record is saved whenever the room was joined.
    """
    lk = settings.livekit
    if lk is None:
        raise AgentJobError(
            "livekit is not configured: add a 'livekit' section (url, api_key, api_secret) to "
            "the media settings"
        )
    check_room_name(room)
    if profile is not None:
        _profile_for(settings.profiles, room, profile)  # fail before joining
    job_id = job_id or uuid.uuid4().hex[:12]
    identity = agent_identity(job_id)
    record = CallRecord(call_sid=f"room:{room}:{job_id}", to=f"room:{room}")
    lkroom = rtc.Room()
    presence = Presence(lkroom)
    token = agent_token(lk, room, identity, name="callplane agent")
    try:
        await lkroom.connect(
            lk.ws_url,
            token,
            rtc.RoomOptions(auto_subscribe=True, connect_timeout=CONNECT_TIMEOUT_S),
        )
    except rtc.ConnectError as exc:
        presence.close()
        raise AgentJobError(f"cannot join room {room!r} at {lk.ws_url}: {exc.message}") from None
    log.info("job %s joined room %s as %s", job_id, room, identity)
    store = settings.open_records()
    # Written as the room goes: a row now, each finished turn and tool call as it happens.
    store.call_started(record)
    record.watch(store.call_progress)
    try:
        chosen = _profile_for(settings.profiles, room, profile, lkroom.metadata)
        record.profile = chosen.name
        toolset = resolve_tools(chosen, tools)
        presence.refresh()
        if not await _first_human(presence, lk.idle_timeout_s, stop):
            reason = "job_stopped" if stop is not None and stop.is_set() else "nobody_came"
            log.info("job %s: %s before anyone came to room %s", job_id, reason, room)
            record.close(reason)
            return record
        await _converse(lkroom, presence, chosen, toolset, settings, record, stop)
        return record
    finally:
        if record.ended_at is None:  # an error before or around the conversation
            record.close("agent_job_failed")
        record.from_ = presence.seen[0] if presence.seen else ""
        record.context = {"room": room, "job_id": job_id, "participants": list(presence.seen)}
        presence.close()
        await lkroom.disconnect()
        record.watch(None)
        try:
            store.call_finished(record)
            await store.flush()
        finally:
            await asyncio.to_thread(store.close)
        log.info("job %s left room %s: %s", job_id, room, record.end_reason)


async def _race(*waits: Awaitable[object]) -> tuple[int, object]:
    """Await the first of ``waits`` to finish and cancel the rest; its index and result."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    index = next(i for i, task in enumerate(tasks) if task in done)
    return index, tasks[index].result()


def _stopped(stop: asyncio.Event | None) -> list[Awaitable[object]]:
    return [] if stop is None else [stop.wait()]


async def _first_human(presence: Presence, timeout_s: float, stop: asyncio.Event | None) -> bool:
    index, came = await _race(presence.wait_for_human(timeout_s), *_stopped(stop))
    return index == 0 and came is True


async def _converse(
    lkroom: rtc.Room,
    presence: Presence,
    profile: AgentProfile,
    toolset: ToolSet,
    settings: MediaSettings,
    record: CallRecord,
    stop: asyncio.Event | None,
) -> None:
    assert settings.livekit is not None
    filler = PCM24K.encode(hold_chime(SAMPLE_RATE))
    async with LiveKitRoomTransport(lkroom) as transport:
        publisher = RoomPublisher(
            lkroom.local_participant, lambda: transport.track_sid, transport.speaking_human
        )
        publisher.start()
        watcher = asyncio.create_task(
            _leave_when_done(transport, presence, settings.livekit.idle_timeout_s, stop)
        )

        def offered() -> ToolSet:
            return tools_for_room(toolset, phone_caller_present=bool(transport.phone_callers()))

        conversation = Conversation(
            transport,
            profile,
            offered(),
            settings.realtime(),
            record,
            filler=filler,
            observer=publisher,
        )

        def people_changed(participant: rtc.RemoteParticipant) -> None:
            if is_phone_caller(participant):
                conversation.offer_tools(offered())

        lkroom.on("participant_connected", people_changed)
        lkroom.on("participant_disconnected", people_changed)
        try:
            await conversation.run()
        finally:
            lkroom.off("participant_connected", people_changed)
            lkroom.off("participant_disconnected", people_changed)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await publisher.aclose()


async def _leave_when_done(
    transport: LiveKitRoomTransport,
    presence: Presence,
    grace_s: float,
    stop: asyncio.Event | None,
) -> None:
    """End the call once the room has been empty for ``grace_s``, or when ``stop`` is set."""
    index, _ = await _race(presence.wait_empty_for(grace_s), *_stopped(stop))
    transport.leave("room_empty" if index == 0 else "job_stopped")
