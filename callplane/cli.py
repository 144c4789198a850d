"""The ``callplane`` command."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from callplane.local.engine.context import EngineMode, EngineSettings
from callplane.local.engine.script import ScriptError, load_script

app = typer.Typer(
    help="callplane: put a voice AI agent on the phone network and the web.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


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
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


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
    except ScriptError as exc:
        raise typer.BadParameter(str(exc), param_hint="--script") from None
    engine_mode: EngineMode = "load" if mode == "load" else "script"
    settings = EngineSettings(mode=engine_mode, script_path=script, api_key=api_key, pace=pace)

    from callplane.local.engine.server import EngineServer, run_engine

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


@app.command()
def demo() -> None:
    """Run an offline conversation end to end: engine, the openai SDK as client, real audio."""
    from callplane.local.demo import run_demo

    ok = asyncio.run(run_demo(console))
    raise typer.Exit(0 if ok else 1)
