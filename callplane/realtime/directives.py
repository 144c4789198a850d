"""``Say exactly: "…"``: how callplane makes the agent speak text it composed itself.

A reminder with the callee's name, a voicemail: the conversation asks for a response whose
instructions quote the text. A Realtime model follows that; the offline engine, which cannot
follow instructions in general, honours this one form literally, so the same request works
against OpenAI and offline.
"""

from __future__ import annotations

import re

__all__ = ["SAY_EXACTLY", "exact_line", "say_exactly"]

SAY_EXACTLY = re.compile(r'Say exactly:\s*"(?P<text>[^"]+)"')


def say_exactly(text: str) -> str:
    """The instruction that makes the agent speak ``text`` verbatim (quotes are dropped)."""
    return f'Say exactly: "{text.replace(chr(34), "")}"'


def exact_line(instructions: object) -> str | None:
    """The text a ``Say exactly: "…"`` directive in ``instructions`` asks for, if any."""
    if not isinstance(instructions, str):
        return None
    match = SAY_EXACTLY.search(instructions)
    return match.group("text").strip() if match else None
