"""Bounded JSON parsing: nesting is measured exactly for JSON and as an upper bound for what is
not, every limit is named in the refusal, and no body makes the parser raise RecursionError."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

from callplane.bounded_json import MAX_JSON_DEPTH, JSONBodyError, loads_bounded, nesting_depth

MODULE = Path(__file__).resolve().parents[1] / "callplane" / "bounded_json.py"


@pytest.mark.parametrize(
    ("raw", "depth"),
    [
        (b"1", 0),
        (b'"[[[{{{"', 0),
        (b"[]", 1),
        (b'{"a": 1, "b": [2]}', 2),
        (b"[[],[[]],[]]", 3),
        (b'[{"k": "]]]}}}"}]', 2),  # closers inside a string do not end anything
        (b'["\\"[[["]', 1),  # nor do openers after an escaped quote
        (b'["a\\\\", [[1]]]', 3),  # an escaped backslash ends before the closing quote
        (b"[" * 5000, 5000),  # never closed: json.loads would recurse this far
        (b'[[1], "unterminated [[[[', 2),
        (b"]][[", 0),  # json.loads fails at the first ']' without nesting
    ],
)
def test_nesting_depth(raw: bytes, depth: int) -> None:
    assert nesting_depth(raw) == depth


def test_nesting_depth_agrees_with_the_parser_on_real_documents() -> None:
    def deepest(value: object) -> int:
        if isinstance(value, dict):
            return 1 + max((deepest(v) for v in value.values()), default=0)
        if isinstance(value, list):
            return 1 + max((deepest(v) for v in value), default=0)
        return 0

    documents = [
        {"to": "+14155550123", "context": {"a": [{"b": "[{"}, [], {"c": {"d": ["}"]}}]}},
        [[[[["\\", '"', "\u00e9"]]]], {}],
        {"event": "room_started", "room": {"name": "r", "metadata": '{"profile": "x"}'}},
    ]
    for document in documents:
        raw = json.dumps(document).encode()
        assert nesting_depth(raw) == deepest(document), raw


def test_a_document_within_the_limits_is_parsed() -> None:
    document = {"a": [1, {"b": "c"}]}
    raw = json.dumps(document).encode()
    assert loads_bounded(raw, max_bytes=len(raw)) == document
    parsed = loads_bounded(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH, max_bytes=1024)
    for _ in range(MAX_JSON_DEPTH - 1):  # exactly at the limit is still accepted
        (parsed,) = parsed
    assert parsed == []


def test_too_large_is_413_naming_the_size_limit() -> None:
    with pytest.raises(JSONBodyError) as refused:
        loads_bounded(b"[" + b"1," * 600 + b"1]", max_bytes=1024, what="the POST /x body")
    assert refused.value.status == 413
    assert refused.value.message == (
        "the POST /x body is 1203 bytes, over the limit of 1024 bytes; send a smaller body"
    )


@pytest.mark.parametrize("raw", [b"[" * 65536, b"[" * 33 + b"]" * 33, b'{"a":' * 40 + b"1"])
def test_too_deep_is_400_naming_the_nesting_limit(raw: bytes) -> None:
    with pytest.raises(JSONBodyError) as refused:
        loads_bounded(raw, max_bytes=65536)
    assert refused.value.status == 400
    assert f"over the JSON nesting limit of {MAX_JSON_DEPTH} levels" in refused.value.message
    assert f"{nesting_depth(raw)} levels deep" in refused.value.message


def test_a_parser_out_of_stack_is_reported_as_the_nesting_limit() -> None:
    """With a recursion limit below the nesting allowed, json.loads would raise RecursionError;
    it comes back as the nesting limit instead."""
    raw = b"[" * 900 + b"]" * 900
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(400)
    try:
        with pytest.raises(JSONBodyError) as refused:
            loads_bounded(raw, max_bytes=4096, max_depth=1000)
    finally:
        sys.setrecursionlimit(limit)
    assert refused.value.status == 400
    assert "too deeply to parse, over the JSON nesting limit of 1000 levels" in str(refused.value)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b'{"a": 1', "is not JSON (Expecting ',' delimiter at position 7)"),
        (b'{"a": "\xff"}', "is not UTF-8 (byte 7)"),
        (b"", "is not JSON (Expecting value at position 0)"),
    ],
)
def test_not_json_is_400_saying_why(raw: bytes, problem: str) -> None:
    with pytest.raises(JSONBodyError) as refused:
        loads_bounded(raw, max_bytes=1024)
    assert refused.value.status == 400
    assert problem in refused.value.message


def test_the_module_imports_only_the_standard_library() -> None:
    """The edge's Cloudflare bundle carries it: anything else fails there at import."""
    imported: list[str] = []
    for node in ast.walk(ast.parse(MODULE.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            imported.append(node.module)
    assert [m for m in imported if m.split(".")[0] not in sys.stdlib_module_names] == []
