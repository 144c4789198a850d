"""Stopping the local stack is bounded: a part that never stops is logged and skipped."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

import callplane_dev.stack as stack_module
from callplane_dev.stack import LocalStack, StackOptions


async def _never_stops(event: asyncio.Event) -> None:
    await event.wait()


async def test_a_part_that_hangs_is_logged_with_what_waits_and_the_rest_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(stack_module, "STOP_PART_TIMEOUT_S", 0.2)
    stack = LocalStack(StackOptions(data_dir=tmp_path))
    never = asyncio.Event()
    stuck = asyncio.create_task(_never_stops(never), name="stuck-handler")
    finished: list[str] = []

    async def quick() -> None:
        finished.append("quick")

    with caplog.at_level(logging.ERROR, logger="callplane.stack"):
        # Like a server waiting for its connection handlers: the handler itself is not cancelled.
        await stack._stop_part("the hanging part", asyncio.shield(stuck))
        await stack._stop_part("the quick part", quick())

    assert stack.stop_timeouts == ["the hanging part"]
    assert finished == ["quick"]
    [message] = [r.getMessage() for r in caplog.records]
    assert "the hanging part did not stop within 0.2 s" in message
    # The log names the task still waiting and the line it waits on.
    assert "stuck-handler: _never_stops (test_stack_stop.py:" in message
    assert "wait (locks.py:" in message
    stuck.cancel()
