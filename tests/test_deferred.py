"""Deferred requests outlive the hub: a restart while they wait for their clean window does not
lose them. Real Mosquitto, a real agent process, two hub lives on one data directory."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import paho.mqtt.client as paho

from hub.deferred import DeferredStore, ReplyRoute
from hub.dispatch import InferRequest
from hub.energy.model import ForecastPoint

from .conftest import wait_for
from .test_commands import client, get, v5_props
from .test_dispatch import fleet, post
from .test_http_cli import _cli


def _dirty_now_clean_later(hub: Any, clean_from: float) -> None:
    now = time.time()
    hub.energy.report("test", "carbon_g_per_kwh", 400, now)
    hub.energy.set_forecast("test", "carbon_g_per_kwh", [ForecastPoint(now - 1, clean_from, 400),
                                                         ForecastPoint(clean_from, now + 3600, 40)])


async def _get(hub: Any, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(hub.http_url + path) as r:
        return r.status, await r.json(content_type=None)


async def test_a_restart_does_not_lose_deferred_requests(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    deadline = time.time() + 1800
    with client(mosquitto.port, paho.MQTTv5, "sovereign/reply/phone/replies") as (c, replies):
        async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
            [agent] = await fleet(hub, spawn_agent, mosquitto.url, ("watch", ("--echo",)))
            _dirty_now_clean_later(hub, time.time() + 600)
            c.publish("sovereign/cmd/infer", json.dumps({"id": "mqtt-batch", "task": "echo", "text": "nightly digest",
                                                         "deadline": deadline}),
                      qos=1, properties=v5_props("sovereign/reply/phone/replies", b"corr-7"))
            http_call = asyncio.create_task(post(hub, "/api/infer", {"id": "http-batch", "task": "echo",
                                                                     "text": "index my notes", "deadline": deadline}))
            await wait_for(lambda: len(hub.dispatcher.deferred) == 2, 30, what="both requests deferred")
            status, listing = await _get(hub, "/api/deferred")
            assert status == 200
            assert {(d["id"], d["state"]) for d in listing["deferred"]} == {("mqtt-batch", "waiting"),
                                                                             ("http-batch", "waiting")}
            assert next(d for d in listing["deferred"] if d["id"] == "mqtt-batch")["reply_topic"] == \
                "sovereign/reply/phone/replies"
        # The hub is gone while both wait for their window: the HTTP caller's connection with it.
        try:
            await asyncio.wait_for(http_call, 10)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        assert replies.empty(), "nothing was answered before the restart"

        async with make_hub(mosquitto.url, zeroconf={"enabled": False}, dispatch={"resume_after_s": 0.5}) as hub:
            # No forecast in the new life: nothing cleaner is known before the deadline, so they run now.
            msg = await get(replies, 60)
            assert msg.properties.CorrelationData == b"corr-7"
            body = json.loads(msg.payload)
            assert body["ok"] and body["id"] == "mqtt-batch" and body["result"]["output"] == "nightly digest"
            assert body["result"]["served_by"]["device"] == agent.device_id

            async def http_outcome() -> Any:
                status, doc = await _get(hub, "/api/deferred/http-batch")
                return doc if status == 200 and doc["state"] == "done" else None
            doc = await wait_for(http_outcome, 60, interval=0.1, what="the HTTP request's outcome")
            assert doc["outcome"]["ok"] and doc["outcome"]["output"] == "index my notes", doc
            status, doc = await _get(hub, "/api/deferred/mqtt-batch")
            assert status == 200 and doc["state"] == "done" and doc["outcome"]["output"] == "nightly digest"
            status, doc = await _get(hub, "/api/deferred/never-seen")
            assert status == 404 and doc["error"]["code"] == "unknown_request"
            listing = await asyncio.to_thread(_cli, "deferred", "--url", hub.http_url)
            assert listing.returncode == 0, listing.stderr
            assert "mqtt-batch" in listing.stdout and "sovereign/reply/phone/replies" in listing.stdout
            assert "http-batch" in listing.stdout and "HTTP (by id)" in listing.stdout
            one = await asyncio.to_thread(_cli, "deferred", "http-batch", "--url", hub.http_url)
            assert one.returncode == 0 and "'index my notes' via echo" in one.stdout, one.stdout + one.stderr
        # A third life has nothing left to resume.
        async with make_hub(mosquitto.url, zeroconf={"enabled": False}, dispatch={"resume_after_s": 0}) as hub:
            assert hub.dispatcher.store.waiting() == []


def test_store_keeps_the_reply_route_and_drops_old_outcomes(tmp_path: Any) -> None:
    store = DeferredStore(tmp_path / "deferred.sqlite3")
    req = InferRequest(id="r1", task="summarize", text="notes", deadline=2_000_000_000.0)
    store.add(req, 1_900_000_000.0, ReplyRoute("sovereign/reply/x/replies", b"\x00corr"))
    store.close()
    store = DeferredStore(tmp_path / "deferred.sqlite3")
    [w] = store.waiting()
    assert w.request == req and w.run_at == 1_900_000_000.0
    assert w.reply == ReplyRoute("sovereign/reply/x/replies", b"\x00corr")
    store.finish("r1", {"ok": True}, now=1_000.0)
    assert store.waiting() == [] and store.get("r1")["outcome"] == {"ok": True}
    store.add(InferRequest(id="r2", task="qa", text="?", deadline=3.0), 2.0, None)
    store.finish("r2", {"ok": False}, now=1_000.0 + 86400 + 1)  # a day later: r1's outcome is dropped
    assert store.get("r1") is None and store.get("r2")["state"] == "done"
    store.close()
