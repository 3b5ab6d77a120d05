"""A new user's first hour: what went wrong on the way, with real agents behind a real broker.

- Empty, whitespace-only and unfit inputs are refused at the edge (400 ``bad_request`` naming the
  field) by HTTP, ``cmd/infer``, the CLI and plugins: never sent to a device, cached, compiled
  into a rule or counted against a device.
- The cache keys answers by the model that gave them and its runtime; the ``simulated`` runtime's
  answers are never cached or compiled; ``sovereign cache clear`` / ``DELETE /api/cache``.
- A streamed request answered by the cache or a compiled pattern streams the answer.
- A deferred request an older hub took with such an input does not stop the next start.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import aiohttp
import paho.mqtt.client as paho
import pytest
from pydantic import ValidationError

from hub.dispatch import InferRequest

from .conftest import wait_for
from .test_commands import client, get, v5_props
from .test_dispatch import fleet, post
from .test_http_cli import _cli


def _nothing_happened(hub: Any) -> None:
    """No request reached the dispatcher: no device was asked, nothing learned, cached or logged."""
    assert hub.dispatcher.counts["requests"] == 0, hub.dispatcher.counts
    assert not hub.stats.snapshot().models, "no outcome recorded against any device"
    assert hub.cache.count() == 0 and hub.rules.all() == []
    hub.ledger.flush()
    assert hub.ledger.periods()["today"]["total"]["count"] == 0


BAD = [
    ({"task": "intent", "text": ""}, "text: empty"),
    ({"task": "intent", "text": "  \n\t "}, "text: only whitespace"),
    ({"task": "intent"}, "text: missing"),
    ({"task": "qa", "text": "\u3000"}, "text: only whitespace"),
    ({"task": "eeg", "text": "calm"}, "text: not JSON"),
    ({"task": "eeg", "text": "[0.1, \"x\"]"}, "text: value 1"),
    ({"task": "eeg", "text": "[]"}, "text: an empty array"),
    ({"task": "eeg", "data": "AAAA"}, "data: 3 bytes"),
    ({"task": "transcribe", "text": "hello"}, "text: transcribe does not take text"),
    ({"task": "qa", "data": "aGVsbG8="}, "data: qa does not take data"),
    ({"task": "summarize", "ref": "notes.txt"}, "ref: summarize does not take ref"),
    ({"task": "embed", "ref": "notes.txt"}, "ref: embed does not take ref"),
]


async def test_empty_and_unfit_inputs_are_refused_at_the_edge(mosquitto: Any, make_hub: Any,
                                                               spawn_agent: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, router={"rules": {"min_count": 2}}) as hub:
        watch, phone, laptop = await fleet(hub, spawn_agent, mosquitto.url, ("watch", ()), ("phone", ()),
                                           ("laptop", ()))
        # HTTP, several times over (what used to make a rule and put the intent models in cooldown).
        for _ in range(3):
            for body, why in BAD:
                status, out = await post(hub, "/api/infer", body)
                assert status == 400 and out["error"]["code"] == "bad_request", (body, status, out)
                assert out["error"]["message"].startswith(why), (body, out)
        status, out = await post(hub, "/api/infer", {"task": "intent", "text": "", "stream": True})
        assert status == 400 and out["error"]["message"].startswith("text: empty")
        # MQTT cmd/infer.
        with client(mosquitto.port, paho.MQTTv5, "sovereign/reply/phone/first") as (c, q):
            c.publish("sovereign/cmd/infer", json.dumps({"task": "intent", "text": " "}), qos=1,
                      properties=v5_props("sovereign/reply/phone/first", b"c1"))
            body = json.loads((await get(q)).payload)
            assert not body["ok"] and body["error"]["code"] == "bad_request"
            assert body["error"]["message"].startswith("text: only whitespace")
        # Plugins (PluginContext.infer) validate the same request model.
        with pytest.raises(ValidationError, match="text\n  empty: eeg needs a feature vector"):
            await hub._plugin_services().infer({"task": "eeg", "text": ""})
        # The CLI.
        out = await asyncio.to_thread(_cli, "infer", "", "--task", "intent", "--url", hub.http_url)
        assert out.returncode == 1 and "error (bad_request): text: empty: intent needs" in out.stderr, out.stderr
        _nothing_happened(hub)

        # The fleet is untouched: the real classifiers answer, no cooldown anywhere.
        status, out = await post(hub, "/api/infer", {"task": "intent", "text": "turn off the lights please"})
        assert status == 200 and out["output"] == "lights_off" and not out.get("simulated"), out
        assert out["served_by"]["device"] in (watch.device_id, phone.device_id)
        assert all(learned.success_rate == 1.0 for learned in hub.stats.snapshot().models.values())
        # The agent refuses the same inputs itself (a direct caller, another hub): the caller's error.
        resp = await hub.rpc.call(phone.device_id, "infer", {"task": "intent", "model": "intent-tiny", "text": ""}, 5)
        assert not resp.ok and resp.error.code == "bad_request" and resp.error.message.startswith("params: text: empty")


async def test_simulated_answers_are_never_cached_nor_compiled(mosquitto: Any, make_hub: Any,
                                                               spawn_agent: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, router={"rules": {"min_count": 2}}) as hub:
        [laptop] = await fleet(hub, spawn_agent, mosquitto.url, ("laptop", ()))
        for body in ({"task": "intent", "text": "lights off"}, {"task": "qa", "text": "what is a heat pump?"}):
            for _ in range(3):
                status, out = await post(hub, "/api/infer", {**body, "budget_ms": 5000})
                assert status == 200 and out["simulated"] and not out["cached"], out
                assert out["served_by"]["device"] == laptop.device_id
        assert hub.cache.count() == 0, "no simulated answer is kept"
        assert hub.rules.all() == [], "no rule proposed from simulated answers"


async def test_cached_answers_follow_the_model_that_gave_them(mosquitto: Any, make_hub: Any,
                                                              spawn_agent: Any) -> None:
    """SmolLM2-135M answers for real on llama.cpp, and is cached; the same model then announced
    with the simulated runtime (the llama.cpp laptop gone) finds none of those answers, and the
    real one finds them again. A second streamed ask is answered from the cache, in a chunk."""
    question = {"task": "qa", "text": "What is the capital of France?", "budget_ms": 20000,
                "options": {"max_tokens": 12}}
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, dispatch={"min_attempt_ms": 30000}) as hub:
        [real] = await fleet(hub, spawn_agent, mosquitto.url, ("laptop", ("--real-models",)))
        status, first = await post(hub, "/api/infer", question)
        assert status == 200 and first["ok"] and not first.get("simulated") and not first["cached"], first
        assert hub.cache.count("qa") == 1
        status, again = await post(hub, "/api/infer", question)
        assert again["cached"] and again["output"] == first["output"], again
        assert again["served_by"] == {"device": "cache", "model": "smollm2-135m", "layer": "cache"}
        assert any("(smollm2-135m, llamacpp)" in r for r in again["reasons"])
        # Streamed from the cache, over HTTP and by the CLI (the issue: it printed nothing).
        async with aiohttp.ClientSession() as s:
            async with s.post(hub.http_url + "/api/infer", json={**question, "stream": True}) as r:
                assert r.status == 200
                lines = [json.loads(line) async for line in r.content if line.strip()]
        assert [x["chunk"] for x in lines[:-1]] == [first["output"]] and lines[-1]["cached"], lines
        out = await asyncio.to_thread(_cli, "infer", question["text"], "--task", "qa", "--stream", "--url",
                                      hub.http_url, "--budget-ms", "20000")
        assert out.returncode == 0 and out.stdout.strip() == first["output"].strip(), (out.stdout, out.stderr)
        assert "on cache (cache)" in out.stderr

        # The same model, now simulated: the llama.cpp answer is not served for it.
        real.terminate()
        await wait_for(lambda: not hub.registry.get(real.device_id).online, 30, what="the real laptop offline")
        [sim] = await fleet(hub, spawn_agent, mosquitto.url, ("laptop", ()))
        status, out = await post(hub, "/api/infer", question)
        assert status == 200 and not out["cached"] and out["simulated"], out
        assert out["served_by"]["device"] == sim.device_id
        assert hub.cache.count("qa") == 1, "the simulated answer is not kept; the real one waits for its model"
        # The llama.cpp model back in the fleet (another device): its answer is served again.
        sim.terminate()
        await wait_for(lambda: not hub.registry.get(sim.device_id).online, 30, what="the simulated laptop offline")
        await fleet(hub, spawn_agent, mosquitto.url, ("laptop", ("--real-models",)))
        status, out = await post(hub, "/api/infer", question)
        assert out["cached"] and out["output"] == first["output"], out


async def test_cache_clear_api_and_cli_and_streams_from_cache_and_rules(mosquitto: Any, make_hub: Any,
                                                                        spawn_agent: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, http={"require_token": "writes"},
                        router={"rules": {"min_count": 2}}) as hub:
        token = hub.new_admin_token
        auth = {"Authorization": f"Bearer {token}"}
        [phone] = await fleet(hub, spawn_agent, mosquitto.url, ("phone", ()))

        async def ask(body: dict[str, Any]) -> list[dict[str, Any]]:
            async with aiohttp.ClientSession(headers=auth) as s:
                async with s.post(hub.http_url + "/api/infer", json=body) as r:
                    assert r.status == 200, await r.text()
                    if not body.get("stream"):
                        return [await r.json()]
                    return [json.loads(line) async for line in r.content if line.strip()]

        # The real classifier does not stream: its label still comes as one chunk.
        lines = await ask({"task": "intent", "text": "lock the front door", "stream": True})
        assert [x["chunk"] for x in lines[:-1]] == ["lock_door"] and not lines[-1]["cached"], lines
        lines = await ask({"task": "intent", "text": "Lock the  front door", "stream": True})
        assert [x["chunk"] for x in lines[:-1]] == ["lock_door"] and lines[-1]["cached"], lines
        [out] = await ask({"task": "intent", "text": "turn off the lights please"})
        assert out["output"] == "lights_off" and hub.cache.count("intent") == 2

        # Over MQTT, streamed from the cache: a chunk, then the answer.
        with client(mosquitto.port, paho.MQTTv5, "sovereign/reply/phone/st") as (c, q):
            c.publish("sovereign/cmd/infer", json.dumps({"task": "intent", "text": "lock the front door",
                                                         "stream": True}),
                      qos=1, properties=v5_props("sovereign/reply/phone/st", b"c2"))
            chunk, final = json.loads((await get(q)).payload), json.loads((await get(q)).payload)
        assert chunk["type"] == "chunk" and chunk["seq"] == 0 and chunk["chunk"] == "lock_door", chunk
        assert final["ok"] and final["result"]["cached"], final

        # A compiled pattern, approved, streams its answer too.
        rule = next(r for r in hub.rules.all() if r.answer == "lock_door")
        hub.rules.set_state(rule.id, "approved")
        lines = await ask({"task": "intent", "text": "lock the front door", "stream": True})
        assert [x["chunk"] for x in lines[:-1]] == ["lock_door"], lines
        assert lines[-1]["served_by"]["model"] == f"rule:{rule.id}"

        # Clearing is an admin write; it says how many answers went.
        async with aiohttp.ClientSession() as s:
            async with s.delete(hub.http_url + "/api/cache") as r:
                assert r.status == 401
            async with s.delete(hub.http_url + "/api/cache?task=teleport", headers=auth) as r:
                assert r.status == 400 and "unknown task" in (await r.json())["error"]["message"]
            async with s.delete(hub.http_url + "/api/cache?task=qa", headers=auth) as r:
                assert r.status == 200 and await r.json() == {"removed": 0, "task": "qa"}
        bare = {k: v for k, v in os.environ.items() if k not in ("SOVEREIGN_TOKEN", "SOVEREIGN_URL")}
        env = {**bare, "SOVEREIGN_TOKEN": token}
        out = await asyncio.to_thread(_cli, "cache", "clear", "--task", "intent", "--url", hub.http_url, env=env)
        assert out.returncode == 0 and out.stdout.strip() == "removed 2 cached answers of task intent", out
        assert hub.cache.count() == 0
        out = await asyncio.to_thread(_cli, "cache", "clear", "--url", hub.http_url, "--json", env=env)
        assert out.returncode == 0 and json.loads(out.stdout) == {"removed": 0, "task": None}
        out = await asyncio.to_thread(_cli, "cache", "clear", "--url", hub.http_url, env=bare)
        assert out.returncode == 1 and "SOVEREIGN_TOKEN" in out.stderr
        # Cleared: the next ask goes to the phone again.
        hub.rules.set_state(rule.id, "disabled")
        [out] = await ask({"task": "intent", "text": "lock the front door"})
        assert not out["cached"] and out["served_by"]["device"] == phone.device_id, out


def test_a_deferred_request_an_older_hub_took_is_refused_at_the_next_start(tmp_path: Any) -> None:
    """A request waiting in deferred.sqlite3 with an input this hub refuses (written by an older
    one) is finished as bad_request instead of stopping the hub's start."""
    from hub.deferred import DeferredStore
    store = DeferredStore(tmp_path / "deferred.sqlite3")
    ok = InferRequest(id="fine", task="summarize", text="notes", deadline=2_000_000_000.0)
    store.add(ok, 1_900_000_000.0, None)
    old = InferRequest.model_construct(id="empty", task="intent", text="", deadline=2_000_000_000.0)
    store.add(old, 1_800_000_000.0, None)
    [w] = store.waiting()
    assert w.request == ok
    done = store.get("empty")
    assert done["state"] == "done" and done["outcome"]["error"]["code"] == "bad_request"
    assert done["outcome"]["error"]["message"].startswith("text: empty")
    store.close()
