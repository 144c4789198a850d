"""One agent job as a process: ``python -m functions.agent_job --room NAME [--profile P]``.

The dispatch launcher spawns one per room (locally a child process, so that a crash of one
agent cannot take the others down). Settings come from ``CALLPLANE_MEDIA_CONFIG`` and tools
from its ``tools_module``, as for the media app. SIGTERM or SIGINT make the agent leave the
room, save its record and exit normally. Exit codes: 0 after a normal end, 1 when the job
failed while serving (the Realtime API was unavailable, an unexpected error), 2 when it could
not start (bad settings, room or profile; LiveKit unreachable). Logs go to stderr; an error
ends with a one-line reason there.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from callplane.coordination import Coordination, CoordinationUnavailable
from callplane.media_settings import MediaSettings
from callplane.records import CallRecord
from callplane.rooms.agent import AgentJobError, run_agent

log = logging.getLogger("callplane.agent_job")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CANNOT_START = 2


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m functions.agent_job",
        description="Serve one LiveKit room with a callplane agent until its humans are gone.",
    )
    parser.add_argument("--room", required=True, help="the LiveKit room to serve")
    parser.add_argument(
        "--profile",
        default=None,
        help=(
            "agent profile (default: the room metadata's 'profile', else the profile whose "
            "room this is, else the first profile)"
        ),
    )
    parser.add_argument("--job-id", default=None, help="job id (default: a random one)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    return parser.parse_args(argv)


async def _hold_lease(coordination: Coordination, room: str, job_id: str, ttl_s: float) -> None:
    """Renew the room's lease while the agent serves: the job outlives the container that
    launched it (a Modal container, a media replica), so its own heartbeat keeps the room
    from getting a second agent. Losing the lease is logged, never a reason to stop serving.
    The job does not release the lease when it ends: the launcher does, once it has recorded
    the end (or the lease lapses, if the launcher is gone too)."""
    while True:
        await asyncio.sleep(ttl_s / 3)
        try:
            if not await coordination.leases.renew(room, job_id, ttl_s):
                log.warning("job %s no longer holds room %r's lease", job_id, room)
        except CoordinationUnavailable as exc:
            log.warning("job %s: lease not renewed: %s", job_id, exc)


async def _serve(settings: MediaSettings, args: argparse.Namespace) -> CallRecord:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    coordination = settings.open_coordination()
    holding: asyncio.Task[None] | None = None
    if coordination.shared and args.job_id:  # an in-process lease lives with the launcher
        holding = loop.create_task(
            _hold_lease(coordination, args.room, args.job_id, settings.agent_lease_s)
        )
    try:
        return await run_agent(
            settings,
            settings.load_tools(),
            args.room,
            args.profile,
            job_id=args.job_id,
            stop=stop,
        )
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if holding is not None:  # the launcher releases the room once it has seen the end
            holding.cancel()
            await asyncio.gather(holding, return_exceptions=True)
        await coordination.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = MediaSettings.from_env()
        record = asyncio.run(_serve(settings, args))
    except (AgentJobError, ValueError) as exc:
        print(f"agent_job: cannot serve room {args.room!r}: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    except Exception as exc:
        logging.getLogger("callplane.agent_job").exception("agent job failed")
        print(f"agent_job: room {args.room!r} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if record.end_reason.startswith("realtime_unavailable"):
        print(f"agent_job: room {args.room!r}: {record.end_reason}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
