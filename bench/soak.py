"""Bench: a long run of phone calls through the local stack, and whether memory levels off.

    uv run python bench/soak.py --calls 50 --minutes 10 --json bench/results/soak_50x10.json

The stack is ``LocalStack(StackOptions(replicas=2))``: two processes of the media app and two
of the stream server behind their fronts, PostgreSQL and Redis, as in the cloud. The Realtime
engine runs in a process of its own (so its memory is measured apart); this process runs the
Twilio simulator, the edge and the callers. ``--calls`` callers each place call after call to
the support number for ``--minutes``: hear the greeting, ask the weather, hear the answer, hang
up. Then no new call starts; the calls still on end by themselves (each lasts at most
``CALL_MAX_S``), and the stack stops. Everything listens on 127.0.0.1 only.

It prints JSON: calls placed, failures (a call not ``completed``, or with a script error such
as an answer that never came) with the first few reasons, call records written (rows ``ended``
in PostgreSQL), and each process's RSS (psutil) sampled every ``--sample-s``: at the start of
the load, its middle and its end, and how much it grew over the last third of the run, which
must stay under 5 % for memory to count as levelled off (``levelled_off``). The caller's WAVs
are deleted as the calls end (the simulator writes one per call), so the disk stays flat too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa

from callplane.records.schema import calls
from callplane_dev.stack import DEFAULT_CALLER, LocalStack, StackOptions
from callplane_standins.realtime_engine.context import EngineSettings
from callplane_standins.realtime_engine.server import EngineServer, run_engine
from callplane_standins.serving import bind_loopback
from callplane_standins.twilio_simulator.caller import Step, hang_up, say, wait_for_reply

CALL_MAX_S = 60.0
"""A call that is still on after this long is hung up by its caller (and counted failed)."""
LEVEL_OFF_GROWTH = 0.05
"""Memory levels off when it grows less than this over the last third of the run."""
ENGINE_START_S = 60.0
PACE = 4.0  # the engine streams its audio this many times faster than real time
SCRIPT: list[Step] = [
    wait_for_reply(timeout_s=20),  # the greeting
    say("what is the weather like today"),
    wait_for_reply(timeout_s=20),
    hang_up(),
]


@dataclass
class Tally:
    """What the callers saw."""

    placed: int = 0
    completed: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    sids: list[str] = field(default_factory=list)


# ---- the engine's process ---------------------------------------------------------------


def serve_engine(port: int) -> None:
    """The body of the engine's process (``--serve-engine PORT``): serve until terminated."""

    def ready(server: EngineServer) -> None:
        print(f"engine ready at {server.url}", flush=True)

    asyncio.run(run_engine(EngineSettings(pace=PACE), "127.0.0.1", port, ready))


def free_port() -> int:
    sock = bind_loopback(0)
    port = int(sock.getsockname()[1])
    sock.close()
    return port


async def start_engine() -> tuple[asyncio.subprocess.Process, str]:
    """The engine in a child process, once it listens (it says so on its stdout); and its
    Realtime URL."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve-engine",
        str(port),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(ENGINE_START_S):
            line = await process.stdout.readline()
    except TimeoutError:
        line = b""
    if not line.startswith(b"engine ready"):
        await stop_engine(process)
        raise RuntimeError(f"the engine did not start on port {port}: {line!r}")
    return process, f"ws://127.0.0.1:{port}/v1/realtime"


async def stop_engine(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


# ---- memory -------------------------------------------------------------------------------


def processes(stack: LocalStack, engine_pid: int) -> dict[str, int]:
    """Name -> pid of every process of the run."""
    plane = stack.plane
    assert plane is not None and plane.media is not None and plane.streams is not None
    found = {"engine": engine_pid, "simulator": os.getpid()}
    for name, replicas in (("media", plane.media.replicas), ("streams", plane.streams.replicas)):
        for index, replica in enumerate(replicas):
            if replica.pid is not None:
                found[f"{name}_{index}"] = replica.pid
    for name, pid in (("postgres", plane.postgres.pid), ("redis", plane.redis.pid)):
        if pid is not None:
            found[name] = pid
    return found


def rss_mb(pids: dict[str, int]) -> dict[str, float]:
    """Each process's resident set, MB (a process that is gone is left out)."""
    out: dict[str, float] = {}
    for name, pid in pids.items():
        with contextlib.suppress(psutil.Error):
            out[name] = round(psutil.Process(pid).memory_info().rss / 1e6, 1)
    return out


async def sample_memory(
    pids: dict[str, int], every_s: float, t0: float, samples: list[dict[str, Any]]
) -> None:
    while True:
        samples.append({"t_s": round(time.monotonic() - t0, 1), "rss_mb": rss_mb(pids)})
        await asyncio.sleep(every_s)


def memory_figures(samples: list[dict[str, Any]], load_s: float) -> dict[str, Any]:
    """Per process: RSS at the start, middle and end of the load, and the growth over its last
    third (end vs the sample at two thirds)."""

    def at(t: float) -> dict[str, float]:
        best = min(samples, key=lambda s: abs(s["t_s"] - t))
        return dict(best["rss_mb"])

    start, middle, two_thirds, end = at(0), at(load_s / 2), at(load_s * 2 / 3), at(load_s)
    per: dict[str, Any] = {}
    for name in end:
        if name in start and name in two_thirds:
            growth = (end[name] - two_thirds[name]) / two_thirds[name]
            per[name] = {
                "start_mb": start[name],
                "middle_mb": middle.get(name),
                "end_mb": end[name],
                "last_third_growth": round(growth, 4),
            }
    return per


# ---- the run --------------------------------------------------------------------------------


async def caller(
    stack: LocalStack, number: str, deadline: float, tally: Tally, delay_s: float
) -> None:
    """Place calls one after the other until ``deadline``."""
    await asyncio.sleep(delay_s)
    while time.monotonic() < deadline:
        tally.placed += 1
        try:
            result = await stack.simulator.place_call(
                DEFAULT_CALLER, number, SCRIPT, max_duration_s=CALL_MAX_S
            )
        except Exception as exc:  # the simulator could not even place it
            tally.failures[f"not placed: {type(exc).__name__}: {exc}"[:160]] += 1
            await asyncio.sleep(1.0)
            continue
        tally.sids.append(result.call_sid)
        if result.wav_path is not None:
            result.wav_path.unlink(missing_ok=True)
        if result.status != "completed":
            tally.failures[f"status {result.status}"] += 1
        elif result.errors:
            tally.failures[result.errors[0][:160]] += 1
        else:
            tally.completed += 1


def records_written(stack: LocalStack, since: float) -> dict[str, int]:
    """Call records in PostgreSQL started since ``since``, by status."""
    assert stack.plane is not None
    engine = sa.create_engine(stack.plane.database_url)
    try:
        with engine.connect() as db:
            rows = db.execute(
                sa.select(calls.c.status, sa.func.count())
                .where(calls.c.started_at >= since)
                .group_by(calls.c.status)
            ).all()
    finally:
        engine.dispose()
    return {str(status): int(count) for status, count in rows}


async def soak(n_calls: int, minutes: float, sample_s: float, data_dir: Path) -> dict[str, Any]:
    engine, engine_url = await start_engine()
    try:
        options = StackOptions(
            data_dir=data_dir, replicas=2, realtime_url=engine_url, write_dev_file=False, pace=PACE
        )
        async with LocalStack(options) as stack:
            postgres = stack.plane.postgres if stack.plane is not None else None
            result = await load(stack, engine.pid, n_calls, minutes, sample_s)
        if postgres is not None:
            await postgres.discard()  # the cluster of this run only
        return result
    finally:
        await stop_engine(engine)


async def load(
    stack: LocalStack, engine_pid: int, n_calls: int, minutes: float, sample_s: float
) -> dict[str, Any]:
    number = stack.number_for("support")
    pids = processes(stack, engine_pid)
    tally = Tally()
    samples: list[dict[str, Any]] = []
    load_s = minutes * 60
    wall0, t0 = time.time(), time.monotonic()
    sampler = asyncio.create_task(sample_memory(pids, sample_s, t0, samples))
    deadline = t0 + load_s
    stagger = min(0.25, load_s / max(n_calls, 1) / 4)
    callers = [
        asyncio.create_task(caller(stack, number, deadline, tally, i * stagger))
        for i in range(n_calls)
    ]
    try:
        await asyncio.sleep(load_s)
        samples.append({"t_s": round(time.monotonic() - t0, 1), "rss_mb": rss_mb(pids)})
        # No new call starts now; those still on end within CALL_MAX_S.
        async with asyncio.timeout(CALL_MAX_S + 30):
            await asyncio.gather(*callers)
    finally:
        sampler.cancel()
        for task in callers:
            task.cancel()
        await asyncio.gather(sampler, *callers, return_exceptions=True)
    await asyncio.sleep(2 * (stack.settings.call_heartbeat_s if stack.settings else 5))
    records = await asyncio.to_thread(records_written, stack, wall0 - 1)
    memory = memory_figures([s for s in samples if s["t_s"] <= load_s + 1], load_s)
    return {
        "calls": tally.placed,
        "completed": tally.completed,
        "failures": sum(tally.failures.values()),
        "failure_reasons": dict(tally.failures.most_common(5)),
        "records_written": records,
        "memory_mb": memory,
        "levelled_off": all(m["last_third_growth"] < LEVEL_OFF_GROWTH for m in memory.values()),
        "samples": samples,
        "processes": {
            "engine": "the Realtime engine (script mode, espeak-ng voice, recognition)",
            "simulator": "this process: the Twilio simulator, the edge and the callers",
            "media_N / streams_N": "the replicas of the media app and of the stream server",
            "postgres / redis": "the servers' main processes (not PostgreSQL's backends)",
        },
    }


def main(argv: list[str] | None = None, *, out: Callable[[str], None] = print) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50, help="callers placing calls at once")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long calls are placed")
    parser.add_argument("--sample-s", type=float, default=15.0, help="RSS sampling interval")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--serve-engine", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_engine is not None:
        serve_engine(args.serve_engine)
        return
    if not 1 <= args.calls <= 200:
        parser.error("--calls: 1 to 200 callers")
    if not 0 < args.minutes <= 120:
        parser.error("--minutes: above 0, at most 120")
    if not 1 <= args.sample_s <= args.minutes * 20:
        parser.error("--sample-s: at least 1 s, and several samples per run")
    with tempfile.TemporaryDirectory(prefix="callplane-soak-") as tmp:
        result = asyncio.run(soak(args.calls, args.minutes, args.sample_s, Path(tmp)))
    report = {
        "command": " ".join(["python", "bench/soak.py", *(argv or sys.argv[1:])]),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
            "python": sys.version.split()[0],
        },
        **result,
    }
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    out(text)


if __name__ == "__main__":
    main()
