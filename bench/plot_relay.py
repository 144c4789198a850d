"""Plot a ``bench/relay.py --sweep`` result: p50/p99 added latency and bridge CPU against N.

    uv run --with matplotlib python bench/plot_relay.py bench/results/relay_sweep.json [OUT.png]

matplotlib is not a project dependency; ``uv run --with matplotlib`` brings it for this run.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any


def main() -> None:
    source = Path(sys.argv[1])
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else source.with_suffix(".png")
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    data = json.loads(source.read_text())
    fig, (lat, cpu) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"streams": "-", "media": "--", "noop": ":"}
    for bridge in styles:
        runs = [r for r in data["runs"] if r["bridge"] == bridge]
        if not runs:
            continue
        n = [r["calls"] for r in runs]
        for metric, colour in (("inbound_ms", "tab:blue"), ("outbound_ms", "tab:orange")):
            for q, marker in (("p50", "o"), ("p99", "^")):
                lat.plot(
                    n,
                    [r[metric].get(q, float("nan")) for r in runs],
                    styles[bridge],
                    marker=marker,
                    color=colour,
                    label=f"{bridge} {metric.removesuffix('_ms')} {q}",
                )
        cpu.plot(
            n,
            [100 * r["bridge_process"]["cpu_share_of_core"] for r in runs],
            styles[bridge],
            marker="o",
            label=f"{bridge} bridge CPU",
        )
    noop = [r for r in data["runs"] if r["bridge"] == "noop"]
    if noop:  # the load side's own core: where it nears 100 %, figures describe the harness
        cpu.plot(
            [r["calls"] for r in noop],
            [
                100 * sum(r["core1_cpu_share"].get(k, 0.0) for k in ("engine", "generator"))
                for r in noop
            ],
            "-.",
            color="grey",
            marker="s",
            label="harness CPU on core 1 (noop runs)",
        )
    lat.set_xlabel("concurrent calls")
    lat.set_ylabel("added latency per frame (ms)")
    lat.set_yscale("log")
    lat.axhline(5, color="grey", lw=0.8)  # the p99 target at 200 calls
    lat.axhline(20, color="grey", lw=0.8, ls="--")  # the p99 bound for calls per core
    lat.legend(fontsize=7)
    lat.grid(True, which="both", alpha=0.3)
    cpu.set_xlabel("concurrent calls")
    cpu.set_ylabel("bridge process CPU (% of one core)")
    cpu.grid(True, alpha=0.3)
    cpu.legend(fontsize=8)
    load = data["machine"]["loadavg_at_start"]
    fig.suptitle(
        f"callplane media relay, bridge on core 0, load on core 1 "
        f"(load average at start {load[0]:.1f} on {data['machine']['cpus']} CPUs)"
    )
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    print(target)


if __name__ == "__main__":
    main()
