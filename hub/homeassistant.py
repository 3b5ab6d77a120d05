"""Home Assistant sees the hub and its devices through MQTT discovery.

Device-based discovery (Home Assistant 2024.11+): one retained payload per device on
``<prefix>/device/<object_id>/config`` with the ``dev`` and ``o`` mappings and its entities
under ``cmps``; an empty retained payload removes it. Availability reuses the topics that
already exist (``<root>/device/<id>/status``, ``<root>/hub/status``: ``online``/``offline``), so
a device's last will greys it in Home Assistant too. States are JSON on
``<root>/ha/device/<id>/state`` and ``<root>/ha/hub/state``. Everything is published again when
Home Assistant announces itself (``<prefix>/status`` = ``online``) and after every reconnect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from . import __version__
from .config import HomeAssistantConfig
from .plugin_api import PluginEvent
from .registry import DeviceChanged, DeviceRecord, DeviceRemoved

if TYPE_CHECKING:
    from .runtime import Hub

log = logging.getLogger(__name__)

ORIGIN = {"name": "sovereign-hub", "sw": __version__}
_KEEP = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789")


def escape_id(value: str) -> str:
    """An injective escape of an id into ``[a-z0-9_]``: ``a-z0-9`` stay, ``_`` becomes ``__``,
    any other byte (of its UTF-8) ``_`` + two lowercase hex digits: ``RC-dup`` → ``_52_43_2ddup``.
    Not a fold: ``rc.dup`` and ``rc_dup`` must stay two devices in Home Assistant, which
    lowercases object ids (so uppercase letters are escaped too)."""
    return "".join(chr(b) if b in _KEEP else "__" if b == 0x5F else f"_{b:02x}" for b in value.encode())


def object_id(device_id: str) -> str:
    return "sovereign_" + escape_id(device_id)


def hub_object_id(hub_id: str) -> str:
    # Device and hub ids are ASCII, so in their escapes a "_" that starts an escape is followed
    # by "_" or a digit, never a letter. Every suffix this module appends ("_hub", "_tier",
    # "_carbon", ...) is "_" + a letter: the id ends where it starts, and no two ids coincide.
    return object_id(hub_id) + "_hub"


def _sensor(uid: str, name: str, template: str, **extra: Any) -> dict[str, Any]:
    return {"p": "sensor", "unique_id": uid, "name": name, "value_template": template, **extra}


class HomeAssistantDiscovery:
    def __init__(self, hub: "Hub", cfg: HomeAssistantConfig) -> None:
        self.hub = hub
        self.cfg = cfg
        self.status_topic = f"{cfg.prefix}/status"
        self.root = hub.topics.root
        self.eeg_score: float | None = None
        self.published = 0  # config payloads sent (tests and /api/health)
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: list[Any] = []

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        bus = self.hub.bus
        self._unsubscribe = [bus.subscribe(DeviceChanged, self._changed), bus.subscribe(DeviceRemoved, self._removed),
                             bus.subscribe(PluginEvent, self._plugin_event)]
        self._task = asyncio.create_task(self._states(), name="home assistant states")

    async def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def handle(self, topic: str, payload: bytes) -> bool:
        if topic != self.status_topic:
            return False
        if payload.strip() == b"online":
            log.info("Home Assistant is online: publishing discovery")
            asyncio.get_running_loop().create_task(self.publish_all())
        return True

    # -- discovery -----------------------------------------------------------------------------

    def config_topic(self, device_id: str) -> str:
        return f"{self.cfg.prefix}/device/{object_id(device_id)}/config"

    def hub_config_topic(self) -> str:
        return f"{self.cfg.prefix}/device/{hub_object_id(self.hub.config.hub_id)}/config"

    def hub_config(self) -> dict[str, Any]:
        hub_id = self.hub.config.hub_id
        oid = hub_object_id(hub_id)
        return {
            "dev": {"ids": [oid], "name": f"Sovereign Hub ({hub_id})", "mf": "Sovereign Hub", "mdl": "hub",
                    "sw": __version__},
            "o": ORIGIN,
            "availability_topic": self.hub.topics.hub_status, "payload_available": "online",
            "payload_not_available": "offline",
            "state_topic": f"{self.root}/ha/hub/state", "qos": 1,
            "cmps": {
                f"{oid}_carbon": _sensor(f"{oid}_carbon", "Grid carbon intensity", "{{ value_json.carbon_g_per_kwh }}",
                                         unit_of_measurement="gCO2/kWh", state_class="measurement",
                                         icon="mdi:molecule-co2"),
                f"{oid}_mode": _sensor(f"{oid}_mode", "Energy mode", "{{ value_json.energy_mode }}",
                                       device_class="enum",
                                       options=["tiny_only", "prefer_small", "prefer_local", "solar_peak", "clean_grid"]),
                f"{oid}_saved": _sensor(f"{oid}_saved", "Saved today against all-cloud", "{{ value_json.saved_today }}",
                                        device_class="monetary", unit_of_measurement="USD", state_class="total"),
                f"{oid}_tasks": _sensor(f"{oid}_tasks", "Tasks today", "{{ value_json.tasks_today }}",
                                        state_class="total_increasing", icon="mdi:counter"),
                f"{oid}_devices": _sensor(f"{oid}_devices", "Devices online", "{{ value_json.devices_online }}",
                                          state_class="measurement", icon="mdi:devices"),
                f"{oid}_pending": _sensor(f"{oid}_pending", "Devices waiting to be paired",
                                          "{{ value_json.devices_pending }}", state_class="measurement",
                                          icon="mdi:shield-key"),
                f"{oid}_focus": _sensor(f"{oid}_focus", "EEG feedback score", "{{ value_json.eeg_score }}",
                                        state_class="measurement", icon="mdi:brain"),
            },
        }

    def device_config(self, rec: DeviceRecord) -> dict[str, Any]:
        cap = rec.capability
        oid = object_id(rec.id)
        hub_oid = hub_object_id(self.hub.config.hub_id)
        cmps = {
            f"{oid}_tier": _sensor(f"{oid}_tier", "Tier", "{{ value_json.tier }}", device_class="enum",
                                   options=["tiny", "small", "medium", "large"], entity_category="diagnostic"),
            f"{oid}_load": _sensor(f"{oid}_load", "Running tasks", "{{ value_json.active }}",
                                   state_class="measurement", icon="mdi:cpu-64-bit"),
            f"{oid}_models": _sensor(f"{oid}_models", "Models", "{{ value_json.models }}",
                                     entity_category="diagnostic", icon="mdi:brain"),
            f"{oid}_source": _sensor(f"{oid}_source", "Power source", "{{ value_json.power_source }}",
                                     device_class="enum", options=["battery", "mains", "solar", "ups"]),
        }
        if cap.power.battery_pct is not None or (rec.energy and rec.energy.battery_pct is not None):
            cmps[f"{oid}_battery"] = _sensor(f"{oid}_battery", "Battery", "{{ value_json.battery_pct }}",
                                             device_class="battery", unit_of_measurement="%",
                                             state_class="measurement")
        cmps[f"{oid}_power"] = _sensor(f"{oid}_power", "Power", "{{ value_json.power_w }}", device_class="power",
                                       unit_of_measurement="W", state_class="measurement")
        dev: dict[str, Any] = {"ids": [oid], "name": cap.name, "mf": "Sovereign Hub device",
                               "mdl": f"{cap.tier.value} tier", "via_device": hub_oid}
        if cap.software:
            dev["sw"] = cap.software
        if rec.id and cap.endpoints.http_port and cap.endpoints.host:
            dev["cu"] = f"http://{cap.endpoints.host}:{cap.endpoints.http_port}/capability"
        return {"dev": dev, "o": ORIGIN,
                "availability_topic": self.hub.topics.device(rec.id, "status"), "payload_available": "online",
                "payload_not_available": "offline",
                "state_topic": f"{self.root}/ha/device/{rec.id}/state", "qos": 1, "cmps": cmps}

    async def publish_all(self) -> None:
        if self.hub.mqtt is None:
            return
        await self.hub.mqtt.publish(self.hub_config_topic(), json.dumps(self.hub_config()), qos=1, retain=True)
        self.published += 1
        for rec in self.hub.registry.all():
            if self.hub.pairing.is_trusted(rec.id):  # a pending device is no entity: it is counted on the hub
                await self._publish_device(rec)
        await self._publish_hub_state()

    async def _publish_device(self, rec: DeviceRecord) -> None:
        assert self.hub.mqtt is not None
        await self.hub.mqtt.publish(self.config_topic(rec.id), json.dumps(self.device_config(rec)), qos=1, retain=True)
        self.published += 1
        await self._publish_device_state(rec)

    # -- states --------------------------------------------------------------------------------

    def device_state(self, rec: DeviceRecord) -> dict[str, Any]:
        cap, report = rec.capability, rec.energy
        return {"tier": cap.tier.value, "online": rec.online,
                "active": report.load.active if report and report.load else 0,
                "battery_pct": report.battery_pct if report and report.battery_pct is not None else cap.power.battery_pct,
                "power_source": (report.source if report else cap.power.source).value,
                "power_w": report.power_w if report and report.power_w is not None else None,
                "models": ", ".join(m.name for m in cap.models)[:255]}

    async def _publish_device_state(self, rec: DeviceRecord) -> None:
        if self.hub.mqtt is not None:
            await self.hub.mqtt.publish(f"{self.root}/ha/device/{rec.id}/state", json.dumps(self.device_state(rec)),
                                        qos=0, retain=True)

    async def hub_state(self) -> dict[str, Any]:
        snap = self.hub.last_energy_snapshot
        costs = await asyncio.to_thread(self.hub.ledger.periods)
        today = costs["today"]["total"]
        return {"carbon_g_per_kwh": snap.carbon_g_per_kwh if snap else None,
                "energy_mode": snap.mode.value if snap else None,
                "saved_today": round(today.get("saved_cost", 0.0), 6), "tasks_today": today.get("count", 0),
                "devices_online": sum(1 for r in self.hub.registry.all() if r.online and self.hub.pairing.is_trusted(r.id)),
                "devices_pending": sum(1 for r in self.hub.registry.all() if not self.hub.pairing.is_trusted(r.id)),
                "eeg_score": self.eeg_score}

    async def _publish_hub_state(self) -> None:
        if self.hub.mqtt is not None:
            await self.hub.mqtt.publish(f"{self.root}/ha/hub/state", json.dumps(await self.hub_state()), qos=0,
                                        retain=True)

    def _changed(self, event: DeviceChanged) -> None:
        self._dirty.add(event.device_id)
        self._wake.set()

    async def _removed(self, event: DeviceRemoved) -> None:
        if self.hub.mqtt is not None:
            # An empty retained payload removes the device from Home Assistant.
            await self.hub.mqtt.publish(self.config_topic(event.device_id), b"", qos=1, retain=True)
            await self.hub.mqtt.publish(f"{self.root}/ha/device/{event.device_id}/state", b"", qos=0, retain=True)

    def _plugin_event(self, event: PluginEvent) -> None:
        if event.kind == "eeg.feedback" and event.data.get("score") is not None:
            self.eeg_score = round(float(event.data["score"]), 3)

    async def _states(self) -> None:
        """Changed devices at most once a second; everything every ``state_interval_s``."""
        known: set[str] = set()
        last_full = time.monotonic()
        while True:
            try:
                async with asyncio.timeout(self.cfg.state_interval_s):  # not wait_for: see Hub._publish_energy
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            full = time.monotonic() - last_full >= self.cfg.state_interval_s
            ids = {r.id for r in self.hub.registry.all()} if full else set(self._dirty)
            self._dirty.clear()
            for device_id in ids:
                rec = self.hub.registry.get(device_id)
                if rec is None or not self.hub.pairing.is_trusted(device_id):
                    continue
                if device_id not in known:
                    known.add(device_id)
                    await self._publish_device(rec)  # new: its config first
                else:
                    await self._publish_device_state(rec)
            if full:
                last_full = time.monotonic()
                await self._publish_hub_state()
            await asyncio.sleep(1.0)
