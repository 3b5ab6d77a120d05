"""The dashboard's Memory panel in real headless Chromium against a running hub whose vault of notes
a real ``laptop`` agent has embedded with MiniLM: a question in other words finds the right note
(path, heading, line range, scores, a snippet without the title line), the kind filter, the
query-length limit in the input and the hub's refusal past it, the index's status line and
"Scan now". Screenshots go to ``tests/screenshots/`` (git-ignored)."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
from playwright.async_api import Browser, expect

from .test_dashboard import browser, shot  # noqa: F401 (browser: the fixture)
from .test_dispatch import fleet

NOTES = {
    "Energy/Solar.md": "---\ntags: [energy, solar]\n---\n# Solar panels\n\n"
                       "## Inverter\nThe Fronius inverter on the garage wall reports every 5 seconds over HTTP.\n"
                       "Its IP address is 192.168.1.40 and the API is on port 80.\n\n"
                       "## Cleaning\nThe panels are rinsed in April; dust costs about 4 % of the yield.\n",
    "Home/Boiler.md": "# Boiler\n\n## Service\nThe boiler is a Vaillant ecoTEC plus. Service is due every October; "
                      "the engineer is booked through the plumber.\n",
    "Garden.md": "# Garden\n\n## Watering\nThe drip line runs at 6 am for twenty minutes, every other day from May "
                 "to September.\n\n## Compost\nTurn the heap monthly; it is ready after about a year.\n",
    "Contacts.md": "# Contacts\n\n## Trades\nPlumber: Ana Lopes, 0161 496 0000. <img src=x onerror=alert(1)> "
                   "<b>urgent jobs only</b>\n",
}


async def test_search_filter_limits_status_and_scan(mosquitto: Any, make_hub: Any, spawn_agent: Any,
                                                    browser: Browser, tmp_path: Path) -> None:  # noqa: F811
    started = time.monotonic()
    vault = tmp_path / "vault"
    for rel, body in NOTES.items():
        (vault / rel).parent.mkdir(parents=True, exist_ok=True)
        (vault / rel).write_text(body)
    memory = {"vaults": [{"name": "notes", "path": str(vault)}], "deadline_s": 0, "scan_interval_s": 3600}
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, memory=memory) as hub:
        await fleet(hub, spawn_agent, mosquitto.url, ("laptop", ()))
        # The first scan ran before the laptop was online (its batch found no device): scan again.
        indexer = hub.memory.indexer
        indexer.idle.clear()
        hub.memory.reindex()
        await asyncio.wait_for(hub.memory.indexer.idle.wait(), 120)
        indexed_after = time.monotonic() - started

        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []  # the page's uncaught exceptions, from the start (none is allowed)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        searches: list[str] = []
        page.on("request", lambda r: searches.append(r.url) if "/api/search" in r.url else None)
        await page.goto(hub.http_url + "/")
        await expect(page.get_by_test_id("conn")).to_have_text("live")
        summary, status, results = (page.get_by_test_id(t) for t in ("memory-summary", "memory-status", "memory-results"))
        await expect(summary).to_contain_text("notes: idle, 4 files")
        await expect(summary.get_by_test_id("memory-source")).to_have_attribute("data-state", "idle")

        # A question in other words, from the keyboard: found by the label, Enter submits; the
        # status line is asked again after the search.
        query = page.get_by_label("what to look for")
        await expect(query).to_have_attribute("data-testid", "memory-query")
        await query.focus()
        await page.keyboard.type("how often does the solar inverter send its readings?")
        async with page.expect_response(lambda r: r.url.endswith("/api/memory")):
            await page.keyboard.press("Enter")
        hits = results.get_by_test_id("memory-hit")
        await expect(status).to_contain_text("results for “how often does the solar inverter")
        top = hits.first
        await expect(top.get_by_test_id("memory-hit-path")).to_have_text("Energy/Solar.md")
        await expect(top.get_by_test_id("memory-hit-source")).to_have_text("notes")
        await expect(top.get_by_test_id("memory-hit-heading")).to_have_text("Solar panels > Inverter")
        async with aiohttp.ClientSession() as s:
            async with s.get(hub.http_url + "/api/search",
                             params={"q": "how often does the solar inverter send its readings?"}) as r:
                api_top = (await r.json())["results"][0]
        lines = await top.get_by_test_id("memory-hit-lines").inner_text()
        assert lines == f"lines {api_top['line_start']}-{api_top['line_end']}", (lines, api_top)
        first, last = map(int, re.fullmatch(r"lines (\d+)-(\d+)", lines).groups())  # type: ignore[union-attr]
        assert first <= 7 <= last, lines  # "The Fronius inverter ..." is line 7 of the file
        await expect(top.get_by_test_id("memory-hit-score")).to_have_text(
            f"score {api_top['score']:.2f} · cosine {api_top['cosine']:.2f}")
        snippet = await top.get_by_test_id("memory-hit-text").inner_text()
        assert snippet.startswith("The Fronius inverter on the garage wall"), snippet  # the title line is dropped
        assert "Solar panels >" not in snippet and len(snippet) <= 200, snippet
        await shot(page, "memory")

        # By meaning alone (no word of the question is in the note); and text from the notes
        # stays text: markup in a note is shown, never rendered.
        await query.fill("who fixes leaking pipes?")
        await page.get_by_test_id("memory-search").click()
        await expect(hits.first.get_by_test_id("memory-hit-path")).to_have_text("Contacts.md")
        await expect(hits.first.get_by_test_id("memory-hit-heading")).to_have_text("Contacts > Trades")
        await expect(hits.first.get_by_test_id("memory-hit-lines")).to_have_text("line 4")
        await expect(hits.first.get_by_test_id("memory-hit-text")).to_contain_text("<img src=x onerror=alert(1)>")
        assert await results.locator("img, b").count() == 0

        # Only code: this hub indexes no repository, so nothing.
        await page.get_by_test_id("memory-kind").select_option(label="Code")
        await expect(results).to_have_text("No matches among code")
        await expect(hits).to_have_count(0)
        await expect(status).to_contain_text("No matches for “who fixes leaking pipes?”")
        await page.get_by_test_id("memory-kind").select_option(label="All")
        await expect(hits.first.get_by_test_id("memory-hit-path")).to_have_text("Contacts.md")

        # The input holds at most 2,000 characters, typed or pasted.
        await query.fill("a" * 1999)
        await query.press_sequentially("bcd")
        await page.keyboard.insert_text("e" * 50)
        assert await query.evaluate("e => e.value.length") == 2000
        # 2,000 characters that the address cannot carry once percent-encoded (six characters
        # each): said by the page, not sent.
        await query.fill("ü" * 2000)
        before = len(searches)
        await page.get_by_test_id("memory-search").click()
        await expect(status).to_contain_text("not searched: the query is too long once encoded in the address")
        assert len(searches) == before
        await expect(hits).to_have_count(0)
        # Past it (a page without the limit), the hub refuses, and the panel says why.
        await query.evaluate("e => e.removeAttribute('maxlength')")
        await query.fill("x" * 3000)
        await page.get_by_test_id("memory-search").click()
        await expect(status).to_have_text("not searched: a query of 3000 characters exceeds memory.max_query_chars "
                                          "(2000)")
        await expect(status).to_have_class("error")
        await expect(hits).to_have_count(0)
        await shot(page, "memory-refused")

        # Scan now: the hub's answer, and the source back to idle with its files.
        await page.get_by_test_id("memory-reindex").click()
        await expect(status).to_have_text("Scanning notes now")
        await expect(status).not_to_have_class("error")
        await expect(summary).to_contain_text("notes: idle, 4 files")
        await page.set_viewport_size({"width": 390, "height": 844})
        await shot(page, "memory-phone")
        assert not errors, errors
    print(f"indexed after {indexed_after:.1f} s, whole test {time.monotonic() - started:.1f} s")
