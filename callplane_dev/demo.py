"""``callplane demo``: a simulated phone call through the whole local stack, then a clean stop.

It starts every part (engine, Twilio simulator, edge, media app) in a fresh data directory,
rings the support number with a scripted caller who asks about the weather and says goodbye,
prints the conversation as it happens and the call record at the end, and stops everything.
Exit status 0 means the call went as a real one should: greeting, tool call, answer heard,
the agent hanging up through Twilio's REST API.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rich.console import Console

from callplane_dev.calling import CallOutcome, RunningStack, caller_steps, follow_call
from callplane_dev.console import print_outcome, print_parts, transcript_printer
from callplane_dev.stack import LocalStack, StackOptions

DEMO_PHRASES = ("what is the weather like today", "goodbye")
DEMO_DIR = Path(".callplane/demo")


async def run_demo(console: Console, data_dir: Path = DEMO_DIR) -> bool:
    """Run the demo in a fresh ``data_dir`` (emptied first; the call's WAV recording stays in
    it afterwards); return True when every step of the call happened."""
    started = time.monotonic()
    shutil.rmtree(data_dir, ignore_errors=True)
    options = StackOptions(data_dir=data_dir)
    console.print("[bold]starting the local stack[/] (engine, Twilio simulator, edge, media)")
    async with LocalStack(options) as stack:
        print_parts(console, stack.describe())
        running = RunningStack.from_data_dir(options.data_dir)
        assert running is not None, "the stack writes dev.json as it starts"
        to = stack.number_for("support")
        console.print(f"\n[bold]calling {to}[/] (profile support) as a scripted caller\n")
        outcome = await follow_call(
            running, to, caller_steps(DEMO_PHRASES, hang_up=True), transcript_printer(console)
        )
        print_outcome(console, outcome)
    ok = _went_well(outcome)
    seconds = time.monotonic() - started
    verdict = "[bold green]demo complete[/]" if ok else "[bold red]demo FAILED[/]"
    console.print(f"\n{verdict} in {seconds:.1f} s; every part stopped cleanly")
    return ok


def _went_well(outcome: CallOutcome) -> bool:
    record = outcome.record
    if not outcome.ok or record is None:
        return False
    tools = [c["name"] for c in record["tool_calls"]]
    first = record["transcript"][0]["role"] if record["transcript"] else None
    return (
        first == "agent"
        and tools == ["get_weather", "end_call"]
        and record["end_reason"] == "agent_hung_up"
    )
