"""The dialer's bookkeeping against the order Twilio's callbacks really arrive in, and across
two containers sharing one state (in-process here; the Redis backend passes the same contract
in tests/coordination)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from callplane.coordination import connect
from callplane.outbound import Dialer, OutboundJob, OutboundLimits, OutboundRequest
from callplane.profiles import AgentProfile


async def test_a_final_status_that_beats_calls_create_back_still_ends_the_attempt() -> None:
    """Calls.create runs in a thread and can return after Twilio already reported the call,
    even as completed (a short call under load). Those callbacks must not be lost: before,
    the attempt then waited for a final status for its whole timeout (hours)."""
    dialer: Dialer

    async def place(job: OutboundJob) -> str:
        sid = "CA" + "0" * 32
        for status in ("initiated", "ringing", "in-progress", "completed"):
            await dialer.on_status({"CallSid": sid, "CallStatus": status, "CallDuration": "4"})
        await asyncio.sleep(0)  # the REST answer comes back after all of that
        return sid

    async def record_of(call_sid: str) -> dict[str, Any] | None:
        return {"call_sid": call_sid}

    dialer = Dialer(
        OutboundLimits(
            allowed_countries=("US",), calling_hours=(0, 24), caller_ids={"default": "+15550001111"}
        ),
        {"reminders": AgentProfile(name="reminders")},
        place,
        record_of,
        connect(None).outbound,
        attempt_timeout_s=30,
    )
    job = await dialer.submit(OutboundRequest(to="+14155550123", profile="reminders"))
    await asyncio.wait_for(job.done.wait(), 5)
    (attempt,) = job.attempts
    assert (attempt.status, attempt.duration_s, job.outcome) == ("completed", 4.0, "human")
    assert job.record == {"call_sid": attempt.call_sid}
    assert dialer.jobs == {} and dialer.live == 0  # nothing left behind
    await dialer.close()


async def test_callbacks_that_reach_the_other_container_end_the_attempt() -> None:
    """Two containers share one state: A places the call, every status callback reaches B.
    A's attempt still ends on the final status, and B answers GET /outbound for A's request."""
    state = connect(None).outbound
    sid = "CA" + "9" * 32
    other: Dialer

    async def place(job: OutboundJob) -> str:
        async def report() -> None:
            for status in ("ringing", "in-progress", "completed"):
                await asyncio.sleep(0.05)
                await other.on_status({"CallSid": sid, "CallStatus": status, "CallDuration": "3"})

        asyncio.get_running_loop().create_task(report())
        return sid

    async def record_of(call_sid: str) -> dict[str, Any] | None:
        return {"call_sid": call_sid}

    limits = OutboundLimits(
        allowed_countries=("US",), calling_hours=(0, 24), caller_ids={"default": "+15550001111"}
    )
    profiles = {"reminders": AgentProfile(name="reminders")}
    placing = Dialer(limits, profiles, place, record_of, state, attempt_timeout_s=30)
    other = Dialer(limits, profiles, place, record_of, state, attempt_timeout_s=30)
    job = await placing.submit(OutboundRequest(to="+14155550123", profile="reminders"))
    await asyncio.wait_for(job.done.wait(), 5)
    assert (job.attempts[0].status, job.outcome, job.attempts[0].duration_s) == (
        "completed",
        "human",
        3.0,
    )
    seen = await other.job_status(job.id)
    assert seen is not None and seen["outcome"] == "human" and seen["done"] is True
    assert await state.counts(0.0) == (0, 0)  # the slot and the queue entry are gone
    await placing.close()


def _dialer_with(
    place: Any, fetch_status: Any, *, status_poll_s: float = 1.0, attempt_timeout_s: float = 30
) -> Dialer:
    async def record_of(call_sid: str) -> dict[str, Any] | None:
        return {"call_sid": call_sid}

    limits = OutboundLimits(
        allowed_countries=("US",),
        calling_hours=(0, 24),
        caller_ids={"default": "+15550001111"},
        status_poll_s=status_poll_s,
    )
    return Dialer(
        limits,
        {"reminders": AgentProfile(name="reminders")},
        place,
        record_of,
        connect(None).outbound,
        fetch_status=fetch_status,
        attempt_timeout_s=attempt_timeout_s,
    )


async def test_a_lost_final_callback_is_recovered_from_the_rest_api() -> None:
    """The completed callback never comes (a dropped connection): after status_poll_s of quiet
    the dialer asks Twilio's REST API, ends the attempt and frees its slot, instead of holding
    the slot for the attempt's whole timeout."""
    dialer: Dialer
    asked: list[str] = []

    async def place(job: OutboundJob) -> str:
        sid = "CA" + "1" * 32
        for status in ("initiated", "ringing", "in-progress"):  # and then nothing
            await dialer.on_status({"CallSid": sid, "CallStatus": status})
        return sid

    async def fetch_status(call_sid: str) -> dict[str, str]:
        asked.append(call_sid)
        return {"CallStatus": "completed", "AnsweredBy": "human", "CallDuration": "7"}

    dialer = _dialer_with(place, fetch_status)
    job = await dialer.submit(OutboundRequest(to="+14155550123", profile="reminders"))
    await asyncio.wait_for(job.done.wait(), 5)
    (attempt,) = job.attempts
    assert asked == [attempt.call_sid]
    assert (attempt.status, attempt.answered_by, attempt.duration_s) == ("completed", "human", 7.0)
    assert attempt.status_from == "rest" and job.outcome == "human" and dialer.live == 0
    await dialer.close()


async def test_callbacks_that_keep_coming_are_not_second_guessed() -> None:
    """A call that reports itself (ringing, then in-progress, then completed, each under the
    quiet limit) is never looked up over REST; an unanswered REST lookup keeps the wait going."""
    dialer: Dialer
    asked: list[str] = []
    sid = "CA" + "2" * 32

    async def report_later() -> None:
        for status in ("ringing", "in-progress", "completed"):
            await asyncio.sleep(0.6)
            await dialer.on_status({"CallSid": sid, "CallStatus": status, "CallDuration": "1"})

    async def place(job: OutboundJob) -> str:
        asyncio.get_running_loop().create_task(report_later())
        return sid

    async def fetch_status(call_sid: str) -> dict[str, str]:
        asked.append(call_sid)
        raise ConnectionError("Twilio unreachable")

    dialer = _dialer_with(place, fetch_status)
    job = await dialer.submit(OutboundRequest(to="+14155550123", profile="reminders"))
    await asyncio.wait_for(job.done.wait(), 5)
    assert asked == []
    assert job.attempts[0].status_from == "callback" and job.outcome == "human"
    await dialer.close()


async def test_a_rest_outage_does_not_end_the_attempt_early() -> None:
    dialer: Dialer
    asked: list[str] = []
    sid = "CA" + "3" * 32

    async def place(job: OutboundJob) -> str:
        await dialer.on_status({"CallSid": sid, "CallStatus": "in-progress"})
        return sid

    async def fetch_status(call_sid: str) -> dict[str, str]:
        asked.append(call_sid)
        if len(asked) == 1:
            raise ConnectionError("Twilio unreachable")
        return {"CallStatus": "in-progress"}  # still talking: keep waiting

    dialer = _dialer_with(place, fetch_status)
    job = await dialer.submit(OutboundRequest(to="+14155550123", profile="reminders"))
    await asyncio.sleep(2.5)
    assert len(asked) == 2 and not job.done.is_set() and job.attempts[0].status == "in-progress"
    await dialer.on_status({"CallSid": sid, "CallStatus": "completed"})
    await asyncio.wait_for(job.done.wait(), 2)
    assert job.outcome == "human" and job.attempts[0].status_from == "callback"
    await dialer.close()


async def test_a_context_missing_a_template_field_is_refused_before_anything_is_dialled() -> None:
    placed: list[OutboundJob] = []

    async def place(job: OutboundJob) -> str:
        placed.append(job)
        return "CA" + "1" * 32

    async def record_of(call_sid: str) -> dict[str, Any] | None:
        return None

    reminders = AgentProfile(
        name="reminders",
        outbound_greeting="Hello {name}, this is a reminder of your appointment {when}.",
        voicemail="Hello {name}, please call us back about {when}.",
    )
    state = connect(None).outbound
    dialer = Dialer(
        OutboundLimits(
            allowed_countries=("US",), calling_hours=(0, 24), caller_ids={"default": "+15550001111"}
        ),
        {"reminders": reminders},
        place,
        record_of,
        state,
        attempt_timeout_s=30,
    )
    request = OutboundRequest(to="+14155550123", profile="reminders", context={"name": "Amina"})
    with pytest.raises(ValueError, match="cannot fill") as refused:
        await dialer.submit(request)
    message = str(refused.value)
    assert "context={'name': 'Amina'}" in message and "profile 'reminders'" in message
    assert f"outbound_greeting {reminders.outbound_greeting!r} needs {{when}}" in message
    assert f"voicemail {reminders.voicemail!r} needs {{when}}" in message
    assert 'Add "when" to the request\'s context' in message
    await asyncio.sleep(0.05)
    assert placed == [] and dialer.jobs == {}
    assert await state.admit("probe", capacity=1, now=0.0) == (True, 0, 0)  # nothing queued
    await dialer.close()
