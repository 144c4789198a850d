"""Reading a request to the simulated REST API as Twilio does: form or query parameters with
Twilio-shaped validation (every failure names the field and the value and carries Twilio's
error code), HTTP Basic authentication, the page a list asks for, the simulator an app serves
and the 404 of a missing resource. Shared by the ``api`` domain
(:mod:`~callplane_standins.twilio_simulator.rest`) and the trunking subset
(:mod:`~callplane_standins.twilio_simulator.trunking`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from fastapi import Request
from starlette.datastructures import FormData, UploadFile

from callplane_standins.twilio_simulator.state import TwilioApiError

if TYPE_CHECKING:
    from callplane_standins.twilio_simulator.simulator import Simulator

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_T = TypeVar("_T")


class RequestForm:
    """Request parameters (form body or query string) with Twilio-shaped validation."""

    def __init__(self, data: Mapping[str, Any] | FormData, multi: dict[str, list[str]]) -> None:
        self._data = data
        self._multi = multi

    @classmethod
    async def from_body(cls, request: Request) -> RequestForm:
        try:
            form = await request.form()
        except Exception as exc:  # multipart errors and the like
            raise TwilioApiError(400, 20001, f"request body could not be parsed: {exc}") from None
        multi: dict[str, list[str]] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                raise TwilioApiError(400, 20001, f"{key} must be a form field, not a file")
            multi.setdefault(key, []).append(value)
        return cls(form, multi)

    @classmethod
    def from_query(cls, request: Request) -> RequestForm:
        multi: dict[str, list[str]] = {}
        for key, value in request.query_params.multi_items():
            multi.setdefault(key, []).append(value)
        return cls(request.query_params, multi)

    def has(self, name: str) -> bool:
        return name in self._multi

    def text(self, name: str) -> str | None:
        values = self._multi.get(name)
        return None if not values else values[-1]

    def values(self, name: str) -> list[str]:
        return list(self._multi.get(name, []))

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.text(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise TwilioApiError(400, 20001, f"{name} {raw!r} is not an integer") from None
        if not low <= value <= high:
            raise TwilioApiError(400, 20001, f"{name} {raw!r} must be between {low} and {high}")
        return value

    def boolean(self, name: str) -> bool | None:
        raw = self.text(name)
        if raw is None or raw == "":
            return None
        if raw.lower() in ("true", "1"):
            return True
        if raw.lower() in ("false", "0"):
            return False
        raise TwilioApiError(400, 20001, f"{name} {raw!r} must be true or false")

    def url(self, name: str, code: int = 21502) -> str | None:
        raw = self.text(name)
        if raw is None or raw == "":
            return raw
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise TwilioApiError(400, code, f"{name} {raw!r} is not a valid http(s) URL")
        return raw

    def method(self, name: str) -> str | None:
        raw = self.text(name)
        if raw is None or raw == "":
            return None
        if raw.upper() not in ("GET", "POST"):
            raise TwilioApiError(400, 20001, f"{name} {raw!r} must be GET or POST")
        return raw.upper()

    def e164(self, name: str, code: int) -> str | None:
        raw = self.text(name)
        if raw is None:
            return None
        value = raw.strip()
        if not _E164.match(value):
            raise TwilioApiError(
                400,
                code,
                f"{name} {raw!r} is not a valid phone number: use E.164, e.g. +14155550100",
            )
        return value

    def sid(self, name: str, prefix: str, code: int = 20001) -> str | None:
        raw = self.text(name)
        if raw is None or raw == "":
            return raw
        if not re.fullmatch(prefix + r"[0-9a-fA-F]{32}", raw):
            raise TwilioApiError(
                400, code, f"{name} {raw!r} is not a valid SID ({prefix} followed by 32 hex digits)"
            )
        return raw


def basic_header(account_sid: str, auth_token: str) -> str:
    return "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()


def basic_account(request: Request, tokens: Mapping[str, str]) -> str:
    """The account whose ``AccountSid:AuthToken`` the request's HTTP Basic auth carries
    (Twilio's 20003 otherwise)."""
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    user = password = ""
    if scheme.lower() == "basic":
        with contextlib.suppress(binascii.Error, UnicodeDecodeError):
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    token = tokens.get(user)
    if token is None or not hmac.compare_digest(token.encode(), password.encode()):
        raise TwilioApiError(401, 20003, "Authenticate")
    return user


def authenticate_account(request: Request, account_sid: str) -> str:
    """HTTP Basic auth with AccountSid:AuthToken; the path's account must be the caller's."""
    user = basic_account(request, simulator_of(request).tokens)
    if user != account_sid:
        raise TwilioApiError(
            401, 20003, f"Authenticate: credentials for {user} cannot access {account_sid}"
        )
    return user


def simulator_of(request: Request) -> Simulator:
    """The simulator a REST app serves (``create_rest_app`` keeps it in ``app.state``), so
    route handlers can be plain module-level functions of the request."""
    sim: Simulator = request.app.state.sim
    return sim


def not_found(path: str) -> TwilioApiError:
    return TwilioApiError(404, 20404, f"The requested resource {path} was not found")


@dataclass(frozen=True, slots=True)
class PageRequest:
    """The page of a list a request asks for: ``Page`` (from 0) of ``PageSize`` records.

    Both API versions read these the same way; only the envelope around the records differs
    (2010-04-01's top-level ``*_page_uri`` fields, v1's ``meta`` block), so each API builds
    its own envelope from this.
    """

    page: int
    page_size: int

    @classmethod
    def from_query(cls, query: RequestForm) -> PageRequest:
        page_size = query.integer("PageSize", 50, 1, 1000)
        page = query.integer("Page", 0, 0, 1_000_000)
        return cls(page, page_size)

    @property
    def start(self) -> int:
        """Index of the page's first record in the whole list."""
        return self.page * self.page_size

    def window(self, items: Sequence[_T]) -> list[_T]:
        """The records on this page."""
        return list(items[self.start : self.start + self.page_size])

    def has_more(self, total: int) -> bool:
        """Whether a next page has records, in a list of ``total``."""
        return self.start + self.page_size < total
