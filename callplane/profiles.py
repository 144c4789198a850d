"""Agent profiles: who the agent is on a given number.

A profile is configuration (instructions, voice, greeting, language, tools by name, DTMF
actions), validated with pydantic so that a bad profile fails at load with the field named.
The Realtime session is derived from it in one place, :func:`session_config`.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from callplane.tools import BUILTIN_TOOLS, Tool, ToolSet

DtmfAction = Literal["end_call", "tell_model"] | str

MAX_CALL_SECONDS = 4 * 3600
"""The longest call any profile may allow."""


class RetryPolicy(BaseModel):
    """How an outbound request retries when nobody took the call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(default=3, ge=1, le=10)
    # Seconds before attempt 2, 3, ...; the last value repeats.
    backoff_s: tuple[float, ...] = (60.0, 300.0)
    on: tuple[Literal["busy", "no-answer", "failed"], ...] = ("busy", "no-answer")

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` (2 for the first retry)."""
        if not self.backoff_s:
            return 0.0
        return self.backoff_s[min(attempt - 2, len(self.backoff_s) - 1)]


class AgentProfile(BaseModel):
    """One agent persona and its behaviour on a call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    instructions: str = "You are a helpful phone agent. Keep answers short."
    voice: str = "marin"
    greeting: str | None = "Greet the caller briefly and ask how you can help."
    language: str = "en"
    tools: tuple[str, ...] = ("end_call", "transfer_call")
    # Digit -> action: "end_call", "tell_model" (the model is told which key was pressed), or
    # "transfer:<number>". Digits without an entry are told to the model.
    dtmf: Mapping[str, DtmfAction] = Field(default_factory=dict)
    transfer_targets: Mapping[str, str] = Field(default_factory=dict)
    # The agent says goodbye and hangs up at this limit; the media function's timeout is set
    # above MAX_CALL_SECONDS so that the platform never cuts a call first.
    max_call_seconds: int = Field(default=3600, ge=10, le=MAX_CALL_SECONDS)
    # Outbound calls. ``outbound_greeting`` and ``voicemail`` are templates over the call's
    # context ("Hello {name}, ..."): the agent says them exactly, the first when a person
    # answers, the second (once, then it hangs up) when a machine does.
    outbound_greeting: str | None = None
    voicemail: str | None = None
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    # Hybrid rooms: calls on this profile join this LiveKit room as participant "phone:+E164"
    # and the room's agent answers them, instead of a private Realtime session per call.
    room: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")

    @field_validator("outbound_greeting", "voicemail")
    @classmethod
    def _template(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            check_template(str(info.field_name), value)
        return value

    @field_validator("dtmf")
    @classmethod
    def _digits(cls, value: Mapping[str, str]) -> Mapping[str, str]:
        for key in value:
            if key not in "0123456789*#" or len(key) != 1:
                raise ValueError(f"DTMF key {key!r} is not one of 0-9, * or #")
        return value


def resolve_tools(profile: AgentProfile, registry: Mapping[str, Tool]) -> ToolSet:
    """The profile's tools from the registry (plus built-ins); an unknown name is an error."""
    known = {**BUILTIN_TOOLS, **registry}
    missing = [t for t in profile.tools if t not in known]
    if missing:
        raise ValueError(
            f"profile {profile.name!r}: tools {missing} are not registered; known tools: "
            f"{sorted(known)}. Register them or remove them from the profile."
        )
    return ToolSet(known[t] for t in profile.tools)


def choose_profile(
    profiles: Mapping[str, AgentProfile],
    room: str,
    *,
    requested: str | None = None,
    room_metadata: str = "",
) -> str:
    """The key of the profile an agent serving LiveKit ``room`` runs.

    In order: ``requested`` (a dispatch's or the job's ``profile``); else the ``profile`` in the
    room's metadata JSON (what a token endpoint writes when its join creates the room); else
    the profile whose ``room`` is this room (a hybrid phone room, which its first caller
    creates without metadata); else the first configured profile. The launcher and the agent
    job both apply it, so a room gets the same profile whichever of them decides.

    Metadata that is not a JSON object, or has no ``profile``, is another application's and
    is ignored. Raises ValueError, naming where the name came from and the configured keys,
    for a name that is not configured or when there are no profiles at all.
    """
    if not profiles:
        raise ValueError("no agent profiles are configured: add one under 'profiles'")
    source, name = "profile", requested
    if name is None and room_metadata.strip():
        try:
            meta = json.loads(room_metadata)
        except json.JSONDecodeError:
            meta = None
        if isinstance(meta, dict) and meta.get("profile") is not None:
            source, name = "the room's metadata 'profile'", str(meta["profile"])
    if name is None:
        hosts = (key for key, profile in profiles.items() if profile.room == room)
        return next(hosts, next(iter(profiles)))
    if name not in profiles:
        raise ValueError(
            f"{source}={name!r} is not a configured profile; configured: {sorted(profiles)}. "
            "Name one of them or add it to the media settings."
        )
    return name


def session_config(
    profile: AgentProfile,
    tools: ToolSet,
    *,
    audio_format: Literal["audio/pcmu", "audio/pcm"] = "audio/pcmu",
    extra_instructions: str = "",
) -> dict[str, Any]:
    """The GA ``session.update`` session for a call with this profile.

    Phone calls use ``audio/pcmu`` both ways so Twilio's payloads pass through untouched.
    """
    fmt: dict[str, Any] = {"type": audio_format}
    if audio_format == "audio/pcm":
        fmt["rate"] = 24000
    instructions = profile.instructions
    if profile.language != "en":
        instructions += f"\nSpeak {profile.language} unless the caller uses another language."
    if extra_instructions:
        instructions += "\n" + extra_instructions
    return {
        "type": "realtime",
        "instructions": instructions,
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": fmt,
                "transcription": {"model": "gpt-4o-mini-transcribe", "language": profile.language},
                "turn_detection": {
                    "type": "server_vad",
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": dict(fmt), "voice": profile.voice},
        },
        "tools": tools.specs(),
        "tool_choice": "auto",
    }


# --- transfers ---------------------------------------------------------------------------------

_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
_NUMBER_PUNCTUATION = re.compile(r"[\s().-]")


def transfer_target(profile: AgentProfile, to: str) -> str:
    """The number a transfer to ``to`` dials on a call with ``profile``.

    A department the profile names in ``transfer_targets`` ("billing", in any letter case)
    dials its configured number; a number the profile configures, or any E.164 number
    (spaces, dashes, dots and brackets are ignored), is dialled as given. A phone call and a
    phone caller in a hybrid room go through this one rule, so a department means the same
    number whichever way the caller came in, and a typo the model makes never reaches the
    carrier as a number.

    Raises ValueError, written for the model to pass on, naming the departments there are.
    """
    wanted = to.strip()
    targets = profile.transfer_targets
    if wanted in targets:
        return targets[wanted]
    by_name = {name.casefold(): number for name, number in targets.items()}
    if wanted.casefold() in by_name:
        return by_name[wanted.casefold()]
    if wanted in targets.values():
        return wanted
    compact = _NUMBER_PUNCTUATION.sub("", wanted)
    if _E164.match(compact):
        return compact
    departments = ", ".join(sorted(targets)) or "none are configured"
    raise ValueError(
        f"to={to!r} is neither a department of this line (departments: {departments}) nor a "
        "phone number in E.164 form; transfer to one of those departments or to a number "
        "written like +14155550123"
    )


# --- outbound templates ------------------------------------------------------------------------

OUTBOUND_TEMPLATES = ("outbound_greeting", "voicemail")
"""The profile fields that are templates over an outbound call's context."""

_BRACKETS = re.compile(r"\[[^\]]*\]")


def template_fields(template: str) -> list[str]:
    """The replacement fields of ``template`` as written (``name``, ``order[id]``), in order
    and each once, including fields nested in a format spec (``{total:{width}}``). Literal
    braces (``{{`` and ``}}``) are text, not fields. Raises ValueError for a malformed
    template (a lone brace)."""
    found: list[str] = []
    for _, field, spec, _ in string.Formatter().parse(template):
        if field is None:
            continue
        if field not in found:
            found.append(field)
        for nested in template_fields(spec or ""):
            if nested not in found:
                found.append(nested)
    return found


def context_key(field: str) -> str:
    """The context key a field reads: ``order`` for ``order[id]``."""
    return re.split(r"[.\[]", field, maxsplit=1)[0]


def check_template(name: str, template: str) -> None:
    """Refuse, at profile load, a template that no call's context could fill.

    A call's context is a JSON object, so a field must name one of its keys (``{name}``) and
    may index into a nested object or list (``{order[id]}``, ``{items[0]}``). A positional
    field (``{}``, ``{0}``) has no key to name, and attribute access (``{order.id}``) fails on
    JSON values; both are refused with the way to write them.
    """
    try:
        fields = template_fields(template)
    except ValueError as exc:
        raise ValueError(
            f"{name}={template!r} is not a valid template ({exc}); write literal braces as "
            "{{ and }}"
        ) from None
    for field in fields:
        key = context_key(field)
        if not key or key.isdigit():
            raise ValueError(
                f"{name}={template!r} has the positional field {{{field}}}; a template reads "
                "the call's context by name: write {name} for the context's \"name\""
            )
        if "." in _BRACKETS.sub("", field):
            suggestion = re.sub(r"\.([^.\[]+)", r"[\1]", field)
            raise ValueError(
                f"{name}={template!r} reads an attribute in {{{field}}}; context values are "
                f"JSON, so index into them instead: {{{suggestion}}}"
            )


def fill_template(template: str, context: Mapping[str, Any]) -> str:
    """``template`` with its fields taken from ``context``.

    Raises ValueError naming every field the context lacks (or a value the field's format
    spec cannot format), so that no caller ever hears a raw ``{when}``.
    """
    missing = [f for f in template_fields(template) if not _resolves(f, context)]
    if missing:
        raise ValueError("the context has no " + ", ".join("{" + f + "}" for f in missing))
    try:
        return string.Formatter().vformat(template, (), dict(context))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"a context value does not fit its field's format: {exc}") from None


def _resolves(field: str, context: Mapping[str, Any]) -> bool:
    try:
        string.Formatter().get_field(field, (), dict(context))
    except (KeyError, IndexError, AttributeError, TypeError, ValueError):
        return False
    return True


def check_outbound_context(profile: AgentProfile, context: Mapping[str, Any]) -> None:
    """Refuse an outbound request whose context cannot fill the profile's templates.

    The agent says ``outbound_greeting`` and ``voicemail`` word for word, so a field the
    context lacks would reach the callee as a gap (or as the raw ``{field}``). This runs
    before anything is dialled. Raises ValueError naming each missing field, the template
    that uses it, and the context keys to add.
    """
    problems: list[str] = []
    keys: list[str] = []
    for name in OUTBOUND_TEMPLATES:
        template = getattr(profile, name)
        if template is None:
            continue
        missing = [f for f in template_fields(template) if not _resolves(f, context)]
        if missing:
            fields = ", ".join("{" + f + "}" for f in missing)
            problems.append(f"{name} {template!r} needs {fields}")
            keys.extend(k for k in map(context_key, missing) if k not in keys)
            continue
        try:
            string.Formatter().vformat(template, (), dict(context))
        except (ValueError, TypeError) as exc:
            problems.append(f"{name} {template!r} cannot format the values given ({exc})")
    if not problems:
        return
    if keys:
        fix = "add " + " and ".join(f'"{k}"' for k in keys) + " to the request's context"
    else:
        fix = "send values of the types the template's format specs expect"
    raise ValueError(
        f"context={dict(context)!r} cannot fill what profile {profile.name!r} says on the call: "
        + "; ".join(problems)
        + f". {fix[0].upper()}{fix[1:]}, or take those fields out of the profile's templates."
    )
