"""``callplane dev``: every part of a callplane deployment, running on loopback.

The stack starts the offline Realtime engine, the Twilio simulator, the edge worker (its
stdlib core under the ASGI adapter) and the media app (the FastAPI app Modal serves in
production) and wires them exactly as production is wired: the numbers' voice webhooks point
at the edge, the edge answers with ``<Connect><Stream>`` to the media app, and the media app
opens Realtime sessions on the engine. Only URLs and credentials differ from a cloud stack.

Numbers are bought from the simulator through the ``twilio`` SDK on first start and reused
after (the simulator keeps its state in the data directory); their webhooks are re-pointed
on every start because the ports may change. Credentials for the local account are random
per data directory and stay in it.

The running stack writes ``<data_dir>/dev.json`` (mode 0600: it holds the local credentials)
so that ``callplane call`` in another terminal finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
from collections import deque
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import phonenumbers

from callplane.media_settings import MediaSettings
from callplane.outbound import OutboundLimits
from callplane.profiles import AgentProfile
from callplane.records import RecordStore
from callplane.samples import SAMPLE_PROFILES, SAMPLE_TOOLS
from callplane.tools import Tool
from callplane_dev.livekit_server import LocalLiveKit
from callplane_dev.media_plane import ReplicatedMediaPlane
from callplane_standins.realtime_engine.context import EngineSettings, EventObserver
from callplane_standins.realtime_engine.server import EngineServer
from callplane_standins.serving import EmbeddedServer, bind_loopback
from callplane_standins.twilio_simulator.caller import Step
from callplane_standins.twilio_simulator.simulator import Simulator
from callplane_standins.twilio_simulator.timeline import CallResult
from edge_worker.asgi import create_app as create_edge_app
from edge_worker.config import EdgeConfig
from functions.media import create_app as create_media_app
from functions.stream_server import StreamServer
from infra.config import StackConfig, load
from infra.settings import edge_config_json, media_settings

__all__ = ["DEFAULT_NUMBERS", "DEV_FILE", "LocalStack", "NumberPlan", "StackOptions"]

log = logging.getLogger("callplane.stack")

STOP_PART_TIMEOUT_S = 30.0
"""How long :meth:`LocalStack.stop` waits for one part (longer than any part's own grace)."""


def _country(number: str) -> str:
    """The ISO country of an E.164 number ("" if unknown)."""
    return phonenumbers.region_code_for_number(phonenumbers.parse(number)) or ""


def _pending_tasks() -> str:
    """Every unfinished task of the running loop with the line it waits on, for a log."""
    lines = []
    current = asyncio.current_task()
    for task in asyncio.all_tasks():
        if task is current or task.done():
            continue
        hops: list[str] = []
        awaited: Any = task.get_coro()
        while awaited is not None and len(hops) < 12:  # down the await chain
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is None:
                hops.append(type(awaited).__name__)
                break
            hops.append(
                f"{frame.f_code.co_name} ({Path(frame.f_code.co_filename).name}:{frame.f_lineno})"
            )
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
        where = " -> ".join(hops)
        lines.append(f"  {task.get_name()}: {where or 'not started'}")
    return "\n".join(lines) or "  (none)"


DEV_FILE = "dev.json"
LOCAL_REGION = "local"
# The caller ID that simulated calls come from unless told otherwise (Twilio's docs' example).
DEFAULT_CALLER = "+15017122661"


@dataclass(frozen=True)
class NumberPlan:
    """A number the local stack owns: which profile answers it and where it is bought."""

    profile: str
    country: str = "US"
    type: str = "local"
    area_code: int | None = None

    @property
    def friendly_name(self) -> str:
        """How the stack recognises its own number on the next start."""
        return f"callplane-local {self.profile}"


DEFAULT_NUMBERS: tuple[NumberPlan, ...] = (
    NumberPlan("support", "US", "local", 415),
    NumberPlan("sales", "US", "local", 212),
)


@dataclass
class StackOptions:
    """How to run the local stack. Ports 0 pick free ones (tests); ``callplane dev`` uses fixed
    defaults so that URLs stay the same between runs."""

    data_dir: Path = Path(".callplane")
    engine_port: int = 0
    twilio_port: int = 0
    edge_port: int = 0
    media_port: int = 0
    stream_port: int = 0
    pace: float = 4.0
    numbers: Sequence[NumberPlan] = DEFAULT_NUMBERS
    profiles: Mapping[str, AgentProfile] = field(default_factory=lambda: dict(SAMPLE_PROFILES))
    tools: Mapping[str, Tool] = field(default_factory=lambda: dict(SAMPLE_TOOLS))
    # Where agent jobs (child processes, one per LiveKit room) import their tools from: they
    # cannot share the objects in ``tools``. Name the module that defines the same tools.
    tools_module: str | None = "callplane.samples:SAMPLE_TOOLS"
    engine_observer: EventObserver | None = None
    # A Realtime engine already running elsewhere (ws://127.0.0.1:PORT/v1/realtime), e.g. in a
    # process of its own so a soak can measure it apart; None: the stack runs one in-process.
    realtime_url: str | None = None
    write_dev_file: bool = True
    # Realtime session lifetime before the bridge renews it (OpenAI's limit is 60 minutes);
    # tests shorten it to see renewals happen.
    session_limit_s: float = 60 * 60
    # How long a call holds, reconnecting, when its Realtime session drops (production's
    # default); a drill that stops the engine for longer sees its calls end.
    realtime_outage_s: float = 30.0
    # Outbound limits; the caller ID defaults to the first number. Locally, any hour is a
    # calling hour (production's default is 08:00-21:00 in the callee's zone), and a request's
    # webhook may go to loopback, where the tests receive it (a cloud stack refuses that).
    outbound: OutboundLimits = field(
        default_factory=lambda: OutboundLimits(
            allowed_countries=("US", "GB", "PK"), calling_hours=(0, 24), webhook_loopback=True
        )
    )
    # Run a real livekit-server (with Redis) for web rooms, agent jobs and hybrid phone rooms;
    # its webhooks go to the edge, which dispatches agents through the media app.
    livekit: bool = False
    livekit_port: int = 0
    # How long an agent job stays in a room after the last human left (or if nobody came).
    agent_idle_timeout_s: float = 20.0
    # The caps on agent jobs running at once: on the stack, and for one web key's rooms
    # (callplane:livekit.maxAgentJobs, maxAgentJobsPerWebKey).
    max_agent_jobs: int = 50
    max_agent_jobs_per_web_key: int = 5
    # 1: the media plane in this process (the demo, `callplane call`, quick tests). 2 or more:
    # the cloud's shape (callplane_dev.media_plane): that many OS processes of the media app
    # and of the stream server behind a front each, with PostgreSQL and Redis shared by all.
    replicas: int = 1
    # How often a live call's record is touched, and when another container closes it as lost
    # (tests shorten both to see a killed container's calls closed).
    call_heartbeat_s: float = 5.0
    call_lost_after_s: float = 30.0

    def __post_init__(self) -> None:
        for plan in self.numbers:
            if plan.profile not in self.profiles:
                raise ValueError(
                    f"numbers: the number for profile {plan.profile!r} names no configured "
                    f"profile; configured: {sorted(self.profiles)}. Add the profile or fix the "
                    "name"
                )
        for name, port in (
            ("engine_port", self.engine_port),
            ("twilio_port", self.twilio_port),
            ("edge_port", self.edge_port),
            ("media_port", self.media_port),
            ("livekit_port", self.livekit_port),
        ):
            if not 0 <= port <= 65535:
                raise ValueError(f"{name}={port} is not a TCP port: use 0 (any) to 65535")
        if not 1 <= self.replicas <= 8:
            raise ValueError(
                f"replicas={self.replicas}: use 1 (one process) or 2 to 8 (the cloud's shape; "
                "each replica is a process of its own)"
            )
        if self.replicas > 1 and not self.tools_module:
            raise ValueError(
                "replicas > 1 needs tools_module: replica processes import the tools by name"
            )


@dataclass(frozen=True)
class LocalCredentials:
    """The local stack's secrets, random per data directory."""

    account_sid: str
    auth_token: str
    stream_secret: str
    media_api_key: str
    # LiveKit (added later: files from older versions get them on the next start)
    livekit_api_secret: str = ""
    web_key: str = ""
    link_secret: str = ""

    LIVEKIT_API_KEY = "callplane-local"

    @classmethod
    def load_or_create(cls, path: Path) -> LocalCredentials:
        fresh = {
            "account_sid": "AC" + secrets.token_hex(16),
            "auth_token": secrets.token_hex(16),
            "stream_secret": secrets.token_urlsafe(32),
            "media_api_key": secrets.token_urlsafe(24),
            "livekit_api_secret": secrets.token_urlsafe(32),
            "web_key": secrets.token_urlsafe(24),
            "link_secret": secrets.token_urlsafe(32),
        }
        stored: dict[str, Any] = {}
        if path.exists():
            try:
                stored = json.loads(path.read_text())
                creds = cls(**{**fresh, **{k: v for k, v in stored.items() if v}})
            except (ValueError, TypeError) as exc:
                raise ValueError(
                    f"{path} is not a callplane credentials file ({exc}); delete it and the "
                    "stack makes a new one (the simulator's numbers are then bought again)"
                ) from None
        else:
            creds = cls(**fresh)
        if stored != creds.__dict__:
            _write_private(path, json.dumps(creds.__dict__, indent=2))
        return creds


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


class LocalStack:
    """The running local stack; ``async with LocalStack(options) as stack: ...``."""

    def __init__(self, options: StackOptions | None = None) -> None:
        self.options = options or StackOptions()
        self.data_dir = self.options.data_dir
        self.creds = LocalCredentials.load_or_create(self.data_dir / "credentials.json")
        self.engine = EngineServer(
            EngineSettings(pace=self.options.pace), observer=self.options.engine_observer
        )
        self.simulator = Simulator(
            self.data_dir / "twilio.json",
            self.creds.account_sid,
            self.creds.auth_token,
            ring_s=0.5,  # one ring of an outbound call
            unanswered_ring_s=10.0,
        )
        self.numbers: dict[str, str] = {}  # E.164 -> profile
        self.status_callbacks: deque[dict[str, str]] = deque(maxlen=1000)
        self.media_app: Any = None
        self.plane: ReplicatedMediaPlane | None = None
        self.settings: MediaSettings | None = None
        self.store: RecordStore | None = None  # where the stack reads call records
        self.media_base_url = ""
        self.livekit: LocalLiveKit | None = None
        self._edge: EmbeddedServer | None = None
        self._media: EmbeddedServer | None = None
        self._streams: StreamServer | None = None
        self.stream_url = ""  # where Twilio's media streams go (the picows stream server)
        self._sockets: list[socket.socket] = []
        self.stop_timeouts: list[str] = []
        """The parts that the last :meth:`stop` gave up waiting for."""

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        o = self.options
        try:
            edge_sock = bind_loopback(o.edge_port)
            self._sockets.append(edge_sock)
            media_sock = stream_sock = None
            if o.replicas > 1:
                self.plane = ReplicatedMediaPlane(
                    self.data_dir, o.replicas, media_port=o.media_port, stream_port=o.stream_port
                )
                await self.plane.prepare()
                media_http = self.plane.media_url
                stream_base = self.plane.stream_url.removesuffix("/twilio/media")
            else:
                media_sock = bind_loopback(o.media_port)
                self._sockets.append(media_sock)
                stream_sock = bind_loopback(o.stream_port)
                self._sockets.append(stream_sock)
                media_http = f"http://127.0.0.1:{media_sock.getsockname()[1]}"
                # Twilio's media streams go to the picows stream server, as in the cloud; the
                # media app's HTTP routes (records, outbound, dispatch, callbacks) stay on uvicorn.
                stream_base = f"ws://127.0.0.1:{stream_sock.getsockname()[1]}"
            if o.realtime_url is None:
                await self.engine.start(port=o.engine_port)
            await self.simulator.start(port=o.twilio_port)
            edge_url = f"http://127.0.0.1:{edge_sock.getsockname()[1]}"
            self.numbers = await asyncio.to_thread(self._provision_numbers, edge_url)
            await self._start_livekit(edge_url)
            # The same generator as `pulumi up`, from a local stack config: what the cloud
            # would lack, this stack lacks too. Only durations and the SQLite path are tuned.
            config = self._stack_config(edge_url, stream_base)
            plane = self.plane
            settings = media_settings(
                config,
                stream_base,
                media_http,
                numbers=[(n, _country(n)) for n in self.numbers],
                tuning=self._tuning(),
            )
            self.settings = settings
            if plane is not None:
                await plane.start(settings)
                self.store = settings.open_records()  # the stack's own reader
                self.media_base_url = plane.media_url
            else:
                assert media_sock is not None and stream_sock is not None
                self.media_app = create_media_app(settings, dict(o.tools))
                self.store = self.media_app.state.store
                self._media = EmbeddedServer(self.media_app, media_sock)
                self._streams = StreamServer(self.media_app.state.streams)
            rows = [(n, p, LOCAL_REGION) for n, p in self.numbers.items()]
            edge = EdgeConfig.from_json(
                edge_config_json(
                    config, rows, {LOCAL_REGION: stream_base}, {LOCAL_REGION: media_http}
                ),
                source="the local stack's edge config",
            )
            self._edge = EmbeddedServer(
                create_edge_app(edge, on_status=self.status_callbacks.append), edge_sock
            )
            self._sockets.clear()  # the servers own them now
            if self._streams is not None and self._media is not None:
                assert stream_sock is not None
                await self._streams.start(stream_sock)
                await self._media.start()
                self.media_base_url = self._media.url
            self.stream_url = stream_base + "/twilio/media"
            await self._edge.start()
        except BaseException:
            await self.stop()
            raise
        if o.write_dev_file:
            _write_private(self.data_dir / DEV_FILE, json.dumps(self.describe(secrets=True)))

    async def _start_livekit(self, edge_url: str) -> None:
        """Start livekit-server + Redis when asked; its webhooks go to the edge, and the edge
        dispatches agents through the media app's ``/agents/dispatch``."""
        o = self.options
        if not o.livekit:
            return
        self.livekit = LocalLiveKit(
            self.data_dir / "livekit",
            api_key=self.creds.LIVEKIT_API_KEY,
            api_secret=self.creds.livekit_api_secret,
            webhook_urls=[edge_url + "/livekit/webhook"],
            http_port=o.livekit_port,
        )
        await self.livekit.start()

    def _stack_config(self, edge_url: str, stream_base: str) -> StackConfig:
        """This stack as a local Pulumi stack would declare it (its numbers imported)."""
        o, creds = self.options, self.creds
        raw: dict[str, Any] = {
            "kind": "local",
            "twilio": {"accountSid": creds.account_sid, "apiBaseUrl": self.simulator.base_url},
            "twilioAuthToken": creds.auth_token,
            "streamSecret": creds.stream_secret,
            "mediaApiKey": creds.media_api_key,
            "numbers": [{"import": n, "profile": p} for n, p in self.numbers.items()],
            "edge": {"url": edge_url},
            "media": {"urls": {LOCAL_REGION: stream_base}, "realtimeUrl": self.realtime_url},
            "profiles": {
                name: profile.model_dump(mode="json", exclude={"name"})
                for name, profile in o.profiles.items()
            },
            "outbound": o.outbound.model_dump(mode="json"),
        }
        if o.tools_module:
            raw["toolsModule"] = o.tools_module
        if self.plane is not None:
            raw["databaseUrl"] = self.plane.database_url
            raw["redisUrl"] = self.plane.redis_url
        if self.livekit is not None:
            raw["livekit"] = {
                "url": self.livekit.url,
                "apiKey": creds.LIVEKIT_API_KEY,
                "maxAgentJobs": o.max_agent_jobs,
                "maxAgentJobsPerWebKey": o.max_agent_jobs_per_web_key,
            }
            raw["livekitApiSecret"] = creds.livekit_api_secret
            raw["webKey"] = creds.web_key or None
            raw["linkSecret"] = creds.link_secret or None
        return load({k: v for k, v in raw.items() if v is not None})

    def _tuning(self) -> dict[str, Any]:
        """The durations this stack shortens for its tests, and its SQLite file."""
        o = self.options
        tuning: dict[str, Any] = {
            "realtime_session_limit_s": o.session_limit_s,
            "realtime_renew_margin_s": min(120.0, o.session_limit_s / 4),
            "realtime_outage_s": o.realtime_outage_s,
            "records_path": str(self.data_dir / "records.sqlite3"),
            "call_heartbeat_s": o.call_heartbeat_s,
            "call_lost_after_s": o.call_lost_after_s,
        }
        if self.livekit is not None:
            tuning["livekit.idle_timeout_s"] = o.agent_idle_timeout_s
        return tuning

    async def stop(self) -> None:
        """Stop every part; calls still on are ended by the simulator first.

        Each part gets :data:`STOP_PART_TIMEOUT_S`: a part that does not stop by then is
        logged with what every task of this event loop was waiting on, and the others are
        still stopped, so that stopping the stack never hangs (Ctrl-C, a test's teardown).
        """
        self.stop_timeouts.clear()
        if self.media_app is not None:
            app = self.media_app
            await self._stop_part("the dialer", app.state.dialer.close())
            # The embedded servers run without ASGI lifespan, so the media app's shutdown
            # handler never runs: stop its agent jobs here, while LiveKit and the engine are
            # still up for them to leave the room and save their records.
            await self._stop_part("the agent jobs", app.state.agents.shutdown())
        if self.plane is not None:
            # Replicas stop on SIGTERM like Modal's containers: their agent jobs leave the
            # rooms and every record is flushed, while LiveKit and the engine are still up.
            await self._stop_part("the media replicas", self.plane.stop())
            self.plane = None
            if self.store is not None:
                await self._stop_part("the record store", asyncio.to_thread(self.store.close))
            self.store = None
        with contextlib.suppress(FileNotFoundError):
            if self.options.write_dev_file:
                (self.data_dir / DEV_FILE).unlink()
        await self._stop_part("the Twilio simulator", self.simulator.stop())
        if self._streams is not None:
            await self._stop_part("the stream server", self._streams.stop())
            self._streams = None
        for what, server in (("the edge", self._edge), ("the media app", self._media)):
            if server is not None:
                await self._stop_part(what, server.stop())
        self._edge = self._media = None
        if self.media_app is not None:
            app, self.media_app = self.media_app, None
            await self._stop_part("the media streams", app.state.streams.aclose())
            await self._stop_part("the record store", asyncio.to_thread(app.state.store.close))
            await self._stop_part("coordination", app.state.coordination.aclose())
        if self.livekit is not None:
            await self._stop_part("livekit-server", self.livekit.stop())
            self.livekit = None
        await self._stop_part("the Realtime engine", self.engine.stop())
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()

    async def _stop_part(self, what: str, stopping: Awaitable[Any]) -> None:
        """Await ``stopping`` for at most :data:`STOP_PART_TIMEOUT_S`; past that, log what
        every task was waiting on, note ``what`` in :attr:`stop_timeouts` and go on."""
        try:
            async with asyncio.timeout(STOP_PART_TIMEOUT_S):
                await stopping
        except TimeoutError:
            self.stop_timeouts.append(what)
            log.error(
                "%s did not stop within %g s; going on without it. Tasks still waiting:\n%s",
                what,
                STOP_PART_TIMEOUT_S,
                _pending_tasks(),
            )

    async def __aenter__(self) -> LocalStack:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ---- what is running -----------------------------------------------------------------

    @property
    def realtime_url(self) -> str:
        """Where the media plane opens its Realtime sessions: this stack's engine, or the one
        ``options.realtime_url`` names."""
        return self.options.realtime_url or self.engine.url

    @property
    def edge_url(self) -> str:
        assert self._edge is not None, "the stack is not started"
        return self._edge.url

    @property
    def media_url(self) -> str:
        """The media app's URL: its front when it runs as replicas."""
        assert self.media_base_url, "the stack is not started"
        return self.media_base_url

    def number_for(self, profile: str) -> str:
        """The E.164 number that ``profile`` answers."""
        for number, name in self.numbers.items():
            if name == profile:
                return number
        raise KeyError(f"no number answers profile {profile!r}; numbers: {self.numbers}")

    def describe(self, *, secrets: bool = False) -> dict[str, Any]:
        """Every part's URL and the numbers; with ``secrets`` also the local credentials
        (for ``dev.json``, never for printing)."""
        data: dict[str, Any] = {
            "engine": self.realtime_url,
            "twilio": self.simulator.base_url,
            "edge": self.edge_url,
            "media": self.media_url,
            "streams": self.stream_url,
            "numbers": [{"number": n, "profile": p} for n, p in self.numbers.items()],
            "data_dir": str(self.data_dir),
        }
        if self.livekit is not None:
            data["livekit"] = self.livekit.url
            data["playground"] = self.edge_url + "/playground/"
        if self.plane is not None:
            data["replicas"] = self.plane.describe()
            data["database"] = self.plane.database_url
            data["redis"] = self.plane.redis_url
        if secrets:
            data["account_sid"] = self.creds.account_sid
            data["auth_token"] = self.creds.auth_token
            data["media_api_key"] = self.creds.media_api_key
            if self.livekit is not None:
                data["web_key"] = self.creds.web_key
                data["livekit_api_key"] = self.creds.LIVEKIT_API_KEY
                data["livekit_api_secret"] = self.creds.livekit_api_secret
        return data

    def playground_link(self, room: str | None = None) -> str:
        """The playground's URL with the local web key (a local secret: print it only to the
        developer who started the stack)."""
        if self.livekit is None:
            raise RuntimeError("the stack runs without LiveKit: start it with livekit=True")
        query = f"key={self.creds.web_key}" + (f"&room={room}" if room else "")
        return f"{self.edge_url}/playground/?{query}"

    async def call(
        self, to: str, script: Sequence[Step], *, from_: str = DEFAULT_CALLER, max_s: float = 60
    ) -> CallResult:
        """Place a simulated call to ``to`` and return once it ended."""
        return await self.simulator.place_call(from_, to, script, max_duration_s=max_s)

    def record(self, call_sid: str) -> dict[str, Any] | None:
        """The stored call record of a finished call (None while it is live or unknown)."""
        assert self.store is not None, "the stack is not started"
        if self.media_app is not None:  # in this process: what the call's end queued is in
            self.store.flush_sync(10.0)
        found = self.store.get(call_sid)
        if found is None or found.get("status") == "live":
            return None
        return found

    def calls(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest call records, live ones included (``GET /calls``' first page)."""
        assert self.store is not None, "the stack is not started"
        if self.media_app is not None:
            self.store.flush_sync(10.0)
        return self.store.list(limit=limit)[0]

    # ---- provisioning (blocking: runs in a thread, the simulator serves on this loop) -----

    def _provision_numbers(self, edge_url: str) -> dict[str, str]:
        client = self.simulator.rest_client()
        owned = {n.friendly_name: n for n in client.incoming_phone_numbers.list()}
        numbers: dict[str, str] = {}
        hooks = {
            "voice_url": edge_url + "/twilio/voice",
            "voice_method": "POST",
            "status_callback": edge_url + "/twilio/status",
            "status_callback_method": "POST",
        }
        for plan in self.options.numbers:
            existing = owned.get(plan.friendly_name)
            if existing is not None:
                existing.update(**hooks)
                numbers[existing.phone_number] = plan.profile
                continue
            search = client.available_phone_numbers(plan.country)
            kind = {"local": search.local, "mobile": search.mobile, "toll_free": search.toll_free}
            if plan.type not in kind:
                raise ValueError(
                    f"numbers: type {plan.type!r} for profile {plan.profile!r} is not one of "
                    f"{sorted(kind)}"
                )
            filters: dict[str, Any] = {"limit": 1}
            if plan.area_code is not None:
                filters["area_code"] = plan.area_code
            found = kind[plan.type].list(**filters)
            if not found:
                raise RuntimeError(
                    f"the simulator has no {plan.country} {plan.type} number"
                    + (f" in area code {plan.area_code}" if plan.area_code else "")
                    + f" for profile {plan.profile!r}: pick another area code or country"
                )
            bought = client.incoming_phone_numbers.create(
                phone_number=found[0].phone_number, friendly_name=plan.friendly_name, **hooks
            )
            log.info("bought %s for profile %s", bought.phone_number, plan.profile)
            numbers[bought.phone_number] = plan.profile
        return numbers
