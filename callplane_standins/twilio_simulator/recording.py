"""The call recording: a stereo WAV of what each side heard.

Left is the caller's audio as sent to the bot, right the bot's audio as the caller heard it
(after clears), both decoded from 8 kHz µ-law to 16-bit PCM so any audio tool can open it.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from callplane.audio import ulaw_decode

__all__ = ["write_stereo_wav"]


def write_stereo_wav(path: Path, left_ulaw: bytes, right_ulaw: bytes) -> None:
    """Write the two µ-law channels to ``path`` (cut to the shorter one), atomically.

    Written beside the target and renamed, so a reader never sees a half-written file.
    """
    n = min(len(left_ulaw), len(right_ulaw))
    left = ulaw_decode(np.frombuffer(left_ulaw[:n], dtype=np.uint8))
    right = ulaw_decode(np.frombuffer(right_ulaw[:n], dtype=np.uint8))
    stereo = np.column_stack((left, right)).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".wav.tmp")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(stereo.tobytes())
    tmp.replace(path)
