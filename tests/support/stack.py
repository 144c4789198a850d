"""Questions tests ask the running local stack (``callplane_dev.stack.LocalStack``): its
LiveKit server as a test server, the media app's agent jobs, a web user's token."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from callplane_dev.stack import LocalStack
from tests.livekit_server import LiveKitServer
from tests.support.livekit_people import Grant
from tests.support.tokens import edge_token
from tests.support.waiting import poll

Job = dict[str, Any]
Jobs = list[Job]


def stack_livekit(stack: LocalStack) -> LiveKitServer:
    """The stack's livekit-server with its key pair: tokens, the server API, who is in a room."""
    assert stack.livekit is not None, "the stack runs without LiveKit"
    return LiveKitServer(
        stack.livekit.url,
        stack.creds.LIVEKIT_API_KEY,
        stack.creds.livekit_api_secret,
        stack.livekit.work_dir / "livekit.log",
    )


async def agent_jobs(stack: LocalStack, room: str) -> Jobs:
    """``GET /agents`` on the media app (with its API key), this room's jobs only."""
    async with httpx.AsyncClient(base_url=stack.media_url, timeout=10) as client:
        response = await client.get(
            "/agents", headers={"Authorization": f"Bearer {stack.creds.media_api_key}"}
        )
    assert response.status_code == 200, response.text
    jobs: Jobs = response.json()["agents"]
    return [job for job in jobs if job["room"] == room]


async def wait_jobs(
    stack: LocalStack, room: str, predicate: Callable[[Jobs], bool], timeout_s: float, what: str
) -> Jobs:
    """``room``'s agent jobs once ``predicate`` holds for them."""
    return await poll(lambda: agent_jobs(stack, room), predicate, timeout_s, what)


def running(jobs: Jobs) -> Jobs:
    return [job for job in jobs if job["state"] == "running"]


async def web_token(
    stack: LocalStack, room: str, identity: str | None = None, *, key: str | None = "web"
) -> httpx.Response:
    """The edge's ``POST /token``, with the stack's web key unless ``key`` says otherwise."""
    return await edge_token(
        stack.edge_url, room, identity, key=stack.creds.web_key if key == "web" else key
    )


def edge_grant(stack: LocalStack, room: str) -> Grant:
    """Ways into ``room`` the way the playground gets them: the edge's ``POST /token`` with the
    stack's web key (the answer must name the room and the identity asked for)."""

    async def grant(identity: str) -> tuple[str, str]:
        response = await web_token(stack, room, identity)
        assert response.status_code == 200, response.text
        granted = response.json()
        assert granted["room"] == room and granted["identity"] == identity
        return granted["url"], granted["token"]

    return grant


async def wait_job_ended(
    stack: LocalStack,
    room: str,
    timeout_s: float,
    what: str = "the agent job to exit after the last human left",
) -> Job:
    """The room's one agent job, once it is no longer running."""
    [job] = await wait_jobs(
        stack, room, lambda jobs: len(jobs) == 1 and jobs[0]["state"] != "running", timeout_s, what
    )
    return job


@dataclass
class LiveCallsPeak:
    """The most calls the Twilio simulator carried at once while it was watched."""

    most: int = 0


@contextlib.asynccontextmanager
async def live_calls_peak(stack: LocalStack) -> AsyncIterator[LiveCallsPeak]:
    """Sample the simulator's live calls every 20 ms for as long as the block runs: what a
    concurrency limit looks like from the carrier's side, whichever container placed them."""
    peak = LiveCallsPeak()

    async def watch() -> None:
        while True:
            live = sum(1 for call in stack.simulator.carrier.calls.values() if call.live)
            peak.most = max(peak.most, live)
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    try:
        yield peak
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
