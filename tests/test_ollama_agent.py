"""The Ollama executor end to end: a real agent process lists the models of an Ollama server
(``GET /api/tags``), announces them, and answers the tasks the hub routes to them through
``/api/chat`` — streamed and not. No Ollama server can be installed here: the stand-in serves the
payloads of Ollama's API documentation (tests/test_exec_ollama.py)."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from .conftest import AgentProc, serve_app, wait_for
from .test_dispatch import post
from .test_exec_ollama import CHAT_ANSWER, STREAM_PIECES, FakeOllama, make_app

TAGS = {"models": [{"name": "llama3.2:latest", "model": "llama3.2", "modified_at": "2024-09-25T11:42:02.39Z",
                    "size": 2019393189, "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
                    "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                                "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}}]}


@pytest.fixture
async def ollama() -> AsyncIterator[FakeOllama]:
    state = FakeOllama()
    app = make_app(state)

    async def tags(request: web.Request) -> web.Response:
        return web.json_response(TAGS)

    app.router.add_get("/api/tags", tags)
    async with serve_app(app, shutdown_timeout=1.0) as url:
        state.url = url
        yield state
        state.release.set()


async def test_agent_serves_its_ollama_models(mosquitto: Any, make_hub: Any, ollama: FakeOllama) -> None:
    device_id = f"t-ollama-{uuid.uuid4().hex[:6]}"
    agent = AgentProc([sys.executable, "-m", "hub", "agent", "--id", device_id, "--tier", "medium", "--broker",
                       mosquitto.url, "--ollama-host", ollama.url, "--no-zeroconf", "--http-host", "127.0.0.1",
                       "--log-level", "warning"], device_id)
    try:
        async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
            rec = await wait_for(lambda: (r := hub.registry.get(device_id)) and r.online and r, 60, what="agent")
            assert [(m.name, m.runtime) for m in rec.capability.models if m.runtime == "ollama"] == [("llama3.2", "ollama")]
            hub.refresh_fleet()
            status, out = await post(hub, "/api/infer", {"task": "qa", "text": "Why is the sky blue?", "budget_ms": 30000})
            assert status == 200 and out["ok"], out
            assert out["served_by"] == {"device": device_id, "model": "llama3.2", "layer": "medium"}
            assert out["output"] == CHAT_ANSWER["message"]["content"]
            body = ollama.bodies("/api/chat")[-1]
            assert body["model"] == "llama3.2" and body["messages"][-1]["content"] == "Why is the sky blue?"
            async with aiohttp.ClientSession() as s:
                async with s.post(hub.http_url + "/api/infer", json={"task": "qa", "text": "again", "stream": True,
                                                                      "budget_ms": 30000}) as r:
                    lines = [json.loads(x) async for x in r.content if x.strip()]
            assert [x["chunk"] for x in lines[:-1]] == STREAM_PIECES and lines[-1]["ok"]
    finally:
        agent.terminate()
