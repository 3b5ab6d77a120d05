"""Home Assistant MQTT discovery, checked with a real subscriber against the fields Home
Assistant documents for device-based discovery (https://www.home-assistant.io/integrations/mqtt/):
``dev`` and ``o`` at the root, entities under ``cmps`` each with a platform ``p`` and a
``unique_id``, availability, removal by an empty retained payload, re-publication when
``homeassistant/status`` says ``online``."""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import threading
import time
import uuid
from typing import Any

import aiohttp
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from hub.homeassistant import object_id
from hub.router.ledger import LedgerEntry

from .conftest import retained_messages, wait_for
from .payloads import capability_doc
from .test_discovery_mqtt import paho_client
from .test_dispatch import fleet


def subscriber(port: int, topic: str) -> tuple[paho.Client, "queue.Queue[paho.MQTTMessage]"]:
    q: queue.Queue[paho.MQTTMessage] = queue.Queue()
    subscribed = threading.Event()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"ha-{uuid.uuid4().hex[:6]}", protocol=paho.MQTTv311)
    c.on_message = lambda _c, _u, m: q.put(m)
    c.on_subscribe = lambda *_: subscribed.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe(topic, qos=1)
    assert subscribed.wait(30), f"no SUBACK for {topic}"
    return c, q


async def collect(q: "queue.Queue[paho.MQTTMessage]", until: Any, what: str, timeout: float = 30,
                  seen: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """The latest payload on each topic from ``q``, gathered until ``until(seen)`` holds."""
    seen = {} if seen is None else seen
    deadline = time.monotonic() + timeout
    while not until(seen):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}: {sorted(seen)}"
        try:
            m = await asyncio.to_thread(q.get, True, 0.2)
        except queue.Empty:
            continue
        seen[m.topic] = m.payload
    return seen


async def collect_to_marker(hub: Any, q: "queue.Queue[paho.MQTTMessage]",
                            seen: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """What ``q`` (subscribed to ``#``) gets up to a marker the hub publishes once its event
    handlers have run: one client's messages arrive in order, so whatever the hub published
    before the marker is in. A positive end to an "is not published" check, not a quiet period."""
    await hub.bus.drain()
    marker = f"sovereign/test-marker/{uuid.uuid4().hex}"
    assert await hub.mqtt.publish(marker, b"end", qos=1)
    return await collect(q, lambda got: marker in got, "the marker", seen=seen)


def retained(port: int, topic: str) -> dict[str, bytes]:
    """The retained messages on ``topic`` now, as a newly subscribing Home Assistant gets them."""
    return retained_messages(port, topic)


def check_device_payload(doc: dict[str, Any]) -> None:
    assert set(doc["dev"]) >= {"ids", "name"} and doc["o"]["name"] == "sovereign-hub"
    # A list of availability topics, all of which must say online; never also the single-topic
    # form, which Home Assistant refuses beside it (and would merge into every component).
    assert "availability_topic" not in doc and doc["availability_mode"] == "all"
    assert doc["availability"] and all(a["topic"] and a["payload_available"] == "online"
                                       and a["payload_not_available"] == "offline" for a in doc["availability"])
    assert doc["state_topic"].startswith("sovereign/ha/")
    for key, comp in doc["cmps"].items():
        assert comp["p"] == "sensor" and comp["unique_id"] == key and "{{ value_json." in comp["value_template"]
        assert "availability_topic" not in comp
        # Every numeric sensor has its precision (and a unit where it has one); text ones none.
        numeric = "state_class" in comp or "unit_of_measurement" in comp
        assert ("suggested_display_precision" in comp) == numeric, key
        if comp.get("device_class") == "enum":
            assert not numeric, key


def availability_topics(doc: dict[str, Any]) -> list[str]:
    return [a["topic"] for a in doc["availability"]]


async def test_discovery_states_rediscovery_and_removal(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    c, q = subscriber(mosquitto.port, "#")
    try:
        async with make_hub(mosquitto.url, zeroconf={"enabled": False}, homeassistant={"state_interval_s": 1}) as hub:
            [phone] = await fleet(hub, spawn_agent, mosquitto.url, ("phone", ()))
            topic = f"homeassistant/device/{object_id(phone.device_id)}/config"
            seen = await collect(q, lambda got: {"homeassistant/device/sovereign_hub_hub/config", topic,
                                                 f"sovereign/ha/device/{phone.device_id}/state"} <= got.keys()
                                 and json.loads(got.get("sovereign/ha/hub/state") or "{}").get("devices_online") == 1,
                                 "the hub's and the phone's configs and states")
            hub_cfg = json.loads(seen["homeassistant/device/sovereign_hub_hub/config"])
            check_device_payload(hub_cfg)
            assert availability_topics(hub_cfg) == ["sovereign/hub/status"]
            assert {c["name"] for c in hub_cfg["cmps"].values()} >= {"Grid carbon intensity", "Energy mode",
                                                                     "Saved today against all-cloud", "EEG feedback score"}
            dev = json.loads(seen[topic])
            check_device_payload(dev)
            assert availability_topics(dev) == [f"sovereign/device/{phone.device_id}/status",
                                                f"sovereign/ha/device/{phone.device_id}/availability",
                                                "sovereign/hub/status"]
            assert dev["dev"]["via_device"] == "sovereign_hub_hub"
            battery = next(v for v in dev["cmps"].values() if v.get("device_class") == "battery")
            assert battery["unit_of_measurement"] == "%"
            state = json.loads(seen[f"sovereign/ha/device/{phone.device_id}/state"])
            assert state["battery_pct"] == 62 and state["tier"] == "tiny" and state["online"]
            hub_state = json.loads(seen["sovereign/ha/hub/state"])
            assert hub_state["devices_online"] == 1 and "saved_today" in hub_state
            # Home Assistant restarts: it says so, and gets everything again.
            before = hub.homeassistant.published
            c.publish("homeassistant/status", b"online", qos=1)
            await wait_for(lambda: hub.homeassistant.published >= before + 2, 30, what="re-published")
            # A deleted device disappears from Home Assistant.
            async with aiohttp.ClientSession() as s:
                async with s.delete(f"{hub.http_url}/api/devices/{phone.device_id}") as r:
                    assert r.status == 200
            phone.terminate()
            await collect(q, lambda got: got.get(topic) == b"", "an empty retained payload removing the device")
    finally:
        c.loop_stop()
        c.disconnect()


async def test_disabled_or_another_prefix(mosquitto: Any, make_hub: Any) -> None:
    c, q = subscriber(mosquitto.port, "#")
    try:
        async with make_hub(mosquitto.url, zeroconf={"enabled": False}, homeassistant={"enabled": False}) as hub:
            assert hub.homeassistant is None
            seen = await collect_to_marker(hub, q)
            assert not [t for t in seen if t.startswith("homeassistant/")]
        async with make_hub(mosquitto.url, zeroconf={"enabled": False}, homeassistant={"prefix": "ha-test"}):
            await collect(q, lambda got: "ha-test/device/sovereign_hub_hub/config" in got, "the config under ha-test/")
    finally:
        c.loop_stop()
        c.disconnect()



async def retained_until(port: int, predicate: Any, timeout: float, what: str) -> dict[str, bytes]:
    """Poll the retained discovery configs until ``predicate(configs)`` holds."""
    deadline = time.monotonic() + timeout
    while not predicate(configs := await asyncio.to_thread(retained, port, "homeassistant/device/+/config")):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}: {sorted(configs)}"
        await asyncio.sleep(0.05)
    return configs


async def test_ids_a_fold_would_merge_stay_apart(mosquitto: Any, make_hub: Any) -> None:
    """``rc.dup`` and ``rc_dup`` were one ``sovereign_rc_dup`` in Home Assistant, and deleting
    one removed both: ids are escaped, not folded."""
    oids = {"rc.dup": "sovereign_rc_2edup", "rc_dup": "sovereign_rc__dup", "RC-dup": "sovereign__52_43_2ddup",
            "rc-dup": "sovereign_rc_2ddup"}
    topics = {d: f"homeassistant/device/{oid}/config" for d, oid in oids.items()}
    c = paho_client(mosquitto.port)
    try:
        async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
            for device_id in oids:
                c.publish(f"sovereign/device/{device_id}/announce", json.dumps(capability_doc(device_id)), qos=1,
                          retain=True).wait_for_publish()
            seen = await retained_until(mosquitto.port, lambda got: all(got.get(t) for t in topics.values()), 10,
                                        "the four configs")
            unique_ids: list[str] = []
            for device_id, oid in oids.items():
                doc = json.loads(seen[topics[device_id]])
                check_device_payload(doc)
                assert doc["dev"]["ids"] == [oid]
                assert availability_topics(doc)[:2] == [f"sovereign/device/{device_id}/status",
                                                        f"sovereign/ha/device/{device_id}/availability"]
                assert doc["state_topic"] == f"sovereign/ha/device/{device_id}/state"
                assert all(uid.startswith(oid + "_") for uid in doc["cmps"])
                unique_ids += doc["cmps"]
            assert len(set(unique_ids)) == len(unique_ids) >= 4 * 5
            # Removing rc.dup leaves the others in Home Assistant.
            async with aiohttp.ClientSession() as s:
                async with s.delete(f"{hub.http_url}/api/devices/rc.dup") as r:
                    assert r.status == 200
            left = await retained_until(mosquitto.port, lambda got: topics["rc.dup"] not in got, 5,
                                        "rc.dup's config removed")
            for device_id in ("rc_dup", "RC-dup", "rc-dup"):
                assert left.get(topics[device_id]) == seen[topics[device_id]], f"{device_id}'s config stays"
    finally:
        c.loop_stop()
        c.disconnect()


async def test_a_pending_device_is_counted_not_an_entity(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    """Home Assistant sees an unpaired device only as the hub's pending count; once paired, its entities."""
    c, q = subscriber(mosquitto.port, "#")
    try:
        async with make_hub(mosquitto.url, zeroconf={"enabled": False}, pairing={"required": True},
                            homeassistant={"state_interval_s": 1}) as hub:
            agent = spawn_agent(mosquitto.url, "phone", None, "--no-zeroconf")
            await wait_for(lambda: hub.registry.get(agent.device_id), 60, what="the announcement")
            topic = f"homeassistant/device/{object_id(agent.device_id)}/config"
            seen = await collect(q, lambda got: "homeassistant/device/sovereign_hub_hub/config" in got and json.loads(
                got.get("sovereign/ha/hub/state") or "{}").get("devices_pending") == 1, "the pending count")
            seen = await collect_to_marker(hub, q, seen)
            assert topic not in seen
            hub_cfg = json.loads(seen["homeassistant/device/sovereign_hub_hub/config"])
            assert "Devices waiting to be paired" in {c["name"] for c in hub_cfg["cmps"].values()}
            hub.pairing.pair_device(agent.device_id)
            seen = await collect(q, lambda got: topic in got, "the paired device's config")
            check_device_payload(json.loads(seen[topic]))
    finally:
        c.loop_stop()
        c.disconnect()


async def retained_value(port: int, topic: str, predicate: Any, timeout: float, what: str) -> bytes | None:
    """Poll the retained payload on ``topic`` (None: nothing retained) until ``predicate`` holds."""
    deadline = time.monotonic() + timeout
    while not predicate(value := (await asyncio.to_thread(retained, port, topic)).get(topic)):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}: {value!r}"
        await asyncio.sleep(0.05)
    return value


async def test_a_deleted_device_comes_back_when_it_reconnects(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    """DELETE /api/devices/<id> removes it from Home Assistant; when it reconnects, its config is
    published again (it stayed in the set of devices Home Assistant was thought to have)."""
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        [phone] = await fleet(hub, spawn_agent, mosquitto.url, ("phone", ()))
        topic = f"homeassistant/device/{object_id(phone.device_id)}/config"
        await retained_value(mosquitto.port, topic, bool, 30, "the phone's config")
        async with aiohttp.ClientSession() as s, s.delete(f"{hub.http_url}/api/devices/{phone.device_id}") as r:
            assert r.status == 200
        await retained_value(mosquitto.port, topic, lambda v: v is None, 30, "the config removed")
        await retained_value(mosquitto.port, f"sovereign/ha/device/{phone.device_id}/availability",
                             lambda v: v is None, 30, "the hub's view of it cleared")
        # The same device reconnects (a restart of its agent): it announces itself again.
        phone.terminate()
        again = spawn_agent(mosquitto.url, "phone", phone.device_id, "--no-zeroconf")
        await wait_for(lambda: (r := hub.registry.get(again.device_id)) and r.online, 60, what="the phone back")
        doc = json.loads(await retained_value(mosquitto.port, topic, bool, 30, "the config published again"))
        check_device_payload(doc)
        await retained_value(mosquitto.port, f"sovereign/ha/device/{phone.device_id}/availability",
                             lambda v: v == b"online", 30, "the hub's view: online")


async def test_a_hung_device_is_unavailable_at_the_hubs_heartbeat_timeout(mosquitto: Any, make_hub: Any,
                                                                          spawn_agent: Any) -> None:
    """A stopped (SIGSTOP) agent keeps its MQTT session, so its last will comes only after 1.5
    keepalives (45 s); the hub marks it offline at its heartbeat timeout, and Home Assistant, which
    needs every availability topic online, follows the hub."""
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, discovery={"heartbeat_timeout_s": 2}) as hub:
        [agent] = await fleet(hub, spawn_agent, mosquitto.url, ("phone", ("--heartbeat-s", "0.3")))
        topic = f"homeassistant/device/{object_id(agent.device_id)}/config"
        doc = json.loads(await retained_value(mosquitto.port, topic, bool, 30, "the config"))
        hub_view = f"sovereign/ha/device/{agent.device_id}/availability"
        assert doc["availability_mode"] == "all" and hub_view in availability_topics(doc)
        await retained_value(mosquitto.port, hub_view, lambda v: v == b"online", 30, "online")
        agent.proc.send_signal(signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            # At the hub's heartbeat timeout (2 s), not at the last will, which needs 45 s: the
            # wait's bound is below that, and the last will is checked not to have come.
            await retained_value(mosquitto.port, hub_view, lambda v: v == b"offline", 30, "offline in Home Assistant")
            print(f"offline in Home Assistant {time.monotonic() - stopped:.1f} s after SIGSTOP")
            assert not hub.registry.get(agent.device_id).online
            # Its last will has not been sent: on that topic alone it would still look available.
            status = await asyncio.to_thread(retained, mosquitto.port, f"sovereign/device/{agent.device_id}/status")
            assert status == {f"sovereign/device/{agent.device_id}/status": b"online"}
        finally:
            agent.proc.send_signal(signal.SIGCONT)
        await retained_value(mosquitto.port, hub_view, lambda v: v == b"online", 30, "online again")


async def test_numbers_are_rounded_with_units_and_precision(mosquitto: Any, make_hub: Any, spawn_agent: Any,
                                                            tmp_path: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, homeassistant={"state_interval_s": 1},
                        energy={"min_publish_interval_s": 0.1}) as hub:
        [phone] = await fleet(hub, spawn_agent, mosquitto.url, ("phone", ()))
        hub.energy.report("test", "carbon_g_per_kwh", 123.456789012345)
        # A local cost a hair above the counterfactual: a saving of -1e-7, which must show as 0.
        now = time.time()
        hub.ledger.add(LedgerEntry("r1", now - 5, "intent", phone.device_id, "intent-tiny", "tiny", True, 5.0, 0.1,
                                   1e-6, 1e-7, 0.0, 1e-5))
        raw = await retained_value(mosquitto.port, "sovereign/ha/hub/state",
                                   lambda v: v and json.loads(v)["carbon_g_per_kwh"] is not None
                                   and json.loads(v)["tasks_today"] == 1, 30, "the hub state")
        state = json.loads(raw)
        assert state["carbon_g_per_kwh"] == 123.5
        assert state["saved_today"] == 0.0 and b"-0.0" not in raw and b"e-" not in raw
        dev_raw = await retained_value(mosquitto.port, f"sovereign/ha/device/{phone.device_id}/state", bool, 10,
                                       "the phone's state")
        dev_state = json.loads(dev_raw)
        for key in ("battery_pct", "power_w"):
            assert dev_state[key] is None or round(dev_state[key], 1) == dev_state[key], (key, dev_state[key])
        configs = await retained_until(mosquitto.port, lambda got: len(got) >= 2, 30, "the configs")
        hub_cfg = json.loads(configs["homeassistant/device/sovereign_hub_hub/config"])
        check_device_payload(hub_cfg)
        check_device_payload(json.loads(configs[f"homeassistant/device/{object_id(phone.device_id)}/config"]))
        units = {c["name"]: (c.get("unit_of_measurement"), c.get("suggested_display_precision"))
                 for c in hub_cfg["cmps"].values()}
        assert units["Grid carbon intensity"] == ("gCO2/kWh", 0)
        assert units["Saved today against all-cloud"] == ("USD", 4)
        assert units["Devices online"] == ("devices", 0) and units["Tasks today"] == ("tasks", 0)
        # "Saved today" is unavailable, not $0, while no cloud price is known.
        saved = next(c for c in hub_cfg["cmps"].values() if c["name"] == "Saved today against all-cloud")
        assert [a["topic"] for a in saved["availability"]] == ["sovereign/hub/status", "sovereign/ha/hub/state"]
        assert "saved_today is not none" in saved["availability"][1]["value_template"]
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, homeassistant={"state_interval_s": 1},
                        data_dir=str(tmp_path / "unpriced"), router={"builtin_cloud_prices": False}):
        await retained_value(mosquitto.port, "sovereign/ha/hub/state",
                             lambda v: v and json.loads(v)["saved_today"] is None, 30, "saved_today null: no price")


async def test_devices_online_follows_devices_at_once(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    """The hub's counts are published when a device comes or goes, not at the next full refresh."""
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, homeassistant={"state_interval_s": 3600}):
        await retained_value(mosquitto.port, "sovereign/ha/hub/state",
                             lambda v: v and json.loads(v)["devices_online"] == 0, 30, "the first hub state")
        agent = spawn_agent(mosquitto.url, "phone", None, "--no-zeroconf")
        await retained_value(mosquitto.port, "sovereign/ha/hub/state",
                             lambda v: v and json.loads(v)["devices_online"] == 1, 60, "1 device online")
        agent.kill()  # its last will takes it offline
        killed = time.monotonic()
        # At once, not at the next full refresh an hour away: the wait's bound is the check.
        await retained_value(mosquitto.port, "sovereign/ha/hub/state",
                             lambda v: v and json.loads(v)["devices_online"] == 0, 30, "0 devices online")
        print(f"0 devices online {time.monotonic() - killed:.1f} s after the kill")
