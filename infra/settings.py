"""The media plane's settings and the edge's config, generated from a stack's config.

``pulumi up`` writes :func:`media_settings` into the Modal secret (``CALLPLANE_MEDIA_CONFIG``),
the local stack (``callplane dev``, the end-to-end tests) starts its processes from it, and
``python -m infra settings --stack NAME`` prints it. A field the cloud would lack is therefore
missing offline too, and a bad profile, tool or URL fails at ``pulumi preview`` rather than in a
container.

What the media plane reads, and where it comes from:

- URLs: ``public_media_url`` (the streams' wss:// URL, as the edge writes it into TwiML),
  ``public_http_url`` (its HTTP routes), ``edge_voice_url`` (the edge's voice webhook, which
  outbound calls fetch their TwiML from);
- keys: ``callplane:streamSecret``, ``callplane:mediaApiKey``, the Twilio account and token,
  ``callplane:openaiApiKey``, and LiveKit's key pair;
- the agents: ``callplane:profiles`` and ``callplane:toolsModule``; every tool a profile names
  must be a built-in or defined by the module (imported here, at preview);
- outbound calls: ``callplane:outbound`` (limits, calling hours, budget, the number types
  called, the context's size, the hosts webhooks may go to), whose caller IDs default to the
  stack's own numbers (one per country, plus ``default``: the first number);
- agent jobs: ``callplane:livekit.maxAgentJobs`` and ``callplane:livekit.maxAgentJobsPerWebKey``
  (the caps on jobs running at once, per stack and per web key);
- shared state: ``callplane:databaseUrl`` and ``callplane:redisUrl``.

Only tuning knobs (:data:`TUNING`) may be overridden on top, which the local stack uses to
shorten session limits, heartbeats and idle timeouts for its tests.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from callplane.media_settings import MediaSettings
from infra.config import ConfigError, StackConfig

__all__ = [
    "TUNING",
    "caller_ids",
    "edge_config_json",
    "edge_livekit",
    "http_of",
    "media_settings",
    "media_settings_document",
    "redacted",
]

TUNING = frozenset(
    {
        "realtime_session_limit_s",
        "realtime_renew_margin_s",
        "realtime_outage_s",
        "call_heartbeat_s",
        "call_lost_after_s",
        "agent_lease_s",
        "records_path",
        "livekit.idle_timeout_s",
    }
)
"""The settings a caller of :func:`media_settings` may override: how long things last and
where the single-process SQLite file lives, never what is reachable or allowed."""


def caller_ids(numbers: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Default outbound caller IDs from the stack's numbers, given as ``(E.164, ISO country)``:
    the first number of each country, and ``default`` the first number of all."""
    found: dict[str, str] = {}
    for number, country in numbers:
        if not number:
            continue
        found.setdefault("default", number)
        if country:
            found.setdefault(country.upper(), number)
    return found


def media_settings_document(
    config: StackConfig,
    media_url: str,
    http_url: str | None = None,
    *,
    numbers: Sequence[tuple[str, str]] = (),
    tuning: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings document for the media plane of ``config`` whose streams are served at
    ``media_url`` (``wss://host``) and HTTP routes at ``http_url`` (default: the same host).
    ``numbers`` are the stack's own ``(E.164, country)`` pairs, once known, for the default
    caller IDs. Not validated: see :func:`media_settings`."""
    doc: dict[str, Any] = {
        "public_media_url": media_url + "/twilio/media",
        "stream_secret": config.stream_secret,
        "api_key": config.media_api_key,
        "twilio_account_sid": config.twilio.account_sid,
        "twilio_auth_token": config.twilio_auth_token,
        "twilio_api_base_url": config.twilio.api_base_url,
        "realtime_url": config.media.realtime_url,
        "realtime_api_key": config.openai_api_key,
        "realtime_model": config.media.realtime_model,
        "profiles": {n: {"name": n, **p} for n, p in config.profiles.items()},
        "edge_voice_url": config.edge.url + "/twilio/voice",
        "tools_module": config.tools_reference,
        "outbound": _outbound(config, numbers),
        # Shared by every container: records in the stack's database, coordination in Redis
        # (a cloud stack must set both; the local stack may run on SQLite in one process).
        "database_url": _psycopg(config.database_url),
        "redis_url": config.redis_url,
    }
    if http_url and http_url != media_url:  # the streams are served apart from the HTTP
        doc["public_http_url"] = http_of(http_url)
    lk = config.livekit
    if lk is not None and config.livekit_api_secret:
        doc["livekit"] = {
            "url": lk.url,
            "api_key": lk.api_key,
            "api_secret": config.livekit_api_secret,
            "agent_name": lk.agent_name,
            "max_agent_jobs": lk.max_agent_jobs,
            "max_agent_jobs_per_web_key": lk.max_agent_jobs_per_web_key,
        }
    if config.kind == "local":
        # The local engine takes any key; a local stack never needs an OpenAI account.
        doc["realtime_api_key"] = config.openai_api_key or "local"
    for key, value in (tuning or {}).items():
        if key not in TUNING:
            raise ValueError(
                f"{key!r} is not a tuning knob of the media settings; only {sorted(TUNING)} may "
                "be overridden: everything else comes from the stack config"
            )
        section, _, leaf = key.rpartition(".")
        target = doc.get(section) if section else doc
        if isinstance(target, dict):
            target[leaf] = value
    return doc


def media_settings(
    config: StackConfig,
    media_url: str,
    http_url: str | None = None,
    *,
    numbers: Sequence[tuple[str, str]] = (),
    tuning: Mapping[str, Any] | None = None,
) -> MediaSettings:
    """:func:`media_settings_document`, validated as the media plane will validate it, with
    every profile's tools resolved against the stack's tools module. Raises
    :class:`~infra.config.ConfigError` naming the stack config key and the fix."""
    doc = media_settings_document(config, media_url, http_url, numbers=numbers, tuning=tuning)
    try:
        settings = MediaSettings.model_validate(doc)
    except ValueError as exc:
        raise ConfigError(
            [f"the media settings built from the stack config are invalid: {exc}"]
        ) from None
    return settings


def redacted(doc: Any, secrets: Mapping[str, str], missing: Sequence[str] = ()) -> Any:
    """``doc`` (any JSON value) with every secret value replaced by a note naming its stack
    config key: ``<secret from callplane:KEY>``, or ``<missing: ...>`` with the command that
    sets it when the key is in ``missing``. ``secrets`` maps keys to their values; a value
    also matches in the forms the generator writes it (a database URL with its driver)."""
    notes: dict[str, str] = {}
    for key, value in secrets.items():
        if not value:
            continue
        note = (
            f"<missing: pulumi config set --secret callplane:{key} ...>"
            if key in missing
            else f"<secret from callplane:{key}>"
        )
        notes[value] = note
        notes[_psycopg(value) or value] = note

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return notes.get(value, value)
        if isinstance(value, Mapping):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        return value

    return walk(doc)


def _outbound(config: StackConfig, numbers: Sequence[tuple[str, str]]) -> dict[str, Any]:
    limits = dict(config.outbound)
    if not limits.get("caller_ids"):
        ids = caller_ids(numbers)
        if ids:
            limits["caller_ids"] = ids
    return limits


def _psycopg(url: str | None) -> str | None:
    """A PostgreSQL URL with the driver the media image installs (psycopg 3)."""
    if url is not None and url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def http_of(url: str) -> str:
    """``ws(s)://`` as ``http(s)://`` (the media app's HTTP routes share its WebSocket host)."""
    return "http" + url.removeprefix("ws") if url.startswith("ws") else url


def edge_config_json(
    config: StackConfig,
    rows: Sequence[Sequence[str | None]],
    media_urls: Mapping[str, str],
    http_urls: Mapping[str, str] | None = None,
) -> str:
    """The edge config document (``CALLPLANE_EDGE_CONFIG``), validated by the edge's own
    parser. Rows are ``(phone_number, profile, region)``; unknown numbers (preview) are left out."""
    from edge_worker.config import EdgeConfig

    default_region = (
        config.default_region if config.default_region in media_urls else next(iter(media_urls))
    )
    doc: dict[str, Any] = {
        "public_url": config.edge.url,
        "twilio_auth_token": config.twilio_auth_token,
        "stream_secret": config.stream_secret,
        "media_urls": dict(media_urls),
        "numbers": {
            str(number): {"profile": profile, "region": region}
            for number, profile, region in rows
            if number
        },
        "default_region": default_region,
    }
    livekit = edge_livekit(config, (http_urls or media_urls)[default_region])
    if livekit is not None:
        doc["livekit"] = livekit
    EdgeConfig.from_mapping(doc, source="edge config built by infra")
    return json.dumps(doc, sort_keys=True)


def edge_livekit(config: StackConfig, media_base: str) -> dict[str, Any] | None:
    """The edge's ``livekit`` section (web tokens, LiveKit webhooks, agent dispatch), or None
    when the stack has no LiveKit. ``/token`` accepts ``callplane:webKey`` as a bearer key and
    links signed with ``callplane:linkSecret``; without either it refuses every request, so the
    playground is reachable but cannot mint a token. Agents are dispatched to the media app of
    the default region when the stack has ``callplane:mediaApiKey`` (its bearer key)."""
    lk = config.livekit
    if lk is None or not config.livekit_api_secret:
        return None
    section: dict[str, Any] = {
        "url": _livekit_ws(lk.url),
        "api_key": lk.api_key,
        "api_secret": config.livekit_api_secret,
        "agent_name": lk.agent_name,
        "allowed_origins": config.edge.origins,
    }
    if config.web_key:
        section["web_keys"] = [config.web_key]
    if config.link_secret:
        section["link_secret"] = config.link_secret
    if config.media_api_key:
        section["dispatch_url"] = http_of(media_base) + "/agents/dispatch"
        section["dispatch_api_key"] = config.media_api_key
    return section


def _livekit_ws(url: str) -> str:
    """LiveKit's client URL: the server API's ``http(s)://`` as ``ws(s)://``."""
    return "ws" + url.removeprefix("http") if url.startswith("http") else url
