"""A hot question answered from the cache by a lesser model is refined in the background by the
best model the router accepts, and its next asking gets the better answer (CacheConfig.refine).

Live: a real hub, a real llama.cpp SmolLM2 on a laptop agent, and a cloud agent against the
Anthropic Messages API stand-in of tests/test_cloud_layer.py (no cloud service is reachable
here; its answers are shaped as Anthropic's documentation shows).
"""

from __future__ import annotations

from typing import Any

from .conftest import wait_for
from .test_cloud_layer import PRICES, anthropic, with_cloud  # noqa: F401  (anthropic: a fixture)
from .test_dispatch import post


async def test_a_repeated_question_is_refined_by_a_better_model(mosquitto: Any, make_hub: Any, spawn_agent: Any,
                                                                 anthropic: dict[str, Any]) -> None:  # noqa: F811
    question = {"task": "qa", "text": "What is the capital of France?", "budget_ms": 20000,
                "options": {"max_tokens": 12}}
    # local-first: the laptop answers first although the cloud model is better.
    router = {**PRICES["router"], "policy": "local-first"}
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, router=router,
                        dispatch={"min_attempt_ms": 30000}) as hub, \
            with_cloud(hub, mosquitto.url, anthropic["url"], spawn_agent,
                       ("laptop", ("--real-models",))) as (cloud, [laptop]):
        status, first = await post(hub, "/api/infer", question)
        assert status == 200 and first["served_by"]["device"] == laptop.device_id and not first["cached"], first
        assert anthropic["calls"] == [], "asked once: nothing to refine yet"
        # Asked again: the laptop's kept answer now, and the cloud model asked in the background.
        status, again = await post(hub, "/api/infer", question)
        assert again["cached"] and again["output"] == first["output"], again
        await wait_for(lambda: hub.cache.count("qa") == 2, 60, what="the refined answer kept")
        assert len(anthropic["calls"]) == 1
        # The third asking gets the better answer, from the cache; nothing more is asked.
        status, third = await post(hub, "/api/infer", question)
        assert third["cached"] and third["output"] == "Paris is the capital of France.", third
        assert third["served_by"]["model"].startswith("claude"), third
        status, fourth = await post(hub, "/api/infer", question)
        assert fourth["output"] == third["output"] and len(anthropic["calls"]) == 1
        # The refinement is a task of its own in the ledger: its cost is accounted.
        rows = hub.ledger.report(0)["by_device"]
        assert rows[cloud.device_id]["count"] == 1 and rows[cloud.device_id]["cost"] > 0


async def test_refining_can_be_turned_off(mosquitto: Any, make_hub: Any, spawn_agent: Any,
                                          anthropic: dict[str, Any]) -> None:  # noqa: F811
    question = {"task": "qa", "text": "What is the capital of Italy?", "budget_ms": 20000,
                "options": {"max_tokens": 12}}
    router = {**PRICES["router"], "policy": "local-first", "cache": {"refine": False}}
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, router=router,
                        dispatch={"min_attempt_ms": 30000}) as hub, \
            with_cloud(hub, mosquitto.url, anthropic["url"], spawn_agent, ("laptop", ("--real-models",))):
        for _ in range(3):
            status, out = await post(hub, "/api/infer", question)
            assert status == 200 and out["ok"], out
        assert out["cached"] and hub.cache.count("qa") == 1 and anthropic["calls"] == []
