"""Home Assistant MQTT discovery, checked with a real subscriber against the fields Home
Assistant documents for device-based discovery (https://www.home-assistant.io/integrations/mqtt/):
``dev`` and ``o`` at the root, entities under ``cmps`` each with a platform ``p`` and a
``unique_id``, availability, removal by an empty retained payload, re-publication when
``homeassistant/status`` says ``online``."""

from __future__ import annotations

import asyncio
import json
import queue
import uuid
from typing import Any

import aiohttp
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from .conftest import wait_for
from .test_dispatch import fleet


def subscriber(port: int, topic: str) -> tuple[paho.Client, "queue.Queue[paho.MQTTMessage]"]:
    q: queue.Queue[paho.MQTTMessage] = queue.Queue()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"ha-{uuid.uuid4().hex[:6]}", protocol=paho.MQTTv311)
    c.on_message = lambda _c, _u, m: q.put(m)
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe(topic, qos=1)
    return c, q


def drain(q: "queue.Queue[paho.MQTTMessage]", seconds: float = 1.0) -> dict[str, bytes]:
    import time
    out: dict[str, bytes] = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            m = q.get(timeout=0.1)
        except queue.Empty:
            continue
        out[m.topic] = m.payload
    return out


def check_device_payload(doc: dict[str, Any]) -> None:
    assert set(doc["dev"]) >= {"ids", "name"} and doc["o"]["name"] == "sovereign-hub"
    assert doc["availability_topic"] and doc["payload_available"] == "online"
    assert doc["state_topic"].startswith("sovereign/ha/")
    for key, comp in doc["cmps"].items():
        assert comp["p"] == "sensor" and comp["unique_id"] == key and "{{ value_json." in comp["value_template"]


async def test_discovery_states_rediscovery_and_removal(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    c, q = subscriber(mosquitto.port, "#")
    try:
        async with make_hub(mosquitto.url, zeroconf={"enabled": False}, homeassistant={"state_interval_s": 1}) as hub:
            [phone] = await fleet(hub, spawn_agent, mosquitto.url, ("phone", ()))
            seen = await asyncio.to_thread(drain, q, 2.5)
            hub_cfg = json.loads(seen["homeassistant/device/sovereign_hub_hub/config"])
            check_device_payload(hub_cfg)
            assert hub_cfg["availability_topic"] == "sovereign/hub/status"
            assert {c["name"] for c in hub_cfg["cmps"].values()} >= {"Grid carbon intensity", "Energy mode",
                                                                     "Saved today against all-cloud", "EEG feedback score"}
            topic = f"homeassistant/device/sovereign_{phone.device_id.replace('.', '_')}/config"
            dev = json.loads(seen[topic])
            check_device_payload(dev)
            assert dev["availability_topic"] == f"sovereign/device/{phone.device_id}/status"
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
            await wait_for(lambda: hub.homeassistant.published >= before + 2, 5, what="re-published")
            # A deleted device disappears from Home Assistant.
            async with aiohttp.ClientSession() as s:
                async with s.delete(f"{hub.http_url}/api/devices/{phone.device_id}") as r:
                    assert r.status == 200
            phone.terminate()
            seen = await asyncio.to_thread(drain, q, 1.5)
            assert seen.get(topic) == b"", "empty retained payload removes the device"
    finally:
        c.loop_stop()
        c.disconnect()


async def test_disabled_or_another_prefix(mosquitto: Any, make_hub: Any) -> None:
    c, q = subscriber(mosquitto.port, "#")
    try:
        async with make_hub(mosquitto.url, zeroconf={"enabled": False}, homeassistant={"enabled": False}):
            seen = await asyncio.to_thread(drain, q, 1.0)
            assert not [t for t in seen if t.startswith("homeassistant/")]
        async with make_hub(mosquitto.url, zeroconf={"enabled": False}, homeassistant={"prefix": "ha-test"}):
            seen = await asyncio.to_thread(drain, q, 1.0)
            assert "ha-test/device/sovereign_hub_hub/config" in seen
    finally:
        c.loop_stop()
        c.disconnect()
