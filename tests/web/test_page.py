"""The playground builds, loads cleanly in headless Chromium and explains token refusals."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.browser import launch_browser
from tests.web.conftest import DIST_FILES, WEB_KEY, Site


def test_build_produces_the_served_files(dist: Path) -> None:
    for name in DIST_FILES:
        assert (dist / name).stat().st_size > 0, f"web/dist/{name} is empty"
    html = (dist / "index.html").read_text()
    # Relative asset URLs: the edge serves the page under /playground/.
    assert 'src="./playground.js"' in html
    assert 'href="./playground.css"' in html
    bundle = (dist / "playground.js").read_text()
    assert "lk.transcription" in bundle  # livekit-client and the page code are bundled in
    assert "registerTextStreamHandler" in bundle


async def test_page_loads_without_console_errors(site: Site) -> None:
    async with launch_browser() as browser:
        page = await browser.open(site.playground(key=WEB_KEY))
        hook = await page.wait_for("h => h.state === 'idle' && h", what="the idle page")
        assert re.fullmatch(r"web-[0-9a-f]{8}", hook["room"]), hook["room"]
        assert hook["connected"] is False
        assert hook["transcript"] == []
        assert hook["errors"] == []
        assert hook["agentState"] is None

        ui = page.page
        assert await ui.get_by_test_id("connection-state").inner_text() == "idle"
        assert await ui.get_by_test_id("room-name").inner_text() == hook["room"]
        assert await ui.get_by_role("button", name="Talk").is_enabled()
        assert await ui.get_by_role("button", name="Leave").is_disabled()
        assert await ui.get_by_test_id("transcript").get_attribute("aria-live") == "polite"
        assert await ui.get_by_test_id("error").is_hidden()
        await page.screenshot("playground-idle")
        assert page.errors == [], page.log()
        # The page never asked for a token on its own.
        assert site.endpoint.requests == []


async def test_room_and_profile_come_from_the_url(site: Site) -> None:
    async with launch_browser() as browser:
        page = await browser.open(
            site.playground(link="not-the-link", room="support-42", profile="concierge")
        )
        await page.wait_for("h => h.state === 'idle'")
        await page.page.get_by_test_id("talk").click()
        await page.wait_for("h => h.state === 'failed'", what="the refused token request")
    [request] = site.endpoint.requests
    assert request["body"] == {"room": "support-42", "profile": "concierge", "agent": True}
    assert request["link"] == "not-the-link"
    assert request["authorization"] is None


async def test_rejected_key_shows_an_error(site: Site) -> None:
    async with launch_browser() as browser:
        page = await browser.open(site.playground(key="wrong-key", room="web-denied"))
        await page.wait_for("h => h.state === 'idle'")
        await page.page.get_by_test_id("talk").click()
        errors = await page.wait_for(
            "h => h.errors.length > 0 && h.errors", what="the 401 to be reported"
        )
        hook = await page.hook()
        alert = page.page.get_by_role("alert")
        assert await alert.is_visible()
        text = await alert.inner_text()
        # A refusal is not the end: the user can fix the URL and press Talk again.
        assert await page.page.get_by_role("button", name="Talk").is_enabled()
        assert await page.page.get_by_test_id("connection-state").inner_text() == "failed"
        await page.screenshot("playground-401")
    assert errors[0]["kind"] == "unauthorized"
    assert errors[0]["status"] == 401
    assert "401" in text and "key or link" in text
    assert hook["state"] == "failed"
    assert hook["connected"] is False
    [request] = site.endpoint.requests
    assert request["authorization"] == "Bearer wrong-key"
    assert request["body"] == {"room": "web-denied", "agent": True}


@pytest.mark.parametrize(
    ("status", "kind", "words"),
    [(403, "forbidden", "may not join"), (429, "rate-limited", "Try again in 7 s")],
)
async def test_refusals_are_explained(site: Site, status: int, kind: str, words: str) -> None:
    site.endpoint.refusal = status
    async with launch_browser() as browser:
        page = await browser.open(site.playground(key=WEB_KEY))
        await page.wait_for("h => h.state === 'idle'")
        await page.page.get_by_test_id("talk").click()
        errors = await page.wait_for("h => h.errors.length > 0 && h.errors")
        text = await page.page.get_by_role("alert").inner_text()
    assert [(e["kind"], e["status"]) for e in errors] == [(kind, status)]
    assert str(status) in text and words in text, text


async def test_a_link_without_its_room_says_so(site: Site) -> None:
    async with launch_browser() as browser:
        page = await browser.open(site.playground(link="l1.0.made-for-another-room"))
        await page.wait_for("h => h.state === 'idle'")
        await page.page.get_by_test_id("talk").click()
        await page.wait_for("h => h.errors.length > 0")
        text = await page.page.get_by_role("alert").inner_text()
    assert "401" in text and "both ?room= and ?link=" in text, text
