"""``Say exactly: "…"`` in a response's instructions: the engine speaks that text verbatim."""

from __future__ import annotations

from openai import AsyncOpenAI

from callplane.realtime.directives import exact_line, say_exactly
from callplane_standins.realtime_engine.server import EngineServer


def test_the_directive_round_trips_and_drops_quotes() -> None:
    assert exact_line(say_exactly('Hi "Amina", see you at 3.')) == "Hi Amina, see you at 3."
    assert exact_line("Greet the caller warmly.") is None
    assert exact_line(None) is None


async def test_a_response_says_exactly_what_its_instructions_quote(engine: EngineServer) -> None:
    client = AsyncOpenAI(api_key="local", websocket_base_url=engine.base_url)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["audio"]})
        text = "Hello Amina, this is a reminder of your appointment tomorrow at 3 pm."
        await conn.response.create(response={"instructions": say_exactly(text)})
        async for event in conn:
            if event.type == "response.output_audio_transcript.done":
                transcript = event.transcript
                break
    assert transcript == (
        "Hello Amina, this is a reminder of your appointment tomorrow at three pm."
    )
