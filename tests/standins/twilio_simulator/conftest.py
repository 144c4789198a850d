"""Fixtures: a started simulator, an SDK client aimed at it, and the test bot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from callplane_standins.twilio_simulator.simulator import Simulator
from tests.standins.twilio_simulator.bot import Bot

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "simulated-auth-token-0001"
CALLER = "+15017122661"

T = TypeVar("T")


async def sdk(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a (blocking) twilio SDK call off the event loop the simulator runs on."""
    return await asyncio.to_thread(fn, *args, **kwargs)


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "twilio-state.json"


@pytest.fixture
async def sim(state_path: Path) -> AsyncIterator[Simulator]:
    simulator = Simulator(
        state_path, ACCOUNT_SID, AUTH_TOKEN, unanswered_ring_s=0.3, dial_hold_s=0.2
    )
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest.fixture
def client(sim: Simulator) -> Any:
    return sim.rest_client()


@pytest.fixture
async def bot() -> AsyncIterator[Bot]:
    b = Bot(AUTH_TOKEN)
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


async def buy(client: Any, bot: Bot, phone_number: str = "+14155550100", **kw: Any) -> Any:
    """Buy ``phone_number`` pointing at the bot's webhook and status endpoints."""
    return await sdk(
        client.incoming_phone_numbers.create,
        phone_number=phone_number,
        voice_url=f"{bot.base}/voice",
        status_callback=f"{bot.base}/status",
        **kw,
    )
