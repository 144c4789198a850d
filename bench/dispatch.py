"""Bench: how long a web user waits for the on-demand agent's greeting in a fresh room.

    uv run --frozen python bench/dispatch.py [--rooms 20] [--cold-rooms 5]
        [--json bench/results/dispatch.json]

One ``LocalStack(livekit=True)`` (real livekit-server + Redis, the edge, the media app, the
local Realtime engine, all on loopback) and, for each of ``--rooms`` rooms in turn, a fresh
room name and one Python ``livekit.rtc`` participant standing in for the first web user.

**The clock starts when that participant's ``await room.connect(url, token)`` returns** (it has
joined: the room exists and the server has sent the join response), read with
``time.monotonic()``; it stops at the first audio frame of the agent's track that the
participant's ``rtc.AudioStream`` yields with a sample above 1000 (the greeting is audible:
``first_audible_ms``). ``first_frame_ms`` is the first frame of any content on that track.

The breakdown, on the same clock (negative = before ``connect()`` returned):

* ``dispatch_received_ms``: the media app's ``/agents/dispatch`` handler is entered for the
  first time for this room (LiveKit's webhook -> edge -> media POST), and ``dispatch_reason``
  (``room_started`` or ``participant_joined``);
* ``process_spawned_ms``: the launcher returned (``create_subprocess_exec`` done);
* ``agent_joined_ms``: the participant sees the agent connect (``participant_connected``), i.e.
  the child imported callplane/livekit/openai, read its settings and joined;
* ``session_update_ms``: the engine receives the agent's ``session.update`` (Realtime session
  open, after the agent saw a human and published its track);
* ``engine_first_audio_ms``: the engine sends the greeting's first ``response.output_audio.delta``;
* ``track_subscribed_ms``, ``first_frame_ms``, ``first_audible_ms``: on the participant's side.

The stages are seen from different places (the media app, the engine, the participant), so
neighbours can swap by a few tens of ms (e.g. the session opens before the participant hears
of the agent joining). Everything except the agent job runs in this process on one event
loop, as ``callplane dev`` does.

The rooms use the stack's own launcher, :class:`functions.dispatch.LocalProcessLauncher` with
``prewarm`` (one agent process started ahead with its imports done). The next room starts once
the previous agent job has left and exited and the next pre-started process reports ready, so
the rooms are sequential and independent and each measures the warm path. Then
``--cold-rooms`` rooms run with ``prewarm=False`` (a fresh ``python -m functions.agent_job`` per
room) for comparison. A separate measurement times child start-up in isolation
(``python -c pass`` and ``python -c "import functions.agent_job"``, fresh interpreters) and lists
the heaviest imports (``-X importtime``). Percentiles are linear-interpolated (numpy's default).
The target, p95 of ``first_audible_ms`` under 1.5 s, is reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from livekit import api, rtc

from callplane_dev.livekit_server import find_tool
from callplane_dev.stack import LocalStack, StackOptions
from callplane_standins.realtime_engine.context import Direction
from functions.dispatch import AgentJob, AgentJobs, JobHandle, Launcher, LocalProcessLauncher

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "bench" / "results" / "dispatch.json"
TARGET_P95_MS = 1500.0
AUDIBLE = 1000  # a sample above this: the greeting is playing
IDLE_TIMEOUT_S = 1.0  # how long the agent stays after the user left (keeps the bench short)
ROOM_TIMEOUT_S = 30.0

STAGES = (
    "dispatch_received_ms",
    "process_spawned_ms",
    "agent_joined_ms",
    "session_update_ms",
    "engine_first_audio_ms",
    "track_subscribed_ms",
    "first_frame_ms",
    "first_audible_ms",
)


@dataclass
class Marks:
    """Monotonic times of one room's events (first occurrence of each)."""

    times: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def once(self, name: str, at: float | None = None) -> None:
        self.times.setdefault(name, time.monotonic() if at is None else at)


class Probe:
    """What the stack reports about the room being measured: dispatch calls, launches and
    engine events, attributed to the current room (rooms are sequential)."""

    def __init__(self) -> None:
        self.current: Marks | None = None

    def engine(self, direction: Direction, event: Mapping[str, Any]) -> None:
        marks = self.current
        if marks is None:
            return
        kind = event.get("type")
        if direction == "in" and kind == "session.update":
            marks.once("session_update")
        elif direction == "out" and kind == "response.output_audio.delta":
            marks.once("engine_first_audio")


class TimedLauncher:
    """The stack's launcher with the moment each launch returned noted."""

    def __init__(self, inner: Launcher, probe: Probe) -> None:
        self.inner = inner
        self.probe = probe

    async def launch(self, room: str, profile: str, job_id: str) -> JobHandle:
        handle = await self.inner.launch(room, profile, job_id)
        if self.probe.current is not None:
            self.probe.current.once("process_spawned")
        return handle


def instrument(agents: AgentJobs, probe: Probe, launcher: Launcher) -> None:
    """Run ``launcher``; note when ``/agents/dispatch`` reaches the job table, and when a
    launch returned."""
    agents.launcher = TimedLauncher(launcher, probe)
    dispatch = agents.dispatch

    async def timed(
        room: str, profile: str | None, reason: str, web_key: str | None = None
    ) -> tuple[AgentJob, bool]:
        marks = probe.current
        if marks is not None and "dispatch_received" not in marks.times:
            marks.once("dispatch_received")
            marks.notes["dispatch_reason"] = reason
        return await dispatch(room, profile, reason, web_key)

    agents.dispatch = timed  # type: ignore[method-assign]


def user_token(stack: LocalStack, room: str, identity: str) -> str:
    grants = api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True)
    return (
        api.AccessToken(stack.creds.LIVEKIT_API_KEY, stack.creds.livekit_api_secret)
        .with_identity(identity)
        .with_grants(grants)
        .to_jwt()
    )


async def one_room(stack: LocalStack, probe: Probe, room_name: str) -> dict[str, Any]:
    assert stack.livekit is not None
    marks = Marks()
    room = rtc.Room()
    audible = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def listen(track: rtc.Track) -> None:
        async for event in rtc.AudioStream(track, sample_rate=48000, num_channels=1):
            marks.once("first_frame")
            data = np.frombuffer(event.frame.data, dtype=np.int16)
            if data.size and int(np.abs(data).max()) > AUDIBLE:
                marks.once("first_audible")
                audible.set()
                return

    def on_connected(participant: rtc.RemoteParticipant) -> None:
        if participant.identity.startswith("agent-"):
            marks.once("agent_joined")

    def on_track(
        track: rtc.Track, pub: rtc.RemoteTrackPublication, who: rtc.RemoteParticipant
    ) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO and who.identity.startswith("agent-"):
            marks.once("track_subscribed")
            tasks.append(asyncio.create_task(listen(track)))

    room.on("participant_connected", on_connected)
    room.on("track_subscribed", on_track)
    token = user_token(stack, room_name, "bench-user")
    probe.current = marks
    called = time.monotonic()
    try:
        await room.connect(stack.livekit.url, token)
        start = time.monotonic()
        for participant in room.remote_participants.values():  # already there: not our room
            on_connected(participant)
        # A browser publishes its microphone next; the clock does not wait for it.
        source = rtc.AudioSource(48000, 1)
        mic = rtc.LocalAudioTrack.create_audio_track("mic", source)
        await room.local_participant.publish_track(
            mic, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        )
        marks.once("mic_published")
        await asyncio.wait_for(audible.wait(), ROOM_TIMEOUT_S)
    finally:
        probe.current = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await room.disconnect()
    row: dict[str, Any] = {
        "room": room_name,
        "connect_call_ms": round((start - called) * 1000, 1),
        **{f"{k}_ms": round((t - start) * 1000, 1) for k, t in sorted(marks.times.items())},
        **marks.notes,
    }
    return row


async def wait_until_idle(
    stack: LocalStack, launcher: LocalProcessLauncher, timeout_s: float = 30.0
) -> bool:
    """Wait for the previous room's agent job to leave and exit, and (with prewarm) for the
    launcher's next pre-started process to be ready; whether one is."""
    agents: AgentJobs = stack.media_app.state.agents
    deadline = time.monotonic() + timeout_s
    while agents.live:
        await agents.refresh()
        if time.monotonic() > deadline:
            raise RuntimeError(f"agent jobs still running after {timeout_s} s: {list(agents.live)}")
        await asyncio.sleep(0.1)
    if not launcher.prewarm:
        return False
    return await asyncio.wait_for(launcher.wait_ready(), timeout_s)


async def series(
    stack: LocalStack, probe: Probe, launcher: LocalProcessLauncher, rooms: int, label: str
) -> list[dict[str, Any]]:
    """``rooms`` fresh rooms one after the other with ``launcher`` starting their agents."""
    instrument(stack.media_app.state.agents, probe, launcher)
    run_id = uuid.uuid4().hex[:6]
    rows = []
    for i in range(rooms):
        ready = await wait_until_idle(stack, launcher)
        row = await one_room(stack, probe, f"bench-{label}-{run_id}-{i:03d}")
        row["prewarmed_ready"] = ready
        rows.append(row)
        print(
            f"{label} room {i + 1}/{rooms}: first audible {row.get('first_audible_ms')} ms "
            f"(agent joined {row.get('agent_joined_ms')} ms)",
            file=sys.stderr,
        )
    await wait_until_idle(stack, launcher)
    return rows


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    seg_rows = [segments(r) for r in rows]
    return {
        "rooms": len(rows),
        "first_audible_ms": stats([r["first_audible_ms"] for r in rows]),
        "stages_ms": {
            name: stats([r[name] for r in rows if name in r])
            for name in ("connect_call_ms", *STAGES)
        },
        "segments_ms": {
            name: stats([s[name] for s in seg_rows if name in s])
            for name in dict.fromkeys(k for s in seg_rows for k in s)
        },
        "dispatch_reasons": sorted({str(r.get("dispatch_reason")) for r in rows}),
    }


def stats(values: Sequence[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    arr = np.asarray(values, dtype=float)
    return {
        "n": int(arr.size),
        "min": round(float(arr.min()), 1),
        "p50": round(float(np.percentile(arr, 50)), 1),
        "p95": round(float(np.percentile(arr, 95)), 1),
        "max": round(float(arr.max()), 1),
        "mean": round(float(arr.mean()), 1),
    }


def segments(row: Mapping[str, Any]) -> dict[str, float]:
    """Durations between consecutive stages of one room (ms)."""
    order = [("connect_returned", 0.0)] + [(s, row[s]) for s in STAGES if s in row]
    return {
        f"{a.removesuffix('_ms')}->{b.removesuffix('_ms')}": round(tb - ta, 1)
        for (a, ta), (b, tb) in itertools.pairwise(order)
    }


def child_startup(repeat: int = 5) -> dict[str, Any]:
    """Fresh interpreters: bare start-up, and importing the agent job (its whole closure)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}

    def timed(code: str) -> list[float]:
        out = []
        for _ in range(repeat):
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)
            out.append((time.monotonic() - t0) * 1000)
        return out

    bare = timed("pass")
    job = timed("import functions.agent_job")
    trace = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import functions.agent_job"],
        check=True,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stderr
    own: dict[str, int] = {}  # top-level package -> its modules' own import time (us)
    for line in trace.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue  # the header
        package = parts[2].strip().split(".")[0]
        own[package] = own.get(package, 0) + int(parts[0])
    heaviest = sorted(own.items(), key=lambda kv: -kv[1])[:12]
    return {
        "python_c_pass_ms": stats(bare),
        "import_functions_agent_job_ms": stats(job),
        "import_self_time_by_package_ms": {k: round(v / 1000, 1) for k, v in heaviest},
        "import_self_time_total_ms": round(sum(own.values()) / 1000, 1),
    }


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for dist in ("livekit", "livekit-api", "openai", "fastapi", "uvicorn", "numpy", "pydantic"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[dist] = metadata.version(dist)
    for tool, flag in (("livekit-server", "--version"), ("redis-server", "--version")):
        path = find_tool(tool)
        if path is not None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                done = subprocess.run([path, flag], capture_output=True, text=True, timeout=10)
                found[tool] = (done.stdout or done.stderr).strip().splitlines()[0]
    return found


def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "shared": "the machine is shared with other work; load average is the 1/5/15 min figure",
        "versions": versions(),
    }


async def run(rooms: int, cold_rooms: int) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    probe = Probe()
    result: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "clock_start": (
            "time.monotonic() when the first (and only) human's await rtc.Room.connect() "
            "returned; all *_ms fields are relative to it"
        ),
        "metric": "first_audible_ms: first agent audio frame with a sample > 1000 (the greeting)",
        "machine": machine(),
    }
    with tempfile.TemporaryDirectory(prefix="callplane-bench-dispatch-") as tmp:
        options = StackOptions(
            data_dir=Path(tmp),
            livekit=True,
            agent_idle_timeout_s=IDLE_TIMEOUT_S,
            engine_observer=probe.engine,
            write_dev_file=False,
        )
        started = time.monotonic()
        async with LocalStack(options) as stack:
            result["stack_start_s"] = round(time.monotonic() - started, 2)
            agents: AgentJobs = stack.media_app.state.agents
            warm = agents.launcher
            assert isinstance(warm, LocalProcessLauncher) and warm.prewarm
            rows = await series(stack, probe, warm, rooms, "prewarmed")
            await warm.aclose()
            cold_rows: list[dict[str, Any]] = []
            if cold_rooms:
                cold = LocalProcessLauncher(agents.settings, prewarm=False)
                cold_rows = await series(stack, probe, cold, cold_rooms, "cold")
    result["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["launcher"] = (
        "LocalProcessLauncher with prewarm (the default): one agent process started ahead, "
        "imports done; each room waits until it is ready before the user joins"
    )
    result.update(summarise(rows))
    result["target"] = {
        "p95_first_audible_ms_under": TARGET_P95_MS,
        "met": result["first_audible_ms"]["p95"] < TARGET_P95_MS,
    }
    if cold_rows:
        result["cold_start_comparison"] = {
            "launcher": "LocalProcessLauncher(prewarm=False): a python -m functions.agent_job "
            "per room",
            **summarise(cold_rows),
            "per_room": cold_rows,
        }
    result["child_startup"] = child_startup()
    result["per_room"] = rows
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rooms", type=int, default=20, help="rooms, one after the other")
    parser.add_argument(
        "--cold-rooms",
        type=int,
        default=5,
        help="then this many rooms with prewarm off, for comparison (0: none)",
    )
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"write the result here ({DEFAULT_JSON})"
    )
    args = parser.parse_args(argv)
    if args.rooms < 1:
        parser.error("--rooms must be at least 1")
    result = asyncio.run(run(args.rooms, max(args.cold_rooms, 0)))
    text = json.dumps(result, indent=2)
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
