"""Hypothesis strategies for hostile input: JSON documents shaped like what a parser expects,
with values chosen to break it, written out as text with the spellings a JSON encoder will not
produce (numbers thousands of digits long, ``NaN``, nesting past the decoder's limit).

Use :func:`json_text` with a strategy of documents (built with :data:`json_values` and
:data:`NUMBER`): every :data:`NUMBER` leaf becomes one of :data:`RAW_NUMBERS`, unquoted."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

NUMBER = "@@number@@"
"""A leaf that :func:`json_text` writes as one of :data:`RAW_NUMBERS`, bare."""

RAW_NUMBERS = (
    "1" * 5000,  # past int()'s default limit of 4300 digits
    "-" + "9" * 4299,  # just under it
    "1e999",  # a float that overflows to infinity
    "1" * 40 + ".5",
    "NaN",  # not JSON, though Python's decoder takes it by default
    "Infinity",
    "-Infinity",
)

DEEP = "[" * 20_000 + "]" * 20_000
"""Nesting far past the decoder's recursion limit, in less than the edge's 64 KiB body limit."""

hostile_strings = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "\ud800",  # a lone surrogate: JSON can spell it, UTF-8 cannot hold it
            "\u202e",
            "é",
            "1" * 5000,
            "x" * 70_000,
            "http://[",
            "wss://",
            "wss://host:99999",
            "wss://host:0",
            "https://a.example.com/",
            "+15550001111",
            "Bearer ",
        ]
    ),
)

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    hostile_strings,
    st.just(NUMBER),
)

json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_strings, inner, max_size=4),
    max_leaves=16,
)
"""Any JSON value, its leaves often hostile."""


def objects_like(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """A JSON object with any subset of ``fields`` (each drawn from its strategy, or any
    value), sometimes an unknown field, and sometimes not an object at all."""

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        document: dict[str, Any] = {}
        for name, values in fields.items():
            if draw(st.booleans()):
                document[name] = draw(st.one_of(values, json_values))
        if draw(st.integers(0, 9)) == 0:
            document[draw(hostile_strings)] = draw(json_values)
        return document

    return st.one_of(build(), build(), build(), json_values)


@st.composite
def json_text(draw: st.DrawFn, documents: st.SearchStrategy[Any]) -> str:
    """A document from ``documents`` as JSON text, its :data:`NUMBER` leaves written as raw
    hostile numbers; sometimes compact, sometimes spaced."""
    document = draw(documents)
    compact = draw(st.booleans())
    text = json.dumps(
        document, ensure_ascii=draw(st.booleans()), separators=(",", ":") if compact else None
    )
    quoted = json.dumps(NUMBER)
    while quoted in text:
        text = text.replace(quoted, draw(st.sampled_from(RAW_NUMBERS)), 1)
    return text


def utf8(text: str) -> bytes:
    """``text`` as the bytes a client would send (a lone surrogate becomes the bytes that would
    encode it, which are not UTF-8)."""
    return text.encode("utf-8", "surrogatepass")
