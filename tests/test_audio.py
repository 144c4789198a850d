"""Tests for callplane.audio: G.711 codecs against audioop, formats, resampling, levels."""

from __future__ import annotations

import warnings
from types import ModuleType

import numpy as np
import pytest

from callplane.audio import (
    PCM24K,
    PCMA,
    PCMU,
    AudioFormat,
    alaw_decode,
    alaw_encode,
    resample,
    rms,
    ulaw_decode,
    ulaw_encode,
)

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
ALL_CODES = np.arange(256, dtype=np.int32).astype(np.uint8)


def _audioop() -> ModuleType:
    # audioop is deprecated in 3.11+ (removed in 3.13); it is only the reference here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop

    return audioop


def test_ulaw_encode_is_bitexact_with_audioop_for_every_int16() -> None:
    expected = _audioop().lin2ulaw(ALL_INT16.tobytes(), 2)
    assert ulaw_encode(ALL_INT16).tobytes() == expected


def test_ulaw_decode_is_bitexact_with_audioop_for_every_code() -> None:
    expected = np.frombuffer(_audioop().ulaw2lin(ALL_CODES.tobytes(), 2), dtype=np.int16)
    np.testing.assert_array_equal(ulaw_decode(ALL_CODES), expected)


def test_alaw_encode_is_bitexact_with_audioop_for_every_int16() -> None:
    expected = _audioop().lin2alaw(ALL_INT16.tobytes(), 2)
    assert alaw_encode(ALL_INT16).tobytes() == expected


def test_alaw_decode_is_bitexact_with_audioop_for_every_code() -> None:
    expected = np.frombuffer(_audioop().alaw2lin(ALL_CODES.tobytes(), 2), dtype=np.int16)
    np.testing.assert_array_equal(alaw_decode(ALL_CODES), expected)


def test_g711_silence_codes() -> None:
    silence = np.zeros(160, dtype=np.int16)
    assert set(ulaw_encode(silence).tolist()) == {0xFF}
    assert set(alaw_encode(silence).tolist()) == {0xD5}


def test_codecs_reject_wrong_dtypes() -> None:
    with pytest.raises(TypeError, match="int16"):
        ulaw_encode(np.zeros(4, dtype=np.float32))
    with pytest.raises(TypeError, match="uint8"):
        alaw_decode(np.zeros(4, dtype=np.int16))


def test_format_constants() -> None:
    assert (PCM24K.kind, PCM24K.rate, PCM24K.sample_width) == ("audio/pcm", 24000, 2)
    assert (PCMU.kind, PCMU.rate, PCMU.sample_width) == ("audio/pcmu", 8000, 1)
    assert (PCMA.kind, PCMA.rate, PCMA.sample_width) == ("audio/pcma", 8000, 1)


def test_duration_math() -> None:
    assert PCM24K.nbytes_for_ms(20) == 960
    assert PCMU.nbytes_for_ms(20) == 160
    assert PCMA.nbytes_for_ms(1000) == 8000
    assert PCM24K.duration_ms(960) == pytest.approx(20.0)
    assert PCMU.duration_ms(160) == pytest.approx(20.0)
    assert PCMU.duration_ms(0) == 0.0
    # Whole samples, rounded down; floating error must not lose a sample.
    assert PCMU.nbytes_for_ms(0.1) == 0
    assert PCMU.nbytes_for_ms(0.125) == 1
    assert PCM24K.nbytes_for_ms(0.07) == 2
    assert PCMU.nbytes_for_ms(-5) == 0
    for ms in (10.0, 20.0, 30.0, 100.0, 0.3):
        assert PCMU.nbytes_for_ms(ms) == round(ms * 8)
    assert PCM24K.duration_ms(PCM24K.nbytes_for_ms(250)) == pytest.approx(250.0)


def test_pcm_encode_is_little_endian_int16() -> None:
    pcm = np.array([1, -2, 32767, -32768], dtype=np.int16)
    assert PCM24K.encode(pcm) == b"\x01\x00\xfe\xff\xff\x7f\x00\x80"
    decoded = PCM24K.decode(b"\x01\x00\xfe\xff\xff\x7f\x00\x80")
    assert decoded.dtype == np.int16
    np.testing.assert_array_equal(decoded, pcm)


def test_pcm_decode_rejects_half_samples() -> None:
    with pytest.raises(ValueError, match="whole 16-bit samples"):
        PCM24K.decode(b"\x00\x01\x02")


@pytest.mark.parametrize("fmt", [PCM24K, PCMU, PCMA])
def test_format_round_trip(fmt: AudioFormat) -> None:
    t = np.arange(fmt.rate // 10) / fmt.rate
    pcm = (np.sin(2 * np.pi * 440 * t) * 12000).astype(np.int16)
    data = fmt.encode(pcm)
    assert len(data) == pcm.size * fmt.sample_width
    assert fmt.duration_ms(len(data)) == pytest.approx(100.0)
    back = fmt.decode(data)
    assert back.dtype == np.int16 and back.size == pcm.size
    if fmt is PCM24K:
        np.testing.assert_array_equal(back, pcm)
    else:
        # G.711 is lossy but a codec round trip of its own output is exact.
        assert fmt.encode(back) == data
        err = np.abs(back.astype(np.int32) - pcm.astype(np.int32))
        assert int(err.max()) <= 12000 // 16


def test_from_session_and_to_session_round_trip() -> None:
    assert AudioFormat.from_session({"type": "audio/pcm", "rate": 24000}) == PCM24K
    assert AudioFormat.from_session({"type": "audio/pcm"}) == PCM24K
    assert AudioFormat.from_session({"type": "audio/pcmu"}) == PCMU
    assert AudioFormat.from_session({"type": "audio/pcma"}) == PCMA
    assert PCM24K.to_session() == {"type": "audio/pcm", "rate": 24000}
    assert PCMU.to_session() == {"type": "audio/pcmu"}
    assert PCMA.to_session() == {"type": "audio/pcma"}
    for fmt in (PCM24K, PCMU, PCMA):
        assert AudioFormat.from_session(fmt.to_session()) == fmt


@pytest.mark.parametrize(
    ("session", "named"),
    [
        ({"type": "audio/wav"}, "audio/wav"),
        ({}, "None"),
        ({"type": "audio/pcm", "rate": 16000}, "16000"),
        ({"type": "audio/pcm", "rate": "24000"}, "'24000'"),
        ({"type": "audio/pcmu", "rate": 16000}, "16000"),
    ],
)
def test_from_session_names_the_bad_value(session: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        AudioFormat.from_session(session)


def test_format_rejects_inconsistent_rate() -> None:
    with pytest.raises(ValueError, match="8000"):
        AudioFormat("audio/pcmu", 24000)


def test_resample_identity_and_lengths() -> None:
    pcm = (np.random.default_rng(1).standard_normal(8000) * 3000).astype(np.int16)
    same = resample(pcm, 8000, 8000)
    np.testing.assert_array_equal(same, pcm)
    assert same is not pcm
    up = resample(pcm, 8000, 24000)
    assert up.dtype == np.int16 and up.size == 24000
    assert resample(pcm, 8000, 16000).size == 16000
    assert resample(np.zeros(0, dtype=np.int16), 8000, 16000).size == 0
    with pytest.raises(ValueError, match="positive"):
        resample(pcm, 0, 16000)


def test_resample_keeps_frequency_and_level() -> None:
    rate = 24000
    t = np.arange(rate) / rate
    tone = (np.sin(2 * np.pi * 1000 * t) * 10000).astype(np.int16)
    down = resample(tone, rate, 8000)
    spectrum = np.abs(np.fft.rfft(down.astype(np.float64)))
    peak_hz = np.argmax(spectrum) * 8000 / down.size
    assert peak_hz == pytest.approx(1000, abs=2)
    assert rms(down) == pytest.approx(rms(tone), rel=0.02)
    # Deterministic: soxr has no dither.
    np.testing.assert_array_equal(down, resample(tone, rate, 8000))


def test_rms() -> None:
    assert rms(np.zeros(0, dtype=np.int16)) == 0.0
    assert rms(np.zeros(100, dtype=np.int16)) == 0.0
    square = np.array([32767, -32768] * 50, dtype=np.int16)
    assert rms(square) == pytest.approx(1.0, abs=1e-4)
    t = np.arange(8000) / 8000
    sine = (np.sin(2 * np.pi * 200 * t) * 16384).astype(np.int16)
    assert rms(sine) == pytest.approx(0.5 / np.sqrt(2), rel=1e-3)
