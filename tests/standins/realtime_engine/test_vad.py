from __future__ import annotations

import numpy as np

from callplane_standins.realtime_engine.vad import (
    EnergyVad,
    SpeechStarted,
    SpeechStopped,
    VadSettings,
)

RATE = 8000


def tone(ms: int, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(RATE * ms // 1000) / RATE
    return (np.sin(2 * np.pi * 300 * t) * amplitude * 32767).astype(np.int16)


def silence(ms: int) -> np.ndarray:
    return np.zeros(RATE * ms // 1000, dtype=np.int16)


def test_a_turn_gives_start_with_prefix_padding_and_stop_after_the_silence() -> None:
    vad = EnergyVad(VadSettings(prefix_padding_ms=300, silence_duration_ms=500), RATE)
    events = vad.feed(np.concatenate((silence(1000), tone(800), silence(700))))
    assert events == [SpeechStarted(700), SpeechStopped(2300)]


def test_feeding_in_small_pieces_gives_the_same_events() -> None:
    audio = np.concatenate((silence(1000), tone(800), silence(700)))
    vad = EnergyVad(VadSettings(), RATE)
    events = [e for i in range(0, audio.size, 37) for e in vad.feed(audio[i : i + 37])]
    assert events == [SpeechStarted(700), SpeechStopped(2300)]


def test_short_pauses_inside_speech_do_not_end_the_turn() -> None:
    vad = EnergyVad(VadSettings(silence_duration_ms=500), RATE)
    events = vad.feed(np.concatenate((tone(400), silence(300), tone(400), silence(600))))
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]


def test_a_click_is_not_a_turn() -> None:
    vad = EnergyVad(VadSettings(), RATE)
    assert vad.feed(np.concatenate((silence(200), tone(40), silence(1000)))) == []


def test_threshold_decides_what_counts_as_speech() -> None:
    quiet = np.concatenate((tone(500, amplitude=0.01), silence(600)))  # about -43 dBFS
    assert EnergyVad(VadSettings(threshold=0.5), RATE).feed(quiet) == []
    assert len(EnergyVad(VadSettings(threshold=0.1), RATE).feed(quiet)) == 2
