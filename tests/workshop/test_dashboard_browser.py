"""The dashboard in a real browser (Debian chromium driven by Playwright): it loads, shows the
attendees (hostile names as text), updates live without a reload, and the instructor actions on the
page (broadcast, release a solution, reset an attendee) reach the attendees.

Screenshots for docs/instructor-guide.md are written to docs/images/ when
``MESHKIT_UPDATE_SCREENSHOTS=1`` (otherwise to the test's temp dir, so a test run leaves the tree clean).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Dialog, Page, Route, async_playwright, expect

from meshkit.workshop import client
from meshkit.workshop.server import RunningWorkshop
from tests.workshop.conftest import in_thread, join

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
SCRIPT_NAME = "<script>window.__pwned = 1</script>"
IMG_NAME = '<img src=x onerror="window.__pwned=2">'

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is absent: install Debian's chromium (./dev test does, as root)"),
]

LABS = {"01-request-routing": ["route-v1", "header-match", "ab-test"],
        "02-canary": ["apply-v1", "shift-10", "shift-50", "promote"]}
ROOM = [("Ada Lovelace", 7), ("Grace Hopper", 5), ("Alan Turing", 3), (SCRIPT_NAME, 2), ("Barbara Liskov", 4),
        (IMG_NAME, 1), ("Edsger Dijkstra", 3), ("Margaret Hamilton", 6)]
FAILURES = ["reviews-v3 received 0% of 200 requests; expected about 10%",
            "no VirtualService routes 'reviews' on header end-user",
            "DestinationRule reviews has no subset v3"]


async def _seed(running: RunningWorkshop, tmp_path: Path) -> list[client.Attendee]:
    steps = [(lab, step) for lab, lab_steps in LABS.items() for step in lab_steps]
    attendees = []
    for index, (name, done) in enumerate(ROOM):
        attendee = await join(running, name, tmp_path / f"a{index}")
        for lab, lab_steps in LABS.items():
            await in_thread(attendee.outline, lab, lab_steps)
        for lab, step in steps[:done]:
            await in_thread(attendee.report, lab, step, True)
        if done < len(steps):
            lab, step = steps[done]
            await in_thread(attendee.report, lab, step, False, FAILURES[index % len(FAILURES)])
        attendees.append(attendee)
    store = running.store
    store.release("01-request-routing", "route-v1")
    store.set_locked("03-mirroring", True)
    store.broadcast("Lab 02 starts at 10:30 — finish lab 01 first")
    return attendees


def _screenshot_dir(tmp_path: Path) -> Path:
    if os.environ.get("MESHKIT_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        return DOCS_IMAGES
    return tmp_path


async def _only_loopback(route: Route, blocked: list[str]) -> None:
    if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
        await route.continue_()
    else:
        blocked.append(route.request.url)
        await route.abort()


async def test_dashboard_loads_shows_attendees_and_updates_live(workshop: RunningWorkshop,
                                                                tmp_path: Path) -> None:
    attendees = await _seed(workshop, tmp_path)
    shots = _screenshot_dir(tmp_path)
    blocked: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 880})
            await page.route("**/*", lambda route: _only_loopback(route, blocked))
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(workshop.dashboard_url)
            await expect(page.locator("#live")).to_have_text("live", timeout=15000)
            rows = page.locator("#grid tbody tr")
            await expect(rows).to_have_count(len(ROOM), timeout=15000)
            assert "token" not in page.url  # the token left the address bar (projector!)
            await expect(page.locator("#join-code")).to_have_text(workshop.store.workshop.join_code)

            names = await page.locator(".attendee-name").all_text_contents()
            assert names == [name for name, _ in ROOM]  # hostile names are shown as text
            assert await page.evaluate("window.__pwned") is None
            assert await page.locator("#grid script, #grid img, aside script, aside img").count() == 0
            await expect(page.locator("#stuck li")).to_have_count(len(ROOM) - 1)  # Ada finished everything
            await expect(page.locator("#locked-labs")).to_have_text("03-mirroring")
            await page.screenshot(path=str(shots / "workshop-dashboard.png"))

            # live: a new result and a new attendee show up without a reload
            await page.evaluate("window.__sameDocument = true")
            turing = attendees[2]
            cell = page.locator(f'tr[data-attendee="{turing.id}"] td[data-step="apply-v1"]')
            await expect(cell).to_have_class("cell cell-failing")
            assert await in_thread(turing.report, "02-canary", "apply-v1", True)
            await expect(cell).to_have_class("cell cell-passed", timeout=10000)
            late = await join(workshop, "Late Larry", tmp_path / "late")
            await expect(rows).to_have_count(len(ROOM) + 1, timeout=10000)
            await expect(page.locator("#attendee-count")).to_have_text(str(len(ROOM) + 1))
            assert await page.evaluate("window.__sameDocument") is True

            # an instructor action from the page reaches a notebook
            await page.fill("#broadcast-text", "Solutions for lab 01 are out")
            await page.click("#broadcast-form button")
            await expect(page.locator("#action-result")).to_have_text("sent to every notebook", timeout=10000)
            assert "Solutions for lab 01 are out" in [m["text"] for m in await in_thread(late.messages)]
            await expect(page.locator("#messages li").first).to_have_text("Solutions for lab 01 are out")
            await page.locator("#grid").screenshot(path=str(shots / "workshop-live-update.png"))

            # release a step's solution and reset an attendee from the page (both ask to confirm)
            async def accept(dialog: Dialog) -> None:
                await dialog.accept()

            page.on("dialog", accept)
            await page.select_option("#release-lab", "02-canary")
            await page.select_option("#release-step", "shift-10")
            await page.click("#release-form button")
            released = "solution released: 02-canary / shift-10"
            await expect(page.locator("#action-result")).to_have_text(released, timeout=10000)
            assert await in_thread(lambda: late.refresh(max_age=0) and late.released("02-canary", "shift-10"))
            assert not await in_thread(late.released, "02-canary", "shift-50")
            await expect(page.locator("th.step.released")).to_have_count(2, timeout=10000)
            grace = attendees[1]
            await page.click(f'tr[data-attendee="{grace.id}"] button.reset')
            grace_done = page.locator(f'tr[data-attendee="{grace.id}"] td.done')
            await expect(grace_done).to_have_text("0", timeout=10000)
            assert errors == [] and blocked == []
            await _login_page_without_a_token(page, workshop)
        finally:
            await browser.close()
    for name in ("workshop-dashboard.png", "workshop-live-update.png"):
        data = (shots / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 300_000


async def _login_page_without_a_token(page: Page, running: RunningWorkshop) -> None:
    await page.evaluate("sessionStorage.clear()")
    await page.goto(f"{running.url}/dashboard")
    await expect(page.locator("#login")).to_be_visible()
    await page.fill("#token-input", "mki_wrong")
    await page.click("#login button")
    await expect(page.locator("#login-error")).to_have_text("The server refused the token.", timeout=10000)
