"""A session's turn-taking when responses are cancelled while a turn is still being
recognised (what a barge-in under load does), without sockets."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from callplane_standins.realtime_engine.context import EngineContext, EngineSettings
from callplane_standins.realtime_engine.conversation import Item
from callplane_standins.realtime_engine.script import Heard
from callplane_standins.realtime_engine.session import RealtimeSession, _resolve
from tests.doubles import until


def user_turn(item_id: str) -> Item:
    item = Item(
        data={
            "id": item_id,
            "type": "message",
            "object": "realtime.item",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
    )
    item.heard = asyncio.get_running_loop().create_future()
    return item


async def test_a_response_cancelled_while_its_turn_is_recognised_leaves_the_turn_pending(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent: list[dict[str, Any]] = []

    async def send(event: dict[str, Any]) -> None:
        sent.append(event)

    session = RealtimeSession(EngineContext.create(EngineSettings(pace=1000)), send, "gpt-realtime")
    turn = user_turn("item_turn")
    session.conversation.add(turn)
    # The response to the turn waits for its recognition...
    await session._start_response({"output_modalities": ["text"]}, in_conversation=True)
    run = session.response
    assert run is not None
    await until(lambda: any(e["type"] == "response.created" for e in sent), "the response")
    await asyncio.sleep(0.01)
    # ...when the caller speaks again and the response is cancelled.
    with caplog.at_level(logging.ERROR, logger="callplane.engine"):
        await session._cancel(run, "turn_detected")
        assert turn.heard is not None and not turn.heard.done(), "the turn was cancelled"
        # The recognition finishes later and a second path resolves it too: neither fails.
        _resolve(turn, Heard(phrase=None))
        _resolve(turn, Heard(phrase="weather"))
        assert turn.heard.result() == Heard(phrase=None)
        # The next response hears the turn as it was recognised.
        await session._start_response({"output_modalities": ["text"]}, in_conversation=True)
        await until(lambda: session.response is None, "the second response to finish")
        await session.close()
    done = [e["response"] for e in sent if e["type"] == "response.done"]
    assert [r["status"] for r in done] == ["cancelled", "completed"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
