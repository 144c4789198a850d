"""The engine's GA protocol, event by event, over a real loopback WebSocket."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from callplane.audio import PCM24K, PCMA, PCMU
from callplane_standins.realtime_engine.context import EngineSettings
from callplane_standins.realtime_engine.server import EngineServer
from tests.standins.realtime_engine.client import RawClient, spoken, types

PCMU_SESSION: dict[str, Any] = {
    "type": "realtime",
    "audio": {
        "input": {
            "format": {"type": "audio/pcmu"},
            "transcription": {"model": "gpt-4o-mini-transcribe"},
        },
        "output": {"format": {"type": "audio/pcmu"}},
    },
}
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather now",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
}


def user_text(text: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        },
    }


async def test_session_created_first_with_full_ga_defaults(engine: EngineServer) -> None:
    async with RawClient(engine.url + "?model=gpt-realtime") as c:
        first = await c.recv()
        assert first["type"] == "session.created"
        session = first["session"]
        assert session["type"] == "realtime" and session["model"] == "gpt-realtime"
        assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"


async def test_session_update_changes_only_the_fields_sent(engine: EngineServer) -> None:
    async with RawClient(engine.url) as c:
        await c.recv()
        await c.send({"type": "session.update", "session": PCMU_SESSION})
        updated, _ = await c.until("session.updated")
        audio = updated["session"]["audio"]
        assert audio["input"]["format"] == {"type": "audio/pcmu"}
        assert audio["output"]["voice"] == "marin"  # untouched default
        assert audio["input"]["turn_detection"]["silence_duration_ms"] == 500


@pytest.mark.invalid_client_events
async def test_unknown_session_field_is_unknown_parameter(engine: EngineServer) -> None:
    async with RawClient(engine.url) as c:
        await c.recv()
        sent = await c.send(
            {"type": "session.update", "session": {"type": "realtime", "voice": "alloy"}}
        )
        err, _ = await c.until("error")
        assert err["error"]["code"] == "unknown_parameter"
        assert err["error"]["param"] == "session.voice"
        assert err["error"]["event_id"] == sent


async def test_spoken_turn_with_pcmu_gives_the_ga_sequence(engine: EngineServer) -> None:
    async with RawClient(engine.url) as c:
        await c.recv()
        await c.send({"type": "session.update", "session": PCMU_SESSION})
        await c.until("session.updated")
        await c.append_audio(spoken("hello can you hear me", PCMU))
        done, seen = await c.until("response.done")
        names = types(seen)
        expected_order = [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
            "response.created",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_audio.delta",
            "response.output_audio.done",
            "response.output_audio_transcript.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.done",
        ]
        positions = [names.index(t) for t in expected_order]
        assert positions == sorted(positions), names
        assert done["response"]["status"] == "completed"
        transcript = next(e for e in seen if e["type"] == "response.output_audio_transcript.done")[
            "transcript"
        ]
        deltas = "".join(
            e["delta"] for e in seen if e["type"] == "response.output_audio_transcript.delta"
        )
        assert transcript == deltas == "Hello! Yes, I can hear you. How can I help you today?"
        audio = b"".join(
            base64.b64decode(e["delta"]) for e in seen if e["type"] == "response.output_audio.delta"
        )
        assert PCMU.duration_ms(len(audio)) > 1000
        usage = done["response"]["usage"]
        assert usage["input_token_details"]["audio_tokens"] > 0 and usage["output_tokens"] > 0
        rate, more = await c.until("rate_limits.updated")
        seen += more
        if not any(
            e["type"].startswith("conversation.item.input_audio_transcription") for e in seen
        ):
            seen += (await c.until("conversation.item.input_audio_transcription.completed"))[1]
        transcription = next(
            e for e in seen if e["type"] == "conversation.item.input_audio_transcription.completed"
        )
        assert transcription["transcript"] == "hello can you hear me"
        assert {r["name"] for r in rate["rate_limits"]} == {"requests", "tokens"}


@pytest.mark.parametrize("fmt", [PCM24K, PCMA], ids=["pcm24k", "pcma"])
async def test_other_formats_both_ways(engine: EngineServer, fmt: Any) -> None:
    async with RawClient(engine.url) as c:
        await c.recv()
        wire = fmt.to_session()
        await c.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"format": wire}, "output": {"format": wire}},
                },
            }
        )
        await c.until("session.updated")
        await c.append_audio(spoken("goodbye", fmt), frame_bytes=fmt.nbytes_for_ms(20))
        _, seen = await c.until("response.done")
        audio = b"".join(
            base64.b64decode(e["delta"]) for e in seen if e["type"] == "response.output_audio.delta"
        )
        assert fmt.duration_ms(len(audio)) > 500
        assert len(audio) % fmt.sample_width == 0
        transcript = next(e for e in seen if e["type"] == "response.output_audio_transcript.done")[
            "transcript"
        ]
        assert transcript == "Goodbye, and thanks for calling."


async def test_manual_turns_without_vad(engine: EngineServer) -> None:
    async with RawClient(engine.url) as c:
        await c.recv()
        session = {
            **PCMU_SESSION,
            "audio": {
                **PCMU_SESSION["audio"],
                "input": {"format": {"type": "audio/pcmu"}, "turn_detection": None},
            },
        }
        await c.send({"type": "session.update", "session": session})
        updated, _ = await c.until("session.updated")
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        await c.append_audio(spoken("goodbye", PCMU))
        await c.send({"type": "input_audio_buffer.commit"})
        _, seen = await c.until("input_audio_buffer.committed")
        assert "input_audio_buffer.speech_started" not in types(seen)
        assert "response.created" not in types(seen)
        await c.send({"type": "response.create"})
        _, seen = await c.until("response.done")
        transcript = next(e for e in seen if e["type"] == "response.output_audio_transcript.done")[
            "transcript"
        ]
        assert transcript == "Goodbye, and thanks for calling."


async def test_commit_of_under_100ms_is_an_error(engine: EngineServer) -> None:
    async with RawClient(engine.url) as c:
        await c.recv()
        await c.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
            }
        )
        await c.until("session.updated")
        await c.send(
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(2400)).decode()}
        )  # 50 ms
        sent = await c.send({"type": "input_audio_buffer.commit"})
        err, _ = await c.until("error")
        assert err["error"]["code"] == "input_audio_buffer_commit_empty"
        assert err["error"]["event_id"] == sent
        await c.send({"type": "input_audio_buffer.clear"})
        await c.until("input_audio_buffer.cleared")


async def test_text_turn_calls_the_declared_tool_then_speaks_its_output(
    engine: EngineServer,
) -> None:
    async with RawClient(engine.url) as c:
        await c.recv()
        await c.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "output_modalities": ["text"],
                    "tools": [WEATHER_TOOL],
                },
            }
        )
        await c.until("session.updated")
        await c.send(user_text("What is the weather like today?"))
        await c.send({"type": "response.create"})
        args, seen = await c.until("response.function_call_arguments.done")
        assert args["name"] == "get_weather"
        assert args["arguments"] == "".join(
            e["delta"] for e in seen if e["type"] == "response.function_call_arguments.delta"
        )
        done, _ = await c.until("response.done")
        assert [o["type"] for o in done["response"]["output"]] == ["function_call"]
        await c.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": args["call_id"],
                    "output": '{"location": "Karachi", "conditions": "hazy", "temperature": 35}',
                },
            }
        )
        await c.send({"type": "response.create"})
        text_done, _ = await c.until("response.output_text.done")
        assert text_done["text"] == "Right now it is hazy and thirty five degrees in Karachi."


async def test_response_create_while_active_is_an_error(engine: EngineServer) -> None:
    async with RawClient(engine.url) as c:
        await c.recv()
        await c.send({"type": "response.create"})
        await c.until("response.created")
        sent = await c.send({"type": "response.create"})
        err, _ = await c.until("error")
        assert err["error"]["code"] == "conversation_already_has_active_response"
        assert err["error"]["event_id"] == sent
        await c.until("response.done")


async def test_response_cancel_and_cancel_with_nothing_running(engine: EngineServer) -> None:
    async with RawClient(engine.url) as c:
        await c.recv()
        await c.send({"type": "response.create"})
        await c.until("response.output_audio.delta")
        await c.send({"type": "response.cancel"})
        done, seen = await c.until("response.done")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"] == {
            "type": "cancelled",
            "reason": "client_cancelled",
        }
        assert "response.output_item.done" in types(seen)
        sent = await c.send({"type": "response.cancel"})
        err, _ = await c.until("error")
        assert err["error"]["code"] == "response_cancel_not_active"
        assert err["error"]["event_id"] == sent


async def test_max_output_tokens_cuts_the_reply_and_marks_it_incomplete(
    engine: EngineServer,
) -> None:
    async with RawClient(engine.url) as c:
        await c.recv()
        await c.send({"type": "response.create", "response": {"max_output_tokens": 20}})
        done, seen = await c.until("response.done")
        assert done["response"]["status"] == "incomplete"
        assert done["response"]["status_details"]["reason"] == "max_output_tokens"
        transcript = next(e for e in seen if e["type"] == "response.output_audio_transcript.done")[
            "transcript"
        ]
        assert 0 < len(transcript) < len("Hello, thanks for calling. How can I help you today?")


async def test_out_of_band_response_does_not_touch_the_conversation(engine: EngineServer) -> None:
    async with RawClient(engine.url) as c:
        await c.recv()
        await c.send(
            {
                "type": "response.create",
                "response": {
                    "conversation": "none",
                    "output_modalities": ["text"],
                    "metadata": {"purpose": "probe"},
                    "input": [
                        {
                            "type": "message",
                            "role": "user",
                            "content": [{"type": "input_text", "text": "goodbye"}],
                        }
                    ],
                },
            }
        )
        done, seen = await c.until("response.done")
        assert "conversation.item.added" not in types(seen)
        assert done["response"]["conversation_id"] is None
        assert done["response"]["metadata"] == {"purpose": "probe"}
        text = next(e for e in seen if e["type"] == "response.output_text.done")["text"]
        assert text == "Goodbye, and thanks for calling."


async def test_items_create_retrieve_delete_and_previous_item_id(engine: EngineServer) -> None:
    async with RawClient(engine.url) as c:
        await c.recv()
        await c.send(
            {**user_text("hello"), "item": {**user_text("hello")["item"], "id": "item_first"}}
        )
        await c.until("conversation.item.done")
        await c.send(
            {
                **user_text("goodbye"),
                "previous_item_id": "root",
                "item": {**user_text("goodbye")["item"], "id": "item_zero"},
            }
        )
        added, _ = await c.until("conversation.item.added")
        assert added["previous_item_id"] is None
        await c.send({"type": "conversation.item.retrieve", "item_id": "item_first"})
        got, _ = await c.until("conversation.item.retrieved")
        assert got["item"]["content"][0]["text"] == "hello"
        await c.send({"type": "conversation.item.delete", "item_id": "item_zero"})
        deleted, _ = await c.until("conversation.item.deleted")
        assert deleted["item_id"] == "item_zero"
        sent = await c.send({"type": "conversation.item.retrieve", "item_id": "item_zero"})
        err, _ = await c.until("error")
        assert err["error"]["code"] == "item_not_found" and err["error"]["event_id"] == sent


async def test_truncating_a_user_item_is_an_error(engine: EngineServer) -> None:
    async with RawClient(engine.url) as c:
        await c.recv()
        await c.send(
            {**user_text("hello"), "item": {**user_text("hello")["item"], "id": "item_user"}}
        )
        await c.until("conversation.item.done")
        sent = await c.send(
            {
                "type": "conversation.item.truncate",
                "item_id": "item_user",
                "content_index": 0,
                "audio_end_ms": 10,
            }
        )
        err, _ = await c.until("error")
        assert "Only assistant messages can be truncated" in err["error"]["message"]
        assert err["error"]["event_id"] == sent


async def test_voice_cannot_change_after_audio_was_produced(engine: EngineServer) -> None:
    async with RawClient(engine.url) as c:
        await c.recv()
        await c.send({"type": "response.create"})
        await c.until("response.done")
        await c.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"output": {"voice": "cedar"}}},
            }
        )
        err, _ = await c.until("error")
        assert err["error"]["code"] == "cannot_update_voice"


async def test_out_of_grammar_speech_gets_the_fallback_and_a_failed_transcription(
    engine: EngineServer,
) -> None:
    async with RawClient(engine.url) as c:
        await c.recv()
        await c.send({"type": "session.update", "session": PCMU_SESSION})
        await c.until("session.updated")
        await c.append_audio(spoken("the quick brown fox jumps over the lazy dog", PCMU))

        # The transcription result and the reply race each other (as they do at OpenAI):
        # read until both have arrived, in whichever order.
        def is_transcription(e: dict[str, Any]) -> bool:
            return str(e["type"]).startswith("conversation.item.input_audio_transcription")

        _, seen = await c.until("response.done")
        if not any(is_transcription(e) for e in seen):
            seen += (await c.until(is_transcription))[1]
        transcript = next(e for e in seen if e["type"] == "response.output_audio_transcript.done")[
            "transcript"
        ]
        assert transcript.startswith("Sorry, I can only understand a few fixed phrases.")
        failed = next(
            e for e in seen if e["type"].startswith("conversation.item.input_audio_transcription")
        )
        assert failed["type"] == "conversation.item.input_audio_transcription.failed"
        assert failed["error"]["code"] == "out_of_grammar"


async def test_many_sessions_at_once(engine: EngineServer) -> None:
    import asyncio

    phrases = [
        "hello",
        "goodbye",
        "what is the weather like today",
        "please transfer me to billing",
    ]
    expected = {
        "hello": "Hello! Yes, I can hear you. How can I help you today?",
        "goodbye": "Goodbye, and thanks for calling.",
        "what is the weather like today": "It is sunny and seventy two degrees today.",
        "please transfer me to billing": "Sure. Transferring you to billing now.",
    }
    audio = {p: spoken(p, PCMU) for p in phrases}

    async def one(i: int) -> str:
        phrase = phrases[i % len(phrases)]
        async with RawClient(engine.url) as c:
            await c.recv()
            await c.send({"type": "session.update", "session": PCMU_SESSION})
            await c.until("session.updated")
            await c.append_audio(audio[phrase])
            ev, _ = await c.until("response.output_audio_transcript.done", timeout=60)
            return (
                str(ev["transcript"])
                if ev["transcript"] == expected[phrase]
                else f"{phrase!r} -> {ev['transcript']!r}"
            )

    results = await asyncio.gather(*(one(i) for i in range(12)))
    assert results == [expected[phrases[i % len(phrases)]] for i in range(12)]


# --- connection-level answers ------------------------------------------------------------------


async def test_missing_key_is_401() -> None:
    async with EngineServer() as server:
        with pytest.raises(InvalidStatus) as info:
            async with connect(server.url):
                pass
    assert info.value.response.status_code == 401
    assert b"missing_api_key" in info.value.response.body


async def test_wrong_path_is_404() -> None:
    async with EngineServer() as server:
        with pytest.raises(InvalidStatus) as info:
            async with connect(
                f"ws://127.0.0.1:{server.port}/v1/other",
                additional_headers={"Authorization": "Bearer k"},
            ):
                pass
    assert info.value.response.status_code == 404


async def test_api_key_option_accepts_only_that_key() -> None:
    async with EngineServer(EngineSettings(api_key="sekret")) as server:
        with pytest.raises(InvalidStatus) as info:
            async with connect(server.url, additional_headers={"Authorization": "Bearer other"}):
                pass
        assert info.value.response.status_code == 401
        assert b"invalid_api_key" in info.value.response.body
        async with RawClient(server.url, key="sekret") as c:
            assert (await c.recv())["type"] == "session.created"


async def test_beta_header_gets_beta_api_shape_disabled_and_close_4000(
    engine: EngineServer,
) -> None:
    async with RawClient(engine.url, headers={"OpenAI-Beta": "realtime=v1"}) as c:
        err = await c.recv()
        assert err["type"] == "error"
        assert err["error"]["code"] == "beta_api_shape_disabled"
        with pytest.raises(ConnectionClosed) as info:
            await c.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 4000
