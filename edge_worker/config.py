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

An optional ``livekit`` object turns on the web path (``POST /token``, ``POST /livekit/webhook``)::

    "livekit": {
      "url": "wss://project.livekit.cloud",
      "api_key": "<LiveKit API key>",
      "api_secret": "<its secret>",
      "agent_name": "callplane-agent",
      "token_ttl_s": 900,
      "web_keys": ["<16+ random characters>"],
      "link_secret": "<16+ random characters>",
      "allowed_origins": ["https://app.example.com"],
      "dispatch_url": "https://media.example.com/agents/dispatch",
      "dispatch_api_key": "<the media app's api_key>",
      "rate_limit_per_minute": 30
    }

Only ``url``, ``api_key`` and ``api_secret`` are required; ``dispatch_url`` and
``dispatch_api_key`` come together or not at all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from edge_worker.wire import JSONRefused, read_json

__all__ = [
    "ENV_VAR",
    "MAX_TOKEN_TTL_S",
    "MIN_STREAM_SECRET_CHARS",
    "EdgeConfig",
    "EdgeConfigError",
    "LiveKitEdgeConfig",
    "NumberRoute",
]

ENV_VAR = "CALLPLANE_EDGE_CONFIG"
MIN_STREAM_SECRET_CHARS = 16
MAX_TOKEN_TTL_S = 15 * 60
"""The longest a web token may live: a leaked token is useless after this."""

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
_OPTIONAL_FIELDS = ("livekit",)
_LIVEKIT_FIELDS = (
    "url",
    "api_key",
    "api_secret",
    "agent_name",
    "token_ttl_s",
    "web_keys",
    "link_secret",
    "allowed_origins",
    "dispatch_url",
    "dispatch_api_key",
    "rate_limit_per_minute",
)
_LIVEKIT_REQUIRED = ("url", "api_key", "api_secret")
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
class LiveKitEdgeConfig:
    """The edge's side of the stack's LiveKit project: the keys it signs web tokens and checks
    webhooks with, who may ask for a token, and where to ask for an agent.

    ``web_keys`` are bearer secrets a web app may present to ``POST /token``; ``link_secret``
    signs playground links (:func:`edge_worker.web_links.sign_web_link`); ``allowed_origins``
    are the browser origins (``scheme://host[:port]``) allowed to call ``/token``.
    ``dispatch_url`` is the media app's ``/agents/dispatch`` and ``dispatch_api_key`` its
    ``api_key``; without them webhooks are verified and acknowledged but start no agent.
    ``rate_limit_per_minute`` applies per client address to tokens issued and, separately, to
    failed authentications, so wrong keys from an address never use up a valid key's tokens.
    """

    url: str
    api_key: str
    api_secret: str = field(repr=False)
    agent_name: str = "callplane-agent"
    token_ttl_s: int = MAX_TOKEN_TTL_S
    web_keys: tuple[str, ...] = field(default=(), repr=False)
    link_secret: str | None = field(default=None, repr=False)
    allowed_origins: tuple[str, ...] = ()
    dispatch_url: str | None = None
    dispatch_api_key: str | None = field(default=None, repr=False)
    rate_limit_per_minute: int = 30

    def __post_init__(self) -> None:
        where = "livekit"
        _check_url(f"{where}.url", self.url, ("wss", "ws"), "wss://project.livekit.cloud")
        if not isinstance(self.api_key, str) or not self.api_key.strip():
            raise EdgeConfigError(
                f"{where}.api_key={self.api_key!r} is invalid: set it to the LiveKit project's "
                "API key (the key whose secret is api_secret)"
            )
        _check_secret(f"{where}.api_secret", self.api_secret, 1, "the API key's secret")
        _check_name(f"{where}.agent_name", self.agent_name)
        ttl = self.token_ttl_s
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= MAX_TOKEN_TTL_S:
            raise EdgeConfigError(
                f"{where}.token_ttl_s={ttl!r} is invalid: use whole seconds from 1 to "
                f"{MAX_TOKEN_TTL_S}; web tokens are short-lived on purpose"
            )
        if isinstance(self.web_keys, str) or not isinstance(self.web_keys, tuple | list):
            raise EdgeConfigError(
                f"{where}.web_keys is a {type(self.web_keys).__name__}, not a list: give a list "
                'of secrets, e.g. ["<16+ random characters>"]'
            )
        for index, key in enumerate(self.web_keys):
            _check_secret(
                f"{where}.web_keys[{index}]", key, MIN_STREAM_SECRET_CHARS, "a random web key"
            )
        if self.link_secret is not None:
            _check_secret(
                f"{where}.link_secret", self.link_secret, MIN_STREAM_SECRET_CHARS, "a random secret"
            )
        if isinstance(self.allowed_origins, str) or not isinstance(
            self.allowed_origins, tuple | list
        ):
            raise EdgeConfigError(
                f"{where}.allowed_origins={self.allowed_origins!r} is not a list: give origins "
                'like ["https://app.example.com"]'
            )
        for index, origin in enumerate(self.allowed_origins):
            _check_origin(f"{where}.allowed_origins[{index}]", origin)
        if (self.dispatch_url is None) != (self.dispatch_api_key is None):
            raise EdgeConfigError(
                f"{where}.dispatch_url and {where}.dispatch_api_key must be set together: give "
                "the media app's /agents/dispatch URL and its api_key, or neither"
            )
        if self.dispatch_url is not None:
            _check_url(
                f"{where}.dispatch_url",
                self.dispatch_url,
                ("https", "http"),
                "https://media.example.com/agents/dispatch",
            )
            _check_secret(
                f"{where}.dispatch_api_key", self.dispatch_api_key, 8, "the media app's api_key"
            )
        rate = self.rate_limit_per_minute
        if isinstance(rate, bool) or not isinstance(rate, int) or not 0 < rate <= 100_000:
            raise EdgeConfigError(
                f"{where}.rate_limit_per_minute={rate!r} is invalid: use a whole number of "
                "tokens (and, counted apart, failed authentications) per client address per "
                "minute, from 1 to 100000"
            )
        object.__setattr__(self, "web_keys", tuple(self.web_keys))
        object.__setattr__(self, "allowed_origins", tuple(self.allowed_origins))

    @classmethod
    def from_mapping(cls, data: object, *, source: str) -> LiveKitEdgeConfig:
        """Build from the parsed ``livekit`` object; unknown keys are refused."""
        where = f"{source}: livekit"
        if not isinstance(data, Mapping):
            raise EdgeConfigError(
                f"{where} is a {type(data).__name__}, not an object: use "
                '{"url": "wss://...", "api_key": "...", "api_secret": "..."}'
            )
        _check_keys(where, data, _LIVEKIT_FIELDS)
        missing = [name for name in _LIVEKIT_REQUIRED if name not in data]
        if missing:
            raise EdgeConfigError(
                f"{where}: missing field(s) {missing}; required: {list(_LIVEKIT_REQUIRED)}"
            )
        try:
            return cls(**{name: data[name] for name in _LIVEKIT_FIELDS if name in data})
        except EdgeConfigError as exc:
            raise EdgeConfigError(f"{source}: {exc}") from None


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
    livekit: LiveKitEdgeConfig | None = None

    def __post_init__(self) -> None:
        if self.livekit is not None and not isinstance(self.livekit, LiveKitEdgeConfig):
            raise EdgeConfigError(
                f"livekit is a {type(self.livekit).__name__}: use LiveKitEdgeConfig(...) or None"
            )
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
            _check_name(f"{where}.region", route.region)
            if route.region not in self.media_urls:
                raise EdgeConfigError(
                    f"{where}.region={route.region!r} has no entry in media_urls "
                    f"({sorted(self.media_urls)}): add media_urls[{route.region!r}] or use a "
                    "configured region"
                )
        object.__setattr__(self, "media_urls", MappingProxyType(dict(self.media_urls)))
        object.__setattr__(self, "numbers", MappingProxyType(dict(self.numbers)))

    def media_stream_url(self, region: str) -> str:
        """Where a region's media streams go: its media base plus ``/twilio/media``. Each call's
        ``<Stream url>`` adds the key of its stream token (``callplane.security.stream_url``), so
        that Twilio's signature on the upgrade is one call's and no other's."""
        return self.media_urls[region] + "/twilio/media"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "edge config") -> EdgeConfig:
        """Build from parsed JSON; unknown keys are refused so that a typo cannot silently drop
        a setting."""
        if not isinstance(data, Mapping):
            raise EdgeConfigError(
                f"{source}: expected a JSON object at the top level, got {type(data).__name__}"
            )
        _check_keys(source, data, _FIELDS + _OPTIONAL_FIELDS)
        missing = [name for name in _FIELDS if name not in data]
        if missing:
            raise EdgeConfigError(
                f"{source}: missing field(s) {missing}; required: {list(_FIELDS)}, optional: "
                f"{list(_OPTIONAL_FIELDS)}"
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
        livekit = data.get("livekit")
        livekit_config = (
            None if livekit is None else LiveKitEdgeConfig.from_mapping(livekit, source=source)
        )
        try:
            return cls(
                livekit=livekit_config,
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
            data = read_json(text)
        except JSONRefused as exc:
            raise EdgeConfigError(f"{source}: {exc}; fix the document") from None
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


def _check_secret(where: str, value: object, min_chars: int, what: str) -> None:
    if not isinstance(value, str) or len(value) < min_chars or not value.strip():
        length = len(value) if isinstance(value, str) else 0
        kind = "a string" if isinstance(value, str) else f"a {type(value).__name__}"
        raise EdgeConfigError(
            f"{where} is invalid ({kind} of {length} characters, value hidden): set it to "
            f"{what} of at least {min_chars} characters"
        )


def _check_origin(where: str, value: object) -> None:
    example = "https://app.example.com"
    if not isinstance(value, str):
        raise EdgeConfigError(f"{where}={value!r} is invalid: use an origin like {example!r}")
    _check_url(where, value, ("https", "http"), example)
    if urlsplit(value).path:
        raise EdgeConfigError(
            f"{where}={value!r} is invalid: an origin is scheme://host[:port] with no path; "
            f"e.g. {example!r}"
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
    try:
        parts = urlsplit(value)
    except ValueError as exc:  # an unclosed IPv6 bracket, say
        raise EdgeConfigError(
            f"{where}={value!r} is invalid: it is not a URL ({exc}); e.g. {example!r}"
        ) from None
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
