"""Frames per second mixed, callplane's room mixer against ``livekit.rtc.AudioMixer``.

``uv run python bench/mixer.py [--seconds S]`` prints JSON: for each rate (24 kHz, the Realtime
session's; 48 kHz, the phone bridge's room side; 8 kHz, the phone line's) and 1-4 sources, how
many 20 ms frames each mixer produces per second of CPU-bound work when every source always
has audio ready. Both get their input as fast as they take it, so the figure is the mixer's own
cost (a room needs 50 frames/s). Each case runs three times for about ``S`` seconds (default
0.2) and the best run counts, which keeps other load on a shared machine out of the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from collections.abc import AsyncIterator

import numpy as np
from livekit import rtc

from callplane.rooms.mixer import Mixer

RATES = (24000, 48000, 8000)
SOURCES = (1, 2, 3, 4)
FRAME_MS = 20
RUNS = 3


def _frames(rate: int, sources: int) -> list[bytes]:
    samples = rate * FRAME_MS // 1000
    rng = np.random.default_rng(sources)
    return [rng.integers(-8000, 8000, samples, dtype=np.int16).tobytes() for _ in range(sources)]


def callplane_fps(rate: int, sources: int, seconds: float) -> float:
    """Push one frame per source, pull the mix; frames pulled per second."""
    samples = rate * FRAME_MS // 1000
    mixer = Mixer(samples, sample_rate=rate)
    frames = _frames(rate, sources)
    names = [f"s{i}" for i in range(sources)]
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(100):
            for name, frame in zip(names, frames, strict=True):
                mixer.push(name, frame)
            assert mixer.pull() is not None
        done += 100
        if time.perf_counter() >= deadline:
            return done / (time.perf_counter() - start)


async def _endless(frame: rtc.AudioFrame) -> AsyncIterator[rtc.AudioFrame]:
    while True:
        yield frame


async def livekit_fps(rate: int, sources: int, seconds: float) -> float:
    """``rtc.AudioMixer`` over streams that always have a frame; mixed frames per second."""
    samples = rate * FRAME_MS // 1000
    mixer = rtc.AudioMixer(rate, 1, blocksize=samples, capacity=10)
    for data in _frames(rate, sources):
        mixer.add_stream(_endless(rtc.AudioFrame(data, rate, 1, samples)))
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    try:
        async for _ in mixer:
            done += 1
            if done % 50 == 0 and time.perf_counter() >= deadline:
                break
        return done / (time.perf_counter() - start)
    finally:
        await mixer.aclose()


async def main(seconds: float) -> dict[str, object]:
    results: dict[str, dict[str, dict[str, float]]] = {
        "callplane.rooms.mixer.Mixer": {},
        "livekit.rtc.AudioMixer": {},
    }
    for rate in RATES:
        ours = results["callplane.rooms.mixer.Mixer"].setdefault(str(rate), {})
        theirs = results["livekit.rtc.AudioMixer"].setdefault(str(rate), {})
        for n in SOURCES:
            ours[str(n)] = round(max(callplane_fps(rate, n, seconds) for _ in range(RUNS)))
            theirs[str(n)] = round(max([await livekit_fps(rate, n, seconds) for _ in range(RUNS)]))
    return {
        "unit": "20 ms frames mixed per second",
        "python": platform.python_version(),
        "livekit": rtc.__version__,
        "cpus": os.cpu_count(),
        "results": results,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench/mixer.py", description=__doc__)
    parser.add_argument("--seconds", type=float, default=0.2, help="per run (default 0.2)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.seconds)), indent=2))
