"""The result cache and the cost ledger (stores the dispatcher will write into), /api/costs and
`sovereign costs`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from hub.router.cache import CacheConfig, ResultCache, cache_key
from hub.router.ledger import Ledger, LedgerEntry
from hub.router.model import TaskRequest
from hub.router.route import CloudPrice, RouterConfig, cloud_counterfactual

from .conftest import ROOT

NOW = 1_800_000_000.0


def test_cache_hits_on_the_same_normalised_question(tmp_path: Path) -> None:
    c = ResultCache(CacheConfig(), tmp_path / "cache.sqlite3")
    a = TaskRequest(task="intent", text="Schedule  a MEETING with Ana")
    b = TaskRequest(task="intent", text="schedule a meeting with ana ")
    assert cache_key(a, "tiny") == cache_key(b, "tiny") != cache_key(a, "small")
    assert c.get(a, "tiny", now=NOW) is None
    assert c.put(a, "tiny", {"label": "schedule_meeting"}, now=NOW)
    assert c.get(b, "tiny", now=NOW + 10) == {"label": "schedule_meeting"}
    assert c.get(b, "tiny", now=NOW + 86401) is None, "the intent TTL is a day"
    assert (c.hits, c.misses) == (1, 2)
    c.close()


def test_never_cached_and_bounded(tmp_path: Path) -> None:
    c = ResultCache(CacheConfig(max_entries=100), None)
    draft = TaskRequest(task="draft", text="write to Ana")
    assert not c.put(draft, "small", {"text": "Dear Ana"}) and c.get(draft, "small") is None
    assert not c.put(TaskRequest(task="intent", text="x", mode="consensus"), "tiny", {})
    assert not c.put(TaskRequest(task="classify"), "tiny", {}), "no input: nothing says two requests are the same"
    clip = TaskRequest(task="transcribe", ref="audio/1.wav", input_size=160_000)
    assert c.put(clip, "small", {"text": "hi"}) and c.get(clip.model_copy(update={"ref": "audio/2.wav"}), "small") is None
    for i in range(150):
        c.put(TaskRequest(task="classify", text=f"item {i}"), "tiny", {"i": i}, now=NOW + i)
    assert c.get(TaskRequest(task="classify", text="item 0"), "tiny", now=NOW + 200) is None, "oldest evicted"
    assert c.get(TaskRequest(task="classify", text="item 149"), "tiny", now=NOW + 200) == {"i": 149}
    assert c.purge(now=NOW + 10 ** 6) == 100


def entry(i: int, layer: str, device: str, task: str, cost: float, cloud_cost: float, at: float = NOW) -> LedgerEntry:
    return LedgerEntry(f"r{i}", at, task, device, "m", layer, True, 100.0 + i, 5.0, 0.01, cost, cloud_cost, 0.05)


def test_ledger_per_layer_device_task_and_saving() -> None:
    led = Ledger(None)
    led.add(entry(1, "tiny", "watch", "intent", 0.0, 0.0008))
    led.add(entry(2, "tiny", "phone", "intent", 0.0, 0.0008))
    led.add(entry(3, "large", "cloud", "summarize", 0.002, 0.002))
    led.add(entry(4, "cache", "cache", "intent", 0.0, 0.0008))
    led.add(entry(5, "medium", "gpu-box", "code", 0.0001, 0.004, at=NOW - 3 * 86400))
    p = led.periods(now=NOW + 1)
    today = p["today"]
    assert today["total"]["count"] == 4 and today["total"]["cost"] == 0.002
    assert today["total"]["all_cloud_cost"] == 0.0044 and today["total"]["saved_cost"] == 0.0024
    assert today["by_layer"]["tiny"]["count"] == 2 and today["by_device"]["cloud"]["cost"] == 0.002
    assert today["by_task"]["intent"]["count"] == 3
    assert p["week"]["total"]["count"] == 5 and p["week"]["by_layer"]["medium"]["saved_cost"] == 0.0039


def test_counterfactual_prices_tokens_with_the_configured_cloud_model() -> None:
    cfg = RouterConfig(cloud_prices={"*": CloudPrice(input_per_mtok=3.0, output_per_mtok=15.0)})
    cost, g = cloud_counterfactual(TaskRequest(task="summarize", text="x" * 4000), cfg)
    assert cost == (1000 * 3.0 + 150 * 15.0) / 1e6 and g > 0


async def test_costs_api_and_cli(mosquitto: Any, make_hub: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        import time
        now = time.time()
        hub.ledger.add(entry(1, "tiny", "watch", "intent", 0.0, 0.0008, at=now - 5))
        hub.ledger.add(entry(2, "large", "cloud", "qa", 0.003, 0.003, at=now - 5))
        async with aiohttp.ClientSession() as s, s.get(f"{hub.http_url}/api/costs") as r:
            report = await r.json()
        assert report["today"]["total"]["count"] == 2 and report["month"]["by_layer"]["tiny"]["count"] == 1
        assert report["cache"] == {"hits": 0, "misses": 0}
        out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "hub", "costs", "--url", hub.http_url],
                                      capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert out.returncode == 0 and out.stdout.startswith("today: 2 tasks") and "saved 0.0008" in out.stdout
