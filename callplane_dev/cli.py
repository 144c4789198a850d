"""The ``callplane`` command."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(
    help="callplane: put a voice AI agent on the phone network and the web.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)

# What the offline stand-ins need beyond the production install (pyproject's `local` extra).
LOCAL_EXTRA_MODULES = ("pocketsphinx",)


def _require_local_extra() -> None:
    """Every command runs the offline stand-ins; say how to get them rather than fail on an
    import deep inside one."""
    missing = [name for name in LOCAL_EXTRA_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        console.print(
            f"[red]error:[/] the offline stack needs {', '.join(missing)}, which a production "
            "install of callplane leaves out. Fix: pip install 'callplane\\[local]' "
            "(or uv sync --extra local in a checkout)."
        )
        raise typer.Exit(2)


@app.callback()
def main(
    log_level: Annotated[
        str, typer.Option(help="Logging level: debug, info, warning or error.")
    ] = "info",
) -> None:
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise typer.BadParameter(
            f"{log_level!r} is not a level; use debug, info, warning or error.",
            param_hint="--log-level",
        )
    _require_local_extra()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level > logging.DEBUG:
        # Libraries log every HTTP request at INFO; only callplane's own lines are news.
        for noisy in ("httpx", "twilio.http_client", "websockets", "uvicorn"):
            logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


@app.command()
def engine(
    host: Annotated[str, typer.Option(help="Address to bind; keep it on loopback.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0 picks a free one).")] = 8765,
    api_key: Annotated[
        str | None, typer.Option(help="Accept only this Bearer key (any key otherwise).")
    ] = None,
    script: Annotated[
        Path | None,
        typer.Option(help="A script TOML file replacing the default phrases and replies."),
    ] = None,
    mode: Annotated[
        str,
        typer.Option(help="'script' (recognition and voice) or 'load' (fixed reply clip)."),
    ] = "script",
    pace: Annotated[
        float, typer.Option(help="How many times faster than real time audio is streamed.")
    ] = 4.0,
) -> None:
    """Serve the OpenAI Realtime API (GA protocol) offline: a scripted fixed-phrase engine."""
    from callplane_standins.realtime_engine.context import EngineMode, EngineSettings
    from callplane_standins.realtime_engine.script import EngineScriptError, load_script

    if mode not in ("script", "load"):
        raise typer.BadParameter(
            f"{mode!r} is not a mode; use 'script' or 'load'.", param_hint="--mode"
        )
    if pace <= 0:
        raise typer.BadParameter(
            f"{pace} is not a pace; use a number above 0, e.g. 4.", param_hint="--pace"
        )
    try:
        load_script(script)
    except EngineScriptError as exc:
        raise typer.BadParameter(str(exc), param_hint="--script") from None
    engine_mode: EngineMode = "load" if mode == "load" else "script"
    settings = EngineSettings(mode=engine_mode, script_path=script, api_key=api_key, pace=pace)

    from callplane_standins.realtime_engine.server import EngineServer, run_engine

    def ready(server: EngineServer) -> None:
        console.print(
            f"[bold green]callplane engine[/] listening on [bold]{server.url}[/] (mode {mode})"
        )
        console.print(
            "Point an app using the openai SDK at it:\n"
            f'  AsyncOpenAI(api_key="{api_key or "local"}", websocket_base_url="{server.base_url}")'
        )

    try:
        asyncio.run(run_engine(settings, host, port, ready))
    except KeyboardInterrupt:
        console.print("engine stopped")
    except OSError as exc:
        console.print(
            f"[red]cannot listen on {host}:{port}: {exc.strerror}[/]; pick another --port"
        )
        raise typer.Exit(1) from None


DATA_DIR_OPTION = typer.Option(
    help="Where the local stack keeps its state: numbers, credentials, call records."
)


@app.command()
def dev(
    data_dir: Annotated[Path, DATA_DIR_OPTION] = Path(".callplane"),
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON line with every URL once ready.")
    ] = False,
    engine_port: Annotated[int, typer.Option(help="Realtime engine port.")] = 8765,
    twilio_port: Annotated[int, typer.Option(help="Twilio simulator port.")] = 8089,
    edge_port: Annotated[int, typer.Option(help="Edge worker port.")] = 8787,
    media_port: Annotated[int, typer.Option(help="Media app port.")] = 8000,
    livekit_port: Annotated[int, typer.Option(help="livekit-server port.")] = 7880,
    any_ports: Annotated[
        bool, typer.Option("--any-ports", help="Ignore the port options; pick free ports.")
    ] = False,
    livekit: Annotated[
        bool | None,
        typer.Option(
            "--livekit/--no-livekit",
            help="Run livekit-server + Redis for the web playground and agent rooms "
            "(default: when scripts/tools/setup_tools.sh has built them).",
        ),
    ] = None,
    replicas: Annotated[
        int,
        typer.Option(
            min=1,
            max=8,
            help="1: the media plane in this process. 2-8: the cloud's shape, that many "
            "processes of the media app and of the stream server behind a front each, with "
            "PostgreSQL and Redis shared by all.",
        ),
    ] = 1,
) -> None:
    """Run every local part on loopback until Ctrl-C: the engine, the Twilio simulator, the
    edge worker and the media app, with simulated numbers bought for the local stack; and a real
    livekit-server with Redis for the browser playground and on-demand agents."""
    import json

    from callplane_dev.console import print_parts
    from callplane_dev.livekit_server import SETUP_HINT, find_tool
    from callplane_dev.stack import LocalStack, StackOptions

    have_livekit = bool(find_tool("livekit-server") and find_tool("redis-server"))
    if livekit and not have_livekit:
        console.print(f"[red]livekit-server or redis-server is not installed[/]: {SETUP_HINT}")
        raise typer.Exit(1)
    use_livekit = have_livekit if livekit is None else livekit
    ports = (
        (0, 0, 0, 0, 0)
        if any_ports
        else (engine_port, twilio_port, edge_port, media_port, livekit_port)
    )
    options = StackOptions(
        data_dir=data_dir,
        engine_port=ports[0],
        twilio_port=ports[1],
        edge_port=ports[2],
        media_port=ports[3],
        livekit=use_livekit,
        livekit_port=ports[4],
        replicas=replicas,
    )

    async def run() -> None:
        async with LocalStack(options) as stack:
            if json_output:
                print(json.dumps(stack.describe()), flush=True)
            else:
                print_parts(console, stack.describe())
                support = stack.number_for("support")
                console.print(
                    "\nTry it:\n"
                    f'  uv run callplane call {support} --say "what is the weather like today" '
                    "--say goodbye"
                )
                if stack.livekit is not None:
                    console.print(f"  open {stack.playground_link()} and press Talk")
                elif livekit is None:
                    console.print(f"  (no LiveKit: {SETUP_HINT}, for the web playground)")
                console.print("Ctrl-C stops every part.")
            await asyncio.Event().wait()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        console.print("local stack stopped")
    except OSError as exc:
        console.print(f"[red]{exc}[/]: stop what uses the port, pick other ports, or --any-ports")
        raise typer.Exit(1) from None


@app.command()
def call(
    number: Annotated[
        str, typer.Argument(help="A local stack number (E.164) or the profile answering it.")
    ],
    say: Annotated[
        list[str] | None,
        typer.Option("--say", help="What the caller says, in order (repeat the option)."),
    ] = None,
    hang_up: Annotated[
        bool, typer.Option(help="Hang up after the last answer, unless the agent did.")
    ] = True,
    from_: Annotated[str, typer.Option("--from", help="The caller's number.")] = "+15017122661",
    data_dir: Annotated[Path, DATA_DIR_OPTION] = Path(".callplane"),
) -> None:
    """Place a simulated call on the local stack, print the conversation live and the record at
    the end. Uses the stack `callplane dev` runs; without one, starts one for this call."""
    from callplane_dev.calling import (
        CallFailed,
        RunningStack,
        caller_steps,
        follow_call,
        on_running_stack,
    )
    from callplane_dev.console import print_outcome, transcript_printer

    steps = caller_steps(say or [], hang_up=hang_up)

    async def place(running: RunningStack) -> bool:
        to = running.resolve(number)
        console.print(f"calling {to} ({running.numbers[to]}) from {from_}")
        outcome = await follow_call(running, to, steps, transcript_printer(console), from_=from_)
        print_outcome(console, outcome)
        return outcome.ok

    def note(text: str) -> None:
        console.print(f"[dim]{text}[/]")

    try:
        ok = asyncio.run(on_running_stack(data_dir, place, note))
    except CallFailed as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    raise typer.Exit(0 if ok else 1)


@app.command()
def dial(
    number: Annotated[str, typer.Argument(help="Who to call, E.164 (e.g. +14155550123).")],
    profile: Annotated[str, typer.Option(help="The agent profile that makes the call.")],
    context: Annotated[
        str, typer.Option(help='JSON object for the call, e.g. \'{"name": "Amina"}\'.')
    ] = "{}",
    callee: Annotated[
        str | None,
        typer.Option(
            help="Local stack only: who answers: human, voicemail, busy or no_answer "
            "(the simulator's callee for NUMBER)."
        ),
    ] = None,
    rings: Annotated[int, typer.Option(help="With --callee: rings before pickup.")] = 2,
    data_dir: Annotated[Path, DATA_DIR_OPTION] = Path(".callplane"),
) -> None:
    """Have the agent call someone; print each attempt and the record at the end. Uses the
    stack `callplane dev` runs; without one, starts one for this call."""
    import json as _json

    from callplane_dev.calling import CallFailed, RunningStack, dial, on_running_stack, set_callee

    try:
        parsed = _json.loads(context)
    except _json.JSONDecodeError as exc:
        raise typer.BadParameter(
            f"{context!r} is not JSON ({exc.msg}); give an object", param_hint="--context"
        ) from None
    if not isinstance(parsed, dict):
        raise typer.BadParameter(
            'give a JSON object, e.g. {"name": "Amina"}', param_hint="--context"
        )

    def progress(job: dict[str, Any]) -> None:
        for a in job["attempts"]:
            by = f", answered by {a['answered_by']}" if a["answered_by"] else ""
            console.print(f"attempt {a['number']}: {a['status']}{by}")

    async def place(running: RunningStack) -> dict[str, Any]:
        if callee is not None:
            steps = [{"wait_for_reply": 15}, {"say": "goodbye"}, {"wait_for_reply": 15}]
            spec: dict[str, Any] = {"kind": callee, "rings": rings}
            if callee == "human":
                spec["script"] = steps
            await set_callee(running, number, spec)
        console.print(f"{profile} calls {number}")
        return await dial(running, number, profile, parsed, progress)

    def note(text: str) -> None:
        console.print(f"[dim]{text}[/]")

    try:
        job = asyncio.run(on_running_stack(data_dir, place, note))
    except CallFailed as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    record = job.get("record") or {}
    for line in record.get("transcript", []):
        console.print(f"{line['role']:>6}  {line['text']}")
    cost = (record.get("cost_usd") or {}).get("total")
    console.print(
        f"[bold]outcome: {job['outcome']}[/] after {len(job['attempts'])} attempt(s)"
        + (f", ${cost:.4f}" if cost is not None else "")
    )
    raise typer.Exit(0 if job["outcome"] in ("human", "machine") else 1)


@app.command()
def demo(
    engine_only: Annotated[
        bool,
        typer.Option(
            "--engine-only", help="Only a conversation with the engine through the openai SDK."
        ),
    ] = False,
) -> None:
    """Run a simulated phone call through the whole local stack (or only the engine), offline."""
    if engine_only:
        from callplane_dev.sdk_demo import run_demo as run_sdk_demo

        ok = asyncio.run(run_sdk_demo(console))
    else:
        from callplane_dev.demo import run_demo

        ok = asyncio.run(run_demo(console))
    raise typer.Exit(0 if ok else 1)
