"""The dashboard's Voice panel in real headless Chromium against a running hub (the voice
plugin) and a real ``phone`` agent: push-to-talk through Chromium's fake microphone playing a
phrase synthesized by espeak-ng (held with the mouse, toggled from the keyboard), typed
commands, Confirm and Cancel of a held action, the live feed, and a denied or missing
microphone said in the panel. Screenshots go to ``tests/screenshots/`` (git-ignored)."""

from __future__ import annotations

import shutil
import subprocess
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect


from .test_dashboard import ARGS, shot
from .test_dispatch import fleet

#: Chromium's fake microphone: permission prompts accepted, a fake device, the phrase played once.
MEDIA_ARGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
#: Silence before the phrase: the fake device plays from the moment the page opens it, and a
#: person starts speaking once the button shows it is recording, not before.
LEAD_S = 0.5


def speak(text: str, path: Path) -> float:
    """``text`` as espeak-ng says it (US English, 22.05 kHz mono: Chromium's fake capture
    resamples whatever rate the file has), after LEAD_S of silence; its length in seconds."""
    espeak = shutil.which("espeak-ng")
    assert espeak, "espeak-ng is needed for the voice dashboard test (apt-get install espeak-ng)"
    raw = path.with_suffix(".raw.wav")
    subprocess.run([espeak, "-v", "en-us", "-w", str(raw), text], check=True, capture_output=True)
    with wave.open(str(raw)) as w:
        params, frames = w.getparams(), w.readframes(w.getnframes())
    lead = b"\0" * (int(LEAD_S * params.framerate) * params.sampwidth * params.nchannels)
    with wave.open(str(path), "wb") as w:
        w.setparams(params)
        w.writeframes(lead + frames)
    return (len(lead) + len(frames)) / (params.framerate * params.sampwidth * params.nchannels)


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    """Launches Debian's chromium with extra arguments; every browser is closed at the end."""
    path = shutil.which("chromium")
    assert path, "Debian's chromium is needed for the dashboard tests (./dev test installs it)"
    browsers: list[Browser] = []
    async with async_playwright() as pw:
        async def launch(*extra: str) -> Browser:
            b = await pw.chromium.launch(executable_path=path, args=[*ARGS, *extra])
            browsers.append(b)
            return b

        yield launch
        for b in browsers:
            await b.close()


async def open_voice_page(browser: Browser, url: str) -> tuple[Page, list[str]]:
    """The dashboard, live, with the page's uncaught exceptions and unhandled rejections
    collected from the start (none is allowed)."""
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url)
    await expect(page.get_by_test_id("conn")).to_have_text("live")
    return page, errors


async def hold_to_talk(page: Page, seconds: float) -> None:
    """Press the push-to-talk button with the mouse, keep it down until the page has recorded
    ``seconds`` of audio (the button says how much), release."""
    ptt = page.get_by_test_id("voice-ptt")
    box = await ptt.bounding_box()
    assert box is not None
    await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    await page.mouse.down()
    await expect(ptt).to_have_attribute("aria-pressed", "true")
    await expect(ptt).to_have_attribute("data-state", "recording")
    await page.wait_for_function(
        "s => Number(document.querySelector('[data-testid=voice-ptt]').dataset.recordedS) >= s", arg=seconds,
        timeout=30_000)
    await page.mouse.up()
    await expect(ptt).to_have_attribute("aria-pressed", "false")


async def expect_heard(row: Any, word: str) -> None:
    """The row of a recording: transcribed, its text has ``word``, its action published (the
    whole row is the failure message)."""
    await expect(row.get_by_test_id("voice-cost")).to_contain_text("s of audio", timeout=120_000)
    said = (await row.get_by_test_id("voice-row-text").inner_text()).lower()
    assert word in said and await row.get_attribute("data-status") == "published", await row.inner_text()


def row_by_text(page: Page, text: str) -> Any:
    return page.get_by_test_id("voice-row").filter(has=page.get_by_test_id("voice-row-text").filter(has_text=text))


async def send_text(page: Page, text: str) -> None:
    await page.get_by_test_id("voice-text").fill(text)
    await page.get_by_test_id("voice-send").click()
    await expect(page.get_by_test_id("voice-text")).to_have_value("")


@pytest.mark.timeout(300)
async def test_push_to_talk_typed_commands_and_confirmation(mosquitto: Any, make_hub: Any, spawn_agent: Any,
                                                           chromium: Any, tmp_path: Path) -> None:
    phrase = tmp_path / "kitchen.wav"
    length = speak("turn off the kitchen lights", phrase)
    browser = await chromium(*MEDIA_ARGS, f"--use-file-for-fake-audio-capture={phrase}%noloop")
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, plugins={"voice": {}}) as hub:
        [phone] = await fleet(hub, spawn_agent, mosquitto.url, ("phone", ()))
        page, errors = await open_voice_page(browser, hub.http_url + "/")
        panel = page.get_by_test_id("voice")
        await expect(panel).to_be_visible()
        await expect(page.get_by_test_id("voice-ptt")).to_have_attribute("aria-pressed", "false")

        # Spoken: held for the whole phrase, sent on release, transcribed on the phone, then
        # matched by Home Assistant's sentences and published.
        await hold_to_talk(page, length + 0.5)
        spoken = page.get_by_test_id("voice-row").first
        await expect_heard(spoken, "kitchen")
        await expect(row_by_text(page, "kitchen")).to_have_count(1)
        await expect(spoken.get_by_test_id("voice-action")).to_contain_text("HassTurnOff")
        await expect(spoken.get_by_test_id("voice-action")).to_contain_text("area=Kitchen")
        cost = spoken.get_by_test_id("voice-cost")
        await expect(cost).to_contain_text("transcribe")
        await expect(cost).to_contain_text(f"on {phone.device_id}")
        assert "transcribe" in (await cost.get_attribute("title") or "")
        assert (await spoken.locator(".voice-source").text_content()) == "api"
        await expect(page.get_by_test_id("voice-status")).to_have_text("")

        # From the keyboard the button toggles: Enter starts, Enter sends (the fake microphone
        # plays its phrase again to each new capture).
        ptt = page.get_by_test_id("voice-ptt")
        await ptt.focus()
        await page.keyboard.press("Enter")
        await expect(ptt).to_have_attribute("aria-pressed", "true")
        await expect(page.get_by_test_id("voice-status")).to_contain_text("press again to send")
        await page.wait_for_function(
            "s => Number(document.querySelector('[data-testid=voice-ptt]').dataset.recordedS) >= s", arg=length + 0.5)
        await page.keyboard.press("Enter")
        await expect(ptt).to_have_attribute("aria-pressed", "false")
        await expect_heard(page.get_by_test_id("voice-row").first, "kitchen")
        await expect(row_by_text(page, "kitchen")).to_have_count(2)

        # Nothing said (an empty utterance from elsewhere): a placeholder, not an empty row.
        async with aiohttp.ClientSession() as s:
            async with s.post(hub.http_url + "/api/voice", json={"text": "  "}) as r:
                assert r.status == 200, await r.text()
        quiet = page.get_by_test_id("voice-row").first
        await expect(quiet).to_have_attribute("data-status", "no_speech")
        await expect(quiet.get_by_test_id("voice-row-text")).to_have_text("(no speech heard)")

        # Typed: a sensitive action is held, with Confirm and Cancel; Confirm publishes it and
        # the held row says so in place, its buttons gone.
        await send_text(page, "unlock the front door")
        held = row_by_text(page, "unlock the front door")
        await expect(held).to_have_attribute("data-status", "awaiting_confirmation")
        await expect(held.get_by_test_id("voice-row-status")).to_have_text("awaiting confirmation")
        await expect(held.get_by_test_id("voice-confirm")).to_be_visible()
        await expect(held.get_by_test_id("voice-cancel")).to_be_visible()
        await expect(page.get_by_test_id("voice-summary")).to_have_text("1 awaiting confirmation")
        await shot(page, "voice-held")
        await held.get_by_test_id("voice-confirm").click()
        await expect(held).to_have_attribute("data-status", "confirmed")
        await expect(held.get_by_test_id("voice-confirm")).to_have_count(0)
        answer = page.get_by_test_id("voice-row").first
        await expect(answer).to_have_attribute("data-status", "published")
        await expect(answer).to_contain_text("confirmation")
        await expect(page.get_by_test_id("voice-summary")).to_have_text("")

        # Cancel: the held row says cancelled.
        await send_text(page, "unlock the front door")
        again = row_by_text(page, "unlock the front door").first
        await expect(again).to_have_attribute("data-status", "awaiting_confirmation")
        await again.get_by_test_id("voice-cancel").click()
        await expect(again).to_have_attribute("data-status", "cancelled")
        await expect(row_by_text(page, "unlock the front door").and_(page.locator('[data-status="confirmed"]'))
                     ).to_have_count(1)
        await expect(page.get_by_test_id("voice-row").first).to_contain_text("answer to “unlock the front door”")

        # What the hub hears from elsewhere arrives over the websocket.
        async with aiohttp.ClientSession() as s:
            async with s.post(hub.http_url + "/api/voice", json={"text": "turn on the living room lights"}) as r:
                assert r.status == 200, await r.text()
        await expect(row_by_text(page, "living room")).to_have_attribute("data-status", "published")

        # Live dictation cut short is marked partial, with why (as the plugin sends it).
        hub.live.send("voice.utterance", {
            "id": "partial0001", "at": time.time(), "source": f"device:{phone.device_id}", "text": "turn on the",
            "layer": "none", "status": "no_action", "reason": "classifier: not a command it knows", "actions": [],
            "stages": [{"name": "transcribe", "ms": 812.5, "joules": 1.8, "device": phone.device_id,
                        "model": "whisper-tiny.en"}], "joules": 1.8, "latency_ms": 812.5, "audio_s": 1.2,
            "speech": "Sorry, I can't do that.", "partial": "idle: no frame for 5 s"})
        cut = page.locator('[data-testid=voice-row][data-id="partial0001"]')
        await expect(cut.get_by_test_id("voice-partial")).to_have_text("partial: idle: no frame for 5 s")
        await expect(cut).to_have_class("voice-no_action partial")

        # Text from the hub is text: markup in an utterance stays characters.
        await send_text(page, "<img src=x onerror=alert(1)> <b>bold</b>")
        await expect(row_by_text(page, "<img src=x onerror=alert(1)>")).to_have_count(1)
        assert await panel.locator("img, b:text('bold')").count() == 0
        await shot(page, "voice")

        # A reload fills the feed from GET /api/voice, newest first, the states as they ended.
        rows = await page.get_by_test_id("voice-row").count()
        await page.reload()
        await expect(page.get_by_test_id("conn")).to_have_text("live")
        await expect(page.get_by_test_id("voice-row")).to_have_count(rows - 1)  # not the injected partial
        await expect(row_by_text(page, "kitchen").and_(page.locator('[data-status="published"]'))).to_have_count(2)
        await expect(page.locator('[data-testid=voice-row][data-status="confirmed"]')).to_have_count(1)
        await expect(page.locator('[data-testid=voice-row][data-status="cancelled"]')).to_have_count(2)
        await expect(page.get_by_test_id("voice-confirm")).to_have_count(0)
        await expect(page.get_by_test_id("voice-row").first).to_contain_text("bold")

        # At most 20 rows, the newest first.
        async with aiohttp.ClientSession() as s:
            for i in range(21):
                async with s.post(hub.http_url + "/api/voice", json={"text": f"turn off the kitchen lights {i}"}) as r:
                    assert r.status == 200, await r.text()
        await expect(page.get_by_test_id("voice-row").first).to_contain_text("lights 20")
        await expect(page.get_by_test_id("voice-row")).to_have_count(20)
        await expect(page.get_by_test_id("voice-row").last).to_contain_text("lights 1")

        await page.set_viewport_size({"width": 390, "height": 844})
        await shot(page, "voice-phone")
        assert not errors, errors


async def test_a_denied_microphone_is_said_in_the_panel(mosquitto: Any, make_hub: Any, chromium: Any) -> None:
    # A fake device but no automatic "allow": headless Chromium under Playwright denies the prompt.
    browser = await chromium("--use-fake-device-for-media-stream")
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, plugins={"voice": {}}) as hub:
        page, errors = await open_voice_page(browser, hub.http_url + "/")
        ptt = page.get_by_test_id("voice-ptt")
        await ptt.click()
        status = page.get_by_test_id("voice-status")
        await expect(status).to_contain_text("Microphone permission denied")
        await expect(status).to_have_class("error")
        await expect(ptt).to_have_attribute("aria-pressed", "false")
        await expect(ptt).to_have_attribute("data-state", "idle")
        await shot(page, "voice-denied")
        # Keyboard users toggle: Enter starts (and is refused the same way).
        await status.evaluate("e => { e.textContent = '' }")
        await ptt.focus()
        await page.keyboard.press("Enter")
        await expect(status).to_contain_text("Microphone permission denied")
        # Typing still works.
        await send_text(page, "turn off the kitchen lights")
        await expect(row_by_text(page, "kitchen")).to_have_attribute("data-status", "published")
        assert not errors, errors


async def test_no_microphone_is_said_in_the_panel(mosquitto: Any, make_hub: Any, chromium: Any) -> None:
    # Whether this machine has a microphone is not up to the test: the page's getUserMedia
    # answers as Chromium does when there is none.
    browser = await chromium(*MEDIA_ARGS)
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, plugins={"voice": {}}) as hub:
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.add_init_script("navigator.mediaDevices.getUserMedia = async () => { "
                                   "throw new DOMException('Requested device not found', 'NotFoundError') }")
        await page.goto(hub.http_url + "/")
        ptt = page.get_by_test_id("voice-ptt")
        box = await ptt.bounding_box()
        assert box is not None
        await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        await page.mouse.down()
        await expect(page.get_by_test_id("voice-status")).to_contain_text("No microphone found")
        await page.mouse.up()
        await expect(ptt).to_have_attribute("data-state", "idle")
        await expect(ptt).to_have_attribute("aria-pressed", "false")
        await expect(page.get_by_test_id("voice-status")).to_contain_text("No microphone found")
        assert not errors, errors
