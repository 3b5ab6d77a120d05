"""The cloud layer end to end: an agent process serving Claude through the Anthropic Messages API,
the hub escalating to it when the local device dies mid-request, and ``local_only`` requests
that never reach it.

No cloud service can be reached from here: the Anthropic API is a stand-in server on loopback
answering with the response shape from Anthropic's Messages API documentation
(https://docs.anthropic.com/en/api/messages), and counting the calls it gets.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from .conftest import AgentProc, serve_app, wait_for
from .test_dispatch import fleet, post

PRICES = {"router": {"cloud_prices": {"claude-haiku-4-5": {"input_per_mtok": 1.0, "output_per_mtok": 5.0},
                                      "claude-sonnet-4-5": {"input_per_mtok": 3.0, "output_per_mtok": 15.0}}}}


@pytest.fixture
async def anthropic() -> AsyncIterator[dict[str, Any]]:
    state: dict[str, Any] = {"calls": []}

    async def messages(request: web.Request) -> web.Response:
        body = await request.json()
        state["calls"].append(body)
        assert request.headers["x-api-key"] == "sk-test" and request.headers["anthropic-version"] == "2023-06-01"
        prompt = body["messages"][0]["content"]
        text = "Paris is the capital of France."
        if "Reply with its number only" in prompt:  # asked to judge: pick the answer about Paris
            text = next(line.split(")")[0] for line in prompt.splitlines() if ") " in line and "Paris" in line)
        return web.json_response({
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant", "model": body["model"],
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 9}})

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    async with serve_app(app) as url:
        state["url"] = url
        yield state


def cloud_agent(broker_url: str, api_url: str) -> AgentProc:
    device_id = f"t-cloud-{uuid.uuid4().hex[:6]}"
    argv = [sys.executable, "-m", "hub", "agent", "--id", device_id, "--tier", "large", "--cloud", "--broker", broker_url,
            "--http-host", "127.0.0.1", "--no-zeroconf", "--log-level", "warning"]
    return AgentProc(argv, device_id, env={"ANTHROPIC_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": api_url})


@asynccontextmanager
async def with_cloud(hub: Any, broker_url: str, api_url: str, spawn_agent: Any,
                     *local: tuple[str, tuple[str, ...]]) -> AsyncIterator[tuple[AgentProc, list[Any]]]:
    """A cloud agent (against the stand-in API) and local agents, all online in the hub's fleet."""
    cloud = cloud_agent(broker_url, api_url)
    try:
        procs = await fleet(hub, spawn_agent, broker_url, *local)
        await wait_for(lambda: (r := hub.registry.get(cloud.device_id)) and r.online, 60, what="cloud agent")
        hub.refresh_fleet()
        yield cloud, procs
    finally:
        cloud.terminate()


async def test_local_failure_escalates_to_the_cloud(mosquitto: Any, make_hub: Any, spawn_agent: Any,
                                                    anthropic: dict[str, Any]) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, **PRICES) as hub, \
            with_cloud(hub, mosquitto.url, anthropic["url"], spawn_agent,
                       ("laptop", ("--seed", "3"))) as (cloud, [laptop]):
        body = {"task": "qa", "text": "what is the capital of France?", "budget_ms": 8000}
        _, dry = await post(hub, "/api/route", body)
        assert dry["chosen"]["device"] == laptop.device_id, dry
        assert any(c["device"] == cloud.device_id for c in dry["chain"])
        call = asyncio.create_task(post(hub, "/api/infer", body))
        # The laptop's slot is taken: the call is sent and the hub waits for its answer.
        slot = (laptop.device_id, dry["chosen"]["model"])
        await wait_for(lambda: (s := hub.dispatcher.slots.get(slot)) and s.active == 1, 30, what="the call sent")
        laptop.kill()
        status, out = await call
        assert status == 200 and out["ok"], out
        assert out["served_by"]["device"] == cloud.device_id and out["output"] == "Paris is the capital of France."
        assert [a["ok"] for a in out["attempts"]] == [False, True]
        assert "went offline mid-request" in out["attempts"][0]["error"], out["attempts"]
        assert out["cost"] > 0 and len(anthropic["calls"]) == 1
        assert anthropic["calls"][0]["messages"] == [{"role": "user", "content": body["text"]}]


async def test_local_only_never_reaches_the_cloud(mosquitto: Any, make_hub: Any, spawn_agent: Any,
                                                  anthropic: dict[str, Any]) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, **PRICES) as hub, \
            with_cloud(hub, mosquitto.url, anthropic["url"], spawn_agent, ("laptop", ())) as (cloud, [laptop]):
        private = {"task": "qa", "text": "summarise my medical notes", "local_only": True, "budget_ms": 8000}
        status, out = await post(hub, "/api/infer", private)
        assert status == 200 and out["served_by"]["device"] == laptop.device_id
        laptop.kill()
        await wait_for(lambda: not hub.registry.get(laptop.device_id).online, 30, what="the laptop offline")
        hub.refresh_fleet()
        status, out = await post(hub, "/api/infer", {**private, "id": "private-2"})
        assert status == 503 and out["error"]["code"] == "no_route", out
        assert any("local_only" in r for r in out["reasons"])
        assert anthropic["calls"] == [], "a local_only request reached the cloud"


async def test_consensus_on_text_is_judged_by_the_large_model(mosquitto: Any, make_hub: Any, spawn_agent: Any,
                                                              anthropic: dict[str, Any]) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, **PRICES) as hub, \
            with_cloud(hub, mosquitto.url, anthropic["url"], spawn_agent,
                       ("laptop", ()), ("gpu-box", ())):
        status, out = await post(hub, "/api/infer", {"task": "qa", "text": "what is the capital of France?",
                                                     "mode": "consensus", "budget_ms": 9000})
        assert status == 200 and out["ok"], out
        members = out["attempts"][:-1]
        assert len({a["device"] for a in members}) == 3 and all(a["ok"] for a in members)
        assert out["output"] == "Paris is the capital of France."
        assert any("judged answer" in r for r in out["reasons"]), out["reasons"]
        judge_call = anthropic["calls"][-1]["messages"][0]["content"]
        assert "Which answer is best?" in judge_call and "[simulated]" in judge_call
