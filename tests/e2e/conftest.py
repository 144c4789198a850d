"""The whole local stack for end-to-end tests: engine, Twilio simulator, edge and media app on
real loopback sockets, wired as production is. Every event the engine sends or receives is
checked against the openai SDK's GA models and timestamped, so tests can measure what the
bridge did and when."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


@pytest.fixture
async def stack(
    tmp_path: Path, conformance: ConformanceLog, engine_events: EngineEvents
) -> AsyncIterator[LocalStack]:
    def observe(direction: Direction, event: Mapping[str, Any]) -> None:
        conformance(direction, event)
        engine_events(direction, event)

    options = StackOptions(data_dir=tmp_path / "stack", pace=4.0, engine_observer=observe)
    async with LocalStack(options) as running:
        yield running
    conformance.count()
    assert not conformance.violations, "non-conforming events:\n" + "\n".join(
        conformance.violations[:20]
    )
    if running.engine.sessions_opened:
        assert conformance.server_checked > 0


LIVEKIT_AGENT_IDLE_S = 3.0
"""How long an agent job stays in an empty room in the LiveKit end-to-end tests."""


@pytest.fixture
async def livekit_stack(tmp_path: Path, conformance: ConformanceLog) -> AsyncIterator[LocalStack]:
    """The whole local stack with LiveKit and a short agent idle timeout; every engine event is
    checked against the openai SDK's GA models, and no agent job outlives the stack."""

    def observe(direction: Direction, event: Mapping[str, Any]) -> None:
        conformance(direction, event)

    options = StackOptions(
        data_dir=tmp_path / "stack",
        livekit=True,
        agent_idle_timeout_s=LIVEKIT_AGENT_IDLE_S,
        engine_observer=observe,
        write_dev_file=False,
    )
    async with LocalStack(options) as running:
        agents = running.media_app.state.agents  # the stack lets go of its app when it stops
        yield running
    # Agent jobs die with the stack: none is left running, none of their processes is alive.
    jobs = agents.jobs()
    assert [job.state for job in jobs if job.state == "running"] == [], jobs
    for job in jobs:
        with pytest.raises(ProcessLookupError):
            os.kill(int(job.handle.handle.removeprefix("pid:")), 0)
    conformance.count()
    assert not conformance.violations, "non-conforming events:\n" + "\n".join(
        conformance.violations[:20]
    )
