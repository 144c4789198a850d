"""The engine's script: which phrases it understands and what it answers.

The script is data (a small TOML file users can replace with ``--script``); this module loads and
validates it and holds the pure planning function that turns "what just happened in the
conversation" into "what to say and which tool to call". Keeping the policy pure keeps it easy
to test and keeps the protocol code free of it.
"""

from __future__ import annotations

import json
import re
import string
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_SCRIPT_PATH = Path(__file__).with_name("default_script.toml")

_SLOT = re.compile(r"\{(\w+)\}")
_PHRASE_WORD = re.compile(r"^(?:[a-z']+|\{digits\})$")


class EngineScriptError(ValueError):
    """A script file that cannot be used; the message names the file, the field and the fix."""


class ToolSpec(BaseModel):
    """A tool the rule calls when the session declares a function tool of that name."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)


class Rule(BaseModel):
    """Phrases the engine recognises and how it answers them."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    phrases: list[str] = Field(min_length=1)
    reply: str
    tool: ToolSpec | None = None
    say_first: str | None = None
    after_tool: str | None = None

    @field_validator("phrases")
    @classmethod
    def _phrases_are_plain_words(cls, phrases: list[str]) -> list[str]:
        for phrase in phrases:
            words = phrase.split()
            bad = [w for w in words if not _PHRASE_WORD.match(w)]
            if not words or bad:
                raise ValueError(
                    f"phrase {phrase!r} must be lowercase words (a-z and ') or the slot "
                    f"{{digits}}; offending: {bad or phrase!r}"
                )
        return phrases


class Script(BaseModel):
    """A whole script file."""

    model_config = ConfigDict(extra="forbid")
    greeting: str
    fallback: str
    followup: str
    rules: list[Rule] = Field(min_length=1)

    @property
    def patterns(self) -> list[str]:
        """Every phrase of every rule, in order: the recogniser's grammar."""
        seen: dict[str, None] = {}
        for rule in self.rules:
            for phrase in rule.phrases:
                seen.setdefault(phrase, None)
        return list(seen)

    def rule_for_phrase(self, phrase: str) -> Rule | None:
        return next((r for r in self.rules if phrase in r.phrases), None)

    def rule_for_tool(self, tool_name: str) -> Rule | None:
        return next((r for r in self.rules if r.tool and r.tool.name == tool_name), None)


def load_script(path: Path | None = None) -> Script:
    """Load and validate a script file (the default one when ``path`` is None)."""
    path = path or DEFAULT_SCRIPT_PATH
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EngineScriptError(
            f"script file {path} does not exist; pass an existing TOML file"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise EngineScriptError(f"script file {path} is not valid TOML: {exc}") from None
    try:
        return Script.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in exc.errors()
        )
        raise EngineScriptError(
            f"script file {path} is invalid: {problems}. See {DEFAULT_SCRIPT_PATH} for the format."
        ) from None


# --- Planning ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannedCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Plan:
    """What one response contains: optional speech, then an optional function call."""

    say: str | None
    call: PlannedCall | None = None
    rule: str | None = None


@dataclass(frozen=True, slots=True)
class Heard:
    """The user's latest turn: the matched pattern (None = out of grammar) and its slots."""

    phrase: str | None
    slots: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The latest function_call_output, with the call it answers."""

    name: str
    arguments: Mapping[str, Any]
    output: str


ToolChoice = Literal["auto", "none", "required"] | str | None


def plan_reply(
    script: Script,
    trigger: Heard | ToolResult | Literal["greeting", "followup"],
    declared_tools: Collection[str],
    tool_choice: ToolChoice = "auto",
) -> Plan:
    """Decide a response from the script.

    ``tool_choice`` is "auto", "none", "required" or a forced function name.
    """
    if trigger == "greeting":
        return Plan(say=speakable(script.greeting))
    if trigger == "followup":
        return Plan(say=speakable(script.followup))
    if isinstance(trigger, ToolResult):
        return _plan_after_tool(script, trigger)
    assert isinstance(trigger, Heard)
    rule = script.rule_for_phrase(trigger.phrase) if trigger.phrase else None
    if rule is None:
        return Plan(say=speakable(script.fallback))
    slots = dict(trigger.slots)
    tool = rule.tool
    callable_tool = (
        tool is not None
        and tool.name in declared_tools
        and tool_choice != "none"
        and (tool_choice in ("auto", "required", None) or tool_choice == tool.name)
    )
    if tool is not None and callable_tool:
        say = speakable(_fill(rule.say_first, slots, spoken=True)) if rule.say_first else None
        return Plan(
            say=say, call=PlannedCall(tool.name, _fill_args(tool.arguments, slots)), rule=rule.name
        )
    forced = tool_choice not in ("auto", "required", "none", None)
    if forced and isinstance(tool_choice, str) and tool_choice in declared_tools:
        return Plan(say=None, call=PlannedCall(tool_choice, {}), rule=rule.name)
    return Plan(say=speakable(_fill(rule.reply, slots, spoken=True)), rule=rule.name)


def _plan_after_tool(script: Script, result: ToolResult) -> Plan:
    rule = script.rule_for_tool(result.name)
    fields: dict[str, Any] = dict(result.arguments)
    try:
        parsed = json.loads(result.output)
    except json.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        fields.update(parsed)
    template = rule.after_tool if rule is not None else None
    if template == "":
        return Plan(say=None, rule=rule.name if rule else None)
    if template is not None and _placeholders(template) <= set(fields):
        text = template.format_map({k: _spoken_value(v) for k, v in fields.items()})
        return Plan(say=speakable(text), rule=rule.name if rule else None)
    return Plan(say=speakable(_read_out(parsed, result.output)), rule=rule.name if rule else None)


def _read_out(parsed: Any, raw: str) -> str:
    """Speak a tool output the script has no template for: its scalar fields, in order."""
    if isinstance(parsed, dict):
        parts = [
            f"{str(k).replace('_', ' ')} {_spoken_value(v)}"
            for k, v in parsed.items()
            if isinstance(v, str | int | float | bool)
        ]
        if parts:
            return "Here is what I found: " + ", ".join(parts) + "."
    text = raw.strip()
    return f"The result is {text}." if text else "Done."


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _fill(template: str | None, slots: Mapping[str, str], *, spoken: bool) -> str:
    if not template:
        return ""

    def value(m: re.Match[str]) -> str:
        v = slots.get(m.group(1))
        if v is None:
            return m.group(0)
        return spell_digits(v) if spoken and m.group(1) == "digits" else v

    return _SLOT.sub(value, template)


def _fill_args(arguments: Mapping[str, Any], slots: Mapping[str, str]) -> dict[str, Any]:
    return {
        k: _fill(v, slots, spoken=False) if isinstance(v, str) else v for k, v in arguments.items()
    }


def _spoken_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


# --- Speakable text -----------------------------------------------------------------------------
# Numbers are turned into words before synthesis so the transcript the engine sends is exactly
# the text espeak-ng speaks (espeak would otherwise read "72" as "seventy-two" while the
# transcript says "72"). Integers and simple decimals are all replies need; a dependency for
# that would be heavier than these few lines.

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()  # noqa: E501
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w])")


def number_words(n: int) -> str:
    """English words for an integer (``72`` -> ``"seventy two"``)."""
    if n < 0:
        return "minus " + number_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    for size, word in (
        (10**9, "billion"),
        (10**6, "million"),
        (1000, "thousand"),
        (100, "hundred"),
    ):
        if n >= size:
            head, rest = divmod(n, size)
            return f"{number_words(head)} {word}" + (f" {number_words(rest)}" if rest else "")
    raise AssertionError("unreachable")


def spell_digits(digits: str) -> str:
    """Read a digit string one digit at a time (order numbers): ``"456"`` -> ``"four five six"``."""
    return " ".join(_ONES[int(d)] for d in digits if d.isdigit())


def speakable(text: str) -> str:
    """Replace numbers with words; the result is both the synthesis input and the transcript."""

    def words(m: re.Match[str]) -> str:
        token = m.group(0)
        if "." in token:
            whole, frac = token.split(".", 1)
            return f"{number_words(int(whole))} point {spell_digits(frac)}"
        return number_words(int(token))

    return _NUMBER.sub(words, text)
