"""``callplane demo --engine-only``: an offline conversation with the engine alone, driven the way
an app would drive OpenAI.

The engine runs in-process on a free loopback port; the client is the official ``openai`` SDK
pointed at it by URL alone. The caller's turns are espeak-ng speech sent as µ-law, exactly as a
phone bridge sends Twilio audio; the agent answers in µ-law, calls a tool, and says goodbye.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import numpy as np
from openai import AsyncOpenAI
from rich.console import Console

from callplane.audio import PCMU
from callplane_standins.realtime_engine.server import EngineServer
from callplane_standins.realtime_engine.speech import speak

CALLER_VOICE = "en-us"
TURNS = ("what is the weather like today", "goodbye")
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Current weather at the caller's location.",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
    {
        "type": "function",
        "name": "end_call",
        "description": "Hang up once the goodbye has been said.",
        "parameters": {"type": "object", "properties": {"reason": {"type": "string"}}},
    },
]
WEATHER = {"location": "San Francisco", "conditions": "sunny", "temperature": 72}


def caller_turn(text: str, voice: str = CALLER_VOICE, trailing_silence_ms: int = 800) -> bytes:
    """µ-law 8 kHz audio of ``text`` followed by silence long enough to end the turn."""
    pcm = speak(text, voice, PCMU.rate)
    silence = np.zeros(PCMU.rate * trailing_silence_ms // 1000, dtype=np.int16)
    return PCMU.encode(np.concatenate((pcm, silence)))


async def run_demo(console: Console) -> bool:
    """Hold the conversation; print it; return True when every step happened."""
    started = time.monotonic()
    async with EngineServer() as server:
        console.print(f"[dim]engine on {server.url}[/]")
        client = AsyncOpenAI(api_key="local", websocket_base_url=server.base_url)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            await conn.session.update(
                session={
                    "type": "realtime",
                    "instructions": "You are a friendly phone agent.",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcmu"},
                            "transcription": {"model": "gpt-4o-mini-transcribe"},
                        },
                        "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"},
                    },
                    "tools": TOOLS,  # type: ignore[typeddict-item]
                }
            )
            await conn.response.create()  # the agent greets first
            pending = list(TURNS)
            agent_audio = 0
            tool_calls: list[str] = []
            ended = False
            async for event in conn:
                if event.type == "response.output_audio.delta":
                    agent_audio += len(base64.b64decode(event.delta))
                elif event.type == "response.output_audio_transcript.done":
                    console.print(f"[bold cyan]agent [/] {event.transcript}")
                elif event.type == "conversation.item.input_audio_transcription.completed":
                    console.print(f"[bold yellow]caller[/] {event.transcript}")
                elif event.type == "response.function_call_arguments.done":
                    tool_calls.append(event.name)
                    console.print(f"[magenta]tool  [/] {event.name}({event.arguments})")
                    if event.name == "get_weather":
                        await conn.conversation.item.create(
                            item={
                                "type": "function_call_output",
                                "call_id": event.call_id,
                                "output": json.dumps(WEATHER),
                            }
                        )
                        await conn.response.create()
                    elif event.name == "end_call":
                        ended = True
                elif event.type == "response.done":
                    if ended:
                        break
                    if event.response.output and any(
                        o.type == "function_call" for o in event.response.output
                    ):
                        continue  # the tool's answer comes in its own response
                    if pending:
                        text = pending.pop(0)
                        audio = caller_turn(text)
                        for i in range(0, len(audio), 160):  # 20 ms frames, as Twilio sends
                            await conn.input_audio_buffer.append(
                                audio=base64.b64encode(audio[i : i + 160]).decode()
                            )
                elif event.type == "error":
                    console.print(f"[red]error[/] {event.error.message}")
                    return False
    ok = tool_calls == ["get_weather", "end_call"] and ended
    seconds = time.monotonic() - started
    console.print(
        f"[bold]{'conversation complete' if ok else 'conversation FAILED'}[/]: "
        f"{PCMU.duration_ms(agent_audio) / 1000:.1f} s of agent audio, tools {tool_calls}, "
        f"{seconds:.1f} s wall time"
    )
    return ok
