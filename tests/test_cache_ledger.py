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


TFLITE = ("intent-tiny", "tflite")


def test_cache_hits_on_the_same_normalised_question(tmp_path: Path) -> None:
    c = ResultCache(CacheConfig(), tmp_path / "cache.sqlite3")
    a = TaskRequest(task="intent", text="Schedule  a MEETING with Ana")
    b = TaskRequest(task="intent", text="schedule a meeting with ana ")
    assert cache_key(a, TFLITE) == cache_key(b, TFLITE) != cache_key(a, ("smollm2-135m", "llamacpp"))
    assert c.get(a, [TFLITE], now=NOW) is None
    assert c.put(a, TFLITE, {"label": "schedule_meeting"}, now=NOW)
    assert c.get(b, [TFLITE], now=NOW + 10) == (TFLITE, {"label": "schedule_meeting"})
    assert c.get(b, [TFLITE], now=NOW + 86401) is None, "the intent TTL is a day"
    assert (c.hits, c.misses) == (1, 2)
    c.close()


def test_an_answer_is_served_only_for_the_model_and_runtime_that_gave_it(tmp_path: Path) -> None:
    c = ResultCache(CacheConfig(), tmp_path / "cache.sqlite3")
    q = TaskRequest(task="qa", text="What is the capital of France?")
    assert c.put(q, ("smollm2-135m", "llamacpp"), {"output": "Paris"}, now=NOW)
    # The same model announced with another runtime, or another model: not its answer.
    assert c.get(q, [("smollm2-135m", "ollama"), ("llama3.1:8b", "ollama")], now=NOW) is None
    # The chain's order decides which of several answers is served.
    big, small = ("llama3.1:8b", "ollama"), ("smollm2-135m", "llamacpp")
    assert c.put(q, big, {"output": "Paris, France"}, now=NOW)
    assert c.get(q, [big, small], now=NOW) == (big, {"output": "Paris, France"})
    assert c.get(q, [small, big], now=NOW) == (small, {"output": "Paris"})
    # The simulated runtime's answers are never kept, nor looked for.
    assert not c.put(q, ("smollm2-135m", "simulated"), {"output": "[simulated] ..."}, now=NOW)
    assert c.get(q, [("smollm2-135m", "simulated")], now=NOW) is None
    assert c.put(TaskRequest(task="intent", text="lights off"), TFLITE, {"output": "lights_off"}, now=NOW)
    assert (c.count(), c.count("qa"), c.count("intent")) == (3, 2, 1)
    assert c.clear("qa") == 2 and c.count() == 1
    assert c.clear() == 1 and c.count() == 0
    c.close()


def test_answers_kept_before_they_named_their_model_are_dropped(tmp_path: Path) -> None:
    """The old table keyed by layer held the simulated runtime's answers: it goes."""
    import sqlite3
    path = tmp_path / "cache.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE results (key TEXT PRIMARY KEY, task TEXT, stored REAL, expires REAL, result TEXT)")
    db.execute("INSERT INTO results VALUES ('k', 'qa', 1, 9e9, '{\"output\": \"simulated\"}')")
    db.commit()
    db.close()
    c = ResultCache(CacheConfig(), path)
    assert c.count() == 0
    assert c._db.execute("SELECT name FROM sqlite_master WHERE name = 'results'").fetchone() is None
    c.close()


def test_never_cached_and_bounded(tmp_path: Path) -> None:
    c = ResultCache(CacheConfig(max_entries=100), None)
    small = ("smollm2-135m", "llamacpp")
    draft = TaskRequest(task="draft", text="write to Ana")
    assert not c.put(draft, small, {"text": "Dear Ana"}) and c.get(draft, [small]) is None
    assert not c.put(TaskRequest(task="intent", text="x", mode="consensus"), TFLITE, {})
    assert not c.put(TaskRequest(task="classify"), TFLITE, {}), "no input: nothing says two requests are the same"
    whisper = ("whisper-base", "llamacpp")
    clip = TaskRequest(task="transcribe", ref="audio/1.wav", input_size=160_000)
    assert c.put(clip, whisper, {"text": "hi"})
    assert c.get(clip.model_copy(update={"ref": "audio/2.wav"}), [whisper]) is None
    for i in range(150):
        c.put(TaskRequest(task="classify", text=f"item {i}"), TFLITE, {"i": i}, now=NOW + i)
    assert c.get(TaskRequest(task="classify", text="item 0"), [TFLITE], now=NOW + 200) is None, "oldest evicted"
    assert c.get(TaskRequest(task="classify", text="item 149"), [TFLITE], now=NOW + 200) == (TFLITE, {"i": 149})
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
