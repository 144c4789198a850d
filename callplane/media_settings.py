"""Settings of the media plane: where the Realtime API is, Twilio's credentials, profiles.

One pydantic model, read from a JSON file or the ``CALLPLANE_MEDIA_CONFIG`` environment
variable; production and the offline stack differ only in URLs and credentials.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from callplane.coordination import Coordination, connect
from callplane.livekit_settings import LiveKitSettings
from callplane.outbound import OutboundLimits
from callplane.profiles import AgentProfile
from callplane.realtime.client import RealtimeSettings
from callplane.records import RecordStore
from callplane.tools import Tool
from callplane.transports.twilio import TwilioRestSettings

ENV_VAR = "CALLPLANE_MEDIA_CONFIG"


class MediaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The public wss:// URL of this app's /twilio/media, exactly as the edge's media_urls
    # give it: each call's stream URL is this plus "/" and its token's key, and Twilio signs
    # the WebSocket upgrade over that, whatever host the server sees.
    public_media_url: str
    # This app's public http(s) origin, where Twilio's status callbacks go. None: derived from
    # public_media_url, when one server takes both the streams and the HTTP routes (the ASGI
    # app alone); set it when the picows stream server takes the streams on its own address.
    public_http_url: str | None = None
    stream_secret: str = Field(min_length=16)
    api_key: str = Field(min_length=8, description="Bearer key for GET /calls")
    twilio_account_sid: str
    twilio_auth_token: str
    twilio_api_base_url: str | None = None
    realtime_url: str = "wss://api.openai.com/v1/realtime"
    realtime_api_key: str
    realtime_model: str = "gpt-realtime"
    # A GA Realtime session lasts at most 60 minutes; the bridge renews it this long before.
    realtime_session_limit_s: float = Field(default=60 * 60, gt=0)
    realtime_renew_margin_s: float = Field(default=120, ge=0)
    # When a call's Realtime session drops, the caller hears the hold filler while the bridge
    # reconnects (capped exponential backoff) for this long; then the call ends with end reason
    # realtime_unavailable. The record notes every outage and how long it lasted.
    realtime_outage_s: float = Field(default=30.0, gt=0, le=600)
    profiles: Mapping[str, AgentProfile]
    records_path: Path = Path(".callplane/records.sqlite3")
    # The call records database, a SQLAlchemy URL (postgresql+psycopg://user:pw@host/db) that
    # every container writes to. None: SQLite at records_path, which only one process may use.
    database_url: str | None = None
    # Redis (redis://, rediss://) for what must hold across containers: one media stream per
    # call, one agent job per room, outbound slots, queue and budget, live-call snapshots.
    # None: kept in this process, which is right only when one process serves everything.
    redis_url: str | None = None
    # A live call's row is touched every call_heartbeat_s; a call whose container stopped
    # touching it for call_lost_after_s is closed as "container_lost" by any other container.
    call_heartbeat_s: float = Field(default=5.0, gt=0, le=60)
    call_lost_after_s: float = Field(default=30.0, gt=0)
    # An agent job's hold on its room, renewed by the job and its launcher every third of it:
    # after a crash, the next join starts a new agent at most this long later.
    agent_lease_s: float = Field(default=30.0, ge=1, le=600)
    # A room's agent that crashes while humans are still in the room is replaced at once, at
    # most agent_max_restarts times per agent_restart_window_s (counted in Redis, for the
    # whole stack); past that the room is given up on until someone joins it again.
    agent_max_restarts: int = Field(default=3, ge=0, le=100)
    agent_restart_window_s: float = Field(default=600.0, gt=0, le=24 * 3600)
    # Outbound calls: the edge's voice webhook URL that Twilio fetches for the call's TwiML,
    # and the stack's limits. Without edge_voice_url, POST /calls is refused.
    edge_voice_url: str | None = None
    outbound: OutboundLimits = Field(default_factory=OutboundLimits)
    # "package.module:NAME" naming a mapping of tool name -> Tool (or an iterable of Tools):
    # the team's tools. The built-ins (end_call, transfer_call) are always there.
    tools_module: str | None = None
    # The stack's LiveKit project: web rooms, on-demand agent jobs, hybrid phone rooms. Without
    # it the LiveKit routes answer 503 and profiles that name a room are refused at load.
    livekit: LiveKitSettings | None = None

    @model_validator(mode="after")
    def _lost_after_heartbeats(self) -> MediaSettings:
        if self.call_lost_after_s < 3 * self.call_heartbeat_s:
            raise ValueError(
                f"call_lost_after_s={self.call_lost_after_s} must be at least three heartbeats "
                f"(3 x call_heartbeat_s={self.call_heartbeat_s}), or a busy container's live "
                "calls would be closed as lost; raise it or lower call_heartbeat_s"
            )
        return self

    @property
    def records_url(self) -> str:
        """The call records' SQLAlchemy URL: ``database_url``, else SQLite at records_path."""
        return self.database_url or f"sqlite:///{self.records_path}"

    @model_validator(mode="after")
    def _rooms_need_livekit(self) -> MediaSettings:
        """A hybrid-room profile cannot work without a LiveKit server: refuse it at load."""
        if self.livekit is None:
            for key, profile in self.profiles.items():
                if profile.room is not None:
                    raise ValueError(
                        f"profiles.{key}.room={profile.room!r}: calls on profile {key!r} join "
                        "that LiveKit room, but these settings have no 'livekit' section; add "
                        "livekit: {url, api_key, api_secret} or remove the profile's room"
                    )
        return self

    @property
    def public_base_url(self) -> str:
        """This app's public http(s) origin (for callbacks): ``public_http_url``, or else
        derived from ``public_media_url``."""
        if self.public_http_url:
            return self.public_http_url.rstrip("/")
        base = self.public_media_url.removesuffix("/twilio/media")
        return "http" + base.removeprefix("ws") if base.startswith("ws") else base

    def load_tools(self) -> dict[str, Tool]:
        """Import the tools named by ``tools_module``; an error names the setting and fix."""
        return load_tools(self.tools_module)

    def open_records(self) -> RecordStore:
        """The call records store these settings name (migrated, its writer started)."""
        return RecordStore(
            self.records_url,
            heartbeat_s=self.call_heartbeat_s,
            lost_after_s=self.call_lost_after_s,
        )

    def open_coordination(self) -> Coordination:
        """The state shared with the other containers: Redis at ``redis_url``, or this
        process's own when there is none (nothing is contacted until first use)."""
        return connect(self.redis_url)

    def realtime(self) -> RealtimeSettings:
        return RealtimeSettings(
            url=self.realtime_url,
            api_key=self.realtime_api_key,
            model=self.realtime_model,
            session_limit_s=self.realtime_session_limit_s,
            renew_margin_s=self.realtime_renew_margin_s,
            outage_budget_s=self.realtime_outage_s,
        )

    def twilio(self) -> TwilioRestSettings:
        return TwilioRestSettings(
            self.twilio_account_sid, self.twilio_auth_token, self.twilio_api_base_url
        )

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> MediaSettings:
        try:
            return cls.model_validate(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{source}: not valid JSON ({exc.msg} at position {exc.pos})"
            ) from None
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r:.60})"
                for e in exc.errors()
            )
            raise ValueError(f"{source}: {problems}") from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> MediaSettings:
        text = environ.get(ENV_VAR)
        if not text:
            raise ValueError(f"{ENV_VAR} is not set: put the media settings JSON in it")
        return cls.from_json(text, source=ENV_VAR)


def load_tools(reference: str | None) -> dict[str, Tool]:
    """The tools named by ``reference`` (``package.module:NAME``, NAME a mapping of name to
    :class:`~callplane.tools.Tool` or an iterable of them), by name; none for None. Raises
    ValueError naming the reference and the fix."""
    if not reference:
        return {}
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"tools_module={reference!r}: write it as 'package.module:NAME'")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"tools_module={reference!r} cannot be loaded: {exc}") from None
    tools = list(found.values()) if isinstance(found, Mapping) else list(found)
    bad = [t for t in tools if not isinstance(t, Tool)]
    if bad:
        raise ValueError(
            f"tools_module={reference!r}: {bad[:3]!r} are not tools; declare them with "
            "@callplane.tools.tool"
        )
    return {t.name: t for t in tools}
