"""The room mixer: every human summed into the one stream the Realtime session hears."""

from __future__ import annotations

import numpy as np
import pytest

from callplane.rooms.mixer import FRAME_SAMPLES, Mixer, mix


def pcm(*values: int) -> bytes:
    return np.array(values, dtype="<i2").tobytes()


def frame_of(value: int, samples: int = FRAME_SAMPLES) -> bytes:
    return np.full(samples, value, dtype="<i2").tobytes()


def samples(data: bytes | None) -> list[int]:
    assert data is not None
    return [int(v) for v in np.frombuffer(data, dtype="<i2")]


def test_mix_sums_and_clips() -> None:
    a = np.array([1000, -1000, 30000, -30000], dtype=np.int16)
    b = np.array([2000, 500, 10000, -10000], dtype=np.int16)
    out = mix([a, b], 4)
    assert out.dtype == np.int16
    assert out.tolist() == [3000, -500, 32767, -32768]


def test_mix_pads_short_frames_cuts_long_ones_and_gives_silence_for_none() -> None:
    short = np.array([5, 6], dtype=np.int16)
    long = np.array([1, 1, 1, 1, 1, 1], dtype=np.int16)
    assert mix([short, long], 4).tolist() == [6, 7, 1, 1]
    assert mix([], 3).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="samples"):
        mix([], -1)


def test_mix_of_one_frame_is_a_copy() -> None:
    a = np.array([1, 2, 3], dtype=np.int16)
    out = mix([a], 3)
    out[0] = 99
    assert a.tolist() == [1, 2, 3]


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
