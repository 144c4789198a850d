"""``callplane call``: place a simulated call on a running local stack and follow it live.

It talks to the stack only over HTTP, the way a person's phone and a dashboard would: the
Twilio simulator's control endpoint rings the number with a scripted caller, and the media
app's ``GET /calls/{sid}`` (API key) shows the record growing while the call is on. The stack
is found through the ``dev.json`` that ``callplane dev`` writes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from callplane_dev.stack import DEFAULT_CALLER, DEV_FILE

T = TypeVar("T")

__all__ = ["CallFailed", "CallOutcome", "RunningStack", "caller_steps", "follow_call"]


class CallFailed(RuntimeError):
    """The call could not be placed or followed; the message says why and what to do."""


@dataclass(frozen=True)
class RunningStack:
    """Where a running local stack is, from its ``dev.json``."""

    twilio: str
    media: str
    account_sid: str
    auth_token: str
    media_api_key: str
    numbers: dict[str, str]  # E.164 -> profile

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> RunningStack | None:
        path = data_dir / DEV_FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return cls(
            twilio=data["twilio"],
            media=data["media"],
            account_sid=data["account_sid"],
            auth_token=data["auth_token"],
            media_api_key=data["media_api_key"],
            numbers={n["number"]: n["profile"] for n in data["numbers"]},
        )

    def resolve(self, number_or_profile: str) -> str:
        """A stack number given as E.164 or as the name of the profile answering it."""
        if number_or_profile in self.numbers:
            return number_or_profile
        for number, profile in self.numbers.items():
            if profile == number_or_profile:
                return number
        known = ", ".join(f"{n} ({p})" for n, p in self.numbers.items())
        raise CallFailed(
            f"{number_or_profile!r} is not a number of the local stack; call one of: {known}"
        )


def caller_steps(says: Sequence[str], *, hang_up: bool) -> list[dict[str, Any]]:
    """The caller's script as the simulator's JSON steps: hear the greeting, then for each
    phrase say it and hear the answer; finally hang up (unless the agent is to do it)."""
    steps: list[dict[str, Any]] = [{"wait_for_reply": 15}]
    for text in says:
        steps += [{"say": text}, {"wait_for_reply": 15}]
    if hang_up:
        steps.append({"hang_up": True})
    return steps


@dataclass
class CallOutcome:
    """What the carrier saw (``result``) and what the media app recorded (``record``)."""

    result: dict[str, Any]
    record: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return (
            self.result.get("status") == "completed"
            and not self.result.get("errors")
            and self.record is not None
        )


OnLine = Callable[[str, str], None]  # (who, text): "agent" / "caller" / "tool"


async def follow_call(
    stack: RunningStack,
    to: str,
    steps: list[dict[str, Any]],
    on_line: OnLine,
    *,
    from_: str = DEFAULT_CALLER,
    max_duration_s: float = 120.0,
    poll_s: float = 0.2,
) -> CallOutcome:
    """Ring ``to`` with the scripted caller; report each transcript line and tool call as it
    appears; return the carrier's result and the stored record once the call is over."""
    auth = (stack.account_sid, stack.auth_token)
    headers = {"Authorization": f"Bearer {stack.media_api_key}"}
    async with (
        httpx.AsyncClient(base_url=stack.twilio, auth=auth, timeout=10) as twilio,
        httpx.AsyncClient(base_url=stack.media, headers=headers, timeout=10) as media,
    ):
        try:
            placed = await twilio.post(
                "/_simulator/Calls",
                json={
                    "from": from_,
                    "to": to,
                    "script": steps,
                    "max_duration_s": max_duration_s,
                    "wait": False,
                },
            )
        except httpx.ConnectError:
            raise CallFailed(
                f"the Twilio simulator at {stack.twilio} does not answer: is `callplane dev` "
                "still running?"
            ) from None
        if placed.status_code != 202:
            raise CallFailed(f"the simulator refused the call: {placed.text}")
        call_sid = placed.json()["call_sid"]
        shown = {"transcript": 0, "tool_calls": 0}
        deadline = time.monotonic() + max_duration_s + 30
        result: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            answer = await media.get(f"/calls/{call_sid}")
            if answer.status_code == 200:
                body = answer.json()
                _report(body["record"], shown, on_line)
                if result is not None and not body["live"]:
                    return CallOutcome(result, body["record"])
            if result is None:
                done = await twilio.get(f"/_simulator/Calls/{call_sid}")
                if done.status_code == 200:
                    result = done.json()
                    if not result.get("timeline", {}).get("streams"):
                        return CallOutcome(result, None)  # never reached the media app
            await asyncio.sleep(poll_s)
        raise CallFailed(f"call {call_sid} did not finish within {max_duration_s + 30:.0f} s")


def _report(record: dict[str, Any], shown: dict[str, int], on_line: OnLine) -> None:
    events: list[tuple[float, str, str]] = []
    for line in record["transcript"][shown["transcript"] :]:
        events.append((line["at"], line["role"], line["text"]))
    shown["transcript"] = len(record["transcript"])
    for call in record["tool_calls"][shown["tool_calls"] :]:
        events.append((float("inf"), "tool", f"{call['name']}({call['arguments']})"))
    shown["tool_calls"] = len(record["tool_calls"])
    for _, who, text in sorted(events, key=lambda e: e[0]):
        on_line(who, text)


async def set_callee(stack: RunningStack, number: str, callee: dict[str, Any]) -> None:
    """Tell the simulator who answers outbound calls to ``number`` (see callee_from_json)."""
    async with httpx.AsyncClient(
        base_url=stack.twilio, auth=(stack.account_sid, stack.auth_token), timeout=10
    ) as twilio:
        answer = await twilio.post("/_simulator/Callees", json={"number": number, **callee})
    if answer.status_code != 201:
        raise CallFailed(f"the simulator refused the callee: {answer.text}")


async def dial(
    stack: RunningStack,
    to: str,
    profile: str,
    context: dict[str, Any],
    on_progress: Callable[[dict[str, Any]], None],
    *,
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    """``POST /calls`` on the media app and follow the request to its end; return its JSON.
    A refusal raises :class:`CallFailed` with the limit and the reason."""
    headers = {"Authorization": f"Bearer {stack.media_api_key}"}
    async with httpx.AsyncClient(base_url=stack.media, headers=headers, timeout=10) as media:
        answer = await media.post("/calls", json={"to": to, "profile": profile, "context": context})
        if answer.status_code != 202:
            body = answer.json()
            refused = body.get("refused") if isinstance(body, dict) else None
            if refused:
                raise CallFailed(f"refused by {refused['limit']}: {refused['reason']}")
            raise CallFailed(f"the media app refused the request: {answer.text}")
        job_id = answer.json()["id"]
        seen = ""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job: dict[str, Any] = (await media.get(f"/outbound/{job_id}")).json()
            summary = json.dumps([(a["status"], a["answered_by"]) for a in job["attempts"]])
            if summary != seen:
                seen = summary
                on_progress(job)
            if job["done"]:
                return job
            await asyncio.sleep(0.3)
    raise CallFailed(f"outbound request {job_id} did not finish within {timeout_s:.0f} s")


async def on_running_stack(
    data_dir: Path, use: Callable[[RunningStack], Awaitable[T]], note: Callable[[str], None]
) -> T:
    """Run ``use`` on the stack `callplane dev` runs in ``data_dir``; without one, start a
    stack for the duration (and say so through ``note``)."""
    running = RunningStack.from_data_dir(data_dir)
    if running is not None:
        return await use(running)
    note(f"no `callplane dev` running in {data_dir}; starting a stack for this call")
    from callplane_dev.stack import LocalStack, StackOptions

    async with LocalStack(StackOptions(data_dir=data_dir)):
        running = RunningStack.from_data_dir(data_dir)
        assert running is not None, "a started stack writes dev.json"
        return await use(running)
