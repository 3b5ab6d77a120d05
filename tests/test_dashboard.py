"""The dashboard in real headless Chromium (Debian's chromium, driven by Playwright with
``executable_path``) against a running hub with real agent processes. Screenshots go to
``tests/screenshots/`` (git-ignored)."""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from hub.dispatch import InferRequest

from .test_dispatch import fleet

SHOTS = Path(__file__).resolve().parent / "screenshots"
# Every expect() waits for its condition; its deadline is only a failure bound (5 s by default:
# too short for a page, a hub and its agents sharing a busy machine).
expect.set_options(timeout=30_000)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed for the dashboard tests (./dev test installs it)"
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=chromium, args=ARGS)
        yield b
        await b.close()


async def open_page(browser: Browser, url: str) -> Page:
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await page.goto(url)
    await expect(page.get_by_test_id("conn")).to_have_text("live", timeout=30000)
    return page


async def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def test_devices_offline_feed_and_eeg(mosquitto: Any, make_hub: Any, spawn_agent: Any, browser: Browser) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                        plugins={"eeg": {"state_model": False}}) as hub:
        watch, laptop = await fleet(hub, spawn_agent, mosquitto.url, ("watch", ("--echo",)), ("laptop", ()))
        page = await open_page(browser, hub.http_url + "/")
        rows = page.get_by_test_id("devices").locator("tr")
        await expect(rows).to_have_count(2)
        row = page.locator(f'tr[data-id="{laptop.device_id}"]')
        await expect(row).to_have_class("online")
        # A device going offline greys at once (about a second here): by its last will, well before
        # the hub's heartbeat timeout (30 s), which bounds the wait.
        laptop.kill()
        killed = time.monotonic()
        await expect(row).to_have_class("offline", timeout=20000)
        greyed_after = time.monotonic() - killed
        # A routed request (sent from the page) appears in the feed, with the answer.
        await page.select_option("#task-type", "echo")
        await page.get_by_test_id("task-text").fill("hello from the page")
        await page.get_by_test_id("run").click()
        await expect(page.get_by_test_id("task-result")).to_contain_text("hello from the page")
        await expect(page.get_by_test_id("feed").locator("li").first).to_contain_text(f"echo on {watch.device_id}")
        # A request from elsewhere shows up too.
        await hub.dispatcher.infer(InferRequest(task="echo", text="from the API"))
        await expect(page.get_by_test_id("feed").locator("li")).to_have_count(2)
        # An EEG session started from the page moves the gauge.
        await page.get_by_test_id("eeg-start").click()
        gauge = page.get_by_test_id("gauge")
        await expect(gauge).to_have_attribute("data-score", "0.5", timeout=30000)  # baseline
        scores = set()
        deadline = time.monotonic() + 60
        while len(scores) < 3 and time.monotonic() < deadline:
            scores.add(await gauge.get_attribute("data-score"))
            await page.wait_for_timeout(200)  # between polls
        assert len(scores - {"0.5", ""}) >= 2, f"the gauge did not move: {scores}"
        await expect(page.get_by_test_id("bands").locator("div")).to_have_count(5)
        await shot(page, "dashboard")
        await page.get_by_test_id("eeg-stop").click()
        await expect(page.get_by_test_id("eeg-status")).to_contain_text("stopped")
        # A hot, stable intent becomes a proposed compiled pattern; approve it from the page.
        for _ in range(5):
            await hub.dispatcher.infer(InferRequest(task="intent", text="lock the front door"))
        await page.reload()
        await expect(page.get_by_test_id("conn")).to_have_text("live")
        rules = page.get_by_test_id("rules")
        await expect(rules).to_contain_text("lock the front door")
        await expect(rules).to_contain_text("proposed")
        await rules.get_by_role("button", name="approve").click()
        await expect(rules).to_contain_text("approved")
        out = await hub.dispatcher.infer(InferRequest(task="intent", text="Lock the front door"))
        assert out.served_by["layer"] == "code" and out.output == "lock_door"
        # And on a phone.
        await page.set_viewport_size({"width": 390, "height": 844})
        await shot(page, "dashboard-phone")
        print(f"offline greyed {greyed_after * 1000:.0f} ms after the kill")


async def test_without_the_token_nothing_changes(mosquitto: Any, make_hub: Any, spawn_agent: Any,
                                                 browser: Browser) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, http={"require_token": "writes"}) as hub:
        token = hub.new_admin_token
        assert token and "sha256" in (hub.data_dir / "admin-token.json").read_text()
        assert token not in (hub.data_dir / "admin-token.json").read_text(), "only the hash is stored"
        await fleet(hub, spawn_agent, mosquitto.url, ("watch", ("--echo",)))
        page = await open_page(browser, hub.http_url + "/")
        await expect(page.get_by_test_id("devices").locator("tr")).to_have_count(1)  # reads work on loopback
        await page.select_option("#task-type", "echo")
        await page.get_by_test_id("task-text").fill("let me in")
        await page.get_by_test_id("run").click()
        await expect(page.get_by_test_id("task-result")).to_contain_text("error 401")
        await expect(page.get_by_test_id("notice")).to_contain_text("admin token")
        # Refused, and nothing started: the answer to the page's request is awaited, not a pause.
        async with page.expect_response(lambda r: r.url.endswith("/api/eeg/sessions")
                                        and r.request.method == "POST") as answer:
            await page.get_by_test_id("eeg-start").click()
        assert (await answer.value).status == 401
        assert hub.dispatcher.counts["requests"] == 0
        await shot(page, "no-token")
        await page.get_by_test_id("token").fill(token)
        await page.locator("#token-form button").click()
        await page.get_by_test_id("run").click()
        await expect(page.get_by_test_id("task-result")).to_contain_text("let me in")


async def test_pending_devices_and_pairing_from_the_page(mosquitto: Any, make_hub: Any, spawn_agent: Any,
                                                         browser: Browser) -> None:
    """An unpaired device is shown as pending; the page's button opens a one-time code that pairs it."""
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, pairing={"required": True}) as hub:
        agent = spawn_agent(mosquitto.url, "watch", None, "--echo", "--no-zeroconf")
        page = await open_page(browser, hub.http_url + "/")
        row = page.locator(f'tr[data-id="{agent.device_id}"]')
        await expect(row).to_have_class("pending", timeout=60000)
        await expect(page.locator("#device-count")).to_contain_text("1 pending")
        await page.get_by_test_id("pair").click()
        text = page.get_by_test_id("pair-code")
        await expect(text).to_contain_text("--pair ")
        code = (await text.text_content() or "").split("Code ", 1)[1].split(" ", 1)[0]
        issued = hub.pairing.redeem(code, agent.device_id)  # what `sovereign agent --pair` does
        assert issued.username == f"device-{agent.device_id}"
        await expect(row).to_have_class("online", timeout=30000)
        await shot(page, "pairing")


async def test_a_thumbs_down_from_the_feed_is_learned(mosquitto: Any, make_hub: Any, spawn_agent: Any,
                                                      browser: Browser) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        [laptop] = await fleet(hub, spawn_agent, mosquitto.url, ("laptop", ("--seed", "1")))
        page = await open_page(browser, hub.http_url + "/")
        await page.select_option("#task-type", "qa")
        await page.get_by_test_id("task-text").fill("what is the capital of France?")
        await page.get_by_test_id("run").click()
        await expect(page.get_by_test_id("task-result")).to_contain_text(f"on {laptop.device_id}")
        item = page.get_by_test_id("feed").locator("li").first
        await item.get_by_role("button", name="poor answer").click()
        await expect(item.get_by_test_id("rate")).to_contain_text("rated 👎: 1 outcomes of")
        assert hub.learner.status()["feedback"] == {"up": 0, "down": 1}
        # An echo is not a task the predictor learns: nothing to rate.
        await hub.dispatcher.infer(InferRequest(task="echo", text="no verdict needed"))
        await expect(page.get_by_test_id("feed").locator("li")).to_have_count(2)
        await expect(page.get_by_test_id("feed").locator("li").first.get_by_test_id("rate")).to_have_count(0)
