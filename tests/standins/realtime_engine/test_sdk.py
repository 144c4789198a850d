"""The engine driven by the official ``openai`` SDK, pointed at it by URL alone, µ-law both ways."""

from __future__ import annotations

import base64
import json
from typing import Any

from openai import AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection

from callplane.audio import PCMU
from callplane_standins.realtime_engine.recognition import PhraseRecognizer, normalize
from callplane_standins.realtime_engine.script import load_script, speakable
from callplane_standins.realtime_engine.server import EngineServer
from tests.standins.realtime_engine.client import spoken

TOOLS: Any = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Current weather.",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    }
]
SESSION: Any = {
    "type": "realtime",
    "audio": {
        "input": {
            "format": {"type": "audio/pcmu"},
            "transcription": {"model": "gpt-4o-mini-transcribe"},
        },
        "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"},
    },
    "tools": TOOLS,
}
WEATHER = {"location": "Chicago", "conditions": "cloudy", "temperature": 64}


async def say(conn: AsyncRealtimeConnection, text: str) -> None:
    audio = spoken(text, PCMU)
    for i in range(0, len(audio), 160):
        await conn.input_audio_buffer.append(audio=base64.b64encode(audio[i : i + 160]).decode())


def reply_phrases() -> list[str]:
    """Every reply the default script can say for the weather, in the recogniser's words."""
    script = load_script()
    texts = [script.greeting, script.fallback, script.followup, *(r.reply for r in script.rules)]
    texts.append(script.rules[1].after_tool.format(**WEATHER) if script.rules[1].after_tool else "")
    return sorted({normalize(speakable(t)) for t in texts if t})


async def test_weather_call_with_tool_round_trip_over_mulaw(engine: EngineServer) -> None:
    client = AsyncOpenAI(api_key="test", websocket_base_url=engine.base_url)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session=SESSION)
        await say(conn, "what is the weather like today")
        call = None
        reply_audio = bytearray()
        transcript = None
        heard = None
        async for event in conn:
            if event.type == "conversation.item.input_audio_transcription.completed":
                heard = event.transcript
            elif event.type == "response.function_call_arguments.done":
                call = event
            elif event.type == "response.done" and call is not None and transcript is None:
                if event.response.output and event.response.output[0].type == "function_call":
                    await conn.conversation.item.create(
                        item={
                            "type": "function_call_output",
                            "call_id": call.call_id,
                            "output": json.dumps(WEATHER),
                        }
                    )
                    await conn.response.create()
            elif event.type == "response.output_audio.delta" and call is not None:
                reply_audio.extend(base64.b64decode(event.delta))
            elif event.type == "response.output_audio_transcript.done":
                transcript = event.transcript
            elif event.type == "response.done" and transcript is not None:
                break
    assert heard == "what is the weather like today"
    assert call is not None and call.name == "get_weather"
    assert json.loads(call.arguments) == {"location": "current"}
    assert transcript == "Right now it is cloudy and sixty four degrees in Chicago."
    # The audio is what the transcript says: recognise it against every reply the script has.
    recognizer = PhraseRecognizer(reply_phrases())
    result = recognizer.recognize(PCMU.decode(bytes(reply_audio)), PCMU.rate)
    assert result.text == normalize(transcript)


async def test_interruption_truncation_and_recovery(engine: EngineServer) -> None:
    client = AsyncOpenAI(api_key="test", websocket_base_url=engine.base_url)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session=SESSION)
        await conn.response.create()  # a greeting, well over a second of audio
        produced = 0
        item_id = None
        async for event in conn:
            if event.type == "response.output_audio.delta":
                item_id = event.item_id
                produced += len(base64.b64decode(event.delta))
                if PCMU.duration_ms(produced) >= 1000:
                    break
        assert item_id is not None
        await say(conn, "hello can you hear me")  # the caller talks over the agent
        order: list[str] = []
        cancelled = None
        async for event in conn:
            order.append(event.type)
            if event.type == "response.done" and event.response.status == "cancelled":
                cancelled = event.response
                break
        assert "input_audio_buffer.speech_started" in order
        assert cancelled is not None and cancelled.status_details is not None
        assert cancelled.status_details.reason == "turn_detected"

        await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=800)
        truncated = error = None
        async for event in conn:
            if event.type == "conversation.item.truncated":
                truncated = event
                await conn.conversation.item.truncate(
                    item_id=item_id, content_index=0, audio_end_ms=60_000
                )
            elif event.type == "error":
                error = event
                break
        assert truncated is not None and truncated.audio_end_ms == 800
        assert error is not None and "already shorter than 60000ms" in error.error.message

        # The interrupting turn still gets its answer: the session goes on.
        answer = None
        async for event in conn:
            if event.type == "response.output_audio_transcript.done":
                answer = event.transcript
                break
        assert answer == "Hello! Yes, I can hear you. How can I help you today?"
        await conn.conversation.item.retrieve(item_id=item_id)
        async for event in conn:
            if event.type == "conversation.item.retrieved":
                retrieved: Any = event.item
                content = retrieved.content[0]
                assert PCMU.duration_ms(len(base64.b64decode(content.audio or ""))) == 800
                assert len((content.transcript or "").split()) < len(
                    "Hello, thanks for calling. How can I help you today?".split()
                )
                break
