"""Outbound calls: the agent calls people, waits for a human, and reports back.

Three layers, as elsewhere: the **limits** (pure functions over a request, the clock and the
day's spend, plus a look-up of the webhook's host) decide whether a call may be placed and say
which limit refused it and why: the destination's country and number type (premium-rate and
other special numbers are refused unless allowed), the calling hours, the daily budget, the
size of the request's ``context`` and where its ``webhook_url`` points; the
**dialer** queues requests under the concurrency limit, places each attempt through a
``place`` callable (Twilio's ``Calls.create`` in the media app), waits for Twilio's final
status callback, and retries busy and unanswered attempts with the profile's backoff; the
media app is the transport (``POST /calls``, status callbacks, the media stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import PhoneNumberType
from phonenumbers import timezone as phone_timezones
from pydantic import BaseModel, ConfigDict, Field, field_validator

from callplane.coordination import CoordinationUnavailable, OutboundState
from callplane.profiles import AgentProfile, check_outbound_context
from callplane.webhooks import (
    Resolver,
    WebhookRefused,
    WebhookTarget,
    check_host_pattern,
    check_webhook_url,
    resolve_host,
)

__all__ = [
    "DEFAULT_NUMBER_TYPES",
    "NUMBER_TYPES",
    "Dialer",
    "OutboundJob",
    "OutboundLimits",
    "OutboundRequest",
    "Refused",
    "check_limits",
    "context_size",
    "destination",
    "spend_day",
]

log = logging.getLogger("callplane.outbound")

FINAL_STATUSES = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})

NUMBER_TYPES: dict[int, str] = {
    value: name for name, value in vars(PhoneNumberType).items() if name.isupper()
}
"""phonenumbers' number types by value (``PhoneNumberType.PREMIUM_RATE`` is ``PREMIUM_RATE``)."""

DEFAULT_NUMBER_TYPES = ("FIXED_LINE", "MOBILE", "FIXED_LINE_OR_MOBILE", "TOLL_FREE", "VOIP")
"""The number types a stack calls unless ``outbound.allowed_number_types`` says otherwise:
numbers that reach a person at the ordinary price. Premium-rate and shared-cost numbers charge
the caller (the stack) per minute, and pagers, voicemail access, UAN and personal numbers, or a
number phonenumbers cannot place (UNKNOWN), are not a person to remind of an appointment."""


class OutboundLimits(BaseModel):
    """A stack's limits on outbound calls (media settings ``outbound``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_concurrent: int = Field(default=10, ge=1)
    max_queued: int = Field(default=100, ge=0)
    allowed_countries: tuple[str, ...] = ("US",)
    # Local hours [start, end) in the destination's time zone; start > end spans midnight.
    calling_hours: tuple[int, int] = (8, 21)
    daily_budget_usd: float = Field(default=50.0, ge=0)
    # Our number to call from, per destination country, with "default" as the fallback.
    caller_ids: Mapping[str, str] = Field(default_factory=dict)
    ring_timeout_s: int = Field(default=30, ge=5, le=600)
    # A status callback can be lost (a dropped connection, a webhook host restarting); an attempt
    # that has heard nothing for this long asks Twilio's REST API for the call's status instead
    # of holding its concurrency slot until the attempt times out.
    status_poll_s: float = Field(default=20.0, ge=1.0, le=3600.0)
    # The number types (phonenumbers' names) this stack may call; see DEFAULT_NUMBER_TYPES.
    allowed_number_types: tuple[str, ...] = DEFAULT_NUMBER_TYPES
    # The largest request context, as compact JSON in UTF-8: it is stored with the call's record
    # and read into the agent's instructions, so it is kept small.
    max_context_bytes: int = Field(default=8192, ge=16, le=32768)
    # Hosts a request's webhook_url may name ("hooks.example.com", or "*.example.com" for the
    # names below it); none: requests may not ask for a webhook. Only https, and only to hosts
    # that resolve to public addresses (callplane.webhooks).
    webhook_hosts: tuple[str, ...] = ()
    # Local stacks only: also accept webhooks to loopback addresses, over http or https, so that
    # a test can receive them on 127.0.0.1. A cloud stack refuses this setting.
    webhook_loopback: bool = False

    @field_validator("allowed_number_types", mode="before")
    @classmethod
    def _number_types(cls, value: object) -> object:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            return value
        known = sorted(NUMBER_TYPES.values())
        types: list[str] = []
        for item in value:
            name = str(item).strip().upper().replace("-", "_").replace(" ", "_")
            if name not in known:
                raise ValueError(
                    f"allowed_number_types: {item!r} is not a number type; use phonenumbers' "
                    f"names: {', '.join(known)}"
                )
            types.append(name)
        return tuple(types)

    @field_validator("webhook_hosts")
    @classmethod
    def _webhook_hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_host_pattern(host) for host in value)

    @field_validator("calling_hours")
    @classmethod
    def _hours(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not all(0 <= h <= 24 for h in value) or value[0] == value[1]:
            raise ValueError(f"calling_hours {value} must be two different hours in 0..24")
        return value

    def caller_id(self, country: str) -> str | None:
        return self.caller_ids.get(country) or self.caller_ids.get("default")


class Refused(Exception):
    """The request breaks a limit; ``limit`` names the setting, the message says why."""

    def __init__(self, limit: str, reason: str, status: int = 422) -> None:
        super().__init__(reason)
        self.limit = limit
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class Destination:
    number: str
    country: str
    zone: str
    # phonenumbers' number type (FIXED_LINE, MOBILE, PREMIUM_RATE, ..., UNKNOWN)
    type: str = "UNKNOWN"


@cache
def _zone_table() -> dict[str, str]:
    """Country -> its first IANA zone, from the system's tz database (zone.tab)."""
    table: dict[str, str] = {}
    for path in (Path("/usr/share/zoneinfo/zone.tab"), Path("/usr/share/zoneinfo/zone1970.tab")):
        if path.exists():
            for line in path.read_text().splitlines():
                if line and not line.startswith("#"):
                    parts = line.split("\t")
                    for country in parts[0].split(","):
                        table.setdefault(country, parts[2])
    return table


def destination(number: str) -> Destination:
    """Country and time zone of an E.164 number; ValueError names a number that is not one."""
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        raise ValueError(
            f"to={number!r} is not an E.164 number; write it like +923001234567"
        ) from None
    country = phonenumbers.region_code_for_number(parsed) or (
        phonenumbers.region_code_for_country_code(parsed.country_code or 0)
    )
    if not country or country == "ZZ":
        raise ValueError(f"to={number!r} has no known country code")
    zones = [z for z in phone_timezones.time_zones_for_number(parsed) if "/" in z]
    zone = next((z for z in zones if not z.startswith("Etc/")), None)
    kind = NUMBER_TYPES.get(phonenumbers.number_type(parsed), "UNKNOWN")
    return Destination(number, country, zone or _zone_table().get(country, "UTC"), kind)


_TYPE_WORDS = {
    "PREMIUM_RATE": "the caller pays a premium per minute",
    "SHARED_COST": "the caller shares the cost of the call",
    "UAN": "a universal access number of a business",
    "VOICEMAIL": "it reaches a voicemail system, not a person",
    "PAGER": "it reaches a pager",
    "PERSONAL_NUMBER": "a personal forwarding number, charged at its own rate",
    "UNKNOWN": "phonenumbers cannot tell what it reaches, or it is not a valid number",
    "TOLL_FREE": "toll-free",
    "VOIP": "a VoIP number",
}


def context_size(context: Mapping[str, Any]) -> int:
    """The size ``outbound.max_context_bytes`` limits: the context as compact JSON, UTF-8."""
    text = json.dumps(context, separators=(",", ":"), ensure_ascii=False, default=str)
    return len(text.encode("utf-8"))


def check_limits(
    limits: OutboundLimits, to: Destination, *, now: float, spent_today_usd: float
) -> None:
    """Raise :class:`Refused` if placing a call to ``to`` now breaks a limit."""
    if to.country not in limits.allowed_countries:
        raise Refused(
            "allowed_countries",
            f"{to.number} is in {to.country}; this stack calls only "
            f"{', '.join(limits.allowed_countries) or 'no country'} "
            f"(outbound.allowed_countries): add {to.country!r} to allow it",
        )
    if to.type not in limits.allowed_number_types:
        raise Refused(
            "allowed_number_types",
            f"{to.number} is a {to.type} number ({_TYPE_WORDS.get(to.type, 'a special number')});"
            f" this stack calls only {', '.join(limits.allowed_number_types) or 'no type'} "
            f"numbers (outbound.allowed_number_types): add {to.type!r} to allow it",
        )
    try:
        zone = ZoneInfo(to.zone)
    except ZoneInfoNotFoundError:
        zone = ZoneInfo("UTC")
    local = dt.datetime.fromtimestamp(now, zone)
    start, end = limits.calling_hours
    hour = local.hour
    inside = start <= hour < end if start < end else (hour >= start or hour < end)
    if not inside:
        raise Refused(
            "calling_hours",
            f"it is {local:%H:%M} in {to.zone} for {to.number}; calls are allowed from "
            f"{start:02d}:00 to {end:02d}:00 local time there (outbound.calling_hours)",
        )
    if spent_today_usd >= limits.daily_budget_usd:
        raise Refused(
            "daily_budget_usd",
            f"outbound calls cost ${spent_today_usd:.2f} today, at or over the "
            f"${limits.daily_budget_usd:.2f} daily budget (outbound.daily_budget_usd)",
            status=429,
        )


class OutboundRequest(BaseModel):
    """``POST /calls``: who to call, as which profile, with what context."""

    model_config = ConfigDict(extra="forbid")

    to: str
    profile: str
    context: dict[str, Any] = Field(default_factory=dict)
    webhook_url: str | None = None
    from_: str | None = Field(default=None, alias="from")


Outcome = Literal["queued", "calling", "human", "machine", "busy", "no-answer", "failed"]


@dataclass
class Attempt:
    number: int
    call_sid: str | None = None
    status: str = "queued"
    answered_by: str | None = None
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    duration_s: float | None = None
    error: str | None = None
    heard_at: float | None = None  # the last status report, callback or REST
    # Where the final status came from: Twilio's callback, or the REST API when it was lost.
    status_from: Literal["callback", "rest"] = "callback"

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class OutboundJob:
    id: str
    request: OutboundRequest
    profile: AgentProfile
    destination: Destination
    caller_id: str
    outcome: Outcome = "queued"
    attempts: list[Attempt] = field(default_factory=list)
    record: dict[str, Any] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "to": self.request.to,
            "from": self.caller_id,
            "profile": self.profile.name,
            "context": self.request.context,
            "outcome": self.outcome,
            "done": self.done.is_set(),
            "attempts": [a.to_json() for a in self.attempts],
            "record": self.record,
        }


PlaceCall = Callable[[OutboundJob], Awaitable[str]]  # returns the CallSid
FetchStatus = Callable[[str], Awaitable[Mapping[str, str]]]
"""A call's status from Twilio's REST API, as callback fields (CallSid, CallStatus, ...)."""
RecordLookup = Callable[[str], Awaitable[dict[str, Any] | None]]
Notify = Callable[[OutboundJob], Awaitable[None]]

JOB_TTL_S = 24 * 3600.0
"""How long a request's status (``GET /outbound/{id}``), its CallSid map and its status reports
stay in the shared state after the last change."""
SLOT_LEASE_S = 60.0
"""A live attempt's hold on a concurrency slot, renewed every third of it: the slots of a
container that dies mid-call come free when their leases lapse, not never."""
POLL_S = 0.25
"""How often a waiting request looks for a free slot, and an attempt for status reports that
reached another container (reports that reach this one wake it at once)."""


def spend_day(at: float) -> str:
    """The budget day of a call that started at ``at`` (Unix seconds): its UTC date, since
    ``outbound.daily_budget_usd`` is per UTC day."""
    return dt.datetime.fromtimestamp(at, dt.UTC).date().isoformat()


class Dialer:
    """Queues, places, follows and retries outbound calls.

    What must hold however many media containers run lives in ``state`` (Redis in the cloud,
    in-process for a single process): the queue and its capacity, the concurrency slots (FIFO
    across containers), the day's spend, which request a CallSid belongs to and every status
    report Twilio sent for it. A status callback may reach any container: it is stored there and
    the attempt that waits for it, wherever it runs, reads it within ``poll_s`` (at once when it
    runs in the container that got it). A request's attempts run in the container that accepted
    it; if that container dies, its slots come free after ``slot_lease_s`` and its queue entry
    lapses likewise.
    """

    def __init__(
        self,
        limits: OutboundLimits,
        profiles: Mapping[str, AgentProfile],
        place: PlaceCall,
        record_of: RecordLookup,
        state: OutboundState,
        notify: Notify | None = None,
        *,
        fetch_status: FetchStatus | None = None,
        clock: Callable[[], float] = time.time,
        attempt_timeout_s: float = 4 * 3600,
        poll_s: float = POLL_S,
        slot_lease_s: float = SLOT_LEASE_S,
        resolve: Resolver = resolve_host,
    ) -> None:
        self.limits = limits
        self.resolve = resolve
        self.profiles = profiles
        self._place = place
        self._record_of = record_of
        self._state = state
        self._notify = notify
        self._fetch_status = fetch_status
        self._clock = clock
        self._attempt_timeout_s = attempt_timeout_s
        self._poll_s = poll_s
        self._slot_lease_s = slot_lease_s
        self.jobs: dict[str, OutboundJob] = {}  # requests running in this container
        self._wakers: dict[str, asyncio.Event] = {}  # CallSid -> its waiting attempt here
        self.live = 0  # this container's attempts holding a slot now
        self.max_live_seen = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, request: OutboundRequest) -> OutboundJob:
        """Check the request and queue it; raise :class:`Refused` (the destination's country
        or number type, the context's size, the webhook's host, the calling hours, the budget,
        the queue) or ValueError for bad input (such as a context that lacks a field the
        profile's ``outbound_greeting`` or ``voicemail`` says) before anything is dialled. Raises
        :class:`~callplane.coordination.CoordinationUnavailable` when the shared state cannot
        be reached: no limit could be checked, so nothing is queued."""
        profile = self.profiles.get(request.profile)
        if profile is None:
            raise ValueError(
                f"profile={request.profile!r} is not configured; use one of {sorted(self.profiles)}"
            )
        to = destination(request.to)
        size = context_size(request.context)
        if size > self.limits.max_context_bytes:
            raise Refused(
                "max_context_bytes",
                f"context is {size} bytes as JSON, over the limit of "
                f"{self.limits.max_context_bytes} bytes (outbound.max_context_bytes); send only "
                "what the agent needs to say, or raise the limit",
                status=413,
            )
        if request.webhook_url is not None:
            await self.check_webhook(request.webhook_url)
        now = self._clock()
        spent = await self._state.spent(spend_day(now))
        check_limits(self.limits, to, now=now, spent_today_usd=spent)
        check_outbound_context(profile, request.context)
        caller_id = request.from_ or self.limits.caller_id(to.country)
        if caller_id is None:
            raise Refused(
                "caller_ids",
                f"no number to call {to.country} from: set outbound.caller_ids[{to.country!r}] "
                "or outbound.caller_ids['default'] to one of the stack's numbers",
            )
        job = OutboundJob(
            id="OB" + secrets.token_hex(16),
            request=request,
            profile=profile,
            destination=to,
            caller_id=caller_id,
        )
        limits = self.limits
        admitted, live, waiting = await self._state.admit(
            job.id, capacity=limits.max_concurrent + limits.max_queued, now=now
        )
        if not admitted:
            raise Refused(
                "max_concurrent",
                f"{live} outbound calls are live and {waiting} waiting, the most this stack "
                f"allows (outbound.max_concurrent={limits.max_concurrent}, "
                f"outbound.max_queued={limits.max_queued}); try again shortly",
                status=429,
            )
        self.jobs[job.id] = job
        await self._save(job)
        task = asyncio.create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def check_webhook(self, url: str) -> WebhookTarget:
        """``url``'s target if this stack may POST to it now (its host resolved and every
        address checked); :class:`Refused` naming ``webhook_hosts`` otherwise. Called when a
        request arrives, and again by the media app when it delivers."""
        try:
            return await check_webhook_url(
                url,
                hosts=self.limits.webhook_hosts,
                allow_loopback=self.limits.webhook_loopback,
                resolve=self.resolve,
            )
        except WebhookRefused as exc:
            raise Refused("webhook_hosts", str(exc)) from None

    async def on_status(self, fields: Mapping[str, str]) -> None:
        """A verified Twilio status callback, whichever container placed the call."""
        call_sid = fields.get("CallSid", "")
        if not call_sid:
            return
        await self._state.push_status(call_sid, dict(fields), JOB_TTL_S)
        waker = self._wakers.get(call_sid)
        if waker is not None:  # the attempt runs here: no need to wait for its next look
            waker.set()

    async def job_status(self, job_id: str) -> dict[str, Any] | None:
        """``GET /outbound/{id}``: the request as this container runs it, or as the container
        that runs it last saved it."""
        job = self.jobs.get(job_id)
        if job is not None:
            return job.to_json()
        return await self._state.load_job(job_id)

    def _apply(self, attempt: Attempt, fields: Mapping[str, str]) -> dict[str, str] | None:
        """Fold one status report (a callback, or the REST API's answer) into the attempt;
        the report if it is final."""
        status = fields.get("CallStatus", "")
        attempt.heard_at = self._clock()
        attempt.status = status or attempt.status
        attempt.answered_by = fields.get("AnsweredBy") or attempt.answered_by
        if fields.get("CallDuration", "").isdigit():
            attempt.duration_s = float(fields["CallDuration"])
        return dict(fields) if status in FINAL_STATUSES else None

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _save(self, job: OutboundJob) -> None:
        try:
            await self._state.save_job(job.id, job.to_json(), JOB_TTL_S)
        except CoordinationUnavailable as exc:  # GET /outbound elsewhere is stale; calls go on
            log.warning("outbound %s: status not shared: %s", job.id, exc)

    async def _run(self, job: OutboundJob) -> None:
        retry = job.profile.retry
        try:
            for number in range(1, retry.max_attempts + 1):
                if number > 1:
                    await asyncio.sleep(retry.delay_before(number))
                final = await self._attempt(job, number)
                status = final.get("CallStatus", "failed")
                if status not in retry.on:
                    break
            job.outcome = self._outcome(job)
            answered = next((a for a in job.attempts if a.status == "completed"), None)
            if answered is not None and answered.call_sid:
                job.record = await self._record_of(answered.call_sid)
        except Exception as exc:  # a bug here must not leave the requester waiting forever
            log.exception("outbound %s failed", job.id)
            job.outcome = "failed"
            if job.attempts:
                job.attempts[-1].error = repr(exc)
        finally:
            if job.outcome in ("queued", "calling"):
                job.outcome = "failed"
            job.done.set()
            with contextlib.suppress(CoordinationUnavailable):
                await self._state.leave_queue(job.id)  # cancelled while queued
            await self._save(job)
            self.jobs.pop(job.id, None)
        if self._notify is not None:
            try:
                await self._notify(job)
            except Exception:  # the requester's webhook must not break the dialer
                log.exception("outbound %s: notifying the request's webhook failed", job.id)

    async def _take_slot(self, job: OutboundJob) -> None:
        """Wait for a concurrency slot, in submission order across every container."""
        warned = False
        while True:
            now = self._clock()
            try:
                if await self._state.take_slot(
                    job.id,
                    max_concurrent=self.limits.max_concurrent,
                    lease_s=self._slot_lease_s,
                    now=now,
                ):
                    return
                if not await self._state.keep_waiting(
                    job.id, lease_s=self._slot_lease_s, now=now
                ):  # its place lapsed (a stalled loop, a Redis restart): queue again
                    limits = self.limits
                    await self._state.admit(
                        job.id, capacity=limits.max_concurrent + limits.max_queued, now=now
                    )
            except CoordinationUnavailable as exc:
                if not warned:
                    log.warning("outbound %s waits for a slot: %s", job.id, exc)
                    warned = True
            await asyncio.sleep(self._poll_s)

    async def _hold_slot(self, job_id: str) -> None:
        while True:
            await asyncio.sleep(self._slot_lease_s / 3)
            try:
                await self._state.renew_slot(job_id, lease_s=self._slot_lease_s, now=self._clock())
            except CoordinationUnavailable as exc:
                log.warning("outbound %s: slot lease not renewed: %s", job_id, exc)

    async def _attempt(self, job: OutboundJob, number: int) -> dict[str, str]:
        attempt = Attempt(number)
        await self._take_slot(job)
        self.live += 1
        self.max_live_seen = max(self.max_live_seen, self.live)
        holding = asyncio.create_task(self._hold_slot(job.id), name=f"slot-{job.id}")
        try:
            job.attempts.append(attempt)
            job.outcome = "calling"
            attempt.started_at = self._clock()
            await self._save(job)
            try:
                call_sid = await self._place(job)
            except Exception as exc:
                attempt.status, attempt.error = "failed", str(exc)
                return {"CallStatus": "failed"}
            attempt.call_sid = call_sid
            await self._state.map_call(call_sid, job.id, JOB_TTL_S)
            await self._save(job)
            try:
                return await asyncio.wait_for(
                    self._final_status(attempt, call_sid), self._attempt_timeout_s
                )
            except TimeoutError:
                attempt.status, attempt.error = "failed", "no final status from Twilio"
                return {"CallStatus": "failed"}
        finally:
            attempt.ended_at = self._clock()
            self.live -= 1
            holding.cancel()
            await asyncio.gather(holding, return_exceptions=True)
            try:
                await self._state.release_slot(job.id)
            except CoordinationUnavailable as exc:  # its lease lapses instead
                log.warning("outbound %s: slot not released: %s", job.id, exc)

    async def _final_status(self, attempt: Attempt, call_sid: str) -> dict[str, str]:
        """The attempt's final status report, from whichever container Twilio's callback
        reached (including reports that came before ``Calls.create`` returned the CallSid).
        When reports go quiet for ``status_poll_s``, the call's status from the REST API
        stands in for a callback that may have been lost."""
        waker = self._wakers[call_sid] = asyncio.Event()
        seen = 0
        asked_at = attempt.started_at
        try:
            while True:
                waker.clear()
                try:
                    reports = await self._state.statuses(call_sid)
                except CoordinationUnavailable as exc:
                    log.warning("%s: status reports unavailable: %s", call_sid, exc)
                    reports = []
                for fields in reports[seen:]:
                    final = self._apply(attempt, fields)
                    if final is not None:
                        return final
                seen = max(seen, len(reports))
                now = self._clock()
                quiet_since = max(attempt.heard_at or attempt.started_at, asked_at)
                if now - quiet_since >= self.limits.status_poll_s:
                    asked_at = now
                    final = await self._ask_rest(attempt, call_sid, quiet_since)
                    if final is not None:
                        return final
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waker.wait(), self._poll_s)
        finally:
            self._wakers.pop(call_sid, None)

    async def _ask_rest(
        self, attempt: Attempt, call_sid: str, quiet_since: float
    ) -> dict[str, str] | None:
        if self._fetch_status is None:
            return None  # nobody to ask: wait another quiet spell
        try:
            fields = dict(await self._fetch_status(call_sid))
        except Exception as exc:  # Twilio unreachable too: ask again after another spell
            log.warning("%s: the REST API's status is unavailable: %s", call_sid, exc)
            return None
        fields["CallSid"] = call_sid
        final = self._apply(attempt, fields)
        if final is not None:
            log.warning(
                "%s: no final status callback after %.0f s of quiet; the REST API says %s",
                call_sid,
                self._clock() - quiet_since,
                fields["CallStatus"],
            )
            attempt.status_from = "rest"
        return final

    @staticmethod
    def _outcome(job: OutboundJob) -> Outcome:
        last = job.attempts[-1] if job.attempts else None
        if last is None:
            return "failed"
        if last.status == "completed":
            machine = (last.answered_by or "").startswith("machine") or (last.answered_by == "fax")
            return "machine" if machine else "human"
        if last.status in ("busy", "no-answer"):
            return last.status  # type: ignore[return-value]
        return "failed"
