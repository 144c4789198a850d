"""Run the local edge and media app from a Pulumi stack's outputs.

``pulumi up`` of the local stack buys numbers on the Twilio simulator and points their webhooks
at ``callplane:edge.url``; something must then answer there with the stack's numbers and
secrets. The stack exports exactly that: ``edgeConfig`` (the edge's ``CALLPLANE_EDGE_CONFIG``
document: numbers to profiles, media URLs, Twilio's auth token, the stream secret) and
``mediaConfig`` (the media app's ``CALLPLANE_MEDIA_CONFIG``), both secret. This module turns
them into running planes on the ports their URLs name::

    outputs = json.loads(run("pulumi stack output --json --show-secrets"))
    async with LocalPlanes(outputs, data_dir=Path(".callplane")) as planes:
        ...  # calls to the stack's numbers reach the agent

It is the same code ``callplane dev`` runs (edge ASGI app, media app, local Realtime engine),
fed from the stack instead of from ``callplane dev``'s own provisioning, so a stack made with
``pulumi up`` can be called end to end. Only local stacks: their URLs are loopback ones.

Profiles: a profile the stack defines (``callplane:profiles``) wins; a profile a number names
but the stack does not define comes from callplane's sample profiles (as ``callplane dev`` has
them), so the local stack works without writing instructions; an unknown one is an error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from callplane.media_settings import MediaSettings
from callplane.profiles import AgentProfile
from callplane.samples import SAMPLE_PROFILES, SAMPLE_TOOLS
from callplane.tools import Tool
from callplane_standins.realtime_engine.context import EngineSettings
from callplane_standins.realtime_engine.server import EngineServer
from callplane_standins.serving import EmbeddedServer, bind_loopback, is_loopback
from edge_worker.config import EdgeConfig

__all__ = ["LocalPlanes", "StackOutputError", "StackPlanes", "planes_from_outputs"]

_SHOW = "pulumi stack output --json --show-secrets"


class StackOutputError(ValueError):
    """The stack outputs cannot run local planes; the message names the output and the fix."""


@dataclass(frozen=True)
class StackPlanes:
    """The configs of the local edge and media app, and where each must listen."""

    edge: EdgeConfig
    media: MediaSettings
    edge_port: int
    media_port: int


def _document(outputs: Mapping[str, Any], key: str, fix: str) -> dict[str, Any]:
    value = outputs.get(key)
    if value is None:
        raise StackOutputError(f"the stack has no {key!r} output. Fix: {fix}")
    if value == "[secret]":
        raise StackOutputError(
            f"the {key!r} output is masked ('[secret]'). Fix: read the outputs with `{_SHOW}`"
        )
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise StackOutputError(f"the {key!r} output is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise StackOutputError(f"the {key!r} output is a {type(value).__name__}, not an object")
    return value


def _loopback_port(url: str, what: str) -> int:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not is_loopback(host) or parts.port is None:
        raise StackOutputError(
            f"{what} = {url!r} is not a loopback URL with a port: only a local stack's planes "
            "run here. Fix: set it to e.g. http://127.0.0.1:8787 in Pulumi.local.yaml"
        )
    return parts.port


def planes_from_outputs(
    outputs: Mapping[str, Any],
    *,
    realtime_url: str,
    records_path: Path,
    profiles: Mapping[str, AgentProfile] = SAMPLE_PROFILES,
) -> StackPlanes:
    """The edge and media configs from ``outputs`` (``pulumi stack output --json
    --show-secrets``), with the media app aimed at ``realtime_url`` (the local engine) and
    storing records at ``records_path``. Raises :class:`StackOutputError` naming the output."""
    if outputs.get("kind") != "local":
        raise StackOutputError(
            f"the stack's kind is {outputs.get('kind')!r}, not 'local': cloud stacks run their "
            "planes on Modal and Cloudflare. Fix: select the local stack (pulumi stack select "
            "local)"
        )
    edge_doc = _document(outputs, "edgeConfig", "run `pulumi up` on the local stack first")
    media_doc = _document(
        outputs,
        "mediaConfig",
        "set callplane:mediaApiKey on the local stack (8+ characters; Pulumi.local.yaml has "
        "one), then `pulumi up`",
    )
    edge = EdgeConfig.from_mapping(edge_doc, source="stack output edgeConfig")
    stack_profiles = dict(media_doc.get("profiles") or {})
    merged: dict[str, Any] = {}
    for number, route in edge.numbers.items():
        name = route.profile
        if name in stack_profiles:
            merged[name] = stack_profiles[name]
        elif name in profiles:
            merged[name] = profiles[name].model_dump()
        else:
            raise StackOutputError(
                f"number {number} is answered by profile {name!r}, which neither the stack "
                f"(callplane:profiles: {sorted(stack_profiles)}) nor the sample profiles "
                f"({sorted(profiles)}) define. Fix: add callplane:profiles.{name}.instructions"
            )
    for name, profile in stack_profiles.items():
        merged.setdefault(name, profile)
    media = MediaSettings.model_validate(
        {
            **media_doc,
            "profiles": merged,
            "realtime_url": realtime_url,
            "records_path": str(records_path),
        }
    )
    edge_port = _loopback_port(edge.public_url, "callplane:edge.url")
    media_port = _loopback_port(media.public_media_url, "callplane:media.urls")
    if edge_port == media_port:
        raise StackOutputError(
            f"the edge and the media app both want port {edge_port}. Fix: give "
            "callplane:edge.url and callplane:media.urls different ports"
        )
    return StackPlanes(edge, media, edge_port, media_port)


class LocalPlanes:
    """The local engine, media app and edge of a stack, running on this event loop."""

    def __init__(
        self,
        outputs: Mapping[str, Any],
        *,
        data_dir: Path,
        tools: Mapping[str, Tool] | None = None,
        profiles: Mapping[str, AgentProfile] = SAMPLE_PROFILES,
        pace: float = 4.0,
    ) -> None:
        self.outputs = dict(outputs)
        self.data_dir = data_dir
        self.tools = dict(SAMPLE_TOOLS if tools is None else tools)
        self.profiles = profiles
        self.engine = EngineServer(EngineSettings(pace=pace))
        self.planes: StackPlanes | None = None
        self.media_app: Any = None
        self.status_callbacks: list[dict[str, str]] = []
        self._servers: list[EmbeddedServer] = []

    async def start(self) -> None:
        from edge_worker.asgi import create_app as create_edge_app
        from functions.media import create_app as create_media_app

        try:
            await self.engine.start()
            planes = planes_from_outputs(
                self.outputs,
                realtime_url=self.engine.url,
                records_path=self.data_dir / "records.sqlite3",
                profiles=self.profiles,
            )
            self.planes = planes
            self.media_app = create_media_app(planes.media, self.tools)
            edge_app = create_edge_app(planes.edge, on_status=self.status_callbacks.append)
            for app, port in ((self.media_app, planes.media_port), (edge_app, planes.edge_port)):
                server = EmbeddedServer(app, bind_loopback(port))
                self._servers.append(server)
                await server.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.media_app is not None:
            await self.media_app.state.dialer.close()
        for server in reversed(self._servers):
            await server.stop()
        self._servers.clear()
        await self.engine.stop()

    def record(self, call_sid: str) -> dict[str, Any] | None:
        """The media app's stored record of a finished call (None while live or unknown)."""
        if self.media_app is None:
            return None
        return self.media_app.state.store.get(call_sid)  # type: ignore[no-any-return]

    async def __aenter__(self) -> LocalPlanes:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
