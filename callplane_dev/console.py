"""How the local commands show a stack and a call on the terminal (rich), in one place."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from callplane_dev.calling import CallOutcome, OnLine

_WHO = {
    "agent": "[bold cyan]agent [/]",
    "caller": "[bold yellow]caller[/]",
    "tool": "[magenta]tool  [/]",
}
_HUNG_UP_BY = {
    "rest": "the agent, through Twilio's REST API",
    "caller": "the caller",
    "remote": "the far end",
}


def print_parts(console: Console, parts: dict[str, Any]) -> None:
    table = Table(title="callplane local stack", show_header=True, header_style="bold")
    table.add_column("part")
    table.add_column("where")
    table.add_row("Realtime engine", parts["engine"])
    table.add_row("Twilio simulator (REST)", parts["twilio"])
    table.add_row("edge worker", parts["edge"] + "/twilio/voice")
    table.add_row("media app", parts["media"])
    table.add_row("media streams", parts["streams"])
    if "livekit" in parts:
        table.add_row("livekit-server", parts["livekit"])
        table.add_row("web playground", parts["playground"])
    for service, urls in parts.get("replicas", {}).items():
        for i, url in enumerate(urls):
            table.add_row(f"{service} replica {i}", url)
    if "database" in parts:
        table.add_row("PostgreSQL (records)", parts["database"])
        table.add_row("Redis (coordination)", parts["redis"])
    for n in parts["numbers"]:
        table.add_row(f"number ({n['profile']})", n["number"])
    console.print(table)


def transcript_printer(console: Console) -> OnLine:
    def show(who: str, text: str) -> None:
        console.print(f"{_WHO.get(who, who)} {text}")

    return show


def print_outcome(console: Console, outcome: CallOutcome) -> None:
    result, record = outcome.result, outcome.record
    table = Table(title="call record", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("call", f"{result['call_sid']}  {result['from']} -> {result['to']}")
    by = _HUNG_UP_BY.get(str(result.get("hung_up_by")), "nobody")
    table.add_row("status", f"{result['status']}, hung up by {by}")
    if record is not None:
        table.add_row("profile", record["profile"])
        table.add_row("duration", f"{record['duration_s']:.1f} s, ended: {record['end_reason']}")
        tools = ", ".join(c["name"] for c in record["tool_calls"]) or "none"
        table.add_row("tool calls", tools)
        table.add_row("interruptions", str(len(record["interruptions"])))
        if record["reconnects"]:
            table.add_row("reconnects", str(record["reconnects"]))
        for outage in record.get("outages") or []:
            table.add_row(
                "Realtime outage",
                f"{outage['duration_s']:.1f} s at {outage['at']:.1f} s, {outage['outcome']}",
            )
        u = record["usage"]
        table.add_row(
            "tokens",
            f"audio in {u['input_audio']}, audio out {u['output_audio']}, "
            f"text in {u['input_text']}, text out {u['output_text']}",
        )
        c = record["cost_usd"]
        table.add_row(
            "estimated cost",
            f"${c['total']:.4f} (telephony ${c['telephony']:.4f}, model ${c['model']:.4f})",
        )
    else:
        table.add_row("record", "[red]none: the call never reached the media app[/]")
    if result.get("wav_path"):
        table.add_row("recording", str(result["wav_path"]))
    for error in result.get("errors") or []:
        table.add_row("[red]error[/]", error)
    console.print(table)
