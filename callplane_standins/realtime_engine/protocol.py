"""GA Realtime protocol pieces the engine needs: ids, errors and the session configuration.

The session object is kept as the GA wire dict (what ``session.updated`` carries), so that what
the client reads back is exactly what the engine acts on.
"""

from __future__ import annotations

import copy
import os
import string
from collections.abc import Mapping
from typing import Any

from callplane.audio import AudioFormat

_ALPHABET = string.ascii_letters + string.digits

DEFAULT_MODEL = "gpt-realtime"
DEFAULT_VOICE = "marin"
DEFAULT_INSTRUCTIONS = (
    "You are callplane's offline engine: a scripted fixed-phrase voice agent for tests and demos."
)
MAX_OUTPUT_TOKENS_LIMIT = 4096


def new_id(prefix: str) -> str:
    """An id in OpenAI's style (``item_`` + 22 base62 characters).

    Every server event gets one, so it is on the per-frame path under load: one urandom call
    instead of 22 ``secrets.choice`` calls (25 µs -> 2 µs). ``byte % 62`` leans slightly
    towards the first characters; ids need to be unique, not uniform."""
    return f"{prefix}_" + "".join([_ALPHABET[b % 62] for b in os.urandom(22)])


class RealtimeError(Exception):
    """A client mistake answered with an ``error`` event; the session goes on."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = "invalid_value",
        param: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.type = type

    def event(self, client_event_id: str | None) -> dict[str, Any]:
        """The ``error`` server event (without ``event_id``, which the sender assigns)."""
        return {
            "type": "error",
            "error": {
                "type": self.type,
                "code": self.code,
                "message": self.message,
                "param": self.param,
                "event_id": client_event_id,
            },
        }


def default_session(model: str) -> dict[str, Any]:
    """The session a connection starts with, as OpenAI's GA defaults (``session.created``)."""
    return {
        "type": "realtime",
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "include": None,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 500,
                    "idle_timeout_ms": None,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": DEFAULT_VOICE,
                "speed": 1.0,
            },
        },
    }


# semantic_vad has no silence parameter; the engine treats it as server_vad with the silence
# that its eagerness implies (OpenAI documents the maximum waits; these are typical ends of turn).
SEMANTIC_SILENCE_MS = {"low": 800, "medium": 500, "auto": 500, "high": 300}


def apply_session_update(
    current: Mapping[str, Any], update: Mapping[str, Any], *, audio_started: bool
) -> dict[str, Any]:
    """The session after ``session.update``: only the fields sent change.

    Raises RealtimeError for values the engine (like OpenAI) refuses; the caller has already
    validated the event against the SDK's models, so types are right.
    """
    if update.get("type") != "realtime":
        raise RealtimeError(
            f"Invalid value: {update.get('type')!r}. The local engine supports session.type "
            "'realtime' only (transcription sessions are not implemented).",
            param="session.type",
        )
    new = copy.deepcopy(dict(current))
    for key, value in update.items():
        if key == "audio":
            continue
        if key == "model" and value != current["model"]:
            raise RealtimeError(
                "The model of a session cannot be changed after it connected; reconnect with "
                f"?model={value}.",
                param="session.model",
            )
        new[key] = copy.deepcopy(value)
    audio = update.get("audio") or {}
    for direction in ("input", "output"):
        for key, value in (audio.get(direction) or {}).items():
            new["audio"][direction][key] = copy.deepcopy(value)
    _check_session(new)
    old_voice = current["audio"]["output"]["voice"]
    if audio_started and new["audio"]["output"]["voice"] != old_voice:
        raise RealtimeError(
            "Cannot update a conversation's voice if assistant audio is present.",
            code="cannot_update_voice",
            param="session.audio.output.voice",
        )
    return new


def _check_session(session: Mapping[str, Any]) -> None:
    check_modalities(session.get("output_modalities"), "session.output_modalities")
    check_max_output_tokens(session.get("max_output_tokens"), "session.max_output_tokens")
    for direction in ("input", "output"):
        check_format(session["audio"][direction].get("format"), f"session.audio.{direction}.format")
    td = session["audio"]["input"].get("turn_detection")
    if td is not None and td.get("type") == "server_vad":
        threshold = td.get("threshold")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise RealtimeError(
                f"Invalid 'session.audio.input.turn_detection.threshold': {threshold}. "
                "Expected a number between 0 and 1.",
                param="session.audio.input.turn_detection.threshold",
            )


def check_modalities(modalities: Any, param: str) -> None:
    if modalities is not None and sorted(modalities) not in (["audio"], ["text"]):
        raise RealtimeError(
            f"Invalid '{param}': {modalities!r}. Use ['audio'] (audio with its transcript) or "
            "['text']; the two cannot be combined.",
            param=param,
        )


def check_max_output_tokens(value: Any, param: str) -> None:
    if value is None or value == "inf":
        return
    if not isinstance(value, int) or not 1 <= value <= MAX_OUTPUT_TOKENS_LIMIT:
        raise RealtimeError(
            f"Invalid '{param}': {value!r}. Expected an integer from 1 to "
            f"{MAX_OUTPUT_TOKENS_LIMIT}, or 'inf'.",
            param=param,
        )


def check_format(fmt: Any, param: str) -> AudioFormat:
    try:
        return AudioFormat.from_session(fmt)
    except (ValueError, TypeError, AttributeError):
        raise RealtimeError(
            f"Invalid '{param}': {fmt!r}. Expected {{'type': 'audio/pcm', 'rate': 24000}}, "
            "{'type': 'audio/pcmu'} or {'type': 'audio/pcma'}.",
            param=param,
        ) from None


# --- Token accounting -------------------------------------------------------------------------
# The engine reports usage so that cost accounting downstream has real numbers to work with.
# These are estimates in OpenAI's published proportions, not a tokenizer: about four characters
# per text token, ten tokens per second of input audio and twenty per second of output audio.

TEXT_CHARS_PER_TOKEN = 4
INPUT_AUDIO_TOKENS_PER_S = 10
OUTPUT_AUDIO_TOKENS_PER_S = 20


def text_tokens(text: str) -> int:
    return (len(text) + TEXT_CHARS_PER_TOKEN - 1) // TEXT_CHARS_PER_TOKEN if text else 0


def input_audio_tokens(ms: float) -> int:
    return int(ms * INPUT_AUDIO_TOKENS_PER_S / 1000 + 0.999)


def output_audio_tokens(ms: float) -> int:
    return int(ms * OUTPUT_AUDIO_TOKENS_PER_S / 1000 + 0.999)


def usage(input_text: int, input_audio: int, output_text: int, output_audio: int) -> dict[str, Any]:
    """A GA ``response.usage`` object."""
    inp = input_text + input_audio
    out = output_text + output_audio
    return {
        "total_tokens": inp + out,
        "input_tokens": inp,
        "output_tokens": out,
        "input_token_details": {
            "text_tokens": input_text,
            "audio_tokens": input_audio,
            "image_tokens": 0,
            "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": output_text, "audio_tokens": output_audio},
    }
