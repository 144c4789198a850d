"""The edge worker's configuration: one JSON document, validated once, with errors that name the
field, the bad value and the fix.

Standard library only (the Cloudflare Python Worker bundles it). In production the JSON is a
worker secret binding; locally it is the ``CALLPLANE_EDGE_CONFIG`` environment variable::

    {
      "public_url": "https://edge.example.com",
      "twilio_auth_token": "<Twilio Auth Token>",
      "stream_secret": "<shared with the media function, 16+ characters>",
      "media_urls": {"us": "wss://media-us.example.com"},
      "numbers": {"+15550001111": {"profile": "support", "region": "us"}},
      "default_region": "us"
    }

A number's ``region`` may be left out: it then uses ``default_region``. Secrets never appear in
error messages or in ``repr``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

__all__ = ["ENV_VAR", "MIN_STREAM_SECRET_CHARS", "EdgeConfig", "EdgeConfigError", "NumberRoute"]

ENV_VAR = "CALLPLANE_EDGE_CONFIG"
MIN_STREAM_SECRET_CHARS = 16

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_FIELDS = (
    "public_url",
    "twilio_auth_token",
    "stream_secret",
    "media_urls",
    "numbers",
    "default_region",
)
_ROUTE_FIELDS = ("profile", "region")
_SECRET_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class EdgeConfigError(ValueError):
    """The edge configuration is invalid; the message names the field, the value and the fix."""


@dataclass(frozen=True)
class NumberRoute:
    """Where a call to one phone number goes: the agent profile that answers it and the media
    region whose function bridges its audio."""

    profile: str
    region: str


@dataclass(frozen=True)
class EdgeConfig:
    """Everything the edge needs to answer Twilio.

    ``public_url`` is the origin (optionally with a path prefix, no trailing ``/``) under which
    Twilio reaches the edge; it is the only source of the URL used to check signatures, which is
    what makes the edge work behind proxies and tunnels. ``media_urls`` maps a region to its
    media function's ``wss://host[:port]`` base (``ws://`` is accepted for local stacks); the
    stream URL is that base plus ``/twilio/media``. ``numbers`` maps E.164 numbers to routes.
    """

    public_url: str
    twilio_auth_token: str = field(repr=False)
    stream_secret: str = field(repr=False)
    media_urls: Mapping[str, str]
    numbers: Mapping[str, NumberRoute]
    default_region: str

    def __post_init__(self) -> None:
        _check_url("public_url", self.public_url, ("https", "http"), "https://edge.example.com")
        if not isinstance(self.twilio_auth_token, str) or not self.twilio_auth_token.strip():
            raise EdgeConfigError(
                "twilio_auth_token is missing or empty: set it to the Twilio account's Auth "
                "Token (Console > Account > API keys & tokens)"
            )
        if not isinstance(self.stream_secret, str) or len(self.stream_secret) < (
            MIN_STREAM_SECRET_CHARS
        ):
            length = len(self.stream_secret) if isinstance(self.stream_secret, str) else 0
            raise EdgeConfigError(
                f"stream_secret is too short ({length} characters, value hidden): use at least "
                f"{MIN_STREAM_SECRET_CHARS} random characters, e.g. from `{_SECRET_HINT}`, and "
                "give the media function the same value"
            )
        if not isinstance(self.media_urls, Mapping) or not self.media_urls:
            raise EdgeConfigError(
                f"media_urls={self.media_urls!r} is invalid: give at least one region, e.g. "
                '{"us": "wss://media-us.example.com"}'
            )
        for region, url in self.media_urls.items():
            _check_name(f"media_urls key {region!r}", region)
            _check_url(f"media_urls[{region!r}]", url, ("wss", "ws"), "wss://media.example.com")
        if not isinstance(self.default_region, str) or self.default_region not in self.media_urls:
            raise EdgeConfigError(
                f"default_region={self.default_region!r} is not a key of media_urls "
                f"({sorted(self.media_urls)}): set it to one of them"
            )
        if not isinstance(self.numbers, Mapping):
            raise EdgeConfigError(
                f"numbers={self.numbers!r} is invalid: map E.164 numbers to routes, e.g. "
                '{"+15550001111": {"profile": "support"}}'
            )
        for number, route in self.numbers.items():
            _check_number(number)
            where = f"numbers[{number!r}]"
            if not isinstance(route, NumberRoute):
                raise EdgeConfigError(
                    f"{where}={route!r} is invalid: use NumberRoute(profile=..., region=...)"
                )
            _check_name(f"{where}.profile", route.profile)
            if route.region not in self.media_urls:
                raise EdgeConfigError(
                    f"{where}.region={route.region!r} has no entry in media_urls "
                    f"({sorted(self.media_urls)}): add media_urls[{route.region!r}] or use a "
                    "configured region"
                )
        object.__setattr__(self, "media_urls", MappingProxyType(dict(self.media_urls)))
        object.__setattr__(self, "numbers", MappingProxyType(dict(self.numbers)))

    def media_stream_url(self, region: str) -> str:
        """The ``<Stream url>`` for a region: its media base plus ``/twilio/media``."""
        return self.media_urls[region] + "/twilio/media"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "edge config") -> EdgeConfig:
        """Build from parsed JSON; unknown keys are refused so that a typo cannot silently drop
        a setting."""
        if not isinstance(data, Mapping):
            raise EdgeConfigError(
                f"{source}: expected a JSON object at the top level, got {type(data).__name__}"
            )
        _check_keys(source, data, _FIELDS)
        missing = [name for name in _FIELDS if name not in data]
        if missing:
            raise EdgeConfigError(
                f"{source}: missing field(s) {missing}; required: {list(_FIELDS)}"
            )
        default_region = data["default_region"]
        raw_numbers = data["numbers"]
        if not isinstance(raw_numbers, Mapping):
            raise EdgeConfigError(
                f"{source}: numbers={raw_numbers!r} is invalid: use an object mapping E.164 "
                'numbers to routes, e.g. {"+15550001111": {"profile": "support"}}'
            )
        numbers: dict[str, NumberRoute] = {}
        for number, raw in raw_numbers.items():
            where = f"{source}: numbers[{number!r}]"
            if not isinstance(raw, Mapping):
                raise EdgeConfigError(
                    f'{where}={raw!r} is invalid: use {{"profile": "<name>", "region": "<region>"}}'
                    " (region is optional and defaults to default_region)"
                )
            _check_keys(where, raw, _ROUTE_FIELDS)
            if "profile" not in raw:
                raise EdgeConfigError(f"{where}: missing 'profile'; name the agent profile")
            numbers[number] = NumberRoute(
                profile=raw["profile"], region=raw.get("region", default_region)
            )
        media_urls = data["media_urls"]
        if not isinstance(media_urls, Mapping):
            raise EdgeConfigError(
                f"{source}: media_urls={media_urls!r} is invalid: use an object mapping regions "
                'to media bases, e.g. {"us": "wss://media-us.example.com"}'
            )
        try:
            return cls(
                public_url=data["public_url"],
                twilio_auth_token=data["twilio_auth_token"],
                stream_secret=data["stream_secret"],
                media_urls=media_urls,
                numbers=numbers,
                default_region=default_region,
            )
        except EdgeConfigError as exc:
            raise EdgeConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_json(cls, text: str, *, source: str = "edge config") -> EdgeConfig:
        """Parse and validate the JSON document (see the module docstring for its shape)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EdgeConfigError(
                f"{source}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                "fix the document"
            ) from None
        return cls.from_mapping(data, source=source)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EdgeConfig:
        """Read the JSON from ``CALLPLANE_EDGE_CONFIG`` in ``environ`` (default ``os.environ``)."""
        env = os.environ if environ is None else environ
        text = env.get(ENV_VAR)
        if not text or not text.strip():
            raise EdgeConfigError(
                f"{ENV_VAR} is not set: set it to the edge config JSON (see edge_worker/README.md)"
            )
        return cls.from_json(text, source=ENV_VAR)


def _check_keys(where: str, data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(str(key) for key in data if key not in allowed)
    if unknown:
        raise EdgeConfigError(
            f"{where}: unknown field(s) {unknown}; allowed: {list(allowed)}. Fix the spelling "
            "or remove them"
        )


def _check_name(where: str, value: object) -> None:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise EdgeConfigError(
            f"{where}={value!r} is invalid: use 1-64 characters from letters, digits, '_', '.' "
            "and '-', starting with a letter or digit"
        )


def _check_number(number: object) -> None:
    if not isinstance(number, str) or not _E164.fullmatch(number):
        raise EdgeConfigError(
            f"numbers key {number!r} is not an E.164 number: write it as '+' then country code "
            "and number, digits only, e.g. '+15550001111'"
        )


def _check_url(where: str, value: object, schemes: tuple[str, ...], example: str) -> None:
    if not isinstance(value, str):
        raise EdgeConfigError(f"{where}={value!r} is invalid: use a URL like {example!r}")
    parts = urlsplit(value)
    problem = None
    if parts.scheme not in schemes:
        problem = f"the scheme must be one of {list(schemes)}"
    elif not parts.hostname:
        problem = "it has no host"
    elif not _port_ok(parts.netloc):
        problem = "its port is not a number from 1 to 65535"
    elif parts.query or parts.fragment or "?" in value or "#" in value:
        problem = "it must not have a query string or fragment"
    elif value.endswith("/"):
        problem = "it must not end with '/' (paths are appended to it)"
    if problem is not None:
        raise EdgeConfigError(f"{where}={value!r} is invalid: {problem}; e.g. {example!r}")


def _port_ok(netloc: str) -> bool:
    try:
        port = urlsplit(f"//{netloc}").port
    except ValueError:
        return False
    return port is None or port > 0
