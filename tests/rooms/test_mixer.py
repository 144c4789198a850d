"""The room mixer: every human summed into one stream, for the agent's Realtime session and for
a phone caller in a hybrid room."""

from __future__ import annotations

import numpy as np
import pytest

from callplane.rooms.mixer import FRAME_SAMPLES, JitterBuffer, Mixer


def pcm(*values: int) -> bytes:
    return np.array(values, dtype="<i2").tobytes()


def frame_of(value: int, samples: int = FRAME_SAMPLES) -> bytes:
    return np.full(samples, value, dtype="<i2").tobytes()


def samples(data: bytes | None) -> list[int]:
    assert data is not None
    return [int(v) for v in np.frombuffer(data, dtype="<i2")]


def test_pull_mixes_every_source_with_a_full_frame() -> None:
    mixer = Mixer(frame_samples=4)
    assert mixer.pull() is None
    mixer.push("alice", pcm(100, 200, 300, 400))
    mixer.push("bob", pcm(1, 2, 3, 4))
    assert samples(mixer.pull()) == [101, 202, 303, 404]
    assert mixer.pull() is None


def test_a_source_without_a_full_frame_waits_for_the_next_pull() -> None:
    mixer = Mixer(frame_samples=4)
    mixer.push("alice", pcm(10, 10, 10, 10))
    mixer.push("bob", pcm(1, 2))  # jitter: half a frame so far
    assert samples(mixer.pull()) == [10, 10, 10, 10]
    mixer.push("bob", pcm(3, 4))
    assert samples(mixer.pull()) == [1, 2, 3, 4]  # nothing of bob was lost


def test_sources_join_and_leave() -> None:
    mixer = Mixer(frame_samples=2)
    mixer.add("alice")
    assert mixer.sources == ("alice",)
    mixer.push("alice", pcm(1, 1, 1, 1))
    mixer.push("carol", pcm(5, 5))  # pushing adds a source
    assert set(mixer.sources) == {"alice", "carol"}
    assert samples(mixer.pull()) == [6, 6]
    mixer.remove("alice")  # her buffered frame goes with her
    assert mixer.pull() is None
    mixer.push("carol", pcm(7, 7))
    assert samples(mixer.pull()) == [7, 7]
    mixer.remove("nobody")  # harmless


def test_a_lagging_source_is_capped_by_dropping_its_oldest_samples() -> None:
    mixer = Mixer(frame_samples=FRAME_SAMPLES, max_buffered_ms=40)  # two frames
    for value in (1, 2, 3):
        mixer.push("slow", frame_of(value))
    assert mixer.dropped_samples == FRAME_SAMPLES
    assert samples(mixer.pull())[0] == 2
    assert samples(mixer.pull())[0] == 3
    assert mixer.pull() is None


def test_the_buffer_must_hold_a_frame() -> None:
    with pytest.raises(ValueError, match="max_buffered_ms"):
        Mixer(frame_samples=FRAME_SAMPLES, max_buffered_ms=10)
    with pytest.raises(ValueError, match="frame_samples"):
        Mixer(frame_samples=0)


def test_loudest_names_the_recent_talker() -> None:
    mixer = Mixer()
    assert mixer.loudest() is None
    mixer.push("quiet", frame_of(20))
    mixer.push("talker", frame_of(3000))
    mixer.pull()
    assert mixer.loudest() == "talker"
    # the talker stops; a second person speaks for a while and takes over
    for _ in range(100):
        mixer.push("quiet", frame_of(2000))
        mixer.push("talker", frame_of(0))
        mixer.pull()
    assert mixer.loudest() == "quiet"


def test_loudest_ignores_background_noise() -> None:
    mixer = Mixer()
    for _ in range(50):
        mixer.push("hiss", frame_of(30))
        mixer.pull()
    assert mixer.loudest() is None
    assert mixer.loudest(min_rms=10) == "hiss"


def test_jitter_buffer_plays_only_once_primed_and_reprimes_after_running_dry() -> None:
    buf = JitterBuffer(capacity=100, prime=30)
    acc = np.zeros(20, dtype=np.int32)
    buf.push(np.full(20, 5, dtype=np.int16))
    assert not buf.primed and not buf.add_into(acc) and not acc.any()
    buf.push(np.full(20, 7, dtype=np.int16))
    assert buf.primed and buf.add_into(acc)
    assert acc.tolist() == [5] * 20
    acc.fill(0)
    assert buf.add_into(acc)  # 20 left: a full frame, still primed
    assert acc.tolist() == [7] * 20 and len(buf) == 0 and buf.primed
    buf.push(np.full(5, 9, dtype=np.int16))
    acc.fill(0)
    assert buf.add_into(acc)  # plays what it has, then waits to be primed again
    assert acc.tolist() == [9] * 5 + [0] * 15 and not buf.primed
    buf.push(np.full(20, 1, dtype=np.int16))
    assert not buf.add_into(acc)


def test_jitter_buffer_keeps_order_across_wraps_and_drops_the_oldest_on_overflow() -> None:
    buf = JitterBuffer(capacity=50, prime=1)
    stream = np.arange(1000, dtype=np.int16)
    out: list[int] = []
    acc = np.zeros(17, dtype=np.int32)
    for i in range(0, 1000, 13):
        buf.push(stream[i : i + 13])
        acc.fill(0)
        before = len(buf)
        buf.add_into(acc)
        out.extend(acc[: min(before, 17)].tolist())
    assert out == sorted(out) and len(set(out)) == len(out)
    full = JitterBuffer(capacity=50, prime=10)
    full.push(np.arange(40, dtype=np.int16))
    full.push(np.arange(40, 70, dtype=np.int16))
    assert len(full) == 50 and full.dropped == 20
    acc = np.zeros(50, dtype=np.int32)
    full.add_into(acc)
    assert acc.tolist() == list(range(20, 70))
    huge = JitterBuffer(capacity=10, prime=10)
    huge.push(np.arange(25, dtype=np.int16))
    assert huge.dropped == 15


def test_jitter_buffer_refuses_a_prime_beyond_capacity() -> None:
    with pytest.raises(ValueError, match="prime=200 must be between 1 and capacity=100"):
        JitterBuffer(capacity=100, prime=200)


def test_a_source_plays_once_primed_and_again_after_running_dry() -> None:
    # The phone bridge's tuning: play once two frames are buffered.
    mixer = Mixer(frame_samples=4, sample_rate=200, max_buffered_ms=80, prime_ms=40)
    mixer.push("alice", pcm(100, -200, 30000, -30000))
    mixer.push("bob", np.array([1, 2, 30000, -30000, 5, 5, 5, 5], dtype=np.int16))
    assert samples(mixer.pull()) == [1, 2, 30000, -30000]  # alice waits for her second frame
    mixer.push("alice", pcm(1, 1, 1, 1))
    assert samples(mixer.pull()) == [105, -195, 30005, -29995]
    assert samples(mixer.pull()) == [1, 1, 1, 1]
    mixer.push("bob", pcm(9, 9))
    assert mixer.pull() is None  # bob needs two frames again; alice ran dry


def test_the_mix_clips_to_int16() -> None:
    mixer = Mixer(frame_samples=2)
    mixer.push("a", pcm(30000, -30000))
    mixer.push("b", pcm(30000, -30000))
    assert samples(mixer.pull()) == [32767, -32768]


def test_a_prime_beyond_the_buffer_is_refused() -> None:
    with pytest.raises(ValueError, match="prime_ms=300"):
        Mixer(frame_samples=FRAME_SAMPLES, max_buffered_ms=200, prime_ms=300)
