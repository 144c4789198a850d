"""Bench: what the media bridge adds to each audio frame, and how many calls one core holds.

    uv run python bench/relay.py --calls 200 --seconds 20 --json bench/results/relay_200.json
    uv run python bench/relay.py --sweep --seconds 15 --json bench/results/relay_sweep.json
    uv run --with matplotlib python bench/plot_relay.py bench/results/relay_sweep.json

Three processes on loopback: the bridge, pinned to core 0; the load engine and the simulated
Twilio, pinned to core 1.

Each simulated stream is authenticated like Twilio's (signed upgrade, edge-minted stream token)
and sends 20 ms µ-law frames on an absolute schedule. Every frame carries a stamp (stream,
sequence number, CLOCK_MONOTONIC send time) in its first bytes; the engine records when each
stamp arrives, stamps its reply chunks the same way, and records when it sends
``speech_started``. A stream speaks 300 ms of square wave every 1.5 s, so each cycle has a
turn, a 1 s reply and a barge-in on that reply (``clear``). Playback is simulated as Twilio
does it: marks are echoed when the audio before them would have finished playing, and at once
on ``clear``.

Figures (ms, p50/p95/p99/max): inbound (generator send -> engine receipt), outbound (engine
send -> generator receipt), barge-in (engine sends speech_started -> generator receives
``clear``; this includes the engine-to-bridge hop), the bridge's CPU share of its core and RSS,
and lost/duplicated/reordered frames. ``--bridge media`` is the media app under uvicorn (its
FastAPI ``/twilio/media`` route); ``--bridge streams`` is the picows stream server
(``functions.stream_server``) handing the same streams to the same code; ``--bridge noop``
(``bench/noop_bridge.py``) measures the harness's own ceiling. The sweep runs all three at each N.

The congestion case (``--stall-every K``): every K-th simulated Twilio stream stops reading its
socket for ``--stall-for`` seconds, ``--stall-after`` seconds into the sending phase (with a
small receive buffer, so that the bridge's socket to it backs up and its writes pause). The
frames it receives afterwards show whether the bridge lost, duplicated or reordered any while
it held them; ``frames.out_*`` and the summary line report them, with ``frames.stalled``
streams.

The harness (``--load``): by default ``bench/loadgen`` (Go, built at the start of each run
into ``~/.cache/callplane/bench``) plays both the engine, event for event like the local engine in
``--mode load``, and the simulated Twilio; ``--bridge noop`` is then its compiled no-op relay.
``--load python`` runs the Python generator below (WebSocket over raw asyncio transports with
pre-built frames) and ``bench/relay_engine.py``, which saturate core 1 near 150 calls but
remain a cross-check of the Go harness at low N.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import functools
import importlib.util
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import numpy as np
import psutil
from twilio.request_validator import RequestValidator

from callplane.security import mint_stream_token, stream_key, stream_url
from callplane_standins.realtime_engine.context import STAMP_BYTES, decode_stamp, encode_stamp

ROOT = Path(__file__).resolve().parent.parent
FRAME = 160  # 20 ms of µ-law
TICK_S = 0.02
SLOTS = 10  # streams are spread over 10 sub-slots of the 20 ms tick
CYCLE_TICKS = 75  # 1.5 s
SPEECH_TICKS = 15  # 300 ms of "speech" per cycle
SWEEP = (1, 50, 100, 200, 300, 400, 500, 800)
KNEE_MS = 100.0
AUTH_TOKEN = "bench-auth-token-0123456789abcdef"
STREAM_SECRET = "bench-stream-secret-0123456789abcdef"
ACCOUNT_SID = "AC" + "0" * 32
PROFILE = "bench"

SILENT = b"\xff" * FRAME
LOUD = bytes([0x80, 0x00]) * (FRAME // 2)  # µ-law full-scale square wave


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ws_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A client frame with a zero masking key (valid; XOR with zeros leaves the payload)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


@dataclass
class Totals:
    """Everything the generator measures, over all streams."""

    out_ms: list[float] = field(default_factory=list)
    out_setup_ms: list[float] = field(default_factory=list)
    lag_ms: list[float] = field(default_factory=list)
    out_lost: int = 0
    out_dup: int = 0
    out_reordered: int = 0
    out_received: int = 0
    # Outbound latency counts chunks stamped from the sending phase on (as inbound counts the
    # frames sent in it), not the greetings all N calls get within the setup second.
    window_start_ns: int = 2**63 - 1
    errors: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass
class StreamResult:
    """What one stream measured, whichever generator ran it."""

    index: int
    sent: int
    out_unique: int
    clears_ns: list[int]


class Stream(asyncio.Protocol):
    """One simulated Twilio media stream."""

    def __init__(self, index: int, totals: Totals, loop: asyncio.AbstractEventLoop) -> None:
        self.index = index
        self.totals = totals
        self.loop = loop
        self.call_sid = "CA" + secrets.token_hex(16)
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.transport: asyncio.Transport | None = None
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.closed = False
        self._buf = bytearray()
        self._handshake_done = False
        self.sent = 0
        self.phase = 0
        self.clears_ns: list[int] = []
        self.out_seen: set[int] = set()
        self.out_max = -1
        self._playout_end = 0.0
        self._marks: collections.deque[tuple[asyncio.TimerHandle, str]] = collections.deque()
        sid = self.stream_sid.encode()
        self._head = b'{"event":"media","sequenceNumber":"'
        self._mid = b'","media":{"track":"inbound","chunk":"'
        self._tail = b'"},"streamSid":"' + sid + b'"}'

    # --- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError(f"closed before upgrade: {exc}"))

    def upgrade(self, host: str, port: int, path: str, signature: str) -> None:
        assert self.transport is not None
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        self.transport.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nX-Twilio-Signature: {signature}\r\n\r\n"
            ).encode()
        )

    def send_json(self, message: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.write(ws_frame(json.dumps(message).encode()))

    def send_start(self, token: str) -> None:
        self.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        self.send_json(
            {
                "event": "start",
                "sequenceNumber": "1",
                "streamSid": self.stream_sid,
                "start": {
                    "streamSid": self.stream_sid,
                    "accountSid": ACCOUNT_SID,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": {"token": token, "from": "+14155550100"},
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
            }
        )

    def send_stop(self) -> None:
        if not self.closed:
            self.send_json(
                {"event": "stop", "streamSid": self.stream_sid, "stop": {"callSid": self.call_sid}}
            )

    # --- the hot path of the generator ---------------------------------------------------------

    def send_frame(self, tick: int) -> None:
        if self.closed:
            return
        assert self.transport is not None
        seq = self.sent
        base = LOUD if (tick + self.phase) % CYCLE_TICKS < SPEECH_TICKS else SILENT
        now = time.monotonic_ns()
        audio = encode_stamp(self.index, seq, now) + base[STAMP_BYTES:]
        n = str(seq + 2).encode()
        message = (
            self._head
            + n
            + self._mid
            + n
            + b'","timestamp":"'
            + str(seq * 20).encode()
            + b'","payload":"'
            + base64.b64encode(audio)
            + self._tail
        )
        self.transport.write(ws_frame(message))
        self.sent += 1

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self._handshake_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[:end]).split(b"\r\n", 1)[0]
            del buf[: end + 4]
            self._handshake_done = True
            if b" 101 " not in status:
                self.upgraded.set_exception(ConnectionError(status.decode(errors="replace")))
                return
            self.upgraded.set_result(None)
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            length = b1 & 0x7F
            pos = 2
            if length == 126:
                if len(buf) < 4:
                    return
                length = int.from_bytes(buf[2:4], "big")
                pos = 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length = int.from_bytes(buf[2:10], "big")
                pos = 10
            if len(buf) < pos + length:
                return
            payload = bytes(buf[pos : pos + length])
            del buf[: pos + length]
            opcode = b0 & 0x0F
            if opcode == 1:
                self._on_text(payload)
            elif opcode == 9 and self.transport is not None:  # ping -> pong
                self.transport.write(ws_frame(payload, 0xA))
            elif opcode == 8:
                self.closed = True

    def _on_text(self, payload: bytes) -> None:
        now_ns = time.monotonic_ns()
        message = json.loads(payload)
        event = message.get("event")
        if event == "media":
            audio = base64.b64decode(message["media"]["payload"])
            stamp = decode_stamp(audio)
            if stamp is not None:
                _, seq, sent_ns = stamp
                totals = self.totals
                if sent_ns >= totals.window_start_ns:  # the steady state, as inbound
                    totals.out_ms.append((now_ns - sent_ns) / 1e6)
                else:  # the greetings, while the calls were being set up
                    totals.out_setup_ms.append((now_ns - sent_ns) / 1e6)
                totals.out_received += 1
                if seq in self.out_seen:
                    totals.out_dup += 1
                else:
                    if seq < self.out_max:
                        totals.out_reordered += 1
                    self.out_seen.add(seq)
                    self.out_max = max(self.out_max, seq)
            now = self.loop.time()
            self._playout_end = max(now, self._playout_end) + len(audio) / 8000
        elif event == "mark":
            name = str(message["mark"]["name"])
            handle = self.loop.call_at(self._playout_end, self._echo_mark)
            self._marks.append((handle, name))
        elif event == "clear":
            self.clears_ns.append(now_ns)
            while self._marks:  # Twilio echoes the marks of cleared audio at once
                handle, _ = self._marks[0]
                handle.cancel()
                self._echo_mark()
            self._playout_end = self.loop.time()
        else:
            self.totals.errors[f"unexpected_{event}"] += 1

    def _echo_mark(self) -> None:
        if not self._marks:
            return
        _, name = self._marks.popleft()
        if not self.closed:
            self.send_json({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})


def pct(values: Any) -> dict[str, float | int]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"count": 0}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "count": int(a.size),
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "max": round(float(a.max()), 3),
    }


@dataclass
class Procs:
    engine: subprocess.Popen[str]
    bridge: subprocess.Popen[bytes]
    bridge_port: int
    workdir: Path
    stores: SharedStores | None = None


class SharedStores:
    """PostgreSQL and Redis for ``--shared-state``: the bridge then records calls and claims
    stream tokens in them, as a cloud container does."""

    def __init__(self, workdir: Path) -> None:
        from callplane_dev.postgres import LocalPostgres
        from callplane_dev.redis_server import LocalRedis

        self.postgres = LocalPostgres(workdir / "postgres")
        self.redis = LocalRedis(workdir / "redis")

    def start(self) -> None:
        asyncio.run(self._both("start"))

    def stop(self) -> None:
        asyncio.run(self._both("stop"))
        asyncio.run(self.postgres.discard())  # its cluster may live outside the workdir

    async def _both(self, what: str) -> None:
        await asyncio.gather(getattr(self.postgres, what)(), getattr(self.redis, what)())


WS_IMPL = "auto"  # uvicorn's WebSocket implementation for the media bridge (--ws)
LOAD = "go"  # --load: which harness plays Twilio and the engine
LOADGEN_DIR = ROOT / "bench" / "loadgen"
LOADGEN_BIN = Path.home() / ".cache" / "callplane" / "bench" / "loadgen"


def pin_to(core: int) -> Any:
    """A ``preexec_fn`` pinning the child to one core before it starts: a Go runtime sizes
    itself from the affinity it sees at start (GOMAXPROCS=1 is set as well)."""
    return lambda: os.sched_setaffinity(0, {core})


def go_command() -> str:
    """The ``go`` command: on PATH, or where the machine's Go lives."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(go).exists():
        sys.exit(
            "relay.py --load go needs the Go toolchain (go 1.26+) on PATH to build bench/loadgen; "
            "install it, or run the Python harness with --load python"
        )
    return go


@functools.cache
def loadgen_binary() -> Path:
    """``bench/loadgen`` (Go), built once per run of this script: Go's build cache makes an
    unchanged build take a moment and rebuilds exactly what changed."""
    LOADGEN_BIN.parent.mkdir(parents=True, exist_ok=True)
    print(f"building {LOADGEN_BIN} from bench/loadgen", file=sys.stderr, flush=True)
    subprocess.run(
        [go_command(), "build", "-o", str(LOADGEN_BIN), "."], cwd=LOADGEN_DIR, check=True
    )
    return LOADGEN_BIN


ENGINE_PROFILE: Path | None = None  # --profile-engine: cProfile output of the engine process


@dataclass(frozen=True)
class Stall:
    """The congestion case: every ``every``-th stream reads nothing for ``for_s`` seconds,
    ``after_s`` into the sending phase (0: no stream stalls)."""

    every: int = 0
    after_s: float = 1.0
    for_s: float = 2.0
    read_buffer: int = 4096  # SO_RCVBUF of a stalling stream: congestion within the stall


STALL = Stall()  # --stall-every, --stall-after, --stall-for
SHARED_STATE = False  # --shared-state: records in PostgreSQL, coordination in Redis


def start_processes(bridge: str, profile_out: Path | None) -> Procs:
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GOMAXPROCS": "1"}
    engine_port = free_port()
    if LOAD == "go":
        engine_cmd = [str(loadgen_binary()), "engine", str(engine_port)]
    else:
        engine_cmd = [sys.executable, str(ROOT / "bench" / "relay_engine.py"), str(engine_port)]
        if ENGINE_PROFILE is not None:
            engine_cmd = [
                sys.executable,
                "-m",
                "cProfile",
                "-o",
                str(ENGINE_PROFILE),
                *engine_cmd[1:],
            ]
    engine = subprocess.Popen(
        engine_cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
        preexec_fn=pin_to(1),
    )
    assert engine.stdout is not None
    engine.stdout.readline()  # the port, once listening
    engine_url = f"ws://127.0.0.1:{engine_port}/v1/realtime"
    port = free_port()
    stores: SharedStores | None = None
    if bridge in ("media", "streams"):
        settings: dict[str, Any] = {
            "public_media_url": f"ws://127.0.0.1:{port}/twilio/media",
            "stream_secret": STREAM_SECRET,
            "api_key": "bench-api-key",
            "twilio_account_sid": ACCOUNT_SID,
            "twilio_auth_token": AUTH_TOKEN,
            "realtime_url": engine_url,
            "realtime_api_key": "bench",
            "profiles": {PROFILE: {"name": PROFILE}},
            "records_path": str(workdir / "records.sqlite3"),
        }
        if SHARED_STATE:
            stores = SharedStores(workdir)
            stores.start()
            settings.update(database_url=stores.postgres.url, redis_url=stores.redis.url)
        env["CALLPLANE_MEDIA_CONFIG"] = json.dumps(settings)
        loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
        command = (
            ["-m", "functions.stream_server", "--port", str(port), "--log-level", "warning"]
            if bridge == "streams"
            else [
                "-m",
                "uvicorn",
                "functions.media:create_app_from_env",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--loop",
                loop,
                "--log-level",
                "warning",
                "--no-access-log",
                "--ws",
                WS_IMPL,
            ]
        )
    else:
        command = [str(ROOT / "bench" / "noop_bridge.py"), str(port), engine_url]
    if profile_out is not None:
        command = ["-m", "cProfile", "-o", str(profile_out), *command]
    argv = [sys.executable, *command]
    if bridge == "noop" and LOAD == "go":  # the compiled no-op bridge: the Go harness's ceiling
        argv = [str(loadgen_binary()), "noop", str(port), engine_url]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, preexec_fn=pin_to(0)
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if bridge == "media":
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            else:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
        except OSError:
            time.sleep(0.1)
    else:
        raise RuntimeError(f"{bridge} bridge did not start")
    return Procs(engine, proc, port, workdir, stores)


BRIDGES = ("noop", "media", "streams")


def stop_processes(procs: Procs) -> None:
    procs.bridge.send_signal(2)  # SIGINT: uvicorn shuts down cleanly (and cProfile writes)
    try:
        procs.bridge.wait(60)
    except subprocess.TimeoutExpired:
        procs.bridge.kill()
        procs.bridge.wait()
    assert procs.engine.stdin is not None
    procs.engine.stdin.close()
    try:
        procs.engine.wait(10)
    except subprocess.TimeoutExpired:
        procs.engine.kill()
        procs.engine.wait()
    if procs.stores is not None:
        procs.stores.stop()


def cpu_shares(before: list[Any], after: list[Any], wall: float) -> dict[str, float]:
    """Shares of one core over ``wall`` seconds for the bridge, the engine and the generator
    (psutil ``cpu_times`` taken before and after, in that order), and the kernel's part."""
    out: dict[str, float] = {}
    for name, a, b in zip(("", "engine_", "generator_"), before, after, strict=True):
        out[f"{name}cpu_share"] = ((b.user + b.system) - (a.user + a.system)) / wall
        out[f"{name}system_share"] = (b.system - a.system) / wall
    return out


async def drive(
    procs: Procs, calls: int, seconds: float, bridge_proc: psutil.Process
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    totals = Totals()
    base = f"ws://127.0.0.1:{procs.bridge_port}"
    rss_idle = bridge_proc.memory_info().rss
    streams: list[Stream] = []
    gate = asyncio.Semaphore(20)

    async def open_stream(i: int) -> None:
        async with gate:
            _, stream = await loop.create_connection(
                lambda: Stream(i, totals, loop), "127.0.0.1", procs.bridge_port
            )
            stream.phase = (i * 7) % CYCLE_TICKS
            token = mint_stream_token(
                STREAM_SECRET, stream.call_sid, PROFILE, "us", now=time.time()
            )
            # each call has its own stream URL, signed as Twilio signs it
            path = "/twilio/media/" + stream_key(token)
            signature = RequestValidator(AUTH_TOKEN).compute_signature(base + path, {})
            stream.upgrade("127.0.0.1", procs.bridge_port, path, signature)
            await asyncio.wait_for(stream.upgraded, 10)
            stream.send_start(token)
            streams.append(stream)

    t_setup = time.monotonic()
    await asyncio.gather(*(open_stream(i) for i in range(calls)))
    setup_s = time.monotonic() - t_setup
    await asyncio.sleep(1.5)  # sessions configured, greetings under way
    streams.sort(key=lambda s: s.index)
    groups = [streams[g::SLOTS] for g in range(SLOTS)]
    rss_peak = 0
    cpu_samples: list[float] = []

    async def sample() -> None:
        nonlocal rss_peak
        bridge_proc.cpu_percent(None)
        while True:
            await asyncio.sleep(1.0)
            cpu_samples.append(bridge_proc.cpu_percent(None) / 100)
            rss_peak = max(rss_peak, bridge_proc.memory_info().rss)

    sampler = asyncio.create_task(sample())
    engine_proc = psutil.Process(procs.engine.pid)
    me = psutil.Process()
    cpu0, ecpu0, gcpu0 = bridge_proc.cpu_times(), engine_proc.cpu_times(), me.cpu_times()
    wall0 = time.monotonic()
    ticks = int(seconds / TICK_S)
    t0 = loop.time() + 0.05
    totals.window_start_ns = time.monotonic_ns() + 50_000_000
    stalled = [s for s in streams if STALL.every > 0 and s.index % STALL.every == 0]
    for stream in stalled:  # the congestion case: these stop reading for a while
        transport = stream.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALL.read_buffer)
        loop.call_at(t0 + STALL.after_s, transport.pause_reading)
        loop.call_at(t0 + STALL.after_s + STALL.for_s, transport.resume_reading)
    for tick in range(ticks):
        for g, group in enumerate(groups):
            target = t0 + tick * TICK_S + g * TICK_S / SLOTS
            delay = target - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            totals.lag_ms.append((loop.time() - target) * 1000)
            for stream in group:
                stream.send_frame(tick)
    cpu1, ecpu1, gcpu1 = bridge_proc.cpu_times(), engine_proc.cpu_times(), me.cpu_times()
    wall = time.monotonic() - wall0
    sampler.cancel()
    await asyncio.sleep(1.5 + (2 * STALL.for_s if STALL.every else 0.0))  # frames in flight
    rss_end = bridge_proc.memory_info().rss
    closed_early = sum(1 for s in streams if s.closed)
    for stream in streams:
        stream.send_stop()
    await asyncio.sleep(0.5)
    for stream in streams:
        if stream.transport is not None:
            stream.transport.close()

    return {
        **cpu_shares([cpu0, ecpu0, gcpu0], [cpu1, ecpu1, gcpu1], wall),
        "totals": totals,
        "streams": [StreamResult(s.index, s.sent, len(s.out_seen), s.clears_ns) for s in streams],
        "setup_s": setup_s,
        "wall_s": wall,
        "cpu_samples": cpu_samples,
        "rss_idle": rss_idle,
        "rss_peak": max(rss_peak, rss_end),
        "closed_early": closed_early,
        "stalled": len(stalled),
    }


def drive_go(
    procs: Procs, calls: int, seconds: float, bridge_proc: psutil.Process
) -> dict[str, Any]:
    """The same load as :func:`drive`, played by ``loadgen twilio`` (Go) on core 1."""
    validator = RequestValidator(AUTH_TOKEN)
    streams = []
    for _ in range(calls):
        call_sid = "CA" + secrets.token_hex(16)
        token = mint_stream_token(
            STREAM_SECRET, call_sid, PROFILE, "us", now=time.time(), ttl_s=300
        )
        # each call has its own stream URL, signed as Twilio signs it
        url = stream_url(f"ws://127.0.0.1:{procs.bridge_port}/twilio/media", token)
        streams.append(
            {
                "call_sid": call_sid,
                "stream_sid": "MZ" + secrets.token_hex(16),
                "token": token,
                "url": url,
                "signature": validator.compute_signature(url, {}),
            }
        )
    config = {
        "account_sid": ACCOUNT_SID,
        "streams": streams,
        "seconds": seconds,
        "slots": SLOTS,
        "cycle_ticks": CYCLE_TICKS,
        "speech_ticks": SPEECH_TICKS,
        "phase_step": 7,
        "settle_s": 1.5,
        "connect_parallel": 20,
        # a stalled stream's backlog (and the kernel's zero-window probes) need longer to land
        "drain_s": 1.5 + (2 * STALL.for_s if STALL.every else 0.0),
        "stall_every": STALL.every,
        "stall_after_s": STALL.after_s,
        "stall_for_s": STALL.for_s,
        "stall_read_buffer": STALL.read_buffer,
    }
    config_path = procs.workdir / "twilio.json"
    out_path = procs.workdir / "twilio-out.json"
    config_path.write_text(json.dumps(config))
    rss_idle = bridge_proc.memory_info().rss
    gen = subprocess.Popen(
        [str(loadgen_binary()), "twilio", str(config_path), str(out_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "GOMAXPROCS": "1"},
        preexec_fn=pin_to(1),
    )
    assert gen.stdout is not None
    gen_proc = psutil.Process(gen.pid)
    engine_proc = psutil.Process(procs.engine.pid)

    def expect(word: str) -> str:
        assert gen.stdout is not None
        line = gen.stdout.readline()
        if not line.startswith(word):
            gen.wait(30)
            raise RuntimeError(
                f"loadgen twilio: expected {word!r}, got {line!r} (exit {gen.returncode})"
            )
        return line

    cpu_samples: list[float] = []
    rss_peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal rss_peak
        bridge_proc.cpu_percent(None)
        while not stop.wait(1.0):
            cpu_samples.append(bridge_proc.cpu_percent(None) / 100)
            rss_peak = max(rss_peak, bridge_proc.memory_info().rss)

    setup_s = float(expect("connected").split()[1])
    expect("sending")
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cpu0, ecpu0, gcpu0 = bridge_proc.cpu_times(), engine_proc.cpu_times(), gen_proc.cpu_times()
    wall0 = time.monotonic()
    expect("sent")
    cpu1, ecpu1, gcpu1 = bridge_proc.cpu_times(), engine_proc.cpu_times(), gen_proc.cpu_times()
    wall = time.monotonic() - wall0
    stop.set()
    sampler.join()
    expect("done")
    rss_end = bridge_proc.memory_info().rss
    if gen.wait(30) != 0:
        raise RuntimeError(f"loadgen twilio exited with {gen.returncode}")
    result = json.loads(out_path.read_text())
    totals = Totals(
        out_ms=result["out_ms"],
        out_setup_ms=result["out_setup_ms"],
        lag_ms=result["lag_ms"],
        out_dup=result["out_dup"],
        out_reordered=result["out_reordered"],
        out_received=result["out_received"],
        errors=collections.Counter(result["errors"]),
    )

    return {
        **cpu_shares([cpu0, ecpu0, gcpu0], [cpu1, ecpu1, gcpu1], wall),
        "totals": totals,
        "streams": [
            StreamResult(r["index"], r["sent"], r["out_unique"], r["clears_ns"] or [])
            for r in result["streams"]
        ],
        "setup_s": setup_s,
        "wall_s": wall,
        "cpu_samples": cpu_samples,
        "rss_idle": rss_idle,
        "rss_peak": max(rss_peak, rss_end),
        "closed_early": result["closed_early"],
        "stalled": result.get("stalled", 0),
    }


def analyse(engine_dump: dict[str, list[int]], run: dict[str, Any], calls: int) -> dict[str, Any]:
    streams: list[StreamResult] = run["streams"]
    totals: Totals = run["totals"]
    in_stream = np.asarray(engine_dump["in_stream"], dtype=np.int64)
    in_seq = np.asarray(engine_dump["in_seq"], dtype=np.int64)
    in_ms = (
        np.asarray(engine_dump["in_recv_ns"], dtype=np.int64)
        - np.asarray(engine_dump["in_sent_ns"], dtype=np.int64)
    ) / 1e6
    lost = dup = reordered = 0
    sent = 0
    order = np.argsort(in_stream, kind="stable")  # arrival order kept within a stream
    sorted_stream = in_stream[order]
    bounds = np.searchsorted(sorted_stream, np.arange(calls + 1))
    for s in streams:
        sent += s.sent
        seqs = in_seq[order[bounds[s.index] : bounds[s.index + 1]]]
        unique = np.unique(seqs)
        lost += s.sent - unique.size
        dup += seqs.size - unique.size
        if seqs.size > 1:
            running = np.maximum.accumulate(seqs)
            reordered += int((seqs[1:] < running[:-1]).sum()) - 0
    out_sent = dict(zip(engine_dump["out_stream"], engine_dump["out_sent"], strict=True))
    out_lost = sum(max(0, out_sent.get(s.index, 0) - s.out_unique) for s in streams)
    ss_stream = np.asarray(engine_dump["ss_stream"], dtype=np.int64)
    ss_ns = np.asarray(engine_dump["ss_sent_ns"], dtype=np.int64)
    barge: list[float] = []
    for s in streams:
        starts = np.sort(ss_ns[ss_stream == s.index])
        for clear in s.clears_ns:
            k = int(np.searchsorted(starts, clear)) - 1
            if k >= 0:
                barge.append((clear - int(starts[k])) / 1e6)
    rss_per_call = (run["rss_peak"] - run["rss_idle"]) / max(calls, 1)
    return {
        "inbound_ms": pct(in_ms),
        "outbound_ms": pct(totals.out_ms),
        # the greetings of all N calls, sent while the calls were being set up (a burst)
        "outbound_setup_ms": pct(totals.out_setup_ms),
        "barge_in_ms": pct(barge),
        "generator_lag_ms": pct(totals.lag_ms),
        "frames": {
            "in_sent": sent,
            "in_received": int(in_seq.size),
            "in_lost": lost,
            "in_duplicated": dup,
            "in_reordered": reordered,
            "out_sent": int(sum(out_sent.get(s.index, 0) for s in streams)),
            "out_received": totals.out_received,
            "out_lost": out_lost,
            "out_duplicated": totals.out_dup,
            "out_reordered": totals.out_reordered,
            "speech_started": int(ss_ns.size),
            "clears": sum(len(s.clears_ns) for s in streams),
            "streams_closed_early": run["closed_early"],
            "stalled": run.get("stalled", 0),
        },
        "bridge_process": {
            "cpu_share_of_core": round(run["cpu_share"], 3),
            "cpu_share_max_1s": round(max(run["cpu_samples"], default=0.0), 3),
            # the kernel's part of cpu_share: loopback TCP, epoll and wakeups
            "system_share_of_core": round(run["system_share"], 3),
            "rss_idle_mib": round(run["rss_idle"] / 2**20, 1),
            "rss_peak_mib": round(run["rss_peak"] / 2**20, 1),
            "rss_per_call_kib": round(rss_per_call / 1024, 1),
            # CPU time per relayed frame (both directions): unlike latency, this barely moves
            # when other processes compete for the core, so it compares code versions fairly.
            # Frames of the sending phase only, the phase the CPU is measured over.
            "cpu_us_per_frame": round(
                run["cpu_share"]
                * run["wall_s"]
                * 1e6
                / max(int(in_seq.size) + len(totals.out_ms), 1),
                2,
            ),
        },
        "core1_cpu_share": {
            "engine": round(run["engine_cpu_share"], 3),
            "generator": round(run["generator_cpu_share"], 3),
            "engine_system": round(run["engine_system_share"], 3),
            "generator_system": round(run["generator_system_share"], 3),
        },
        "setup_s": round(run["setup_s"], 2),
        "send_wall_s": round(run["wall_s"], 2),
        "errors": dict(totals.errors),
    }


def _run_loop(coro: Any) -> Any:
    """Run the generator's loop on uvloop where available (the harness's own ceiling)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run_once(
    calls: int, seconds: float, bridge: str, profile_out: Path | None = None
) -> dict[str, Any]:
    load_before = os.getloadavg()
    procs = start_processes(bridge, profile_out)
    try:
        os.sched_setaffinity(0, {1})
        bridge_proc = psutil.Process(procs.bridge.pid)
        if LOAD == "go":
            run = drive_go(procs, calls, seconds, bridge_proc)
        else:
            run = _run_loop(drive(procs, calls, seconds, bridge_proc))
        dump_path = procs.workdir / "engine.json"
        assert procs.engine.stdin is not None and procs.engine.stdout is not None
        procs.engine.stdin.write(f"dump {dump_path}\n")
        procs.engine.stdin.flush()
        procs.engine.stdout.readline()
        engine_dump = json.loads(dump_path.read_text())
    finally:
        stop_processes(procs)
    result = {"calls": calls, "seconds": seconds, "bridge": bridge, "ws": WS_IMPL, "load": LOAD}
    result.update(analyse(engine_dump, run, calls))
    result["loadavg_before"] = [round(x, 2) for x in load_before]
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def _go_version() -> str:
    done = subprocess.run([go_command(), "version"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def machine() -> dict[str, Any]:
    versions = {}
    for dist in ("uvicorn", "websockets", "fastapi", "starlette"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "?",
        ),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "event_loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "versions": versions,
        "pinning": {"bridge": [0], "engine": [1], "generator": [1]},
        "load": LOAD,
        "go": _go_version() if LOAD == "go" else None,
    }


def summary(r: dict[str, Any]) -> str:
    return (
        f"{r['bridge']:>5} N={r['calls']:<4} in p50/p99 {r['inbound_ms'].get('p50')}/"
        f"{r['inbound_ms'].get('p99')} out {r['outbound_ms'].get('p50')}/"
        f"{r['outbound_ms'].get('p99')} barge {r['barge_in_ms'].get('p50')}/"
        f"{r['barge_in_ms'].get('p99')} ms cpu {r['bridge_process']['cpu_share_of_core']} "
        f"({r['bridge_process']['cpu_us_per_frame']} us/frame) "
        f"rss/call {r['bridge_process']['rss_per_call_kib']} KiB lag p99 "
        f"{r['generator_lag_ms'].get('p99')} lost {r['frames']['in_lost']}"
        f"/{r['frames']['out_lost']} dup {r['frames']['in_duplicated']}"
        f"/{r['frames']['out_duplicated']} reordered {r['frames']['in_reordered']}"
        f"/{r['frames']['out_reordered']} stalled {r['frames']['stalled']} "
        f"core1 {r['core1_cpu_share']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--sweep", action="store_true", help=f"N = {SWEEP}, every bridge")
    parser.add_argument("--bridge", choices=BRIDGES, default="streams")
    parser.add_argument("--profile", type=Path, help="run the bridge under cProfile, to this file")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument(
        "--ws",
        choices=("auto", "websockets", "websockets-sansio", "wsproto"),
        default="auto",
        help="uvicorn's WebSocket implementation in the media bridge",
    )
    parser.add_argument(
        "--profile-engine", type=Path, help="run the engine under cProfile, to this file"
    )
    parser.add_argument(
        "--load",
        choices=("go", "python"),
        default="go",
        help="the harness: bench/loadgen (Go, default) or the Python generator and local engine",
    )
    parser.add_argument(
        "--stall-every",
        type=int,
        default=0,
        metavar="K",
        help="congestion case: every K-th Twilio stream stops reading for a while (0: none)",
    )
    parser.add_argument("--stall-after", type=float, default=1.0, help="s into sending")
    parser.add_argument("--stall-for", type=float, default=2.0, help="s a stream reads nothing")
    parser.add_argument(
        "--shared-state",
        action="store_true",
        help="records in a local PostgreSQL and coordination in a local Redis, as in the cloud "
        "(default: SQLite and in-process, one container's view)",
    )
    args = parser.parse_args()
    global WS_IMPL, ENGINE_PROFILE, LOAD, STALL, SHARED_STATE
    SHARED_STATE = args.shared_state
    STALL = Stall(args.stall_every, args.stall_after, args.stall_for)
    WS_IMPL = args.ws
    LOAD = args.load
    if args.profile_engine is not None and LOAD != "python":
        parser.error("--profile-engine profiles the Python engine: add --load python")
    ENGINE_PROFILE = args.profile_engine
    if (os.cpu_count() or 1) < 2:
        sys.exit("relay.py pins the bridge and the load to different cores: it needs two")
    out: dict[str, Any] = {"command": " ".join(["python", *sys.argv]), "machine": machine()}
    runs: list[dict[str, Any]] = []
    if args.sweep:
        for n in SWEEP:
            at_n = []
            for bridge in BRIDGES:
                r = run_once(n, args.seconds, bridge)
                at_n.append(r)
                print(summary(r), file=sys.stderr, flush=True)
            runs.extend(at_n)
            # the knee: where even the faster real bridge's p99 passes KNEE_MS
            worst = min(
                max(r["inbound_ms"].get("p99", 0), r["outbound_ms"].get("p99", 0))
                for r in at_n
                if r["bridge"] != "noop"
            )
            if worst > KNEE_MS:
                out["knee"] = {"calls": n, "p99_ms": worst}
                break
    else:
        r = run_once(args.calls, args.seconds, args.bridge, args.profile)
        runs.append(r)
        print(summary(r), file=sys.stderr, flush=True)
    out["runs"] = runs
    text = json.dumps(out, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
