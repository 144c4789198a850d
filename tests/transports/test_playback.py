from __future__ import annotations

from callplane.transports.playback import PlaybackTracker


def test_played_counts_only_echoed_marks() -> None:
    p = PlaybackTracker(bytes_per_ms=8)
    marks = [p.sent("item_a", 800) for _ in range(3)]  # 3 x 100 ms sent
    assert p.playing and p.playing_item() == "item_a"
    assert p.echoed(marks[0]) and p.echoed(marks[1])
    assert p.played_ms("item_a") == 200 and p.produced_ms("item_a") == 300
    assert p.truncate_at_ms("item_a") == 200


def test_marks_echoed_because_of_a_clear_do_not_count() -> None:
    p = PlaybackTracker(bytes_per_ms=8)
    first = p.sent("item_a", 800)
    rest = [p.sent("item_a", 800) for _ in range(4)]
    p.echoed(first)
    p.clear()
    assert not p.playing
    assert [p.echoed(m) for m in rest] == [False] * 4
    assert p.played_ms("item_a") == 100
    assert p.truncate_at_ms("item_a") == 100


def test_truncation_never_passes_what_was_produced_and_is_an_integer() -> None:
    p = PlaybackTracker(bytes_per_ms=48)  # 24 kHz pcm16
    mark = p.sent("item_b", 1000)  # 20.83 ms
    p.echoed(mark)
    assert p.truncate_at_ms("item_b") == 20
    assert isinstance(p.truncate_at_ms("item_b"), int)


def test_unknown_and_duplicate_echoes_are_ignored() -> None:
    p = PlaybackTracker()
    mark = p.sent("item_c", 160)
    assert p.echoed(mark)
    assert not p.echoed(mark)
    assert not p.echoed("someone-elses-mark")
    assert p.played_ms("item_c") == 20


def test_the_head_chunk_is_interpolated_between_echoes() -> None:
    p = PlaybackTracker(bytes_per_ms=8)
    first = p.sent("item_d", 800, now=10.0)  # 100 ms chunks, all sent at once
    p.sent("item_d", 800, now=10.0)
    p.sent("item_d", 800, now=10.0)
    assert p.truncate_at_ms("item_d", now=10.040) == 40  # 40 ms into the first chunk
    p.echoed(first, now=10.100)
    assert p.truncate_at_ms("item_d", now=10.130) == 130  # 30 ms into the second
    assert p.truncate_at_ms("item_d") == 100  # without a clock: echoes only
    # never past the head chunk, however late the next echo is
    assert p.truncate_at_ms("item_d", now=11.0) == 200


def test_a_chunk_sent_after_the_queue_drained_starts_when_sent() -> None:
    p = PlaybackTracker(bytes_per_ms=8)
    p.echoed(p.sent("item_e", 800, now=1.0), now=1.1)
    p.sent("item_e", 800, now=5.0)
    assert p.truncate_at_ms("item_e", now=5.05) == 150
