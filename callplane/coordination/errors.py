"""What a caller sees when the shared state cannot be reached, and how a Redis URL is shown.

Every Redis-backed operation either completes or raises :class:`CoordinationUnavailable`
within its timeout: a call handler can then refuse the call (or fall back) instead of hanging
with a caller on the line. The message names the Redis URL without its password, so it can go
to logs and to the person on call.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = ["CapReached", "CoordinationUnavailable", "redact_url"]

_SECRET_QUERY_NAMES = frozenset({"password"})


class CoordinationUnavailable(RuntimeError):
    """Redis could not be reached or did not answer in time; the operation did not complete
    (or its outcome is unknown, when the connection broke after the request was sent)."""


class CapReached(Exception):
    """A room lease was not taken because one of the caps it was asked under is full:
    ``group`` held ``held`` live leases, and ``limit`` is its cap. Nothing was taken."""

    def __init__(self, group: str, limit: int, held: int) -> None:
        super().__init__(f"{held} live leases in group {group!r}, at its cap of {limit}")
        self.group = group
        self.limit = limit
        self.held = held


def redact_url(url: str) -> str:
    """``url`` without its password (in the userinfo or a ``password=`` query parameter), so
    it can be logged: ``redis://:secret@host:6379/0`` becomes ``redis://host:6379/0`` and
    ``redis://app:secret@host/0`` becomes ``redis://app@host/0``."""
    parts = urlsplit(url)
    shown = url
    if "@" in parts.netloc:
        userinfo, _, hostport = parts.netloc.rpartition("@")
        username = userinfo.partition(":")[0]
        # the first occurrence is the authority itself, right after "scheme://"
        shown = shown.replace(parts.netloc, f"{username}@{hostport}" if username else hostport, 1)
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        kept = urlencode([(k, v) for k, v in pairs if k.lower() not in _SECRET_QUERY_NAMES])
        shown = shown.replace("?" + parts.query, "?" + kept if kept else "", 1)
    return shown
