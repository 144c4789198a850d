"""``--mode load`` and ``--script FILE``."""

from __future__ import annotations

import base64
from pathlib import Path

from callplane.audio import PCMU
from callplane_standins.realtime_engine.context import (
    LOAD_REPLY_MS,
    LOAD_REPLY_TRANSCRIPT,
    EngineSettings,
)
from callplane_standins.realtime_engine.server import EngineServer
from tests.conftest import ConformanceLog
from tests.standins.realtime_engine.client import RawClient, spoken, types

PCMU_SESSION = {
    "type": "realtime",
    "audio": {
        "input": {"format": {"type": "audio/pcmu"}},
        "output": {"format": {"type": "audio/pcmu"}},
    },
}

CUSTOM_SCRIPT = """
greeting = "Welcome to the lab."
fallback = "Please say check the status."
followup = "Anything else?"

[[rules]]
name = "status"
phrases = ["check the status"]
reply = "All systems are green."
"""


async def test_load_mode_answers_each_turn_with_the_fixed_clip(conformance: ConformanceLog) -> None:
    async with EngineServer(EngineSettings(mode="load", pace=20.0), observer=conformance) as server:
        async with RawClient(server.url) as c:
            await c.recv()
            await c.send({"type": "session.update", "session": PCMU_SESSION})
            await c.until("session.updated")
            for _ in range(2):
                await c.append_audio(spoken("what is the weather like today", PCMU))
                _, seen = await c.until("response.done")
                audio = b"".join(
                    base64.b64decode(e["delta"])
                    for e in seen
                    if e["type"] == "response.output_audio.delta"
                )
                assert PCMU.duration_ms(len(audio)) == LOAD_REPLY_MS
                done = next(e for e in seen if e["type"] == "response.output_audio_transcript.done")
                assert done["transcript"] == LOAD_REPLY_TRANSCRIPT
                assert "response.function_call_arguments.done" not in types(seen)
        assert server.ctx.recognizers.created == 0  # no recognition in load mode
    assert not conformance.violations and conformance.server_checked > 0


async def test_a_custom_script_replaces_the_phrases(
    tmp_path: Path, conformance: ConformanceLog
) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(CUSTOM_SCRIPT)
    async with (
        EngineServer(EngineSettings(script_path=path, pace=20.0), observer=conformance) as server,
        RawClient(server.url) as c,
    ):
        await c.recv()
        await c.send({"type": "session.update", "session": PCMU_SESSION})
        await c.until("session.updated")
        await c.send({"type": "response.create"})
        greeting, _ = await c.until("response.output_audio_transcript.done")
        assert greeting["transcript"] == "Welcome to the lab."
        await c.until("response.done")
        await c.append_audio(spoken("check the status", PCMU))
        reply, _ = await c.until("response.output_audio_transcript.done")
        assert reply["transcript"] == "All systems are green."
        await c.until("response.done")
        await c.append_audio(spoken("what is the weather like today", PCMU))
        fallback, _ = await c.until("response.output_audio_transcript.done")
        assert fallback["transcript"] == "Please say check the status."
    assert not conformance.violations and conformance.server_checked > 0
