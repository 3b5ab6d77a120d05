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

from hub.registry import DeviceChanged

from .conftest import retained_messages, retained_until, wait_for
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


__all__ = ["paho_client", "retained_messages"]  # retained_messages: imported from here by older tests


async def test_agent_appears_with_its_capability_and_energy(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        agent = spawn_agent(mosquitto.url, "watch", None, "--no-zeroconf")
        rec = await wait_for(lambda: hub.registry.get(agent.device_id), 60, what="agent in registry")
        assert rec.capability.tier.value == "tiny" and rec.sources == {"mqtt": True}
        assert {m.name for m in rec.capability.models} == {"intent-tiny", "eeg-state-tiny", "okay_nabu"}
        await wait_for(lambda: rec.energy is not None, 30, what="first energy report")
        assert rec.energy.battery_pct == 76 and rec.online


async def test_last_will_marks_offline_at_once(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    """Not by the heartbeat timeout: that is an hour here, so only the broker's last will can
    take the device offline within the test's bound."""
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, discovery={"heartbeat_timeout_s": 3600}) as hub:
        agent = spawn_agent(mosquitto.url, "phone", None, "--no-zeroconf")
        rec = await wait_for(lambda: (r := hub.registry.get(agent.device_id)) and r.online and r, 60, what="online")
        killed = time.monotonic()
        agent.kill()  # SIGKILL: no clean goodbye, only the broker's last will
        await wait_for(lambda: not rec.online, 60, what="offline through the last will")
        print(f"offline {(time.monotonic() - killed) * 1000:.0f} ms after the kill")
        assert rec.offline_reason.startswith("mqtt: status offline"), rec.offline_reason


async def test_clean_stop_goes_offline_at_once(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    """By the agent's own goodbye: the heartbeat timeout is an hour here."""
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, discovery={"heartbeat_timeout_s": 3600}) as hub:
        agent = spawn_agent(mosquitto.url, "laptop", None, "--no-zeroconf")
        rec = await wait_for(lambda: (r := hub.registry.get(agent.device_id)) and r.online and r, 60, what="online")
        assert agent.terminate() == 0
        await wait_for(lambda: not rec.online, 30, what="offline after SIGTERM")
        assert rec.offline_reason.startswith("mqtt: status offline"), rec.offline_reason
        assert retained_messages(mosquitto.port, f"sovereign/device/{agent.device_id}/status") == {
            f"sovereign/device/{agent.device_id}/status": b"offline"}


async def test_heartbeat_timeout(mosquitto: Any, make_hub: Any) -> None:
    """A device whose connection stays up but that says nothing more goes offline."""
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, discovery={"heartbeat_timeout_s": 1.0}) as hub:
        c = paho_client(mosquitto.port)
        c.publish("sovereign/device/silent/announce", json.dumps(capability_doc("silent")), qos=1).wait_for_publish()
        offline_at: list[float] = []
        hub.bus.subscribe(DeviceChanged, lambda e: offline_at.append(time.time())
                          if e.device_id == "silent" and e.online_changed and not e.online else None)
        rec = await wait_for(lambda: (r := hub.registry.get("silent")) and r.online and r, 30, what="online")
        last_heard = rec.last_seen
        await wait_for(lambda: not rec.online, 30, what="heartbeat timeout")
        # Not before the timeout (1 s after the last message), and for that reason. How soon after
        # depends on the hub's expiry tick and on the machine: bounded only by the wait.
        assert offline_at and offline_at[0] - last_heard >= 1.0, (offline_at, last_heard)
        assert "heartbeat timeout" in rec.offline_reason
        c.loop_stop()
        c.disconnect()


async def test_hub_restart_keeps_registry_without_duplicates(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    agents = [spawn_agent(mosquitto.url, p, None, "--no-zeroconf") for p in ("watch", "laptop")]
    ids = sorted(a.device_id for a in agents)
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        await wait_for(lambda: all(hub.registry.get(i) and hub.registry.get(i).online for i in ids), 60, what="both")
    # Same data dir: the registry is read back, then the retained status brings them online.
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        assert sorted(r.id for r in hub.registry.all()) == ids
        await wait_for(lambda: all(hub.registry.get(i).online for i in ids), 30, what="online after restart")
        # A marker device announced after the restart: the broker delivers it after the retained
        # messages the hub's subscriptions brought, so once it is in, all of those have been read.
        c = paho_client(mosquitto.port)
        c.publish("sovereign/device/zz-marker/announce", json.dumps(capability_doc("zz-marker")),
                  qos=1).wait_for_publish()
        c.loop_stop()
        c.disconnect()
        await wait_for(lambda: hub.registry.get("zz-marker"), 30, what="the marker device")
        assert sorted(r.id for r in hub.registry.all()) == [*ids, "zz-marker"], "no duplicates"
        async with aiohttp.ClientSession() as s, s.get(f"{hub.http_url}/api/devices") as resp:
            assert sorted(d["id"] for d in (await resp.json())["devices"]) == [*ids, "zz-marker"]


async def test_broker_restart_reconnects_resubscribes_and_rereads(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, discovery={"heartbeat_timeout_s": 3}) as hub:
        survivor = spawn_agent(mosquitto.url, "laptop", None, "--no-zeroconf", "--heartbeat-s", "1")
        # A device without a last will that never comes back: nothing will ever say it is gone.
        doomed = paho_client(mosquitto.port)
        doomed.publish("sovereign/device/doomed/announce", json.dumps(capability_doc("doomed")), qos=1,
                       retain=True).wait_for_publish()
        doomed.publish("sovereign/device/doomed/status", b"online", qos=1, retain=True).wait_for_publish()
        s = await wait_for(lambda: (r := hub.registry.get(survivor.device_id)) and r.online and r, 60, what="online")
        d = await wait_for(lambda: (r := hub.registry.get("doomed")) and r.online and r, 30, what="online")
        doomed.loop_stop()
        mosquitto.stop()  # persistence is off: every retained announcement is gone with it
        await wait_for(lambda: not hub.mqtt.connected.is_set(), 30, what="hub notices the outage")
        await asyncio.sleep(1.0)  # the scenario: an outage long enough for the hub to retry into a closed port
        mosquitto.start()
        await hub.mqtt.wait_connected(30)
        # The doomed device's announcement cannot come back (it never reconnects): wait for the
        # survivor's, then the set must be exactly that.
        await retained_until(mosquitto.port, "sovereign/device/+/announce",
                             lambda got: f"sovereign/device/{survivor.device_id}/announce" in got, 30,
                             "the agent re-announces after the restart")
        assert retained_messages(mosquitto.port, "sovereign/device/+/announce").keys() == {
            f"sovereign/device/{survivor.device_id}/announce"}
        await wait_for(lambda: s.online, 30, what="survivor online again")
        await wait_for(lambda: not d.online, 30, what="the vanished device is not a ghost")
        assert "heartbeat timeout" in d.offline_reason
        assert hub.mqtt.connect_count >= 2
        assert len(hub.registry) == 2
        # The survivor's heartbeats keep it online after the restart: it is heard from for longer
        # than the heartbeat timeout (3 s) after the doomed device was timed out, and stays online.
        since = time.time()
        await wait_for(lambda: s.last_seen > since + 3.5, 30, what="the survivor's heartbeats")
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
        await wait_for(lambda: len(hub.registry) == 2, 30, what="stale devices read from retained messages")
        assert not any(r.online for r in hub.registry.all())
        await wait_for(lambda: len(hub.registry) == 0, 30, what="stale devices forgotten")
        await retained_until(mosquitto.port, "sovereign/device/#", lambda got: got == {}, 30,
                             "their retained topics cleared")


async def test_delete_through_api_clears_retained(mosquitto: Any, make_hub: Any) -> None:
    c = paho_client(mosquitto.port)
    c.publish("sovereign/device/del-me/announce", json.dumps(capability_doc("del-me")), qos=1, retain=True).wait_for_publish()
    c.loop_stop()
    c.disconnect()
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        await wait_for(lambda: hub.registry.get("del-me"), 30, what="device")
        async with aiohttp.ClientSession() as s:
            async with s.delete(f"{hub.http_url}/api/devices/del-me") as resp:
                assert resp.status == 200
            async with s.delete(f"{hub.http_url}/api/devices/del-me") as resp:
                assert resp.status == 404 and (await resp.json())["error"]["code"] == "unknown_device"
        await retained_until(mosquitto.port, "sovereign/device/#", lambda got: got == {}, 30,
                             "its retained topics cleared")
        assert hub.registry.get("del-me") is None


async def test_bad_payload_corpus_over_the_broker(mosquitto: Any, make_hub: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        c = paho_client(mosquitto.port)
        c.publish("sovereign/device/good/announce", json.dumps(capability_doc("good")), qos=1).wait_for_publish()
        await wait_for(lambda: hub.registry.get("good"), 30, what="good device")
        # Everything but an unknown kind: the hub does not subscribe to kinds it does not know
        # (future ones must not count as errors), so that one never reaches it.
        corpus = [c for c in bad_corpus("good") if c[0] != "unknown topic kind"]
        for _name, suffix, payload, _reason in corpus:
            c.publish(f"sovereign/{suffix}", payload, qos=1).wait_for_publish()
        await wait_for(lambda: hub.state.counters["rejected_messages"] == len(corpus), 30,
                       what=f"{len(corpus)} rejections")
        # Still alive, still correct.
        c.publish("sovereign/device/good2/announce", json.dumps(capability_doc("good2", "watch")), qos=1).wait_for_publish()
        await wait_for(lambda: hub.registry.get("good2"), 30, what="hub still accepting good payloads")
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
        await wait_for(lambda: hub.registry.get(agent.device_id), 60, what="agent under home/ai")
        assert retained_messages(mosquitto.port, "home/ai/hub/status") == {"home/ai/hub/status": b"online"}
