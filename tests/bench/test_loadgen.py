"""``bench/loadgen``, the compiled harness of the relay benchmark, against the Python side.

The load engine must look like callplane's local engine in ``--mode load`` to the bridge (every
event valid by the ``openai`` SDK's GA models, the same turn taking) and must read and write
the same latency stamps as ``callplane_standins.realtime_engine.context``; ``bench/relay.py``
must measure a real bridge through it with nothing lost.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from callplane.realtime.conformance import validate_server_event
from callplane_standins.realtime_engine.context import STAMP_BYTES, decode_stamp, encode_stamp

ROOT = Path(__file__).resolve().parents[2]
SILENT = b"\xff" * 160
LOUD = bytes([0x80, 0x00]) * 80


def go_binary() -> str:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(go).exists():
        pytest.fail("the Go toolchain is missing: scripts/setup.sh installs the machine's Go")
    return go


@pytest.fixture(scope="session")
def loadgen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("loadgen") / "loadgen"
    subprocess.run(
        [go_binary(), "build", "-o", str(out), "."], cwd=ROOT / "bench" / "loadgen", check=True
    )
    return out


@pytest.fixture
def engine(loadgen: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    proc = subprocess.Popen(
        [str(loadgen), "engine", "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdin is not None
    port = int(proc.stdout.readline())
    yield f"ws://127.0.0.1:{port}/v1/realtime", proc
    proc.stdin.close()
    proc.wait(10)


class Client:
    """Reads every server event and validates it against the SDK's models as it arrives."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(event))

    async def until(self, etype: str, timeout: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                event: dict[str, Any] = json.loads(await self.ws.recv())
                validate_server_event(event)
                self.seen.append(event)
                if event["type"] == etype:
                    return event


@pytest.fixture
async def client(engine: tuple[str, subprocess.Popen[str]]) -> AsyncIterator[Client]:
    url, _ = engine
    async with connect(url, additional_headers={"Authorization": "Bearer test"}) as ws:
        yield Client(ws)


def stamped(base: bytes, stream: int, seq: int) -> str:
    return base64.b64encode(
        encode_stamp(stream, seq, time.monotonic_ns()) + base[STAMP_BYTES:]
    ).decode()


async def speak_turn(c: Client, stream: int, first_seq: int, loud: int, quiet: int) -> int:
    seq = first_seq
    for base, count in ((LOUD, loud), (SILENT, quiet)):
        for _ in range(count):
            await c.send({"type": "input_audio_buffer.append", "audio": stamped(base, stream, seq)})
            seq += 1
    return seq


async def test_a_turn_is_answered_like_the_local_load_engine(
    client: Client, engine: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    c = client
    await c.until("session.created")
    await c.send(
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcmu"},
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 200},
                    },
                    "output": {"format": {"type": "audio/pcmu"}},
                },
            },
        }
    )
    updated = await c.until("session.updated")
    assert updated["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 200
    assert updated["session"]["audio"]["input"]["turn_detection"]["threshold"] == 0.5  # kept

    # 300 ms of square wave then silence: one turn, one commit, one reply
    await speak_turn(c, stream=7, first_seq=0, loud=15, quiet=15)
    started = await c.until("input_audio_buffer.speech_started")
    assert started["audio_start_ms"] == 0
    stopped = await c.until("input_audio_buffer.speech_stopped")
    assert stopped["item_id"] == started["item_id"]
    assert stopped["audio_end_ms"] == 300 + 200  # the speech and the trailing silence
    committed = await c.until("input_audio_buffer.committed")
    assert committed["item_id"] == started["item_id"]
    done = await c.until("response.done")
    assert done["response"]["status"] == "completed"
    deltas = [e for e in c.seen if e["type"] == "response.output_audio.delta"]
    audio = [base64.b64decode(e["delta"]) for e in deltas]
    assert sum(map(len, audio)) == 8000  # one second of µ-law
    stamps = [decode_stamp(a) for a in audio]
    assert [(s[0], s[1]) for s in stamps if s] == [(7, i) for i in range(10)]
    transcript = "".join(
        e["delta"] for e in c.seen if e["type"] == "response.output_audio_transcript.delta"
    )
    assert transcript == "Load test reply."

    _, proc = engine
    assert proc.stdin is not None and proc.stdout is not None
    dump = tmp_path / "probe.json"
    proc.stdin.write(f"dump {dump}\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "ok"
    probe = json.loads(dump.read_text())
    assert probe["in_stream"] == [7] * 30 and probe["in_seq"] == list(range(30))
    assert all(r >= s for r, s in zip(probe["in_recv_ns"], probe["in_sent_ns"], strict=True))
    assert probe["ss_stream"] == [7]
    assert dict(zip(probe["out_stream"], probe["out_sent"], strict=True)) == {7: 10}


async def test_speech_cancels_the_reply_and_a_second_cancel_is_refused(client: Client) -> None:
    c = client
    await c.until("session.created")
    await c.send(
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}},
        }
    )
    await c.until("session.updated")
    await c.send({"type": "response.create"})
    created = await c.until("response.created")
    await speak_turn(c, stream=1, first_seq=0, loud=5, quiet=0)
    await c.until("input_audio_buffer.speech_started")
    done = await c.until("response.done")
    assert done["response"]["id"] == created["response"]["id"]
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    await c.send({"type": "response.cancel"})
    error = await c.until("error")
    assert error["error"]["code"] == "response_cancel_not_active"


async def test_bad_input_gets_an_error_event_and_the_session_goes_on(client: Client) -> None:
    c = client
    await c.until("session.created")
    await c.send(
        {
            "type": "session.update",
            "session": {"audio": {"input": {"format": {"type": "audio/pcm"}}}},
        }
    )
    error = await c.until("error")
    assert error["error"]["code"] == "unsupported_format"
    assert "audio/pcmu" in error["error"]["message"]
    await c.ws.send("{not json")
    assert (await c.until("error"))["error"]["code"] == "invalid_json"
    await c.send({"type": "input_audio_buffer.append", "audio": "***"})
    assert (await c.until("error"))["error"]["param"] == "audio"
    await c.send({"type": "no.such.event"})
    assert (await c.until("error"))["error"]["param"] == "type"
    await c.send(
        {
            "type": "conversation.item.truncate",
            "item_id": "item_x",
            "content_index": 0,
            "audio_end_ms": 5,
        }
    )
    truncated = await c.until("conversation.item.truncated")
    assert truncated["audio_end_ms"] == 5


def run_relay(tmp_path: Path, *args: str) -> dict[str, Any]:
    """``bench/relay.py`` with 3 calls for 3 s and ``args``, as a user runs it; its one run."""
    out = tmp_path / "relay.json"
    subprocess.run(
        [
            sys.executable,
            "bench/relay.py",
            "--calls",
            "3",
            "--seconds",
            "3",
            *args,
            "--json",
            str(out),
        ],
        cwd=ROOT,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
    )
    run: dict[str, Any] = json.loads(out.read_text())["runs"][0]
    return run


@pytest.mark.timeout(180)
@pytest.mark.parametrize("bridge", ["streams", "noop"])
def test_relay_bench_measures_a_real_bridge_through_the_go_harness(
    bridge: str, tmp_path: Path
) -> None:
    run = run_relay(tmp_path, "--bridge", bridge)
    frames = run["frames"]
    assert run["load"] == "go" and run["bridge"] == bridge
    assert frames["in_sent"] == 3 * 150 and frames["in_received"] == frames["in_sent"]
    assert frames["in_lost"] == frames["in_duplicated"] == frames["in_reordered"] == 0
    assert frames["out_sent"] > 0 and frames["out_received"] == frames["out_sent"]
    assert frames["out_lost"] == frames["out_duplicated"] == frames["out_reordered"] == 0
    assert frames["speech_started"] >= 3 and frames["clears"] >= 1
    assert run["inbound_ms"]["count"] == frames["in_received"]
    assert run["barge_in_ms"]["count"] == frames["clears"]
    assert run["errors"] == {} and frames["streams_closed_early"] == 0


@pytest.mark.timeout(180)
def test_relay_bench_congestion_case_loses_nothing_while_twilio_stalls(tmp_path: Path) -> None:
    """Every stream stops reading for a second: the bridge holds what it cannot send and
    delivers all of it afterwards, in order."""
    run = run_relay(tmp_path, "--stall-every", "1", "--stall-after", "0.5", "--stall-for", "1")
    frames = run["frames"]
    assert frames["stalled"] == 3
    assert frames["in_lost"] == frames["in_duplicated"] == frames["in_reordered"] == 0
    assert frames["out_sent"] > 0 and frames["out_received"] == frames["out_sent"]
    assert frames["out_lost"] == frames["out_duplicated"] == frames["out_reordered"] == 0
    assert run["outbound_ms"]["max"] >= 500  # the stall shows: frames waited for the reader
