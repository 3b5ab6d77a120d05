"""Back-pressure is not failure: a real Mosquitto, a hub, real agent processes.

A burst beyond the fleet's announced concurrency is queued by the hub within each model's
slots and the rest refused 503 ``overloaded`` with ``Retry-After`` — never 502, never a
cooldown; an invalid or too large input is the caller's error (4xx), not the device's; real
failures grow a cooldown up to its cap, a success or a reset ends it (API and CLI).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from typing import Any

import aiohttp

from .conftest import wait_for
from .test_discovery_mqtt import paho_client
from .test_dispatch import fleet


async def post(hub: Any, path: str, body: Any, token: str | None = None) -> tuple[int, Any, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with aiohttp.ClientSession() as s:
        async with s.post(hub.http_url + path, json=body, headers=headers) as r:
            return r.status, await r.json(content_type=None), r.headers


def cooling(hub: Any, device_id: str) -> list[Any]:
    """The (model, task) pairs of a device that are cooling down or have failures in a row."""
    now = time.time()
    return [(k, v) for k, v in hub.stats.snapshot().models.items()
            if k[0] == device_id and (v.cooldown_until > now or v.consecutive_failures)]


async def test_a_burst_is_queued_or_refused_with_retry_after_and_cools_nothing(
        mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        laptop, gpu = await fleet(hub, spawn_agent, mosquitto.url, ("laptop", ("--seed", "1")),
                                  ("gpu-box", ("--seed", "2")))
        started = time.monotonic()
        # Distinct questions: identical ones would be answered from the cache.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            async def ask(i: int) -> tuple[int, Any, str | None]:
                async with s.post(hub.http_url + "/api/infer", json={"task": "qa", "text": f"question {i}?"}) as r:
                    return r.status, await r.json(), r.headers.get("Retry-After")
            results = await asyncio.gather(*(ask(i) for i in range(200)))
        elapsed = time.monotonic() - started
        statuses = [st for st, _, _ in results]
        answered, refused = statuses.count(200), statuses.count(503)
        print(f"burst of 200: {answered} answered, {refused} refused 503 in {elapsed:.1f} s")
        assert answered + refused == 200, sorted(set(statuses))
        assert answered >= 5, "at least the announced slots (laptop 1, GPU box 4) were used"
        for st, out, retry in results:
            if st == 503:
                assert out["error"]["code"] == "overloaded" and retry is not None and int(retry) >= 1, out
                assert out["error"]["retry_after_s"] == int(retry)
            else:
                assert out["ok"] and len(out["attempts"]) == 1, out
        # The hub held the queue: no device was sent more than it announced, none refused busy.
        assert not any("busy" in a.get("error", "") for _, out, _ in results for a in out.get("attempts", []))
        assert not cooling(hub, laptop.device_id) and not cooling(hub, gpu.device_id)
        for key, learned in hub.stats.snapshot().models.items():
            assert learned.success_rate == 1.0, key
        assert all(s.active == 0 and s.waiting == 0 for s in hub.dispatcher.slots.values())
        status, dry, _ = await post(hub, "/api/route", {"task": "qa", "text": "and now?"})
        assert status == 200 and not any("cooling" in e["reason"] for e in dry["excluded"]), dry
        status, out, _ = await post(hub, "/api/infer", {"task": "qa", "text": "one more?"})
        assert status == 200 and out["ok"]

        # A device that is full for another reason (another hub's calls: here a direct call)
        # answers busy: the hub answers overloaded, and learns nothing against the device.
        key = (laptop.device_id, "smollm2-135m", "intent")
        # The direct call is seen on the device's RPC topic, as the device gets it.
        sent: list[str] = []
        subscribed = threading.Event()
        watcher = paho_client(mosquitto.port)
        watcher.on_message = lambda _c, _u, m: sent.append(json.loads(m.payload).get("id", ""))
        watcher.on_subscribe = lambda *_: subscribed.set()
        watcher.subscribe(f"sovereign/device/{laptop.device_id}/rpc", qos=1)
        await wait_for(subscribed.is_set, 30, what="the watcher subscribed")
        try:
            for i in range(5):  # the direct call may end before the hub's arrives: then try again
                learned_before = hub.stats.snapshot().models.get(key)
                hold = asyncio.create_task(hub.rpc.call(laptop.device_id, "infer", {
                    "task": "draft", "model": "smollm2-135m", "text": "hold the slot", "timeout_ms": 5000}, 6,
                    request_id=f"hold-{i}"))
                await wait_for(lambda i=i: any(x.startswith(f"hold-{i}#") for x in sent), 30, what="the direct call sent")
                status, out, headers = await post(hub, "/api/infer", {"task": "intent", "text": f"lights {time.time()}",
                                                                      "budget_ms": 2000})
                await hold
                if status == 503:
                    break
        finally:
            watcher.loop_stop()
            watcher.disconnect()
        assert status == 503 and out["error"]["code"] == "overloaded" and int(headers["Retry-After"]) >= 1, out
        assert out["attempts"][0]["error"].startswith("busy"), out
        assert hub.stats.snapshot().models.get(key) is learned_before, "the busy refusal was not learned"


def test_overloaded_is_the_mqtt_command_reply_code() -> None:
    from hub.commands import _response
    from hub.dispatch import InferOutcome
    body = _response(InferOutcome("r1", "qa", False, error={"code": "overloaded", "message": "full",
                                                             "retry_after_s": 2.0}))
    assert body.error is not None and body.error.code == "overloaded" and body.error.retry_after_s == 2.0


async def test_invalid_or_too_large_input_is_the_callers_error(mosquitto: Any, make_hub: Any,
                                                               spawn_agent: Any) -> None:
    learning = {"cooldown_after_failures": 2}
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, router={"learning": learning}) as hub:
        watches = await fleet(hub, spawn_agent, mosquitto.url, ("watch", ()), ("watch", ()), ("laptop", ()))
        tiny = {w.device_id for w in watches[:2]}
        big = "turn on the lights " * 550  # 10 KB: the watches' classifier announced 4,096 characters
        # The watches never see it: the laptop, which announced no limit, takes it.
        status, out, _ = await post(hub, "/api/infer", {"task": "intent", "text": big, "budget_ms": 5000})
        assert status == 200 and out["served_by"]["device"] == watches[2].device_id, out
        status, dry, _ = await post(hub, "/api/route", {"task": "intent", "text": big})
        assert {e["device"] for e in dry["excluded"] if "over the model's limit of 4096" in e["reason"]} == tiny
        # Nothing but the watches does eeg: refused at the hub's edge, before any device.
        status, out, _ = await post(hub, "/api/infer", {"task": "eeg", "text": "[" + "0.1, " * 2000 + "0.1]"})
        assert status == 413 and out["error"]["code"] == "too_large" and "4096" in out["error"]["message"], out
        # A request the device refuses as invalid: its reason, 400, not escalated to the other watch.
        for _ in range(3):
            status, out, _ = await post(hub, "/api/infer", {"task": "eeg", "text": "[1, 2, 3]"})
            assert status == 400 and out["error"]["code"] == "bad_request", out
            assert "7" in out["error"]["message"] and len(out["attempts"]) == 1, out
        assert not any(k[0] in tiny for k in hub.stats.snapshot().models), "nothing learned against the watches"
        status, dry, _ = await post(hub, "/api/route", {"task": "eeg", "text": "[0.1, 0.1, 0.5, 0.2, 0.1, 1.2, 0]"})
        assert len(dry["chain"]) == 2 and not dry["excluded"], dry
        status, out, _ = await post(hub, "/api/infer", {"task": "eeg", "text": "[0.1, 0.1, 0.5, 0.2, 0.1, 1.2, 0]"})
        assert status == 200 and out["ok"], out


async def test_real_failures_grow_a_capped_cooldown_and_reset_clears_it(
        mosquitto: Any, make_hub: Any, spawn_agent: Any, tmp_path: Any) -> None:
    from hub.router.stats import LearningConfig, StatsStore
    from .test_http_cli import _cli
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"intent": {"lock the door": "lock_door"}}))
    learning = {"cooldown_after_failures": 2, "cooldown_s": 0.5, "cooldown_max_s": 2}
    # No score penalty for failing: the failing model stays first in the chain once it may be tried.
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, router={"learning": learning, "weight_failure": 0},
                        http={"require_token": "writes"}) as hub:
        token = hub.new_admin_token
        # Its rules model answers first (quality 1, no energy) and fails every other input
        # (no_answer: a real failure); the watch's classifier then answers.
        [watch] = await fleet(hub, spawn_agent, mosquitto.url, ("watch", ("--rules", str(rules),
                                                                          "--heartbeat-s", "0.3")))
        key = (watch.device_id, "rules", "intent")

        async def fail_once(i: int) -> Any:
            status, out, _ = await post(hub, "/api/infer", {"task": "intent", "text": f"open window {i}"}, token)
            assert status == 200 and out["served_by"]["model"] == "intent-tiny", out
            assert out["attempts"][0]["model"] == "rules" and "no_answer" in out["attempts"][0]["error"], out
            return hub.stats.snapshot().models[key]

        async def rules_routable() -> bool:
            _, dry, _ = await post(hub, "/api/route", {"task": "intent", "text": "x"}, token)
            return dry["chosen"]["model"] == "rules"

        async def wait_routable() -> None:
            await wait_for(rules_routable, 30, interval=0.05, what="the end of the cooldown")

        lengths = []
        learned = await fail_once(0)
        assert learned.cooldown_until == 0 and learned.consecutive_failures == 1
        for i in range(1, 5):
            await wait_routable()
            learned = await fail_once(i)
            lengths.append(round(learned.cooldown_until - learned.last_at, 3))
        assert lengths == [0.5, 1.0, 2.0, 2.0], lengths  # doubling, capped
        assert not await rules_routable()

        # Reset over the API: the admin token is needed, an unknown device is 404.
        status, out, _ = await post(hub, f"/api/devices/{watch.device_id}/reset", {})
        assert status == 401, out
        status, out, _ = await post(hub, "/api/devices/no-such-device/reset", {}, token)
        assert status == 404 and out["error"]["code"] == "unknown_device", out
        status, out, _ = await post(hub, f"/api/devices/{watch.device_id}/reset", {}, token)
        assert status == 200 and out == {"reset": watch.device_id, "pairs": 2}, out
        learned = hub.stats.snapshot().models[key]
        assert learned.cooldown_until == 0 and learned.consecutive_failures == 0 and learned.success_rate == 1.0
        assert await rules_routable()
        stored = StatsStore(LearningConfig(), hub.data_dir / "router-stats.sqlite3")  # what a restart reads
        assert stored.snapshot().models[key].consecutive_failures == 0
        stored.close()

        # Reset with the CLI.
        await fail_once(10)
        await fail_once(11)
        assert cooling(hub, watch.device_id)
        env = {**os.environ, "SOVEREIGN_TOKEN": token}
        out = await asyncio.to_thread(_cli, "devices", "reset", watch.device_id, "--url", hub.http_url, env=env)
        assert out.returncode == 0 and "cleared" in out.stdout, out.stderr
        assert not cooling(hub, watch.device_id) and await rules_routable()
        out = await asyncio.to_thread(_cli, "devices", "reset", "no-such-device", "--url", hub.http_url, env=env)
        assert out.returncode == 1 and "no device with id" in out.stderr


def test_cooldown_defaults_are_minutes_and_an_old_hour_is_clamped_on_load(tmp_path: Any) -> None:
    from hub.router.stats import LearningConfig, Outcome, StatsStore
    cfg = LearningConfig()
    assert (cfg.cooldown_after_failures, cfg.cooldown_s, cfg.cooldown_max_s) == (3, 30, 300)
    db = tmp_path / "router-stats.sqlite3"
    old = StatsStore(LearningConfig(cooldown_after_failures=1, cooldown_s=3600, cooldown_max_s=3600), db)
    now = time.time()
    old.record(Outcome("r", "laptop", "m", "qa", "small", False, 10.0, now, "timeout"))
    assert old.snapshot().models[("laptop", "m", "qa")].cooldown_until == now + 3600
    old.close()
    new = StatsStore(LearningConfig(), db)  # a restart with the new cap
    assert new.snapshot().models[("laptop", "m", "qa")].cooldown_until <= time.time() + 300
    # A success ends a cooldown at once.
    new.record(Outcome("r2", "laptop", "m", "qa", "small", True, 10.0, time.time()))
    learned = new.snapshot().models[("laptop", "m", "qa")]
    assert learned.cooldown_until == 0 and learned.consecutive_failures == 0
    new.close()
