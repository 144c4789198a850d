"""edge_worker.wire.read_json: strict JSON for what clients send, refused with a reason and
never with another exception."""

from __future__ import annotations

import pytest

from edge_worker.wire import MAX_JSON_NUMBER_CHARS, JSONRefused, read_json


def test_json_is_read_from_text_or_utf8_bytes() -> None:
    assert read_json('{"a": [1, 2.5, "é", null]}') == {"a": [1, 2.5, "é", None]}
    assert read_json('{"a": "é"}'.encode()) == {"a": "é"}
    assert read_json("9" * MAX_JSON_NUMBER_CHARS) == int("9" * MAX_JSON_NUMBER_CHARS)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (b"\xff\xfe{\x00}\x00", "it is not UTF-8 text"),  # UTF-16, which json.loads would guess
        ("{nope", "not valid JSON (Expecting property name enclosed in double quotes at line 1"),
        ('{"a": ' + "1" * 5000 + "}", "it has a number 5000 characters long; at most 32"),
        ('{"a": ' + "1" * 33 + "}", "it has a number 33 characters long"),
        ('{"a": 1e999}', "it has a number too large for a float"),
        ('{"a": NaN}', "NaN is not JSON"),
        ("[-Infinity]", "-Infinity is not JSON"),
        ("[" * 20_000 + "]" * 20_000, "it is nested too deeply"),
    ],
)
def test_what_is_not_strict_json_is_refused_with_why(text: str | bytes, why: str) -> None:
    with pytest.raises(JSONRefused) as refused:
        read_json(text)
    assert str(refused.value).startswith(why)
