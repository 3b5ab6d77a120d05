"""Numbers a new user sees in the first hour mean something: the saving against all-cloud is
priced from a cited list of published cloud prices (or says "no price", never $0 or -0.0000), and
``GET /api/energy/best-window`` answers with its defaults on the forecast the hub holds (the demo's
replayed one reaches minutes ahead, not 24 h)."""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from playwright.async_api import Browser, expect

from hub.agent.executors.cloud import DEFAULT_MODELS
from hub.router.ledger import Ledger, LedgerEntry
from hub.router.model import TaskRequest
from hub.router.prices import BUILTIN_CLOUD_PRICES, DEFAULT_COUNTERFACTUAL_MODEL
from hub.router.route import CloudPrice, RouterConfig, cloud_counterfactual, counterfactual_document

from .conftest import ROOT, wait_for
from .test_dashboard import browser, open_page  # noqa: F401  (the fixture)
from .test_dispatch import fleet, post

NOW = 1_800_000_000.0


def positive_zero_or_more(v: float) -> bool:
    return math.copysign(1.0, v) > 0


# -- the price list --------------------------------------------------------------------------------

def test_every_builtin_price_is_cited_and_dated() -> None:
    for name, p in BUILTIN_CLOUD_PRICES.items():
        assert p.input_per_mtok > 0 and p.output_per_mtok >= p.input_per_mtok, name
        assert p.source and re.fullmatch(r"\d{4}-\d{2}-\d{2}", p.checked), name
    # The models the agent offers by default are all priced, and so is the counterfactual's.
    for names in DEFAULT_MODELS.values():
        for name in names.split(","):
            assert name in BUILTIN_CLOUD_PRICES, name
    assert DEFAULT_COUNTERFACTUAL_MODEL in BUILTIN_CLOUD_PRICES
    # The figures examples/fleet.toml cites ([15]) are the ones listed for those models.
    assert (BUILTIN_CLOUD_PRICES["claude-3-5-haiku-latest"].input_per_mtok,
            BUILTIN_CLOUD_PRICES["claude-3-5-haiku-latest"].output_per_mtok) == (0.80, 4.0)
    assert "fleet.toml [15]" in BUILTIN_CLOUD_PRICES["claude-3-5-sonnet-latest"].source


def test_counterfactual_uses_the_builtin_list_unless_hub_toml_prices_it() -> None:
    req = TaskRequest(task="summarize", text="x" * 4000)  # 1000 tokens in, 150 out
    default = RouterConfig()
    cost, _ = cloud_counterfactual(req, default)
    assert cost == (1000 * 1.0 + 150 * 5.0) / 1e6, "Claude Haiku 4.5 at $1 / $5 per million tokens"
    doc = counterfactual_document(default)
    assert doc["model"] == "claude-haiku-4-5" and (doc["input_per_mtok"], doc["output_per_mtok"]) == (1.0, 5.0)
    assert doc["price_list"].startswith("built-in ") and "Anthropic" in doc["source"]
    # hub.toml wins, its "*" too.
    mine = RouterConfig(cloud_prices={"claude-haiku-4-5": CloudPrice(input_per_mtok=2.0, output_per_mtok=8.0)})
    assert cloud_counterfactual(req, mine)[0] == (1000 * 2.0 + 150 * 8.0) / 1e6
    assert counterfactual_document(mine)["price_list"] == "hub.toml"
    star = RouterConfig(cloud_prices={"*": CloudPrice(input_per_mtok=3.0, output_per_mtok=15.0)})
    assert cloud_counterfactual(req, star)[0] == (1000 * 3.0 + 150 * 15.0) / 1e6
    # Another model, or the list switched off: no price (None), never 0.
    mini = RouterConfig(counterfactual_model="gpt-4o-mini")
    assert cloud_counterfactual(req, mini)[0] == (1000 * 0.15 + 150 * 0.6) / 1e6
    assert cloud_counterfactual(req, RouterConfig(counterfactual_model="my-own-model"))[0] is None
    off = RouterConfig(builtin_cloud_prices=False)
    assert cloud_counterfactual(req, off)[0] is None
    assert counterfactual_document(off) == {"model": "claude-haiku-4-5", "input_per_mtok": None,
                                            "output_per_mtok": None, "price_list": None, "source": None}


def test_ledger_says_null_without_a_price_and_never_negative_zero() -> None:
    led = Ledger(None)

    def entry(i: int, cost: float, cloud_cost: float | None, at: float = NOW) -> LedgerEntry:
        return LedgerEntry(f"r{i}", at, "intent", "phone", "m", "tiny", True, 10.0, 0.1, 1e-6, cost, cloud_cost, 1e-5)

    led.add(entry(1, 1e-7, None))
    led.add(entry(2, 2e-7, None))
    today = led.periods(now=NOW + 1)["today"]["total"]
    assert today["count"] == 2 and today["all_cloud_cost"] is None and today["saved_cost"] is None
    assert today["unpriced"] == 2
    # A local cost a hair above a zero counterfactual rounds to 0.0, not -0.0.
    led.add(entry(3, 1e-7, 0.0, at=NOW + 2))
    later = led.periods(now=NOW + 3)["today"]
    t = later["total"]
    assert t["saved_cost"] == 0.0 and positive_zero_or_more(t["saved_cost"]) and t["unpriced"] == 2
    assert "-0.0" not in json.dumps(later)
    # Priced requests count; the unpriced ones are left out of both sides.
    led.add(entry(4, 0.0001, 0.0009, at=NOW + 4))
    t = led.periods(now=NOW + 5)["today"]["total"]
    assert t["all_cloud_cost"] == 0.0009 and t["saved_cost"] == round(0.0009 - 0.0001 - 1e-7, 6)
    # No request at all: nothing saved, nothing unknown.
    empty = led.periods(now=NOW + 10 * 86400)["today"]["total"]
    assert empty["count"] == 0 and empty["saved_cost"] == 0.0 and empty["unpriced"] == 0


async def costs(hub: Any) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(f"{hub.http_url}/api/costs") as r:
        assert r.status == 200
        return await r.json()


async def cli_costs(hub: Any) -> str:
    out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "hub", "costs", "--url", hub.http_url],
                                  capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


async def test_costs_say_which_price_or_no_price(mosquitto: Any, make_hub: Any, spawn_agent: Any,
                                                 browser: Browser, tmp_path: Path) -> None:  # noqa: F811
    text = "schedule a meeting with Ana tomorrow at ten, " * 10
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        await fleet(hub, spawn_agent, mosquitto.url, ("watch", ("--echo",)))
        status, out = await post(hub, "/api/infer", {"task": "echo", "text": text})
        assert status == 200 and out["ok"], out
        report = await costs(hub)
        cf = report["counterfactual"]
        assert cf["model"] == "claude-haiku-4-5" and cf["input_per_mtok"] == 1.0 and "Anthropic" in cf["source"]
        today = report["today"]["total"]
        assert today["count"] == 1 and today["all_cloud_cost"] > 0 and today["saved_cost"] > 0
        stdout = await cli_costs(hub)
        assert "-0.0000" not in stdout and "no price" not in stdout
        assert "all-cloud priced as claude-haiku-4-5 at 1 in / 5 out per million tokens" in stdout
        page = await open_page(browser, hub.http_url + "/")
        await expect(page.get_by_test_id("costs-basis")).to_contain_text("all-cloud priced as claude-haiku-4-5")
        await expect(page.get_by_test_id("costs")).to_contain_text("saved $0.0")
        await page.close()
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, data_dir=str(tmp_path / "unpriced"),
                        router={"builtin_cloud_prices": False}) as hub:
        await fleet(hub, spawn_agent, mosquitto.url, ("watch", ("--echo",)))
        report = await costs(hub)
        assert report["counterfactual"]["input_per_mtok"] is None
        assert report["today"]["total"]["count"] == 0
        stdout = await cli_costs(hub)
        assert stdout.startswith("today: 0 tasks") and "all-cloud: no price" in stdout and "-0.0000" not in stdout
        status, out = await post(hub, "/api/infer", {"task": "echo", "text": text})
        assert status == 200 and out["ok"], out
        report = await costs(hub)
        today = report["today"]["total"]
        assert today["count"] == 1 and today["saved_cost"] is None and today["all_cloud_cost"] is None
        assert today["unpriced"] == 1
        stdout = await cli_costs(hub)
        assert "today: 1 tasks" in stdout and "all-cloud: no price" in stdout and "saved" not in stdout
        assert "-0.0000" not in stdout and "no price for claude-haiku-4-5" in stdout
        page = await open_page(browser, hub.http_url + "/")
        table = page.get_by_test_id("costs")
        await expect(table).to_contain_text("no price")
        assert "saved" not in await table.inner_text() and "-0.0000" not in await table.inner_text()
        await expect(page.get_by_test_id("costs-basis")).to_contain_text("no price for claude-haiku-4-5")


# -- best-window -----------------------------------------------------------------------------------

#: As the demo replays the grid: a day every two minutes, so its 48 h forecast reaches 4 minutes ahead.
DEMO_REPLAY = {"speed": 720, "report_interval_s": 0.5, "solar_peak_w": 5000, "load_w": 600}


async def test_best_window_defaults_fit_the_forecast_the_hub_holds(mosquitto: Any, make_hub: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, plugins={"replay": DEMO_REPLAY}) as hub, \
            aiohttp.ClientSession() as s:
        await wait_for(lambda: hub.energy.forecasts.get("carbon_g_per_kwh"), 30, what="the replayed forecast")
        now = time.time()
        reach = max(p.end for p in hub.energy.forecasts["carbon_g_per_kwh"]) - now
        assert 200 < reach < 260, "48 h at 720x"
        async with s.get(f"{hub.http_url}/api/energy/best-window") as r:
            body = await r.json()
            assert r.status == 200, body
        assert body["deadline"] <= body["forecast_until"] + 1e-6 and body["deadline"] - now < 300
        assert 1 <= body["duration_s"] < 3600 and body["end"] <= body["deadline"] + 1e-6
        assert body["wait_s"] >= 0 and body["mean"] <= (body["if_started_now"] or math.inf)
        assert any("deadline: the end of the carbon forecast" in n for n in body["notes"])
        assert any("duration:" in n and "does not fit" in n for n in body["notes"])
        # Asked for what the forecast cannot answer: 422, saying how far it reaches and what to ask.
        async with s.get(f"{hub.http_url}/api/energy/best-window?duration=1h") as r:
            err = (await r.json())["error"]
            assert r.status == 422 and err["code"] == "no_window"
        assert "reaches" in err["message"] and "duration=" in err["message"] and "ahead" in err["message"]
        async with s.get(f"{hub.http_url}/api/energy/best-window?by=price") as r:
            err = (await r.json())["error"]
            assert r.status == 422 and "no price forecast" in err["message"] and "tariff" in err["message"]
        # Explicit questions that fit are answered as asked.
        async with s.get(f"{hub.http_url}/api/energy/best-window?duration=10s&deadline=2m") as r:
            body = await r.json()
            assert r.status == 200 and body["duration_s"] == 10 and body["notes"] == []
