"""JSON bodies parsed within limits: a size cap and a nesting cap, both checked before parsing.

Python's ``json`` parser recurses once per nested array or object, so a body of a few
kilobytes of ``[`` raises :class:`RecursionError` inside ``json.loads``: an internal error (and
a traceback in the logs) from one unauthenticated request. Every JSON body callplane accepts,
on the edge and on the media app, goes through :func:`loads_bounded` instead, which refuses a
body over ``max_bytes`` or nested deeper than ``max_depth`` with a :class:`JSONBodyError`
whose message names the limit, and only then parses it.

Standard library only, on purpose: the Cloudflare Python Worker (Pyodide) bundles this file
with the edge, and the media app imports the very same function, so both planes refuse the
same bodies with the same words.
"""

from __future__ import annotations

import json
import operator
import re
from itertools import accumulate, count
from typing import Any

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_JSON_NUMBER_CHARS",
    "JSONBodyError",
    "JSONValueRefused",
    "loads_bounded",
    "loads_strict",
    "nesting_depth",
]

MAX_JSON_NUMBER_CHARS = 32
"""The longest number read from a request: nothing callplane is sent needs more, and a longer
one would cost a conversion (or raise int()'s digit limit) for nothing."""


class JSONValueRefused(ValueError):
    """A JSON value :func:`loads_strict` does not read: a number over
    :data:`MAX_JSON_NUMBER_CHARS` characters or too large for a float, or NaN/Infinity (which
    Python's decoder takes and RFC 8259 does not have). The message quotes none of the text."""


def _json_number(text: str) -> str:
    if len(text) > MAX_JSON_NUMBER_CHARS:
        raise JSONValueRefused(
            f"it has a number {len(text)} characters long; at most {MAX_JSON_NUMBER_CHARS} are read"
        )
    return text


def _json_int(text: str) -> int:
    return int(_json_number(text))


def _json_float(text: str) -> float:
    value = float(_json_number(text))
    if value in (float("inf"), float("-inf")):
        raise JSONValueRefused("it has a number too large for a float")
    return value


def _json_constant(name: str) -> Any:
    raise JSONValueRefused(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


def loads_strict(text: str) -> Any:
    """``json.loads`` as strictly as RFC 8259 writes JSON, with numbers bounded before they are
    converted. Raises :class:`json.JSONDecodeError`, :class:`JSONValueRefused` or
    :class:`RecursionError` (callers bound the nesting first: :func:`loads_bounded`)."""
    return json.loads(
        text, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant
    )


MAX_JSON_DEPTH = 32
"""How deeply arrays and objects may nest in a request body. callplane's own bodies nest two
or three levels, a call's ``context`` a few more; 32 leaves room for any honest document and
stays far below the interpreter's recursion limit."""

# A JSON string, consumed whole so that brackets inside it are not counted (its closing quote
# may be missing at the end of a truncated body). Unrolled and possessive: linear in the body.
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# An opener becomes 2 and a closer 0: after k brackets, the running sum minus k is the depth.
_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


class JSONBodyError(ValueError):
    """A request body that is refused before (or while) it is parsed. ``status`` is the HTTP
    status to answer with (413 for a body over the size limit, 400 otherwise) and the message
    names the limit or the problem, and what to send instead."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def nesting_depth(raw: bytes) -> int:
    """How deeply arrays and objects nest in ``raw`` (JSON text as UTF-8): ``0`` for a scalar,
    ``1`` for ``[]`` or ``{}``, ``2`` for ``{"a": [1]}``. Brackets inside strings do not count.

    For text that is not JSON the answer is an upper bound of how deep ``json.loads`` gets
    before it fails, which is what a guard needs. The work is done by the regular expression
    engine and C iterators, a few milliseconds for 64 KiB of brackets."""
    steps = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS).translate(_STEPS)
    if not steps:
        return 0
    opened = steps.count(2)
    if opened <= 1:  # no nesting at all: the common case, without the running sum
        return opened
    deepest: int = max(map(operator.sub, accumulate(steps), count(1)))
    return max(0, deepest)


def loads_bounded(
    raw: bytes,
    *,
    max_bytes: int,
    max_depth: int = MAX_JSON_DEPTH,
    what: str = "the body",
) -> Any:
    """Parse ``raw`` as UTF-8 JSON if it is at most ``max_bytes`` long and nests at most
    ``max_depth`` levels; raise :class:`JSONBodyError` naming the broken limit (or saying the
    body is not UTF-8 or not JSON) otherwise. ``what`` names the body in messages, e.g.
    ``"the POST /calls body"``. Any JSON value is returned; the caller checks its shape.

    Never raises :class:`RecursionError`: the nesting is measured before parsing, and a
    parser that still runs out of stack is reported as the nesting limit."""
    if len(raw) > max_bytes:
        raise JSONBodyError(
            413,
            f"{what} is {len(raw)} bytes, over the limit of {max_bytes} bytes; send a smaller body",
        )
    depth = nesting_depth(raw)
    if depth > max_depth:
        raise JSONBodyError(400, _too_deep(what, f"{depth} levels deep", max_depth))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONBodyError(
            400, f"{what} is not UTF-8 (byte {exc.start}); send UTF-8 JSON"
        ) from None
    try:
        return loads_strict(text)
    except json.JSONDecodeError as exc:
        raise JSONBodyError(
            400, f"{what} is not JSON ({exc.msg} at position {exc.pos}); send a JSON document"
        ) from None
    except JSONValueRefused as exc:
        raise JSONBodyError(400, f"{what} is not JSON callplane reads: {exc}") from None
    except RecursionError:  # a smaller stack than the depth limit assumes
        raise JSONBodyError(400, _too_deep(what, "too deeply to parse", max_depth)) from None


def _too_deep(what: str, how_deep: str, max_depth: int) -> str:
    return (
        f"{what} nests arrays and objects {how_deep}, over the JSON nesting limit of "
        f"{max_depth} levels; send a flatter document"
    )
