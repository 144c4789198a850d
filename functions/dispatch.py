"""The agent launcher: ``POST /agents/dispatch`` starts one agent job per LiveKit room.

The edge calls this for every ``room_started`` and every human joining (LiveKit retries its
webhooks and several people may join at once), so the route must be idempotent under duplicates
and races: a per-room :class:`asyncio.Lock` serialises dispatches for one room, and a live-job
table answers "already running" for the second and later ones. A job whose process has ended,
normally or by crashing, is no longer live, so the next dispatch for its room starts a new one.
A job that crashed while humans are still in its room is replaced at once, without waiting for
someone to join (bounded: ``agent_max_restarts`` per ``agent_restart_window_s``).

Where a job runs is a :class:`Launcher`:

* :class:`LocalProcessLauncher`: a child process per room (``python -m functions.agent_job
  --room R --profile P`` with the media settings in ``CALLPLANE_MEDIA_CONFIG``), so that one
  agent crashing cannot take the others or the media app down. Offline stack and tests. One
  process is kept started ahead with its imports done (``prewarm``), so that a room does not
  wait seconds for Python to import livekit, openai and numpy.
* :class:`ModalLauncher`: ``modal.Function.from_name(app, "agent_job").spawn(room=, profile=)``,
  one container per room, polled through its ``FunctionCall``.

Mount it next to the other routers in :func:`functions.media.create_app`::

    router, agents = dispatch_routes(settings, require_api_key, launcher)
    app.include_router(router)
    app.router.on_shutdown.append(agents.shutdown)

with ``launcher = LocalProcessLauncher(settings)`` locally or ``ModalLauncher(APP_NAME,
environment_name=STACK)`` on Modal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from callplane.coordination import CapReached, CoordinationUnavailable, RoomLeases, connect
from callplane.livekit_settings import AGENT_IDENTITY_PREFIX, LiveKitSettings
from callplane.media_settings import ENV_VAR, MediaSettings
from callplane.profiles import choose_profile
from functions.body_limits import read_json

__all__ = [
    "AGENT_JOB_FUNCTION",
    "AgentCapReached",
    "AgentJob",
    "AgentJobs",
    "DispatchRequest",
    "HumansInRoom",
    "JobHandle",
    "Launcher",
    "LocalProcessLauncher",
    "ModalLauncher",
    "dispatch_routes",
    "livekit_humans",
    "local_agent_command",
    "serve_warm",
    "warm_agent_command",
]

log = logging.getLogger("callplane.dispatch")

AGENT_JOB_FUNCTION = "agent_job"
"""The Modal function (in the media app) that runs one room's agent."""

ROOM_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"  # the same as AgentProfile.room
WEB_KEY_ID_PATTERN = r"^[0-9a-f]{16}$"  # edge_worker.livekit_routes.web_key_id
STACK_CAP_GROUP = "agents"
WEB_KEY_CAP_PREFIX = "agents-web-key:"
MAX_ENDED_JOBS = 500  # jobs kept for GET /agents; older ones are forgotten
JOB_INFO_TTL_S = 24 * 3600.0  # how long GET /agents remembers a job after its last change
STOP_GRACE_S = 5.0
REPLACE_AFTER_S = 1.0
"""A crashed job's replacement starts this long after the crash was seen, so that an agent
that crashes as soon as it starts cannot spin: the restart budget is spent over seconds."""
REPLACED_REASON = "replaced_crashed"
"""The dispatch reason of a job started because its room's agent crashed with humans in it."""

JobState = Literal["running", "exited", "crashed"]


class DispatchRequest(BaseModel):
    """The body of ``POST /agents/dispatch``."""

    model_config = ConfigDict(extra="forbid")

    room: str = Field(pattern=ROOM_PATTERN, description="the LiveKit room that needs an agent")
    profile: str | None = Field(default=None, min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=64, description="why, e.g. room_started")
    web_key: str | None = Field(
        default=None,
        pattern=WEB_KEY_ID_PATTERN,
        description="the id of the web key whose token created the room (the edge's "
        "web_key_id), for the per-key cap on agent jobs",
    )


class AgentCapReached(Exception):
    """A dispatch refused because the stack's or the web key's cap on agent jobs is full;
    ``setting`` names the setting (``livekit.max_agent_jobs`` or
    ``livekit.max_agent_jobs_per_web_key``) and the message says how many run and what to do."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting
        self.message = message


# --------------------------------------------------------------------------- launchers


class JobHandle(Protocol):
    """One launched agent job, whatever runs it."""

    @property
    def handle(self) -> str:
        """What identifies the job where it runs: a pid, a Modal function call id."""
        ...

    async def poll(self) -> int | None:
        """The exit code if the job has ended (0 = normal), None while it runs. Cheap."""
        ...

    async def wait(self) -> int:
        """Wait until the job ends; its exit code."""
        ...

    async def shutdown(self) -> None:
        """The media app is stopping: stop the job if it cannot outlive this app."""
        ...


class Launcher(Protocol):
    """Starts an agent job for a room; the caller guarantees one at a time per room."""

    async def launch(self, room: str, profile: str, job_id: str) -> JobHandle:
        """``job_id`` is the dispatch's id: the job uses it in its identity and record, so that
        ``GET /agents`` and the room's call record name the same job."""
        ...


def local_agent_command(room: str, profile: str) -> list[str]:
    """The agent job's command line (the CLI of ``functions.agent_job``)."""
    return [sys.executable, "-m", "functions.agent_job", "--room", room, "--profile", profile]


class _ProcessHandle:
    """A child process; it dies with the media app (SIGTERM, then SIGKILL after a grace)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @property
    def handle(self) -> str:
        return f"pid:{self.process.pid}"

    async def poll(self) -> int | None:
        return self.process.returncode

    async def wait(self) -> int:
        return await self.process.wait()

    async def shutdown(self) -> None:
        if self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


WARM_REFILL_DELAY_S = 1.0
"""After a warm process was handed a room, wait this long before starting its replacement, so
that the replacement's imports do not compete for the CPU with the agent that is starting."""

# What a pre-started agent process runs (see serve_warm); {fd} is where it reports "ready".
_WARM_BOOTSTRAP = "from functions.dispatch import serve_warm; raise SystemExit(serve_warm({fd}))"


def warm_agent_command(ready_fd: int | None = None) -> list[str]:
    """The command line of a pre-started agent process (see :func:`serve_warm`)."""
    return [sys.executable, "-c", _WARM_BOOTSTRAP.format(fd=ready_fd)]


def serve_warm(ready_fd: int | None = None) -> int:
    """The body of a pre-started agent process: do the imports of an agent job now (livekit,
    openai, numpy, the conversation core: seconds of start-up), write ``ready`` to
    ``ready_fd``, then read one line, the JSON list of :mod:`functions.agent_job` arguments, and
    run the job with it. EOF instead (the launcher closed the pool, or died) means exit 0
    without serving. Settings come from ``CALLPLANE_MEDIA_CONFIG`` as for a cold start; the
    tools module they name is imported ahead too when the settings can be read."""
    from functions import agent_job

    with contextlib.suppress(Exception):  # a bad config is reported by agent_job.main
        MediaSettings.from_env().load_tools()
    if ready_fd is not None:
        with contextlib.suppress(OSError):
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    argv = json.loads(line)
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        print(f"agent_job: bad assignment from the launcher: {line[:200]!r}", file=sys.stderr)
        return 2
    return agent_job.main(argv)


def _read_ready(fd: int) -> bool:
    """Block until the pre-started process reports ready (True) or dies first (False)."""
    try:
        return os.read(fd, 16).startswith(b"ready")
    finally:
        os.close(fd)


@dataclass
class _WarmProcess:
    process: asyncio.subprocess.Process
    ready: asyncio.Future[bool]


class LocalProcessLauncher:
    """Runs each agent job as a child process of the media app.

    ``command(room, profile)`` gives the argv (default :func:`local_agent_command`; tests pass a
    stand-in script). The child gets this process's environment plus ``CALLPLANE_MEDIA_CONFIG``
    holding ``settings`` as JSON, so it needs no file and sees exactly this app's settings.

    ``prewarm`` keeps one agent process started ahead, its imports done, waiting on its stdin
    for a room (:func:`serve_warm`): a launch then costs a pipe write instead of an interpreter
    start and seconds of imports. It is on by default for the default command when
    ``settings.livekit`` is set (a custom ``command`` cannot be started ahead). The first warm
    process starts when the launcher is created inside a running event loop, else at the first
    launch; each one handed a room is replaced after ``WARM_REFILL_DELAY_S``. :meth:`aclose`
    stops the idle one (:meth:`AgentJobs.shutdown` calls it).
    """

    def __init__(
        self,
        settings: MediaSettings,
        command: Callable[[str, str], Sequence[str]] = local_agent_command,
        *,
        env: Mapping[str, str] | None = None,
        prewarm: bool | None = None,
    ) -> None:
        self._command = command
        self._env = {**(os.environ if env is None else env), ENV_VAR: settings.model_dump_json()}
        if prewarm is None:
            prewarm = command is local_agent_command and settings.livekit is not None
        elif prewarm and command is not local_agent_command:
            raise ValueError(
                "prewarm=True needs the default command (functions.agent_job): a custom command "
                "cannot be started ahead; pass prewarm=False or drop the command"
            )
        self.prewarm = prewarm
        self._warm: asyncio.Task[_WarmProcess] | None = None
        self._refill: asyncio.Task[None] | None = None
        self._closed = False
        if prewarm:
            with contextlib.suppress(RuntimeError):  # no running loop: warm at the first launch
                asyncio.get_running_loop()
                self._start_warm()

    async def launch(self, room: str, profile: str, job_id: str) -> JobHandle:
        argv = list(self._command(room, profile))
        if self._command is local_agent_command:  # a custom command may not take it
            argv += ["--job-id", job_id]
        if self.prewarm and not self._closed:
            process = await self._take_warm(argv)
            if process is not None:
                return _ProcessHandle(process)
        process = await asyncio.create_subprocess_exec(
            *argv, env=self._env, stdin=asyncio.subprocess.DEVNULL
        )
        return _ProcessHandle(process)

    async def wait_ready(self) -> bool:
        """Wait until a pre-started process has done its imports; False without prewarm, after
        :meth:`aclose`, or if the process died first. (Benches and tests use it to measure or
        wait for the warm path.)"""
        if not self.prewarm or self._closed:
            return False
        if self._warm is None:
            self._start_warm()
        assert self._warm is not None
        try:
            warm = await asyncio.shield(self._warm)
        except Exception:
            return False
        return await asyncio.shield(warm.ready)

    async def aclose(self) -> None:
        """Stop the idle pre-started process (jobs already handed out are not affected)."""
        self._closed = True
        if self._refill is not None:
            self._refill.cancel()
            await asyncio.gather(self._refill, return_exceptions=True)
            self._refill = None
        pending, self._warm = self._warm, None
        if pending is None:
            return
        try:
            warm = await pending
        except Exception:
            return
        process = warm.process
        if process.stdin is not None:
            process.stdin.close()  # EOF: it exits without serving
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        await asyncio.gather(warm.ready, return_exceptions=True)

    # ---- the pre-started process ---------------------------------------------------------

    def _start_warm(self) -> None:
        self._warm = asyncio.ensure_future(self._spawn_warm())

    async def _spawn_warm(self) -> _WarmProcess:
        read_end, write_end = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                *warm_agent_command(write_end),
                env=self._env,
                stdin=asyncio.subprocess.PIPE,
                pass_fds=(write_end,),
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)  # the child holds its own copy
        ready = asyncio.ensure_future(asyncio.to_thread(_read_ready, read_end))
        return _WarmProcess(process, ready)

    def _schedule_refill(self) -> None:
        if self._refill is None or self._refill.done():
            self._refill = asyncio.create_task(self._refill_later(), name="agent-prewarm")

    async def _refill_later(self) -> None:
        await asyncio.sleep(WARM_REFILL_DELAY_S)
        if not self._closed and self._warm is None:
            self._start_warm()

    async def _take_warm(self, argv: list[str]) -> asyncio.subprocess.Process | None:
        """Hand ``argv`` to the pre-started process, starting one now if there is none (it is
        still ahead of a cold start: the assignment waits in its stdin while it imports).
        None if it cannot take it; the caller then starts a cold one. The pool is refilled
        after ``WARM_REFILL_DELAY_S`` either way."""
        if self._warm is None:
            self._start_warm()
        pending, self._warm = self._warm, None
        self._schedule_refill()
        assert pending is not None
        try:
            warm = await pending
        except Exception as exc:  # could not even start: fall back to a cold start
            log.warning("pre-started agent process failed to start: %s", exc)
            return None
        process, stdin = warm.process, warm.process.stdin
        if process.returncode is not None or stdin is None:
            log.warning("pre-started agent process %d had exited; starting one", process.pid)
            return None
        try:
            stdin.write((json.dumps(argv[3:]) + "\n").encode())
            await stdin.drain()
            stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            log.warning("pre-started agent process %d had exited; starting one", process.pid)
            return None
        return process


class _ModalCallHandle:
    """A spawned Modal ``FunctionCall``. Polled with ``get(timeout=0)``: builtin TimeoutError
    means still running, a result means it returned, ``OutputExpiredError`` that it finished
    long ago, and any other exception that it failed."""

    def __init__(self, call: Any, poll_interval_s: float) -> None:
        self.call = call
        self.poll_interval_s = poll_interval_s
        self._exit: int | None = None

    @property
    def handle(self) -> str:
        return f"modal:{self.call.object_id}"

    async def poll(self) -> int | None:
        if self._exit is not None:
            return self._exit
        from modal.exception import ConnectionError as ModalConnectionError
        from modal.exception import OutputExpiredError

        try:
            await self.call.get.aio(timeout=0)
        except TimeoutError:  # builtin: no output yet, the job is running
            return None
        except OutputExpiredError:
            self._exit = 0
        except ModalConnectionError as exc:  # cannot tell; keep counting it as live
            log.warning("agent job %s: Modal unreachable while polling: %s", self.handle, exc)
            return None
        except Exception as exc:
            log.warning("agent job %s failed on Modal: %s", self.handle, type(exc).__name__)
            self._exit = 1
        else:
            self._exit = 0
        return self._exit

    async def wait(self) -> int:
        while True:
            code = await self.poll()
            if code is not None:
                return code
            await asyncio.sleep(self.poll_interval_s)

    async def shutdown(self) -> None:
        """Nothing: the job runs in its own container and outlives this media container."""


class ModalLauncher:
    """Spawns the ``agent_job`` function of the deployed Modal app ``app_name``.

    ``lookup`` is ``modal.Function.from_name`` (tests pass a fake with the same shape: an
    object whose ``spawn.aio(room=, profile=)`` returns a call with ``object_id``,
    ``get.aio(timeout=0)`` and ``cancel.aio()``). Modal credentials come from the container's
    environment; nothing is contacted until the first launch.
    """

    def __init__(
        self,
        app_name: str,
        *,
        environment_name: str | None = None,
        function_name: str = AGENT_JOB_FUNCTION,
        poll_interval_s: float = 5.0,
        lookup: Callable[..., Any] | None = None,
    ) -> None:
        self.app_name = app_name
        self.environment_name = environment_name
        self.function_name = function_name
        self.poll_interval_s = poll_interval_s
        self._lookup = lookup
        self._function: Any = None

    def _resolve(self) -> Any:
        if self._function is None:
            lookup = self._lookup
            if lookup is None:
                import modal

                lookup = modal.Function.from_name
            self._function = lookup(
                self.app_name, self.function_name, environment_name=self.environment_name
            )
        return self._function

    async def launch(self, room: str, profile: str, job_id: str) -> JobHandle:
        call = await self._resolve().spawn.aio(room=room, profile=profile, job_id=job_id)
        return _ModalCallHandle(call, self.poll_interval_s)


# --------------------------------------------------------------------------- who is in a room

HumansInRoom = Callable[[str], Awaitable[list[str]]]
"""The identities of the humans (not agents) in a room now, as the LiveKit server lists them;
an empty list if the room is gone. Raises if the server cannot be asked."""


def livekit_humans(livekit: LiveKitSettings) -> HumansInRoom:
    """:data:`HumansInRoom` through LiveKit's server API (``ListParticipants``): every
    participant that is connected and is neither an agent (by kind or identity prefix) nor an
    egress."""

    async def humans(room: str) -> list[str]:
        from livekit import api

        async with api.LiveKitAPI(livekit.http_url, livekit.api_key, livekit.api_secret) as lk:
            rooms = await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))
            if not rooms.rooms:
                return []
            listed = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
        kind, state = api.ParticipantInfo.Kind, api.ParticipantInfo.State
        return [
            p.identity
            for p in listed.participants
            if p.kind not in (kind.AGENT, kind.EGRESS)
            and p.state != state.DISCONNECTED
            and not p.identity.startswith(AGENT_IDENTITY_PREFIX)
        ]

    return humans


# --------------------------------------------------------------------------- the job table


@dataclass
class AgentJob:
    """One agent job as ``GET /agents`` shows it."""

    room: str
    profile: str
    job_id: str
    handle: JobHandle
    started_at: float
    reason: str
    state: JobState = "running"
    exit_code: int | None = None
    ended_at: float | None = None
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "job_id": self.job_id,
            "handle": self.handle.handle,
            "profile": self.profile,
            "reason": self.reason,
            "state": self.state,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "exit_code": self.exit_code,
        }


class _Elsewhere:
    """A job another container launched: it is watched there, and its lease says it lives."""

    def __init__(self, where: str) -> None:
        self._where = where

    @property
    def handle(self) -> str:
        return self._where

    async def poll(self) -> int | None:
        return None

    async def wait(self) -> int:
        raise RuntimeError("a job launched by another container cannot be waited for here")

    async def shutdown(self) -> None:
        """Nothing: it belongs to the container that launched it."""


class AgentJobs:
    """The agent jobs of a stack: at most one per room however many containers dispatch.

    The room's lease in ``leases`` (Redis across containers) decides: a dispatch takes it
    set-if-absent before launching, so five duplicate webhooks on two containers start one
    job. The lease lasts ``settings.agent_lease_s`` and is renewed every third of it by the
    container that watches the job and by the job itself; a job that ends releases it, and one
    that is killed with its container lets it lapse, so that the next join starts one new
    agent. ``live`` holds the jobs this container launched; ``GET /agents`` lists the stack's.

    A job that crashes while ``humans`` (default: LiveKit's server API, see
    :func:`livekit_humans`) still lists people in its room is replaced by the container that
    watched it, with dispatch reason ``replaced_crashed``: the people who stayed get a new
    agent without anyone joining. The replacement takes the room's lease like any dispatch, so
    a join landing on another container at the same moment still starts only one agent. The
    replacements of a room are counted in the shared store (``RoomLeases.note_restart``), so
    the bound of ``settings.agent_max_restarts`` per ``agent_restart_window_s`` holds for the
    whole stack and survives the container; past it the room is logged and left until a join.
    If the watching container dies with its job, nobody sees the crash: the lease lapses and
    the next join starts the agent, as before.
    """

    def __init__(
        self,
        settings: MediaSettings,
        launcher: Launcher,
        *,
        leases: RoomLeases | None = None,
        clock: Callable[[], float] = time.time,
        humans: HumansInRoom | None = None,
    ) -> None:
        self.settings = settings
        self.launcher = launcher
        self.leases = leases if leases is not None else connect(None).leases
        self.clock = clock
        if humans is None and settings.livekit is not None:
            humans = livekit_humans(settings.livekit)
        self.humans = humans
        self.live: dict[str, AgentJob] = {}
        self.ended: OrderedDict[str, AgentJob] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self._replacing: set[asyncio.Task[None]] = set()
        self._closing = False

    async def dispatch(
        self, room: str, profile: str | None, reason: str, web_key: str | None = None
    ) -> tuple[AgentJob, bool]:
        """The room's running job and False, or a newly started one and True. Raises
        ValueError for an unknown profile, :class:`AgentCapReached` when a new job would be
        over the stack's cap (``livekit.max_agent_jobs``) or over ``web_key``'s
        (``livekit.max_agent_jobs_per_web_key``), and
        :class:`~callplane.coordination.CoordinationUnavailable` when the lease cannot be
        taken (nothing is launched then). The caps are counted on the room leases, in Redis
        across containers: a job holds its place while its lease is renewed (by this
        container and by the job itself) and frees it when it ends or its lease lapses."""
        chosen = choose_profile(self.settings.profiles, room, requested=profile)
        lock = self._locks.setdefault(room, asyncio.Lock())
        async with lock:
            job = self.live.get(room)
            if job is not None:
                code = await job.handle.poll()
                if code is None:
                    return job, False
                await self._ended(job, code)
            job_id = uuid.uuid4().hex[:12]
            try:
                holder = await self.leases.acquire(
                    room, job_id, self.settings.agent_lease_s, caps=self._caps(web_key)
                )
            except CapReached as full:
                raise self._refusal(room, web_key, full) from None
            if holder != job_id:
                return await self._elsewhere(room, holder), False
            try:
                handle = await self.launcher.launch(room, chosen, job_id)
            except BaseException:
                with contextlib.suppress(Exception):
                    await self.leases.release(room, job_id)
                raise
            job = AgentJob(
                room=room,
                profile=chosen,
                job_id=job_id,
                handle=handle,
                started_at=self.clock(),
                reason=reason,
            )
            self.live[room] = job
            await self._share(job)
            job.watcher = asyncio.create_task(self._watch(job), name=f"agent-job-{room}")
            log.info(
                "agent job %s started for room %r (%s) as %s",
                job.job_id,
                room,
                reason,
                handle.handle,
            )
            return job, True

    def _caps(self, web_key: str | None) -> list[tuple[str, int]]:
        livekit = self.settings.livekit
        if livekit is None:
            return []
        caps = [(STACK_CAP_GROUP, livekit.max_agent_jobs)]
        if web_key is not None:
            caps.append((WEB_KEY_CAP_PREFIX + web_key, livekit.max_agent_jobs_per_web_key))
        return caps

    @staticmethod
    def _refusal(room: str, web_key: str | None, full: CapReached) -> AgentCapReached:
        if full.group == STACK_CAP_GROUP:
            return AgentCapReached(
                "livekit.max_agent_jobs",
                f"{full.held} agent jobs are running on this stack, its cap "
                f"(livekit.max_agent_jobs = {full.limit}); no agent was started for room "
                f"{room!r}: try again when one has ended, or raise the cap",
            )
        return AgentCapReached(
            "livekit.max_agent_jobs_per_web_key",
            f"{full.held} agent jobs are running for rooms created with web key {web_key}, its "
            f"cap (livekit.max_agent_jobs_per_web_key = {full.limit}); no agent was started "
            f"for room {room!r}: try again when one of them has ended, or raise the cap",
        )

    def jobs(self) -> list[AgentJob]:
        """This container's jobs: running first, then ended ones, newest first."""
        running = sorted(self.live.values(), key=lambda j: j.started_at, reverse=True)
        return running + list(reversed(self.ended.values()))

    async def stack_jobs(self) -> list[dict[str, Any]]:
        """Every container's jobs, running first, then ended ones, newest first. A job still
        shown running whose lease has gone (its container and itself killed) is ``lost``."""
        found = await self.leases.jobs(limit=MAX_ENDED_JOBS)
        for job in found:
            running = job.get("state") == "running"
            if running and await self.leases.holder(str(job["room"])) != job["job_id"]:
                job["state"] = "lost"
        return sorted(found, key=lambda j: (j.get("state") != "running", -j["started_at"]))

    async def refresh(self) -> None:
        """Poll every running job, so a listing does not show a dead one as running."""
        for job in list(self.live.values()):
            code = await job.handle.poll()
            if code is not None:
                await self._ended(job, code)

    async def shutdown(self) -> None:
        """Stop what cannot outlive this app (local children, a pre-started one), and the
        watchers. Jobs that end now are not replaced."""
        self._closing = True
        for task in list(self._replacing):
            task.cancel()
        await asyncio.gather(*self._replacing, return_exceptions=True)
        close = getattr(self.launcher, "aclose", None)
        if close is not None:
            await close()
        jobs = list(self.live.values())
        await asyncio.gather(*(job.handle.shutdown() for job in jobs), return_exceptions=True)
        for job in jobs:
            if job.watcher is not None:
                job.watcher.cancel()
        await asyncio.gather(
            *(job.watcher for job in jobs if job.watcher is not None), return_exceptions=True
        )
        for job in jobs:
            code = await job.handle.poll()
            if code is not None:
                await self._ended(job, code)

    async def _elsewhere(self, room: str, holder: str) -> AgentJob:
        """The running job another container (or an earlier dispatch) launched for ``room``."""
        shared = {j["job_id"]: j for j in await self.leases.jobs(limit=MAX_ENDED_JOBS)}
        known = shared.get(holder, {})
        return AgentJob(
            room=room,
            profile=str(known.get("profile", "")),
            job_id=holder,
            handle=_Elsewhere(str(known.get("handle", "elsewhere"))),
            started_at=float(known.get("started_at", self.clock())),
            reason=str(known.get("reason", "")),
        )

    async def _share(self, job: AgentJob) -> None:
        try:
            await self.leases.put_job(job.to_json(), JOB_INFO_TTL_S)
        except CoordinationUnavailable as exc:  # GET /agents elsewhere is stale; the job runs
            log.warning("agent job %s: not shared: %s", job.job_id, exc)

    async def _watch(self, job: AgentJob) -> None:
        """Wait for the job's end, renewing its room's lease meanwhile."""
        ended = asyncio.ensure_future(job.handle.wait())
        every = self.settings.agent_lease_s / 3
        try:
            while True:
                done, _ = await asyncio.wait({ended}, timeout=every)
                if done:
                    break
                try:
                    if not await self.leases.renew(
                        job.room, job.job_id, self.settings.agent_lease_s
                    ):
                        log.warning(
                            "agent job %s no longer holds room %r's lease", job.job_id, job.room
                        )
                except CoordinationUnavailable as exc:
                    log.warning("agent job %s: lease not renewed: %s", job.job_id, exc)
        finally:
            if not ended.done():
                ended.cancel()
        await self._ended(job, ended.result())

    async def _ended(self, job: AgentJob, code: int) -> None:
        if job.state != "running":
            return
        job.exit_code = code
        job.ended_at = self.clock()
        job.state = "exited" if code == 0 else "crashed"
        if self.live.get(job.room) is job:
            del self.live[job.room]
            lock = self._locks.get(job.room)
            if lock is not None and not lock.locked():  # nobody holds or awaits it
                del self._locks[job.room]
        self.ended[job.job_id] = job
        while len(self.ended) > MAX_ENDED_JOBS:
            self.ended.popitem(last=False)
        if code == 0:
            log.info("agent job %s for room %r exited", job.job_id, job.room)
        else:
            log.error(
                "agent job %s for room %r crashed with exit code %d", job.job_id, job.room, code
            )
        # Its end is shared first, then the room is let go: a listing in between would show
        # a job still "running" without a lease, and call it lost.
        await self._share(job)
        try:
            await self.leases.release(job.room, job.job_id)
        except CoordinationUnavailable as exc:  # it lapses after agent_lease_s instead
            log.warning("agent job %s: lease not released: %s", job.job_id, exc)
        if code != 0 and not self._closing and self.humans is not None:
            task = asyncio.create_task(self._replace(job), name=f"agent-replace-{job.room}")
            self._replacing.add(task)
            task.add_done_callback(self._replacing.discard)

    async def _replace(self, crashed: AgentJob) -> None:
        """Start a new agent for ``crashed``'s room if humans are still in it, within the
        room's restart budget; the reason is logged whichever way it goes."""
        room, settings = crashed.room, self.settings
        await asyncio.sleep(REPLACE_AFTER_S)
        assert self.humans is not None
        try:
            present = await self.humans(room)
        except Exception as exc:
            log.warning(
                "agent job %s crashed, and who is left in room %r cannot be listed (%s): not "
                "replaced now; the next join starts an agent",
                crashed.job_id,
                room,
                exc,
            )
            return
        if not present:
            log.info("agent job %s crashed; room %r is empty: not replaced", crashed.job_id, room)
            return
        try:
            if await self.leases.holder(room) is not None:
                return  # a join (here or on another container) already started one
            count = await self.leases.note_restart(room, settings.agent_restart_window_s)
        except CoordinationUnavailable as exc:
            log.warning("agent job %s crashed; not replaced: %s", crashed.job_id, exc)
            return
        if count > settings.agent_max_restarts:
            log.error(
                "room %r: its agent crashed again (%d replacements within %g s, at most %d); "
                "giving up until someone joins the room. Still there: %s",
                room,
                count - 1,
                settings.agent_restart_window_s,
                settings.agent_max_restarts,
                ", ".join(present),
            )
            return
        try:
            job, started = await self.dispatch(room, crashed.profile, REPLACED_REASON)
        except Exception as exc:  # a launcher failure: the next join tries again
            log.error("room %r: the crashed agent could not be replaced: %s", room, exc)
            return
        if started:
            log.warning(
                "room %r: agent job %s crashed with %s still there; replaced by %s (%d of %d "
                "within %g s)",
                room,
                crashed.job_id,
                ", ".join(present),
                job.job_id,
                count,
                settings.agent_max_restarts,
                settings.agent_restart_window_s,
            )


# --------------------------------------------------------------------------- routes


def dispatch_routes(
    settings: MediaSettings,
    require_api_key: Callable[[str | None], None],
    launcher: Launcher,
    leases: RoomLeases | None = None,
    humans: HumansInRoom | None = None,
) -> tuple[APIRouter, AgentJobs]:
    """``POST /agents/dispatch`` and ``GET /agents``, both behind the media app's API key.
    Without ``settings.livekit`` both answer 503. Returns the router and the job table (whose
    :meth:`AgentJobs.shutdown` the app must call when it stops). ``humans`` lists who is in a
    room when a job crashes (default: LiveKit's server API)."""
    router = APIRouter()
    agents = AgentJobs(settings, launcher, leases=leases, humans=humans)

    def require_livekit() -> None:
        if settings.livekit is None:
            raise HTTPException(
                503, "LiveKit is not configured on this media app: add livekit to its settings"
            )

    @router.post("/agents/dispatch", response_model=None)
    async def dispatch(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any] | JSONResponse:
        """Make sure one agent is in the room: ``{"room", "profile"?, "reason", "web_key"?}``.
        Over the stack's or the web key's cap on agent jobs: 429 with ``{"refused": {"limit",
        "reason"}}``, and nothing is started."""
        require_api_key(authorization)
        require_livekit()
        document = await read_json(request, "the POST /agents/dispatch body")
        try:
            body = DispatchRequest.model_validate(document)
        except ValidationError as exc:
            raise HTTPException(422, _problems(exc)) from None
        try:
            job, started = await agents.dispatch(
                body.room, body.profile, body.reason, web_key=body.web_key
            )
        except AgentCapReached as refused:
            log.warning("agent dispatch for room %r refused: %s", body.room, refused.message)
            return JSONResponse(
                {"refused": {"limit": refused.setting, "reason": refused.message}},
                status_code=429,
            )
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        except CoordinationUnavailable as exc:
            log.error("agent dispatch for room %r refused: %s", body.room, exc)
            raise HTTPException(503, f"agent dispatch is unavailable: {exc}") from None
        return {"room": job.room, "job_id": job.job_id, "started": started, "state": job.state}

    @router.get("/agents")
    async def list_agents(authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Agent jobs: running ones first, then recently ended ones."""
        require_api_key(authorization)
        require_livekit()
        await agents.refresh()
        try:
            return {"agents": await agents.stack_jobs()}
        except CoordinationUnavailable as exc:
            raise HTTPException(503, f"the stack's agent jobs are unavailable: {exc}") from None

    return router, agents


def _problems(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors with the field named and the bad value cut short."""
    return [
        {
            "field": ".".join(str(part) for part in error["loc"]) or "body",
            "problem": error["msg"],
            "value": repr(error.get("input"))[:80],
        }
        for error in exc.errors()
    ]
