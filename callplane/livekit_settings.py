"""Where the stack's LiveKit server is and who the agent is there.

One small model shared by the media plane (agent jobs, the dispatch launcher, hybrid phone
rooms) and the offline stack, so that LiveKit Cloud and a local ``livekit-server`` differ only in
``url`` and keys.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

AGENT_IDENTITY_PREFIX = "agent-"
"""Identities of callplane's agents in a room start with this; humans' never do."""

PHONE_IDENTITY_PREFIX = "phone:"
"""A phone caller in a hybrid room is the participant ``phone:+E164``."""

TRANSFER_RPC = "callplane.transfer"
"""The RPC method a room's agent calls on a phone caller's participant to transfer that call:
payload ``{"to": "<department or number>"}``, answer ``{"transferred_to": "<number>"}`` once
Twilio took it, or an RPC error saying why not. The phone bridge holds the call's Twilio
control, so it is the one that moves the call."""


class LiveKitSettings(BaseModel):
    """A LiveKit project: its URL and an API key pair with room admin rights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # ws:// or wss:// (the URL clients connect to); the server API uses the same host over http(s).
    url: str
    api_key: str = Field(min_length=1)
    api_secret: str = Field(min_length=1, repr=False)
    # The name agents are dispatched by (RoomAgentDispatch.agent_name, SIP dispatch rules).
    agent_name: str = "callplane-agent"
    # An agent job leaves a room this long after the last human left (or if nobody came).
    idle_timeout_s: float = Field(default=20.0, gt=0, le=3600)
    # The longest a web token may live; the edge never mints a longer one.
    token_ttl_s: int = Field(default=15 * 60, gt=0, le=15 * 60)
    # At most this many agent jobs run at once on the stack, and at most this many for the rooms
    # one web key's tokens created: a dispatch over either cap is refused (429) and starts
    # nothing. Counted across every media container (Redis), each job for as long as its room
    # lease lives.
    max_agent_jobs: int = Field(default=50, ge=1, le=100_000)
    max_agent_jobs_per_web_key: int = Field(default=5, ge=1, le=100_000)

    @field_validator("url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        if not value.startswith(("ws://", "wss://", "http://", "https://")):
            raise ValueError(
                f"livekit.url={value!r} is not a LiveKit URL; write it as wss://<project>."
                "livekit.cloud or ws://127.0.0.1:7880"
            )
        return value.rstrip("/")

    @property
    def ws_url(self) -> str:
        """The URL rtc clients connect to."""
        if self.url.startswith("http"):
            return "ws" + self.url.removeprefix("http")
        return self.url

    @property
    def http_url(self) -> str:
        """The URL of the server API (Twirp), for ``livekit.api.LiveKitAPI``."""
        if self.url.startswith("ws"):
            return "http" + self.url.removeprefix("ws")
        return self.url
