"""The dialer's bookkeeping against the order Twilio's callbacks really arrive in."""

from __future__ import annotations

import asyncio
from typing import Any

from callplane.outbound import Dialer, OutboundJob, OutboundLimits, OutboundRequest
from callplane.profiles import AgentProfile


async def test_a_final_status_that_beats_calls_create_back_still_ends_the_attempt() -> None:
    """Calls.create runs in a thread and can return after Twilio already reported the call,
    even as completed (a short call under load). Those callbacks must not be lost: before,
    the attempt then waited for a final status for its whole timeout (hours)."""
    dialer: Dialer

    async def place(job: OutboundJob) -> str:
        sid = f"CA{len(dialer.by_call_sid):032d}"
        for status in ("initiated", "ringing", "in-progress", "completed"):
            dialer.on_status({"CallSid": sid, "CallStatus": status, "CallDuration": "4"})
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
        lambda: 0.0,
        attempt_timeout_s=30,
    )
    job = dialer.submit(OutboundRequest(to="+14155550123", profile="reminders"))
    await asyncio.wait_for(job.done.wait(), 5)
    (attempt,) = job.attempts
    assert (attempt.status, attempt.duration_s, job.outcome) == ("completed", 4.0, "human")
    assert job.record == {"call_sid": attempt.call_sid}
    assert not dialer._early  # nothing left behind
    await dialer.close()


async def test_callbacks_for_calls_never_registered_are_bounded() -> None:
    async def place(job: OutboundJob) -> str:
        raise AssertionError("not called")

    async def record_of(call_sid: str) -> dict[str, Any] | None:
        return None

    dialer = Dialer(OutboundLimits(), {}, place, record_of, lambda: 0.0)
    for i in range(1500):
        dialer.on_status({"CallSid": f"CA{i}", "CallStatus": "completed"})
    assert len(dialer._early) == 1000 and "CA1499" in dialer._early and "CA0" not in dialer._early
