from __future__ import annotations

import json
from pathlib import Path

import pytest

from callplane_standins.realtime_engine.script import (
    EngineScriptError,
    Heard,
    PlannedCall,
    ToolResult,
    load_script,
    number_words,
    plan_reply,
    speakable,
)

SCRIPT = load_script()


def test_default_script_covers_the_documented_phrases() -> None:
    assert set(SCRIPT.patterns) >= {
        "hello",
        "what is the weather like today",
        "please transfer me to billing",
        "my order number is {digits}",
        "goodbye",
    }


def test_weather_without_the_tool_says_sunny_and_72() -> None:
    plan = plan_reply(SCRIPT, Heard("what is the weather like today"), declared_tools=[])
    assert plan.call is None
    assert plan.say == "It is sunny and seventy two degrees today."


def test_weather_with_the_tool_calls_it_and_says_nothing_yet() -> None:
    plan = plan_reply(
        SCRIPT, Heard("what is the weather like today"), declared_tools=["get_weather"]
    )
    assert plan.say is None
    assert plan.call == PlannedCall("get_weather", {"location": "current"})


def test_tool_choice_none_keeps_the_spoken_reply() -> None:
    plan = plan_reply(SCRIPT, Heard("what is the weather like today"), ["get_weather"], "none")
    assert plan.call is None and plan.say is not None and "sunny" in plan.say


def test_after_tool_reply_uses_the_output_fields() -> None:
    result = ToolResult(
        "get_weather",
        {"location": "current"},
        json.dumps({"location": "Lahore", "conditions": "rainy", "temperature": 31}),
    )
    plan = plan_reply(SCRIPT, result, ["get_weather"])
    assert plan.say == "Right now it is rainy and thirty one degrees in Lahore."


def test_after_tool_reads_out_fields_when_the_template_does_not_fit() -> None:
    plan = plan_reply(
        SCRIPT,
        ToolResult("get_weather", {}, json.dumps({"forecast": "snow", "high": 2})),
        ["get_weather"],
    )
    assert plan.say == "Here is what I found: forecast snow, high two."


def test_order_digits_fill_arguments_as_digits_and_speech_as_words() -> None:
    heard = Heard("my order number is {digits}", {"digits": "456"})
    assert plan_reply(SCRIPT, heard, ["lookup_order"]).call == PlannedCall(
        "lookup_order", {"order_id": "456"}
    )
    said = plan_reply(SCRIPT, heard, []).say
    assert said == "Thank you. Order four five six has shipped and arrives tomorrow."


def test_goodbye_says_goodbye_and_calls_end_call_in_one_response() -> None:
    plan = plan_reply(SCRIPT, Heard("goodbye"), ["end_call"])
    assert plan.say == "Goodbye, and thanks for calling."
    assert plan.call is not None and plan.call.name == "end_call"
    assert plan_reply(SCRIPT, ToolResult("end_call", {}, "{}"), ["end_call"]).say is None


def test_out_of_grammar_gets_the_fallback() -> None:
    assert plan_reply(SCRIPT, Heard(None), ["get_weather"]).say == SCRIPT.fallback


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (13, "thirteen"),
        (72, "seventy two"),
        (100, "one hundred"),
        (2026, "two thousand twenty six"),
    ],
)
def test_number_words(n: int, words: str) -> None:
    assert number_words(n) == words


def test_speakable_spells_numbers_but_not_inside_words() -> None:
    assert (
        speakable("It is 72.5 degrees on route A1.")
        == "It is seventy two point five degrees on route A1."
    )


def test_a_bad_script_names_the_field_and_the_fix(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'greeting = "hi"\nfallback = "?"\nfollowup = "?"\n'
        '[[rules]]\nname = "x"\nphrases = ["Hello There!"]\nreply = "hi"\n'
    )
    with pytest.raises(EngineScriptError, match=r"rules\.0\.phrases.*lowercase words") as info:
        load_script(bad)
    assert str(bad) in str(info.value)


def test_a_missing_script_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EngineScriptError, match="does not exist"):
        load_script(tmp_path / "nope.toml")
