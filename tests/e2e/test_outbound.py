"""Outbound calls through every local part: POST /calls on the media app -> Twilio's
Calls.create on the simulator -> a scripted callee (a person, a voicemail, a busy line) -> the
edge's TwiML -> the media stream -> the engine, with Twilio's status callbacks back to the
media app."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi import FastAPI, Request

from callplane.outbound import OutboundLimits
from callplane_dev.stack import LocalStack, NumberPlan, StackOptions
from callplane_standins.twilio_simulator.callee import busy, human, voicemail
from callplane_standins.twilio_simulator.caller import hang_up, say, synthesize_ulaw, wait_for_reply
from callplane_standins.twilio_simulator.webhooks import WebhookError
from tests.conftest import ConformanceLog
from tests.servers import serve_asgi
from tests.support.stack import live_calls_peak

CONTEXT = {"name": "Amina", "when": "tomorrow at 3 pm"}
REMINDER = "Hello Amina, this is a reminder of your appointment tomorrow at three pm."
CALLEE = "+14155550123"


async def request_call(stack: LocalStack, to: str, **extra: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {stack.creds.media_api_key}"}
    body = {"to": to, "profile": "reminders", "context": CONTEXT, **extra}
    async with httpx.AsyncClient(base_url=stack.media_url, headers=headers) as http:
        return await http.post("/calls", json=body)


async def finished(stack: LocalStack, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {stack.creds.media_api_key}"}
    async with httpx.AsyncClient(base_url=stack.media_url, headers=headers) as http:
        async with asyncio.timeout(timeout_s):
            while True:
                job: dict[str, Any] = (await http.get(f"/outbound/{job_id}")).json()
                if job["done"]:
                    return job
                await asyncio.sleep(0.2)


ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def _keep(name: str, text: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / name).write_text(text + "\n")


async def _stall_report(stack: LocalStack, job_ids: list[str]) -> str:
    """What the jobs that never finished, and the calls still live, were doing (for a stall
    that only shows under load)."""
    headers = {"Authorization": f"Bearer {stack.creds.media_api_key}"}
    lines = ["outbound jobs did not all finish:"]
    async with httpx.AsyncClient(base_url=stack.media_url, headers=headers) as http:
        for job_id in job_ids:
            job = (await http.get(f"/outbound/{job_id}")).json()
            if not job["done"]:
                lines.append(f"job {job_id}: {str(job)[:800]}")
                for attempt in job["attempts"]:
                    call = stack.simulator.carrier.calls.get(attempt["call_sid"] or "")
                    if call is not None:  # what the simulator saw of it, ended or not
                        lines.append(f"  call {call.call_sid}: {call.status} errors={call.errors}")
    for sid, call in stack.simulator.carrier.calls.items():
        if call.live:
            events = [(round(e.at_ms), e.kind, e.detail) for e in call.timeline.events][-20:]
            lines.append(f"live call {sid}: errors={call.errors} last events={events}")
            lines.append(f"  streams={call.timeline.streams} chunks={len(call.timeline.chunks)}")
    if stack.media_app is not None:  # the media plane in this process
        lines.append(f"media live records: {sorted(stack.media_app.state.live)}")
        lines.append(f"media stats: {dict(stack.media_app.state.stats)}")
    return "\n".join(lines)


async def test_a_person_answers_after_three_rings_and_hears_the_reminder(
    stack: LocalStack,
) -> None:
    stack.simulator.set_callee(
        CALLEE, human(wait_for_reply(), say("goodbye"), wait_for_reply(timeout_s=15), rings=3)
    )
    answer = await request_call(stack, CALLEE)
    assert answer.status_code == 202, answer.text
    job = await finished(stack, answer.json()["id"])
    assert job["outcome"] == "human"
    (attempt,) = job["attempts"]
    assert attempt["status"] == "completed" and attempt["answered_by"] == "human"
    result = await stack.simulator.wait_for_call(attempt["call_sid"])
    # the agent speaks only once the call is connected: after 3 rings and the callee's hello
    assert result.timeline.answered_ms is not None and result.timeline.answered_ms >= 1500
    first_audio = min(c.received_ms for c in result.timeline.chunks)
    assert first_audio >= result.timeline.answered_ms
    record = job["record"]
    assert record["direction"] == "outbound" and record["answered_by"] == "human"
    assert record["context"] == CONTEXT and record["profile"] == "reminders"
    assert [t["text"] for t in record["transcript"]] == [
        REMINDER,
        "goodbye",
        "Goodbye, and thanks for calling.",
    ]
    assert record["end_reason"] == "agent_hung_up"
    assert record["cost_usd"]["total"] > 0


async def test_a_voicemail_gets_the_message_once_after_the_beep(stack: LocalStack) -> None:
    greeting = "Hi, this is Amina. Leave a message after the tone."
    stack.simulator.set_callee(CALLEE, voicemail(greeting, rings=2))
    job = await finished(stack, (await request_call(stack, CALLEE)).json()["id"])
    assert job["outcome"] == "machine"
    (attempt,) = job["attempts"]
    assert attempt["answered_by"] == "machine_end_beep"
    result = await stack.simulator.wait_for_call(attempt["call_sid"])
    assert result.hung_up_by == "rest", "the agent hangs up after its message"
    # nothing was played before the greeting and its beep were over
    greeting_ms = len(synthesize_ulaw(greeting, "en-us")) / 8
    assert result.timeline.answered_ms is not None
    assert result.timeline.answered_ms >= 2 * 500 + greeting_ms
    assert min(c.received_ms for c in result.timeline.chunks) >= result.timeline.answered_ms
    record = job["record"]
    agent = [t["text"] for t in record["transcript"] if t["role"] == "agent"]
    assert len(agent) == 1 and agent[0].startswith(REMINDER)
    assert record["voicemail_left"].startswith("Hello Amina")
    assert record["end_reason"] == "left_voicemail"
    marks = result.timeline.marks
    assert marks and all(m.echoed_ms is not None and not m.cleared for m in marks)


async def test_the_result_is_posted_to_the_request_webhook(stack: LocalStack) -> None:
    received: list[dict[str, Any]] = []
    arrived = asyncio.Event()
    hook = FastAPI()

    @hook.post("/outbound-result")
    async def result(request: Request) -> dict[str, bool]:
        received.append(await request.json())
        arrived.set()
        return {"ok": True}

    stack.simulator.set_callee(CALLEE, voicemail("Leave a message after the tone.", rings=1))
    async with serve_asgi(hook) as base:
        answer = await request_call(stack, CALLEE, webhook_url=base + "/outbound-result")
        assert answer.status_code == 202, answer.text
        job = await finished(stack, answer.json()["id"])
        await asyncio.wait_for(arrived.wait(), 15)
    (posted,) = received  # once, when the request is done
    assert posted["id"] == job["id"] and posted["done"] is True
    assert posted["outcome"] == "machine" == job["outcome"]
    assert [a["call_sid"] for a in posted["attempts"]] == [a["call_sid"] for a in job["attempts"]]
    assert posted["record"]["voicemail_left"].startswith("Hello Amina")


async def test_busy_then_answered_is_retried_and_both_attempts_are_recorded(
    stack: LocalStack,
) -> None:
    stack.simulator.set_callee(CALLEE, busy(), human(wait_for_reply(), hang_up()))
    job = await finished(stack, (await request_call(stack, CALLEE)).json()["id"])
    assert [a["status"] for a in job["attempts"]] == ["busy", "completed"]
    assert [a["number"] for a in job["attempts"]] == [1, 2]
    assert job["outcome"] == "human"
    assert job["attempts"][1]["started_at"] - job["attempts"][0]["ended_at"] >= 1.0  # backoff
    assert job["record"]["transcript"][0]["text"] == REMINDER


@pytest.mark.parametrize(
    ("case", "to", "limits", "limit"),
    [
        ("country not allowed", "+4930231250000", {}, "allowed_countries"),
        ("outside calling hours", CALLEE, "closed_now", "calling_hours"),
        ("over budget", CALLEE, {"daily_budget_usd": 0.0}, "daily_budget_usd"),
    ],
)
async def test_refusals_name_the_limit_and_dial_nothing(
    tmp_path: Path,
    conformance: ConformanceLog,
    case: str,
    to: str,
    limits: dict[str, Any] | str,
    limit: str,
) -> None:
    if limits == "closed_now":  # a one-hour window that is not now in the callee's zone
        hour = dt.datetime.now(ZoneInfo("America/Los_Angeles")).hour
        limits = {"calling_hours": ((hour + 2) % 24, (hour + 3) % 24)}
    assert isinstance(limits, dict)
    outbound = OutboundLimits(allowed_countries=("US",), calling_hours=(0, 24)).model_copy(
        update=limits
    )
    options = StackOptions(
        data_dir=tmp_path / "s", numbers=[NumberPlan("support")], outbound=outbound
    )
    async with LocalStack(options) as stack:
        answer = await request_call(stack, to)
        assert answer.status_code in (422, 429), case
        refused = answer.json()["refused"]
        assert refused["limit"] == limit, case
        assert stack.simulator.carrier.calls == {}, f"{case}: Twilio was called"
    print(f"{case}: {refused['reason']}")


async def test_a_context_missing_a_field_the_reminder_says_is_refused_and_dials_nothing(
    tmp_path: Path,
) -> None:
    outbound = OutboundLimits(allowed_countries=("US",), calling_hours=(0, 24))
    options = StackOptions(
        data_dir=tmp_path / "s", numbers=[NumberPlan("support")], outbound=outbound
    )
    async with LocalStack(options) as stack:
        stack.simulator.set_callee(CALLEE, human(wait_for_reply(), hang_up()))
        headers = {"Authorization": f"Bearer {stack.creds.media_api_key}"}
        body = {"to": CALLEE, "profile": "reminders", "context": {"name": "Amina"}}
        async with httpx.AsyncClient(base_url=stack.media_url, headers=headers) as http:
            answer = await http.post("/calls", json=body)
        assert answer.status_code == 422, answer.text
        detail = answer.json()["detail"]
        assert "context={'name': 'Amina'}" in detail and "profile 'reminders'" in detail
        assert "outbound_greeting 'Hello {name}, this is a reminder" in detail
        assert "needs {when}" in detail and "voicemail 'Hello {name}" in detail
        assert 'Add "when" to the request\'s context' in detail
        assert stack.simulator.carrier.calls == {}, "Twilio was called"


async def test_over_the_concurrency_limit_is_refused(tmp_path: Path) -> None:
    outbound = OutboundLimits(
        allowed_countries=("US",), calling_hours=(0, 24), max_concurrent=1, max_queued=0
    )
    options = StackOptions(
        data_dir=tmp_path / "s", numbers=[NumberPlan("support")], outbound=outbound
    )
    async with LocalStack(options) as stack:
        stack.simulator.set_callee(CALLEE, human(wait_for_reply(), hang_up()))
        first = await request_call(stack, CALLEE)
        second = await request_call(stack, "+14155550124")
        assert first.status_code == 202
        assert second.status_code == 429
        assert second.json()["refused"]["limit"] == "max_concurrent"
        assert "1 outbound calls are live" in second.json()["refused"]["reason"]
        await finished(stack, first.json()["id"])
        assert len(stack.simulator.carrier.calls) == 1


async def test_a_lost_completed_callback_is_recovered_over_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twilio's final callback never reaches the media app (the connection fails twice): the
    dialer notices the quiet, asks the simulator's REST API, and the job still ends with the
    call's outcome, record and a free slot."""
    outbound = OutboundLimits(allowed_countries=("US",), calling_hours=(0, 24), status_poll_s=2)
    options = StackOptions(
        data_dir=tmp_path / "s", numbers=[NumberPlan("support")], outbound=outbound
    )
    async with LocalStack(options) as stack:
        carrier = stack.simulator.carrier
        deliver = carrier.http_request
        lost: list[str] = []

        async def lossy(url: str, method: str, params: Mapping[str, str], token: str) -> str:
            if url.endswith("/twilio/outbound-status") and params["CallStatus"] == "completed":
                lost.append(params["CallSid"])
                raise WebhookError(f"{method} {url} failed: connection reset (test)")
            return await deliver(url, method, params, token)

        monkeypatch.setattr(carrier, "http_request", lossy)
        stack.simulator.set_callee(CALLEE, human(wait_for_reply(), hang_up()))
        job = await finished(stack, (await request_call(stack, CALLEE)).json()["id"], 30)
        (attempt,) = job["attempts"]
        assert lost == [attempt["call_sid"]]
        assert attempt["status"] == "completed" and attempt["status_from"] == "rest"
        assert job["outcome"] == "human"
        assert job["record"]["transcript"][0]["text"] == REMINDER
        assert stack.media_app.state.dialer.live == 0


@pytest.mark.timeout(300)  # five waves of ten real-time calls
async def test_fifty_calls_at_once_never_exceed_ten_live_and_all_complete(
    tmp_path: Path,
) -> None:
    outbound = OutboundLimits(
        allowed_countries=("US",), calling_hours=(0, 24), max_concurrent=10, max_queued=100
    )
    options = StackOptions(
        data_dir=tmp_path / "s", numbers=[NumberPlan("support")], outbound=outbound
    )
    async with LocalStack(options) as stack:
        callees = [f"+1415555{i:04d}" for i in range(200, 250)]
        for number in callees:
            stack.simulator.set_callee(number, human(wait_for_reply(), hang_up(), rings=1))
        answers = await asyncio.gather(*(request_call(stack, n) for n in callees))
        assert [a.status_code for a in answers] == [202] * 50
        async with live_calls_peak(stack) as peak:
            try:
                jobs = await asyncio.gather(
                    *(finished(stack, a.json()["id"], timeout_s=240) for a in answers)
                )
            except TimeoutError:
                report = await _stall_report(stack, [a.json()["id"] for a in answers])
                # an xfail hides the message: keep it where the next person can read it
                await asyncio.to_thread(_keep, "fifty-calls-stall.txt", report)
                pytest.fail(report)
        dialer = stack.media_app.state.dialer
    assert all(j["outcome"] == "human" for j in jobs), [j["outcome"] for j in jobs]
    assert len(stack.simulator.carrier.calls) == 50
    assert 1 <= peak.most <= 10 and dialer.max_live_seen == 10
