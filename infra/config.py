"""The stack configuration: one pydantic model, validated before any resource is declared.

Everything lives in the project namespace ``callplane:`` of ``Pulumi.<stack>.yaml``; keys are
camelCase as Pulumi's convention has it. Secrets are top-level keys so that ``pulumi config set
--secret callplane:<key>`` sets them. An error names the config key, the bad value (secrets: only
their length) and the fix::

    callplane:numbers[0].bundle = 'BU123': not a Bundle SID. Fix: copy the SID of a
    twilio-approved bundle (BU followed by 32 hex digits) from Console > Phone Numbers >
    Regulatory Compliance > Bundles

:func:`load` checks the shape; :func:`check_numbers` then checks every number entry against the
country rules (:mod:`infra.countries`), so that ``pulumi preview`` refuses impossible requests.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from infra.countries import (
    COUNTRY_RULES,
    NUMBER_TYPES,
    AddressRequirement,
    CountryRule,
    NumberType,
    apply_overrides,
)

__all__ = [
    "NAMESPACE",
    "SECRET_KEYS",
    "ConfigError",
    "CountryOverride",
    "EdgeSettings",
    "LiveKitStackConfig",
    "MediaSettingsConfig",
    "ModalSettings",
    "NumberEntry",
    "PlannedNumber",
    "StackConfig",
    "TwilioSettings",
    "check_numbers",
    "load",
    "plan_numbers",
]

NAMESPACE = "callplane"
#: Top-level keys that hold secrets: never shown in errors, refused in plaintext on cloud stacks.
LOCAL_SAMPLE_TOOLS = "callplane.samples:SAMPLE_TOOLS"
"""The tools a local stack serves when it names no ``callplane:toolsModule``."""

SECRET_KEYS = (
    "twilioAuthToken",
    "streamSecret",
    "livekitApiSecret",
    "mediaApiKey",
    "openaiApiKey",
    "webKey",
    "linkSecret",
    "databaseUrl",
    "redisUrl",
)

_SID = {
    "AC": re.compile(r"^AC[0-9a-fA-F]{32}$"),
    "BU": re.compile(r"^BU[0-9a-fA-F]{32}$"),
    "AD": re.compile(r"^AD[0-9a-fA-F]{32}$"),
    "PN": re.compile(r"^PN[0-9a-fA-F]{32}$"),
}
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
_PROFILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MODAL_ENV = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_SECRET_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class ConfigError(ValueError):
    """The stack config is invalid. ``problems`` holds one line per bad key."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            "the stack config is invalid:\n" + "\n".join(f"  - {p}" for p in self.problems)
        )


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, alias_generator=to_camel, frozen=True
    )


def _number_type(value: Any) -> Any:
    """Accept ``toll_free``, ``toll-free``, ``tollFree`` and ``TollFree`` for one type."""
    if isinstance(value, str):
        key = re.sub(r"[^a-z]", "", value.lower())
        for t in NUMBER_TYPES:
            if t.replace("_", "") == key:
                return t
    return value


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def _area_code(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _check_url(value: str, schemes: tuple[str, ...], example: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"not a {'/'.join(schemes)} URL. Fix: write it like {example!r}")
    if parts.query or parts.fragment or value.endswith("/"):
        raise ValueError(
            f"must not end with '/' or carry a query or fragment. Fix: write it like {example!r}"
        )
    return value


NumberTypeField = Annotated[NumberType, BeforeValidator(_number_type)]


class NumberEntry(_Model):
    """One line of ``callplane:numbers``: buy ``count`` numbers, or import one you own."""

    name: str | None = None
    country: Annotated[str | None, BeforeValidator(_upper)] = None
    type: NumberTypeField | None = None
    count: int = Field(default=1, ge=1, le=20)
    area_code: Annotated[str | None, BeforeValidator(_area_code)] = None
    contains: str | None = None
    locality: str | None = None
    bundle: str | None = None
    address: str | None = None
    import_: str | None = Field(default=None, alias="import")
    profile: str
    region: str | None = None
    friendly_name: str | None = Field(default=None, max_length=64)
    protect: bool = True
    route: Literal["webhook", "sip"] = "webhook"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.match(v):
            raise ValueError(
                "not a resource name. Fix: use 1-40 lower-case letters, digits and '-', "
                "starting with a letter or digit"
            )
        return v

    @field_validator("country")
    @classmethod
    def _country(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Z]{2}", v):
            raise ValueError("not an ISO 3166 country code. Fix: use two letters, e.g. US or PK")
        return v

    @field_validator("area_code")
    @classmethod
    def _area(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[2-9]\d\d", v):
            raise ValueError("not a North American area code. Fix: use 3 digits, e.g. 415")
        return v

    @field_validator("contains")
    @classmethod
    def _contains(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"\+?[0-9A-Za-z*%]{2,16}\$?", v):
            raise ValueError(
                "not a Twilio Contains pattern. Fix: use 2-16 of 0-9, A-Z, '*' (one digit) and "
                "'%' (any digits)"
            )
        return v

    @field_validator("bundle")
    @classmethod
    def _bundle(cls, v: str | None) -> str | None:
        if v is not None and not _SID["BU"].match(v):
            raise ValueError(
                "not a Bundle SID. Fix: copy the SID of a twilio-approved bundle (BU followed "
                "by 32 hex digits) from Console > Phone Numbers > Regulatory Compliance > Bundles"
            )
        return v

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is not None and not _SID["AD"].match(v):
            raise ValueError(
                "not an Address SID. Fix: copy an Address SID (AD followed by 32 hex digits) "
                "from Console > Phone Numbers > Regulatory Compliance > Addresses"
            )
        return v

    @field_validator("import_")
    @classmethod
    def _import(cls, v: str | None) -> str | None:
        if v is not None and not (_SID["PN"].match(v) or _E164.match(v)):
            raise ValueError(
                "neither a phone number SID nor an E.164 number. Fix: give the number's SID "
                "(PN followed by 32 hex digits) or the number itself, e.g. '+14155550100'"
            )
        return v

    @field_validator("profile")
    @classmethod
    def _profile(cls, v: str) -> str:
        if not _PROFILE.match(v):
            raise ValueError(
                "not a profile name. Fix: use 1-64 letters, digits, '_', '.' and '-', "
                "starting with a letter or digit"
            )
        return v

    @model_validator(mode="after")
    def _mode(self) -> NumberEntry:
        if self.import_ is not None:
            extra = [
                alias
                for alias, value in (
                    ("country", self.country),
                    ("type", self.type),
                    ("areaCode", self.area_code),
                    ("contains", self.contains),
                    ("locality", self.locality),
                )
                if value is not None
            ]
            if extra or self.count != 1:
                raise ValueError(
                    f"an import entry cannot also search ({', '.join(extra) or 'count'} given). "
                    "Fix: keep only import, profile, region, friendlyName, protect and route, or "
                    "drop import to buy a new number"
                )
        elif self.country is None or self.type is None:
            raise ValueError(
                "says neither what to buy nor what to import. Fix: give country and type (e.g. "
                "country: US, type: local) or import: <PN… SID or +E.164>"
            )
        return self

    @property
    def is_import(self) -> bool:
        return self.import_ is not None


class CountryOverride(_Model):
    """``callplane:countries.<ISO>.<type>``: replace facts of the country rules table."""

    sold: bool | None = None
    bundle_required: bool | None = None
    address_required: AddressRequirement | None = None
    bundle_covers_address: bool | None = None


class TwilioSettings(_Model):
    account_sid: str
    #: Only for the local stack: the Twilio simulator's base URL (``http://127.0.0.1:PORT``).
    api_base_url: str | None = None

    @field_validator("account_sid")
    @classmethod
    def _sid(cls, v: str) -> str:
        if not _SID["AC"].match(v):
            raise ValueError(
                "not an Account SID. Fix: copy it from the Twilio Console home page (AC followed "
                "by 32 hex digits)"
            )
        return v

    @field_validator("api_base_url")
    @classmethod
    def _base(cls, v: str | None) -> str | None:
        return None if v is None else _check_url(v, ("http", "https"), "http://127.0.0.1:8089")


class CloudflareSettings(_Model):
    account_id: str
    script_name: str = "callplane-edge"
    compatibility_date: str = "2025-09-01"

    @field_validator("account_id")
    @classmethod
    def _account(cls, v: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{32}", v):
            raise ValueError(
                "not a Cloudflare account ID. Fix: copy it (32 hex digits) from the dashboard's "
                "Workers & Pages overview"
            )
        return v


class EdgeSettings(_Model):
    """Where Twilio reaches the edge: webhooks are ``url`` + ``/twilio/voice`` / ``/status``."""

    url: str
    cloudflare: CloudflareSettings | None = None
    #: Browser origins (``scheme://host[:port]``) whose pages may ask ``/token`` for a LiveKit
    #: token. Unset: the edge's own origin, where the playground is served.
    allowed_origins: list[str] | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_url(v, ("https", "http"), "https://edge.example.com")

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, v: list[str] | None) -> list[str] | None:
        for origin in v or ():
            parts = urlsplit(origin)
            if (
                parts.scheme not in ("https", "http")
                or not parts.hostname
                or origin != f"{parts.scheme}://{parts.netloc}"
            ):
                raise ValueError(
                    f"{origin!r} is not an origin. Fix: write scheme://host[:port] with no path "
                    "or trailing '/', e.g. 'https://app.example.com'"
                )
        return v

    @property
    def origins(self) -> list[str]:
        """The allowed origins: as set, or the edge's own."""
        if self.allowed_origins is not None:
            return list(self.allowed_origins)
        parts = urlsplit(self.url)
        return [f"{parts.scheme}://{parts.netloc}"]


class MediaSettingsConfig(_Model):
    """Media bases per region (``wss://host``; ``ws://`` for local stacks)."""

    urls: dict[str, str] = Field(default_factory=dict)
    default_region: str | None = None
    realtime_url: str = "wss://api.openai.com/v1/realtime"
    realtime_model: str = "gpt-realtime"

    @field_validator("urls")
    @classmethod
    def _urls(cls, v: dict[str, str]) -> dict[str, str]:
        for region, url in v.items():
            if not _PROFILE.match(region):
                raise ValueError(f"region {region!r} is not a name. Fix: use letters and digits")
            _check_url(url, ("wss", "ws"), "wss://media.example.com")
        return v


class ModalSettings(_Model):
    """The Modal side: one environment per stack (the stack name unless set).

    ``region`` and ``nonpreemptible`` decide where the media plane's containers run and
    whether Modal may preempt them. Their defaults keep calls safe and close to Twilio, and
    both multiply Modal's CPU and memory price (docs/provisioning.md, "What the media plane
    costs on Modal"):

    * ``region`` (default ``us-east``, next to Twilio's default media region and to the
      servers every Modal input passes through): Modal's region multiplier applies to every
      function of the app. ``any`` leaves placement to Modal, without the multiplier, at the
      price of containers possibly far from Twilio (latency on every audio frame).
    * ``nonpreemptible`` (default true): a preempted container drops every call on it, and a
      preempted agent job leaves its room until Modal restarts it. Modal documents a 3x
      multiplier on the CPU and memory price for it; false pays a third of that and accepts
      that a preemption drops calls.

    The defaults are :mod:`functions.deploy_settings`' (the Modal app's side; a test keeps the
    two equal).
    """

    environment: str | None = None
    workspace: str
    web_suffix: str | None = None
    scaling: Literal["dev", "staging", "prod"] = "dev"
    app_name: str = "callplane-media"
    region: str = "us-east"
    nonpreemptible: bool = True

    @field_validator("app_name")
    @classmethod
    def _app_name(cls, v: str) -> str:
        from functions.deploy_settings import check_app_name

        return check_app_name(v)

    @field_validator("region", mode="before")
    @classmethod
    def _region(cls, v: Any) -> Any:
        from functions.deploy_settings import ANY_REGION, check_region

        if v is None:  # YAML's null: no pinned region
            return ANY_REGION
        return check_region(v) if isinstance(v, str) else v

    @field_validator("environment")
    @classmethod
    def _env(cls, v: str | None) -> str | None:
        if v is not None and (not _MODAL_ENV.match(v) or v.startswith("en-")):
            raise ValueError(
                "not a Modal environment name. Fix: use 1-64 letters, digits, '_' and '-', "
                "not starting with 'en-'"
            )
        return v

    @field_validator("workspace")
    @classmethod
    def _ws(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", v):
            raise ValueError(
                "not a Modal workspace slug. Fix: use the lower-case slug shown in Modal's "
                "dashboard URL (modal.com/apps/<slug>)"
            )
        return v


class LiveKitStackConfig(_Model):
    """LiveKit: the server API (SIP inbound trunk and dispatch rule) and its SIP address, and
    how many on-demand agent jobs may run at once."""

    url: str
    api_key: str = Field(min_length=1)
    #: Where Twilio's SIP trunk sends calls, e.g. ``sip:<project>.sip.livekit.cloud``.
    sip_uri: str | None = None
    agent_name: str = "callplane-agent"
    room_prefix: str = "call-"
    #: At most this many agent jobs run at once on the stack (each is a container, billed).
    max_agent_jobs: int = Field(default=50, ge=1, le=100_000)
    #: At most this many for the rooms one web key's tokens created, so that one leaked or
    #: misbehaving key cannot take the whole stack's agents.
    max_agent_jobs_per_web_key: int = Field(default=5, ge=1, le=100_000)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_url(v, ("https", "http", "wss", "ws"), "https://my-project.livekit.cloud")

    @field_validator("sip_uri")
    @classmethod
    def _sip(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"sips?:[A-Za-z0-9.-]+(:\d+)?(;[^\s]*)?", v):
            raise ValueError(
                "not a SIP URI. Fix: write it like 'sip:abc123.sip.livekit.cloud' (the project "
                "id without 'p_')"
            )
        return v


class StackConfig(_Model):
    """The whole ``callplane:`` namespace of one stack."""

    kind: Literal["local", "cloud"]
    twilio: TwilioSettings
    twilio_auth_token: str = Field(repr=False, min_length=1)
    stream_secret: str = Field(repr=False, min_length=16)
    numbers: list[NumberEntry] = Field(min_length=1)
    edge: EdgeSettings
    media: MediaSettingsConfig = Field(default_factory=MediaSettingsConfig)
    modal: ModalSettings | None = None
    livekit: LiveKitStackConfig | None = None
    livekit_api_secret: str | None = Field(default=None, repr=False)
    media_api_key: str | None = Field(default=None, repr=False, min_length=8)
    openai_api_key: str | None = Field(default=None, repr=False)
    #: A bearer key web apps (and the playground's ``?key=``) present to the edge's ``/token``.
    web_key: str | None = Field(default=None, repr=False, min_length=16)
    #: Signs playground links (``?link=``, edge_worker/web_links.py) that need no web key.
    link_secret: str | None = Field(default=None, repr=False, min_length=16)
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: The call records database every media container writes to (PostgreSQL, as a
    #: SQLAlchemy URL: postgresql+psycopg://user:password@host:5432/db). A secret.
    database_url: str | None = Field(default=None, repr=False)
    #: Redis for what must hold across containers (redis:// or rediss://). A secret.
    redis_url: str | None = Field(default=None, repr=False)
    countries: dict[str, dict[NumberTypeField, CountryOverride]] = Field(default_factory=dict)
    #: ``package.module:NAME``: the team's tools (a mapping or list of ``@tool`` functions),
    #: imported at preview to check the profiles' tools and shipped in the media image.
    tools_module: str | None = None
    #: Outbound calls (``POST /calls``): maxConcurrent, maxQueued, allowedCountries,
    #: allowedNumberTypes, callingHours, dailyBudgetUsd, callerIds, ringTimeoutS,
    #: maxContextBytes, webhookHosts, ... (callplane.outbound.OutboundLimits). Caller IDs
    #: default to the stack's own numbers.
    outbound: dict[str, Any] = Field(default_factory=dict)

    @field_validator("tools_module")
    @classmethod
    def _tools_module(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v):
            raise ValueError(
                "not a tools reference. Fix: write it as 'package.module:NAME', NAME being a "
                "mapping or list of @tool functions"
            )
        return v

    @field_validator("outbound")
    @classmethod
    def _outbound(cls, v: dict[str, Any]) -> dict[str, Any]:
        from callplane.outbound import OutboundLimits

        limits = {_snake(k): value for k, value in v.items()}
        try:
            OutboundLimits.model_validate(limits)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(
                f"outbound.{where} = {_show(first.get('input'))}: "
                f"{first['msg'].removeprefix('Value error, ')}. Fix: see the outbound section "
                "of docs/provisioning.md"
            ) from None
        return limits

    @model_validator(mode="after")
    def _cross(self) -> StackConfig:
        problems: list[str] = []
        if self.kind == "local" and self.twilio.api_base_url is None:
            problems.append(
                "callplane:twilio.apiBaseUrl is missing on a local stack. Fix: set it to the "
                "Twilio simulator's URL, e.g. http://127.0.0.1:8089"
            )
        if self.kind == "cloud":
            if self.outbound.get("webhook_loopback"):
                problems.append(
                    "callplane:outbound.webhookLoopback = true on a cloud stack: request webhooks "
                    "would be sent to the media containers' own loopback. Fix: remove it (it is "
                    "for local stacks' tests) and list the webhook hosts in "
                    "callplane:outbound.webhookHosts"
                )
            if self.twilio.api_base_url is not None:
                problems.append(
                    f"callplane:twilio.apiBaseUrl = {self.twilio.api_base_url!r} on a cloud "
                    "stack. Fix: remove it (only the local stack talks to the simulator)"
                )
            if self.modal is None:
                problems.append(
                    "callplane:modal is missing on a cloud stack. Fix: set at least "
                    "callplane:modal.workspace (your Modal workspace slug)"
                )
            if self.edge.cloudflare is None:
                problems.append(
                    "callplane:edge.cloudflare is missing on a cloud stack. Fix: set "
                    "callplane:edge.cloudflare.accountId"
                )
            for key in ("mediaApiKey", "openaiApiKey"):
                if getattr(self, _snake(key)) is None:
                    problems.append(
                        f"callplane:{key} is missing on a cloud stack. Fix: pulumi config set "
                        f"--secret callplane:{key} <value>"
                    )
            if not self.profiles:
                problems.append(
                    "callplane:profiles is missing on a cloud stack: the media function needs "
                    "each profile's instructions. Fix: add callplane:profiles.<name>.instructions"
                )
            if self.database_url is None:
                problems.append(
                    "callplane:databaseUrl is missing on a cloud stack: containers come and go, "
                    "so call records need a database they all reach. Fix: pulumi config set "
                    "--secret callplane:databaseUrl postgresql+psycopg://user:password@host/db"
                )
            if self.redis_url is None:
                problems.append(
                    "callplane:redisUrl is missing on a cloud stack: one media stream per call, "
                    "one agent per room and outbound limits must hold across containers. Fix: "
                    "pulumi config set --secret callplane:redisUrl rediss://:password@host:6379/0"
                )
        if self.database_url is not None and not self.database_url.startswith(
            ("postgresql://", "postgresql+psycopg://")
        ):
            scheme = self.database_url.split(":", 1)[0]
            problems.append(
                f"callplane:databaseUrl has the scheme {scheme!r}. Fix: use a PostgreSQL URL, "
                "postgresql+psycopg://user:password@host:5432/db (SQLite files do not survive "
                "a container)"
            )
        if self.redis_url is not None and not self.redis_url.startswith(("redis://", "rediss://")):
            scheme = self.redis_url.split(":", 1)[0]
            problems.append(
                f"callplane:redisUrl has the scheme {scheme!r}. Fix: use redis://host:6379/0, "
                "or rediss:// for TLS"
            )
        if self.kind == "local" and not self.media.urls:
            problems.append(
                "callplane:media.urls is missing on a local stack. Fix: set it to the local "
                "media app, e.g. {local: ws://127.0.0.1:8788}"
            )
        if self.livekit is not None and not self.livekit_api_secret:
            problems.append(
                "callplane:livekitApiSecret is missing while callplane:livekit is set. Fix: "
                "pulumi config set --secret callplane:livekitApiSecret <the key's secret>"
            )
        for i, n in enumerate(self.numbers):
            if n.route == "sip" and (self.livekit is None or self.livekit.sip_uri is None):
                problems.append(
                    f"callplane:numbers[{i}].route = 'sip' needs callplane:livekit.sipUri. "
                    "Fix: set it to sip:<project>.sip.livekit.cloud"
                )
            if self.profiles and n.profile not in self.profiles:
                problems.append(
                    f"callplane:numbers[{i}].profile = {n.profile!r} is not in callplane:profiles "
                    f"({sorted(self.profiles)}). Fix: add the profile or correct the name"
                )
            elif self.kind == "local" and not self.profiles:
                from callplane.samples import SAMPLE_PROFILES

                if n.profile not in SAMPLE_PROFILES:
                    problems.append(
                        f"callplane:numbers[{i}].profile = {n.profile!r} is neither in "
                        f"callplane:profiles (none set) nor a sample profile "
                        f"({sorted(SAMPLE_PROFILES)}). Fix: correct the name or add "
                        f"callplane:profiles.{n.profile}.instructions"
                    )
            regions = self.media.urls.keys()
            if n.region is not None and regions and n.region not in regions:
                problems.append(
                    f"callplane:numbers[{i}].region = {n.region!r} has no media URL "
                    f"({sorted(regions)}). Fix: add callplane:media.urls.{n.region} or pick one"
                )
        if (
            self.media.default_region is not None
            and self.media.urls
            and (self.media.default_region not in self.media.urls)
        ):
            problems.append(
                f"callplane:media.defaultRegion = {self.media.default_region!r} is not a key of "
                f"callplane:media.urls ({sorted(self.media.urls)}). Fix: use one of them"
            )
        for name, profile in self.profiles.items():
            from callplane.profiles import AgentProfile

            try:
                AgentProfile.model_validate({"name": name, **profile})
            except ValidationError as exc:
                for e in exc.errors():
                    where = ".".join(str(p) for p in e["loc"])
                    problems.append(
                        f"callplane:profiles.{name}.{where} = {_show(e.get('input'))}: {e['msg']}"
                    )
        if problems:
            raise _Problems(problems)
        return self

    @property
    def tools_reference(self) -> str | None:
        """The tools the media plane loads: ``callplane:toolsModule``, or on a local stack
        without one the sample tools the local stack serves."""
        if self.tools_module is None and self.kind == "local":
            return LOCAL_SAMPLE_TOOLS
        return self.tools_module

    @property
    def default_region(self) -> str:
        if self.media.default_region:
            return self.media.default_region
        if self.media.urls:
            return next(iter(self.media.urls))
        return "default"

    def country_rules(self) -> dict[str, CountryRule]:
        overrides: dict[str, Mapping[str, Mapping[str, Any]]] = {
            iso: {str(t): o.model_dump() for t, o in types.items()}
            for iso, types in self.countries.items()
        }
        return apply_overrides(COUNTRY_RULES, overrides)


class _Problems(ValueError):
    """Cross-field problems, already phrased as whole lines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def _snake(camel: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel)


def _show(value: Any, secret: bool = False) -> str:
    if secret:
        return f"<secret, {len(value) if isinstance(value, str) else 0} characters>"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_GENERIC_FIX = {
    "missing": "Fix: add it (pulumi config set callplane:{key} ...; see docs/provisioning.md)",
    "extra_forbidden": "unknown key. Fix: remove it or correct the spelling",
    "literal_error": "Fix: use one of the allowed values",
}


def _key(loc: tuple[int | str, ...]) -> str:
    out = NAMESPACE + ":"
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-after") or part.startswith("function-before"):
            continue
        else:
            out += ("." if i else "") + part
    return out


def load(raw: Mapping[str, Any], *, secret_keys: Iterable[str] = ()) -> StackConfig:
    """Validate the ``callplane:`` config (keys without the namespace) into a StackConfig.

    ``secret_keys`` are the keys Pulumi holds encrypted; a cloud stack refuses a plaintext
    value for any of :data:`SECRET_KEYS`. Raises ConfigError listing every bad key.
    """
    problems: list[str] = []
    try:
        config = StackConfig.model_validate(dict(raw))
    except ValidationError as exc:
        for e in exc.errors():
            loc = tuple(e["loc"])
            top = str(loc[0]) if loc else ""
            if e["type"] == "value_error" and isinstance(
                (e.get("ctx") or {}).get("error"), _Problems
            ):
                problems.extend(e["ctx"]["error"].problems)
                continue
            msg = e["msg"].removeprefix("Value error, ")
            fix = _GENERIC_FIX.get(e["type"], "").format(key=_key(loc).split(":", 1)[1])
            if e["type"] == "extra_forbidden" and len(loc) == 1:
                fix += "; known keys: " + ", ".join(sorted(_aliases(StackConfig)))
            elif e["type"] == "extra_forbidden":
                fix = "unknown key. Fix: remove it or correct the spelling"
            shown = (
                "(missing)"
                if e["type"] == "missing"
                else _show(e.get("input"), secret=top in SECRET_KEYS)
            )
            text = msg if e["type"] != "extra_forbidden" else ""
            problems.append(f"{_key(loc)} = {shown}: " + "; ".join(t for t in (text, fix) if t))
        raise ConfigError(problems) from None
    secret = set(secret_keys)
    if config.kind == "cloud":
        for key in SECRET_KEYS:
            if key in raw and f"{NAMESPACE}:{key}" not in secret and key not in secret:
                problems.append(
                    f"callplane:{key} is stored in plaintext on a cloud stack. Fix: pulumi config "
                    f"set --secret callplane:{key} <value> (then it is encrypted in "
                    "Pulumi.<stack>.yaml and in the state)"
                )
    problems.extend(check_numbers(config))
    problems.extend(check_tools(config))
    if problems:
        raise ConfigError(problems)
    return config


def check_tools(config: StackConfig) -> list[str]:
    """Every tool a profile names is built in or defined by ``callplane:toolsModule``, which is
    imported here: a profile naming a tool nobody defined fails at preview, not in the media
    container at start-up."""
    from callplane.media_settings import load_tools
    from callplane.tools import BUILTIN_TOOLS

    try:
        registry = load_tools(config.tools_reference)
    except ValueError as exc:
        return [
            f"callplane:toolsModule = {config.tools_module!r}: {exc}. Fix: name a module "
            "importable from the project root and, after ':', a mapping or list of @tool "
            "functions in it"
        ]
    known = sorted({*BUILTIN_TOOLS, *registry})
    where = (
        f"callplane:toolsModule = {config.tools_reference!r}"
        if config.tools_reference
        else "no callplane:toolsModule is set"
    )
    return [
        f"callplane:profiles.{name}.tools names {tool!r}, which is neither built in nor "
        f"defined ({where}; known tools: {known}). Fix: define it with @callplane.tools.tool "
        "in the tools module and set callplane:toolsModule, or remove it from the profile"
        for name, profile in config.profiles.items()
        for tool in profile.get("tools") or ()
        if tool not in BUILTIN_TOOLS and tool not in registry
    ]


def _aliases(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]


# ---- number plans: entries expanded, named, checked against the country rules -----------


@dataclass(frozen=True)
class PlannedNumber:
    """One number to own: an entry expanded by ``count``, with its resource name."""

    key: str  # callplane:numbers[i]
    name: str  # resource name suffix, unique in the stack
    entry: NumberEntry
    index: int  # 1..count

    def describe(self) -> str:
        e = self.entry
        if e.is_import:
            return f"{self.key} (import {e.import_} for profile {e.profile})"
        kind = (e.type or "").replace("_", "-")
        return f"{self.key} ({e.country} {kind} for profile {e.profile})"


def plan_numbers(config: StackConfig) -> list[PlannedNumber]:
    """Every number the stack owns, named deterministically (``name`` wins when given)."""
    plans: list[PlannedNumber] = []
    seen: dict[str, str] = {}
    for i, e in enumerate(config.numbers):
        key = f"{NAMESPACE}:numbers[{i}]"
        if e.is_import:
            assert e.import_ is not None
            base = e.name or f"import-{e.import_.lstrip('+').lower()[-12:]}"
        else:
            assert e.type is not None and e.country is not None
            base = e.name or f"{e.country.lower()}-{e.type.replace('_', '-')}-{e.profile.lower()}"
            base = re.sub(r"[^a-z0-9-]", "-", base)
        for n in range(1, e.count + 1):
            name = base if e.count == 1 else f"{base}-{n}"
            if name in seen:
                raise ConfigError(
                    [
                        f"{key}.name: this entry and {seen[name]} both give the resource name "
                        f"{name!r}. Fix: set a distinct name: on one of them"
                    ]
                )
            seen[name] = key
            plans.append(PlannedNumber(key, name, e, n))
    return plans


def check_numbers(config: StackConfig) -> list[str]:
    """Problems of the number entries against the country rules (empty when all is possible)."""
    problems: list[str] = []
    rules = config.country_rules()
    friendly: dict[str, str] = {}
    for i, e in enumerate(config.numbers):
        key = f"{NAMESPACE}:numbers[{i}]"
        if e.friendly_name is not None:
            if e.count > 1:
                problems.append(
                    f"{key}.friendlyName = {e.friendly_name!r} with count {e.count}: every number "
                    "needs its own name (it is how a rerun finds a number it already bought). "
                    "Fix: drop friendlyName or split the entry"
                )
            if e.friendly_name in friendly:
                problems.append(
                    f"{key}.friendlyName = {e.friendly_name!r} is also used by "
                    f"{friendly[e.friendly_name]}. Fix: give each number its own friendlyName"
                )
            friendly[e.friendly_name] = key
        if e.is_import:
            continue
        assert e.country is not None and e.type is not None
        label = f"{e.country} {e.type.replace('_', '-')}"
        country = rules.get(e.country)
        if country is None:
            problems.append(
                f"{key}.country = {e.country!r}: the country rules table has no entry for it, so "
                "nothing is known about what Twilio sells there. Fix: check GET "
                f"/AvailablePhoneNumbers/{e.country}.json on your account, then declare it, e.g. "
                f"callplane:countries: {{{e.country}: {{{e.type}: {{sold: true}}}}}}"
            )
            continue
        rule = country.rule(e.type)
        if not rule.sold.value:
            sold = ", ".join(country.sold_types()) or "none"
            problems.append(
                f"{key}.type = {e.type!r}: {label} numbers are not sold ({rule.sold.describe()}); "
                f"{e.country} sells: {sold}. Fix: choose one of those types, or if your account "
                f"can buy them, override: callplane:countries: {{{e.country}: {{{e.type}: "
                "{sold: true}}}"
            )
            continue
        if e.area_code is not None and not country.area_codes.value:
            problems.append(
                f"{key}.areaCode = {e.area_code!r}: {e.country} numbers cannot be searched by "
                f"area code ({country.area_codes.describe()}). Fix: drop areaCode; use contains "
                "or locality to narrow the search"
            )
        if rule.bundle_required.value and e.bundle is None:
            problems.append(
                f"{key}.bundle is missing: {label} numbers need a twilio-approved regulatory "
                f"bundle ({rule.bundle_required.describe()}). Fix: add bundle: BU… to this entry "
                "(Console > Phone Numbers > Regulatory Compliance > Bundles; review takes days)"
            )
        needs_address = rule.address_required.value != "none"
        # A bundle carries the address: when one is given (or already asked for), no separate
        # address is required unless the rule says the bundle does not cover it.
        covered = rule.bundle_covers_address.value and (
            e.bundle is not None or rule.bundle_required.value
        )
        if needs_address and e.address is None and not covered:
            problems.append(
                f"{key}.address is missing: {label} numbers need an address "
                f"({rule.address_required.value}; {rule.address_required.describe()}). Fix: add "
                "address: AD… to this entry (Console > Phone Numbers > Regulatory Compliance > "
                "Addresses)"
            )
    if not problems:
        try:
            plan_numbers(config)
        except ConfigError as exc:
            problems.extend(exc.problems)
    return problems
