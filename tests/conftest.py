"""Shared fixtures. Every engine a test starts validates every event it sends, and every event
the test sends it, against the official ``openai`` SDK's GA models (strict); a test fails on
the first non-conforming frame. Tests that send malformed client events on purpose carry the
``invalid_client_events`` marker, which exempts only the client side."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import settings

from callplane.realtime.conformance import (
    ConformanceError,
    validate_client_event,
    validate_server_event,
)
from callplane_standins.realtime_engine.context import Direction, EngineSettings
from callplane_standins.realtime_engine.server import EngineServer

# functions/app.py deploys the media plane for one stack and will not guess which: the tests
# read the dev stack's Modal app, unless the shell names another.
os.environ.setdefault("CALLPLANE_STACK", "dev")

# Property tests (Hypothesis) are bounded: 200 examples each, no per-example deadline (the
# machine is shared, so time per example says nothing). In CI (CI=true) every run draws the same
# examples, so a run cannot fail on a draw the previous one did not make; elsewhere each run
# draws new ones, and a failing example is kept in .hypothesis/ and tried first next time.
# HYPOTHESIS_PROFILE picks a profile by name.
settings.register_profile(
    "ci", max_examples=200, deadline=None, derandomize=True, database=None, print_blob=True
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)


@dataclass
class ConformanceLog:
    exempt_client: bool
    server_checked: int = 0
    client_checked: int = 0
    violations: list[str] = field(default_factory=list)

    def count(self) -> None:
        """Add this test's checks to the session's totals (printed at the end)."""
        _TOTALS["server"] += self.server_checked
        _TOTALS["client"] += self.client_checked

    def __call__(self, direction: Direction, event: Mapping[str, Any]) -> None:
        try:
            if direction == "out":
                validate_server_event(event)
                self.server_checked += 1
            elif not self.exempt_client:
                validate_client_event(event)
                self.client_checked += 1
        except ConformanceError as exc:
            self.violations.append(f"{direction}: {exc}")


_TOTALS = {"server": 0, "client": 0}


@pytest.fixture
def conformance(request: pytest.FixtureRequest) -> ConformanceLog:
    exempt = request.node.get_closest_marker("invalid_client_events") is not None
    return ConformanceLog(exempt_client=exempt)


@pytest.fixture
def engine_settings() -> EngineSettings:
    """Tests stream output audio fast; override in a module to change mode or script."""
    return EngineSettings(pace=20.0)


@pytest.fixture
async def engine(
    engine_settings: EngineSettings, conformance: ConformanceLog
) -> AsyncIterator[EngineServer]:
    server = EngineServer(engine_settings, observer=conformance)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
    conformance.count()
    assert not conformance.violations, "non-conforming events:\n" + "\n".join(
        conformance.violations[:20]
    )
    if server.sessions_opened:
        assert conformance.server_checked > 0, "sessions ran but no event was checked"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _TOTALS["server"]:
        terminalreporter.write_line(
            f"conformance: {_TOTALS['server']} server events and {_TOTALS['client']} client "
            "events validated strictly against the openai SDK's GA models"
        )
