"""Discovery over MQTT with a real Mosquitto and real agent processes."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import aiohttp
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from .conftest import wait_for
from .payloads import bad_corpus, capability_doc


def paho_client(port: int, client_id: str = "", will: tuple[str, bytes] | None = None,
                login: tuple[str, str] | None = None) -> paho.Client:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{uuid.uuid4().hex[:8]}",
                    protocol=paho.MQTTv5)
    if login:
        c.username_pw_set(*login)
    if will:
        c.will_set(will[0], will[1], qos=1, retain=True)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def retained_messages(port: int, topic_filter: str, wait: float = 0.5) -> dict[str, bytes]:
    got: dict[str, bytes] = {}
    c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.on_message = lambda _c, _u, m: got.__setitem__(m.topic, m.payload) if m.retain else None
    c.connect("127.0.0.1", port)
    c.subscribe(topic_filter, qos=1)
    c.loop_start()
    time.sleep(wait)
    c.loop_stop()
    c.disconnect()
    return got


async def test_agent_appears_with_its_capability_and_energy(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        agent = spawn_agent(mosquitto.url, "watch", None, "--no-zeroconf")
        rec = await wait_for(lambda: hub.registry.get(agent.device_id), 15, what="agent in registry")
        assert rec.capability.tier.value == "tiny" and rec.sources == {"mqtt": True}
        assert {m.name for m in rec.capability.models} == {"intent-tiny", "eeg-state-tiny"}
        await wait_for(lambda: rec.energy is not None, 5, what="first energy report")
        assert rec.energy.battery_pct == 76 and rec.online


async def test_last_will_marks_offline_within_2s(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        agent = spawn_agent(mosquitto.url, "phone", None, "--no-zeroconf")
        rec = await wait_for(lambda: (r := hub.registry.get(agent.device_id)) and r.online and r, 15, what="online")
        killed = time.monotonic()
        agent.kill()  # SIGKILL: no clean goodbye, only the broker's last will
        await wait_for(lambda: not rec.online, 2.0, what="offline through the last will")
        assert time.monotonic() - killed < 2.0
        assert "mqtt" in rec.offline_reason


async def test_clean_stop_goes_offline_at_once(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        agent = spawn_agent(mosquitto.url, "laptop", None, "--no-zeroconf")
        rec = await wait_for(lambda: (r := hub.registry.get(agent.device_id)) and r.online and r, 15, what="online")
        assert agent.terminate() == 0
        await wait_for(lambda: not rec.online, 2.0, what="offline after SIGTERM")
        assert retained_messages(mosquitto.port, f"sovereign/device/{agent.device_id}/status") == {
            f"sovereign/device/{agent.device_id}/status": b"offline"}


async def test_heartbeat_timeout(mosquitto: Any, make_hub: Any) -> None:
    """A device whose connection stays up but that says nothing more goes offline."""
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, discovery={"heartbeat_timeout_s": 1.0}) as hub:
        c = paho_client(mosquitto.port)
        c.publish("sovereign/device/silent/announce", json.dumps(capability_doc("silent")), qos=1).wait_for_publish()
        rec = await wait_for(lambda: (r := hub.registry.get("silent")) and r.online and r, 5, what="online")
        started = time.monotonic()
        await wait_for(lambda: not rec.online, 3.0, what="heartbeat timeout")
        assert 0.9 <= time.monotonic() - started < 2.5
        assert "heartbeat timeout" in rec.offline_reason
        c.loop_stop()
        c.disconnect()


async def test_hub_restart_keeps_registry_without_duplicates(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    agents = [spawn_agent(mosquitto.url, p, None, "--no-zeroconf") for p in ("watch", "laptop")]
    ids = sorted(a.device_id for a in agents)
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        await wait_for(lambda: all(hub.registry.get(i) and hub.registry.get(i).online for i in ids), 15, what="both")
    # Same data dir: the registry is read back, then the retained status brings them online.
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        assert sorted(r.id for r in hub.registry.all()) == ids
        await wait_for(lambda: all(hub.registry.get(i).online for i in ids), 5, what="online after restart")
        await asyncio.sleep(0.5)
        assert len(hub.registry) == 2
        async with aiohttp.ClientSession() as s, s.get(f"{hub.http_url}/api/devices") as resp:
            assert sorted(d["id"] for d in (await resp.json())["devices"]) == ids


async def test_broker_restart_reconnects_resubscribes_and_rereads(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, discovery={"heartbeat_timeout_s": 3}) as hub:
        survivor = spawn_agent(mosquitto.url, "laptop", None, "--no-zeroconf", "--heartbeat-s", "1")
        # A device without a last will that never comes back: nothing will ever say it is gone.
        doomed = paho_client(mosquitto.port)
        doomed.publish("sovereign/device/doomed/announce", json.dumps(capability_doc("doomed")), qos=1,
                       retain=True).wait_for_publish()
        doomed.publish("sovereign/device/doomed/status", b"online", qos=1, retain=True).wait_for_publish()
        s = await wait_for(lambda: (r := hub.registry.get(survivor.device_id)) and r.online and r, 15, what="online")
        d = await wait_for(lambda: (r := hub.registry.get("doomed")) and r.online and r, 5, what="online")
        doomed.loop_stop()
        mosquitto.stop()  # persistence is off: every retained announcement is gone with it
        await wait_for(lambda: not hub.mqtt.connected.is_set(), 5, what="hub notices the outage")
        await asyncio.sleep(1.0)
        mosquitto.start()
        await hub.mqtt.wait_connected(15)
        assert retained_messages(mosquitto.port, "sovereign/device/+/announce", wait=3.0).keys() == {
            f"sovereign/device/{survivor.device_id}/announce"}, "the agent re-announces after the restart"
        await wait_for(lambda: s.online, 10, what="survivor online again")
        await wait_for(lambda: not d.online, 8, what="the vanished device is not a ghost")
        assert "heartbeat timeout" in d.offline_reason
        assert hub.mqtt.connect_count >= 2
        assert len(hub.registry) == 2
        await asyncio.sleep(1.5)
        assert s.online, "the survivor's heartbeats keep it online after the restart"


async def test_forgotten_devices_lose_their_retained_topics(mosquitto: Any, make_hub: Any) -> None:
    c = paho_client(mosquitto.port)
    for device_id in ("old-1", "old-2"):
        c.publish(f"sovereign/device/{device_id}/announce", json.dumps(capability_doc(device_id)), qos=1,
                  retain=True).wait_for_publish()
        c.publish(f"sovereign/device/{device_id}/status", b"offline", qos=1, retain=True).wait_for_publish()
    c.loop_stop()
    c.disconnect()
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, discovery={"forget_after_s": 1.0}) as hub:
        await wait_for(lambda: len(hub.registry) == 2, 5, what="stale devices read from retained messages")
        assert not any(r.online for r in hub.registry.all())
        await wait_for(lambda: len(hub.registry) == 0, 5, what="stale devices forgotten")
        await asyncio.sleep(0.3)
        assert retained_messages(mosquitto.port, "sovereign/device/#") == {}


async def test_delete_through_api_clears_retained(mosquitto: Any, make_hub: Any) -> None:
    c = paho_client(mosquitto.port)
    c.publish("sovereign/device/del-me/announce", json.dumps(capability_doc("del-me")), qos=1, retain=True).wait_for_publish()
    c.loop_stop()
    c.disconnect()
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        await wait_for(lambda: hub.registry.get("del-me"), 5, what="device")
        async with aiohttp.ClientSession() as s:
            async with s.delete(f"{hub.http_url}/api/devices/del-me") as resp:
                assert resp.status == 200
            async with s.delete(f"{hub.http_url}/api/devices/del-me") as resp:
                assert resp.status == 404 and (await resp.json())["error"]["code"] == "unknown_device"
        await asyncio.sleep(0.3)
        assert retained_messages(mosquitto.port, "sovereign/device/#") == {}
        assert hub.registry.get("del-me") is None


async def test_bad_payload_corpus_over_the_broker(mosquitto: Any, make_hub: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        c = paho_client(mosquitto.port)
        c.publish("sovereign/device/good/announce", json.dumps(capability_doc("good")), qos=1).wait_for_publish()
        await wait_for(lambda: hub.registry.get("good"), 5, what="good device")
        # Everything but an unknown kind: the hub does not subscribe to kinds it does not know
        # (future ones must not count as errors), so that one never reaches it.
        corpus = [c for c in bad_corpus("good") if c[0] != "unknown topic kind"]
        for _name, suffix, payload, _reason in corpus:
            c.publish(f"sovereign/{suffix}", payload, qos=1).wait_for_publish()
        await wait_for(lambda: hub.state.counters["rejected_messages"] == len(corpus), 10,
                       what=f"{len(corpus)} rejections")
        # Still alive, still correct.
        c.publish("sovereign/device/good2/announce", json.dumps(capability_doc("good2", "watch")), qos=1).wait_for_publish()
        await wait_for(lambda: hub.registry.get("good2"), 5, what="hub still accepting good payloads")
        assert sorted(r.id for r in hub.registry.all()) == ["good", "good2"]
        assert hub.registry.get("good").capability.tier.value == "small"
        async with aiohttp.ClientSession() as s, s.get(f"{hub.http_url}/api/health") as resp:
            health = await resp.json()
        assert health["counters"]["rejected_messages"] == len(corpus)
        assert health["broker"]["connected"] is True
        c.loop_stop()
        c.disconnect()


async def test_custom_topic_root(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, mqtt={"topic_root": "home/ai"}) as hub:
        agent = spawn_agent(mosquitto.url, "watch", None, "--no-zeroconf", "--topic-root", "home/ai")
        await wait_for(lambda: hub.registry.get(agent.device_id), 15, what="agent under home/ai")
        assert retained_messages(mosquitto.port, "home/ai/hub/status") == {"home/ai/hub/status": b"online"}
