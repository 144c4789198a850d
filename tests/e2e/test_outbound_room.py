"""The room option of outbound calls: a call on a profile that names a room puts the person
who answers into that LiveKit room (as ``phone:+E164`` of the callee, not of our own number), and
the room's agent talks to them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
from livekit import api

from callplane.outbound import OutboundLimits
from callplane.profiles import AgentProfile
from callplane_dev.stack import LocalStack, NumberPlan, StackOptions
from callplane_standins.twilio_simulator.callee import human
from callplane_standins.twilio_simulator.caller import hang_up, wait_for_reply

ROOM = "outbound-lobby"
CALLEE = "+14155550177"
LOBBY = AgentProfile(
    name="lobby",
    greeting="Greet the person who joined.",
    tools=("end_call",),
    room=ROOM,
)


async def test_an_answered_outbound_call_joins_the_profiles_room(tmp_path: Path) -> None:
    options = StackOptions(
        data_dir=tmp_path / "stack",
        profiles={"lobby": LOBBY},
        numbers=[NumberPlan("lobby", "US", "local", 415)],
        outbound=OutboundLimits(allowed_countries=("US",), calling_hours=(0, 24)),
        livekit=True,
        agent_idle_timeout_s=2.0,
        write_dev_file=False,
    )
    async with LocalStack(options) as stack:
        assert stack.livekit is not None
        stack.simulator.set_callee(CALLEE, human(wait_for_reply(timeout_s=20), hang_up(), rings=1))
        headers = {"Authorization": f"Bearer {stack.creds.media_api_key}"}
        seen: set[str] = set()
        async with (
            httpx.AsyncClient(base_url=stack.media_url, headers=headers, timeout=10) as media,
            api.LiveKitAPI(
                stack.livekit.http_url,
                stack.creds.LIVEKIT_API_KEY,
                stack.creds.livekit_api_secret,
            ) as lk,
        ):
            answer = await media.post("/calls", json={"to": CALLEE, "profile": "lobby"})
            assert answer.status_code == 202, answer.text
            job_id = answer.json()["id"]
            deadline = time.monotonic() + 60
            job: dict[str, Any] = {}
            while time.monotonic() < deadline:
                listed = await lk.room.list_participants(api.ListParticipantsRequest(room=ROOM))
                seen.update(p.identity for p in listed.participants)
                job = (await media.get(f"/outbound/{job_id}")).json()
                if job["done"]:
                    break
                await asyncio.sleep(0.2)
            agents = (await media.get("/agents")).json()["agents"]
        assert job.get("done"), job
        assert job["outcome"] == "human"
        (attempt,) = job["attempts"]
        result = await stack.simulator.wait_for_call(attempt["call_sid"])
    # the callee was in the room under their own number, with the room's agent
    assert f"phone:{CALLEE}" in seen, seen
    assert any(identity.startswith("agent-") for identity in seen), seen
    assert [a["room"] for a in agents] == [ROOM]
    # and heard the room: audio came down the call after it was answered
    assert result.timeline.answered_ms is not None
    assert result.timeline.chunks, "the callee heard nothing from the room"
    assert min(c.received_ms for c in result.timeline.chunks) >= result.timeline.answered_ms
    assert job["record"]["context"]["room"] == ROOM
