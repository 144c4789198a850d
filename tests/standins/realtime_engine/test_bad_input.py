"""Malformed input gets OpenAI-shaped errors, never a crash, and the session keeps answering."""

from __future__ import annotations

import os
import random

import pytest

from callplane_standins.realtime_engine.server import EngineServer
from tests.standins.realtime_engine.client import RawClient

pytestmark = pytest.mark.invalid_client_events


async def still_answers(c: RawClient) -> None:
    await c.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "goodbye"}],
            },
        }
    )
    await c.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
    done, _ = await c.until("response.output_text.done", timeout=30)
    assert done["text"] == "Goodbye, and thanks for calling."


async def test_invalid_json(engine: EngineServer) -> None:
    async with RawClient(engine.url) as c:
        await c.recv()
        await c.send_raw('{"type": "session.update", ')
        err, _ = await c.until("error")
        assert err["error"]["type"] == "invalid_request_error"
        assert err["error"]["code"] == "invalid_json"
        await still_answers(c)


async def test_unknown_event_type_echoes_the_event_id(engine: EngineServer) -> None:
    async with RawClient(engine.url) as c:
        await c.recv()
        sent = await c.send({"type": "response.make_it_so"})
        err, _ = await c.until("error")
        assert err["error"]["param"] == "type"
        assert err["error"]["event_id"] == sent
        assert "'response.make_it_so'" in err["error"]["message"]
        await still_answers(c)


async def test_bad_base64_audio(engine: EngineServer) -> None:
    async with RawClient(engine.url) as c:
        await c.recv()
        sent = await c.send({"type": "input_audio_buffer.append", "audio": "not base64!!"})
        err, _ = await c.until("error")
        assert err["error"]["param"] == "audio" and err["error"]["event_id"] == sent
        await still_answers(c)


async def test_missing_and_mistyped_fields(engine: EngineServer) -> None:
    async with RawClient(engine.url) as c:
        await c.recv()
        sent = await c.send({"type": "conversation.item.truncate", "item_id": "x"})
        err, _ = await c.until("error")
        assert err["error"]["code"] == "missing_required_parameter"
        assert err["error"]["event_id"] == sent
        await c.send(
            {"type": "session.update", "session": {"type": "realtime", "max_output_tokens": 99999}}
        )
        err, _ = await c.until("error")
        assert err["error"]["param"] == "session.max_output_tokens"
        await still_answers(c)


async def test_a_megabyte_of_garbage_frames(engine: EngineServer) -> None:
    rng = random.Random(7)
    async with RawClient(engine.url) as c:
        await c.recv()
        sent_frames = 0
        total = 0
        while total < 1024 * 1024:
            kind = sent_frames % 4
            size = rng.randint(1, 16 * 1024)
            if kind == 0:
                await c.send_raw(os.urandom(size))  # binary frame
            elif kind == 1:
                await c.send_raw("".join(chr(rng.randint(32, 126)) for _ in range(size)))
            elif kind == 2:
                await c.send_raw('{"type": ' + "[" * size)
            else:
                await c.send_raw(
                    '{"type": "input_audio_buffer.append", "audio": "' + "%" * size + '"}'
                )
            sent_frames += 1
            total += size
        errors = 0
        while errors < sent_frames:
            event = await c.recv()
            errors += event["type"] == "error"
        assert errors == sent_frames
        await still_answers(c)
