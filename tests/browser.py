"""A real headless Chromium for tests, with a fake microphone that speaks a WAV file.

Debian's ``/usr/bin/chromium`` is driven through Python playwright (only the client library is
used; playwright's own browser downloads are never needed). Chromium's fake media flags make
``getUserMedia`` succeed without a prompt and capture the samples of a WAV file instead of a
device, so a test can decide exactly what the "user" says: :func:`synthesize_wav` writes an
espeak-ng phrase (the same voice the local engine recognises) as the WAV.

Pages report their state through a ``window.callplane`` object (the playground's test hook);
:meth:`BrowserPage.wait_for` polls a JavaScript predicate over it and fails with the page's
console log, which is where a browser-side failure explains itself. Screenshots go to the
test-artifacts folder (``$CALLPLANE_ARTIFACTS``, default ``tests/artifacts/``, gitignored).

Usage::

    async with launch_browser(fake_audio=synthesize_wav("what is the weather like today")) as b:
        page = await b.open(url)
        await page.wait_for("h => h.connected", what="the page to connect")
        await page.screenshot("connected")
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Error,
    Page,
    async_playwright,
)

from callplane_standins.realtime_engine.speech import speak

__all__ = [
    "CHROMIUM",
    "FAKE_AUDIO_RATE",
    "BrowserHarness",
    "BrowserPage",
    "artifacts_dir",
    "launch_browser",
    "synthesize_wav",
    "write_wav",
]

CHROMIUM = os.environ.get("CALLPLANE_CHROMIUM", "/usr/bin/chromium")
"""The browser binary: Debian's chromium unless ``$CALLPLANE_CHROMIUM`` names another."""

FAKE_AUDIO_RATE = 48_000
"""Sample rate of the fake-microphone WAVs: WebRTC's native rate, so Chromium need not resample."""

_REPO = Path(__file__).resolve().parent.parent


def artifacts_dir() -> Path:
    """The folder for screenshots and other test artifacts, created on first use."""
    path = Path(os.environ.get("CALLPLANE_ARTIFACTS") or _REPO / "tests" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_wav(path: Path, samples: npt.NDArray[np.int16], rate: int) -> Path:
    """Write mono 16-bit PCM, the format Chromium's fake audio capture reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.ascontiguousarray(samples, dtype="<i2").tobytes())
    return path


def synthesize_wav(
    text: str,
    path: Path | None = None,
    *,
    voice: str = "en-us",
    wpm: int | None = None,
    rate: int = FAKE_AUDIO_RATE,
    lead_silence_s: float = 0.5,
    tail_silence_s: float = 1.5,
) -> Path:
    """Speak ``text`` with espeak-ng into a WAV for the fake microphone.

    Silence before the phrase covers the time between ``getUserMedia`` and the track being
    published; silence after it lets server VAD see the end of the turn before the file loops.
    """
    speech = speak(text, voice, rate, wpm)
    if speech.size == 0:
        raise ValueError("synthesize_wav needs a non-empty phrase")
    lead = np.zeros(round(lead_silence_s * rate), dtype=np.int16)
    tail = np.zeros(round(tail_silence_s * rate), dtype=np.int16)
    if path is None:
        slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "phrase"
        path = artifacts_dir() / "audio" / f"{slug}-{rate}.wav"
    return write_wav(path, np.concatenate([lead, speech, tail]), rate)


@dataclass
class BrowserPage:
    """One page plus everything it logged, for assertions and failure messages."""

    page: Page
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Console messages of type error and uncaught exceptions."""

    def _on_console(self, message: ConsoleMessage) -> None:
        location = message.location
        where = f" ({location.get('url', '')}:{location.get('lineNumber', '')})" if location else ""
        line = f"[{message.type}] {message.text}{where}"
        self.console.append(line)
        if message.type == "error":
            self.errors.append(line)

    def _on_page_error(self, error: Error) -> None:
        line = f"[pageerror] {error.name}: {error.message}"
        self.console.append(line)
        self.errors.append(line)

    def log(self) -> str:
        """The page's console so far, one message a line (for failure messages)."""
        return "\n".join(self.console) or "(the console is empty)"

    async def goto(self, url: str, timeout_s: float = 15.0) -> None:
        """Load ``url`` and wait for the load event."""
        await self.page.goto(url, wait_until="load", timeout=timeout_s * 1000)

    async def hook(self) -> dict[str, Any]:
        """A snapshot of ``window.callplane`` (``{}`` before the page set it)."""
        value = await self.page.evaluate("() => JSON.stringify(window.callplane ?? {})")
        snapshot: dict[str, Any] = json.loads(value)
        return snapshot

    async def wait_for(
        self,
        predicate: str,
        *,
        timeout_s: float = 20.0,
        what: str | None = None,
        arg: Any = None,
    ) -> Any:
        """Wait until ``predicate(window.callplane, arg)`` is truthy and return its value.

        ``predicate`` is a JavaScript function source, e.g. ``"h => h.connected"``. It is only
        called once the hook exists. A timeout fails with the hook's last state and the page's
        console log.
        """
        source = (
            f"([arg]) => {{ const h = window.callplane; if (!h) return false; "
            f"return ({predicate})(h, arg); }}"
        )
        try:
            handle = await self.page.wait_for_function(
                source, arg=[arg], timeout=timeout_s * 1000, polling=100
            )
        except Error as exc:
            state = await self._safe_hook()
            raise AssertionError(
                f"timed out after {timeout_s:g}s waiting for {what or predicate}: {exc.message}\n"
                f"window.callplane = {json.dumps(state, indent=1)[:4000]}\n"
                f"console:\n{self.log()}"
            ) from None
        return await handle.json_value()

    async def _safe_hook(self) -> dict[str, Any] | str:
        try:
            return await self.hook()
        except Error as exc:
            return f"(unreadable: {exc.message})"

    async def screenshot(self, name: str) -> Path:
        """Save a full-page PNG into the artifacts folder and return its path."""
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "page"
        path = artifacts_dir() / f"{slug}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path


@dataclass
class BrowserHarness:
    """A launched Chromium with one browser context; :meth:`open` makes pages in it."""

    browser: Browser
    context: BrowserContext
    pages: list[BrowserPage] = field(default_factory=list)

    async def new_page(self) -> BrowserPage:
        """A blank page whose console is recorded from the start."""
        page = await self.context.new_page()
        wrapped = BrowserPage(page)
        page.on("console", wrapped._on_console)
        page.on("pageerror", wrapped._on_page_error)
        self.pages.append(wrapped)
        return wrapped

    async def open(self, url: str, timeout_s: float = 15.0) -> BrowserPage:
        """A new page with ``url`` loaded."""
        page = await self.new_page()
        await page.goto(url, timeout_s)
        return page


def chromium_args(fake_audio: Path | None, *, loop_audio: bool = True) -> list[str]:
    """Flags for an unattended Chromium whose microphone is ``fake_audio`` (or a beep)."""
    args = [
        "--use-fake-ui-for-media-stream",  # grant getUserMedia without a prompt
        "--use-fake-device-for-media-stream",  # fake devices instead of real ones
        "--autoplay-policy=no-user-gesture-required",  # remote audio may play at once
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",  # nothing but the test's own loopback traffic
        "--disable-component-update",
        # Inside a container, /dev/shm is often too small for Chromium's renderers.
        "--disable-dev-shm-usage",
    ]
    if fake_audio is not None:
        if not fake_audio.is_file():
            raise FileNotFoundError(f"fake microphone file {fake_audio} does not exist")
        suffix = "" if loop_audio else "%noloop"
        args.append(f"--use-file-for-fake-audio-capture={fake_audio}{suffix}")
    return args


def _require_browser(executable: str) -> None:
    if not Path(executable).exists():
        raise RuntimeError(
            f"{executable} is missing: install Debian's chromium (scripts/setup.sh does) or set "
            "$CALLPLANE_CHROMIUM"
        )


@contextlib.asynccontextmanager
async def launch_browser(
    fake_audio: Path | None = None,
    *,
    loop_audio: bool = True,
    executable: str = CHROMIUM,
    viewport: tuple[int, int] = (900, 900),
) -> AsyncIterator[BrowserHarness]:
    """Launch headless Chromium with a fake microphone; close everything on exit.

    Without ``fake_audio`` the fake device plays Chromium's built-in beep. With
    ``loop_audio=False`` the file is played once and the microphone is silent afterwards.
    """
    _require_browser(executable)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            args=chromium_args(fake_audio, loop_audio=loop_audio),
        )
        try:
            context = await browser.new_context(
                viewport={"width": viewport[0], "height": viewport[1]},
                permissions=["microphone"],
            )
            yield BrowserHarness(browser, context)
        finally:
            await browser.close()
