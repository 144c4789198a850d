"""The whole local stack for end-to-end tests: engine, Twilio simulator, edge and media plane on
real loopback sockets, wired as production is. The media plane runs in the cloud's shape by
default (``E2E_REPLICAS`` processes of the media app and of the stream server behind fronts,
PostgreSQL and Redis shared by all), and every stack checks at its end that each media replica
lists the same calls, every call a caller heard among them. Every event the engine sends or
receives is checked against the openai SDK's GA models and timestamped, so tests can measure
what the bridge did and when."""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from callplane_dev.stack import LocalStack, StackOptions
from callplane_standins.realtime_engine.context import Direction
from tests.conftest import ConformanceLog


@dataclass
class EngineEvents:
    """Every engine event with ``time.monotonic()`` at the moment it crossed the socket."""

    log: list[tuple[float, Direction, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, direction: Direction, event: Mapping[str, Any]) -> None:
        self.log.append((time.monotonic(), direction, dict(event)))

    def of_type(
        self, etype: str, direction: Direction | None = None
    ) -> list[tuple[float, dict[str, Any]]]:
        return [
            (t, e)
            for t, d, e in self.log
            if e.get("type") == etype and (direction is None or d == direction)
        ]


@pytest.fixture
def engine_events() -> EngineEvents:
    return EngineEvents()


E2E_REPLICAS = 2
"""Media replicas (and stream replicas) of the stacks the end-to-end tests start."""


async def _listed(stack: LocalStack, url: str) -> set[str]:
    headers = {"Authorization": f"Bearer {stack.creds.media_api_key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as http:
        answer = await http.get("/calls", params={"limit": 500})
    assert answer.status_code == 200, answer.text
    return {call["call_sid"] for call in answer.json()["calls"]}


async def every_replica_lists_every_call(stack: LocalStack) -> None:
    """``GET /calls`` answers the same on every media replica, and lists every call whose
    caller (or callee) heard the agent, whichever stream replica served it."""
    assert stack.plane is not None
    heard = {sid for sid, call in stack.simulator.carrier.calls.items() if call.timeline.chunks}
    listed = [await _listed(stack, url) for url in stack.plane.describe()["media"]]
    assert all(found == listed[0] for found in listed), listed
    assert heard <= listed[0], f"calls heard but not listed: {sorted(heard - listed[0])}"


@contextlib.asynccontextmanager
async def started(options: StackOptions) -> AsyncIterator[LocalStack]:
    """The stack for ``options``; in the cloud's shape it is checked with
    :func:`every_replica_lists_every_call` before it stops (unless the test failed), and its
    PostgreSQL cluster is deleted after."""
    async with LocalStack(options) as running:
        postgres = running.plane.postgres if running.plane is not None else None
        yield running
        if running.plane is not None:
            await every_replica_lists_every_call(running)
    if running.stop_timeouts:
        # Logged with every waiting task by the stack; reported here so a run shows it.
        warnings.warn(
            f"the stack gave up waiting for {running.stop_timeouts} to stop", stacklevel=1
        )
    if postgres is not None:
        await postgres.discard()


def _checked(conformance: ConformanceLog, running: LocalStack) -> None:
    conformance.count()
    assert not conformance.violations, "non-conforming events:\n" + "\n".join(
        conformance.violations[:20]
    )
    if running.engine.sessions_opened:
        assert conformance.server_checked > 0


@pytest.fixture
async def stack(
    tmp_path: Path, conformance: ConformanceLog, engine_events: EngineEvents
) -> AsyncIterator[LocalStack]:
    """The whole stack in the cloud's shape."""

    def observe(direction: Direction, event: Mapping[str, Any]) -> None:
        conformance(direction, event)
        engine_events(direction, event)

    options = StackOptions(
        data_dir=tmp_path / "stack", pace=4.0, engine_observer=observe, replicas=E2E_REPLICAS
    )
    async with started(options) as running:
        yield running
    _checked(conformance, running)


LIVEKIT_AGENT_IDLE_S = 3.0
"""How long an agent job stays in an empty room in the LiveKit end-to-end tests."""


@pytest.fixture
async def livekit_stack(
    tmp_path: Path, conformance: ConformanceLog, request: pytest.FixtureRequest
) -> AsyncIterator[LocalStack]:
    """The whole local stack with LiveKit and a short agent idle timeout; every engine event is
    checked against the openai SDK's GA models, and no agent job outlives the stack. A test
    marked ``@pytest.mark.stack_options(name=value, ...)`` sets those ``StackOptions`` too
    (e.g. the caps on agent jobs)."""

    def observe(direction: Direction, event: Mapping[str, Any]) -> None:
        conformance(direction, event)

    marker = request.node.get_closest_marker("stack_options")
    options = StackOptions(
        data_dir=tmp_path / "stack",
        livekit=True,
        agent_idle_timeout_s=LIVEKIT_AGENT_IDLE_S,
        engine_observer=observe,
        write_dev_file=False,
        replicas=E2E_REPLICAS,
        **(marker.kwargs if marker is not None else {}),
    )
    async with started(options) as running:
        yield running
        # Agent jobs die with the stack: note every job's process while the stack still runs.
        headers = {"Authorization": f"Bearer {running.creds.media_api_key}"}
        async with httpx.AsyncClient(base_url=running.media_url, headers=headers) as http:
            jobs = (await http.get("/agents")).json()["agents"]
    # none is left running, none of their processes is alive
    for job in jobs:
        with pytest.raises(ProcessLookupError):
            os.kill(int(job["handle"].removeprefix("pid:")), 0)
    _checked(conformance, running)
