"""Home Assistant sees the hub and its devices through MQTT discovery.

Device-based discovery (Home Assistant 2024.11+): one retained payload per device on
``<prefix>/device/<object_id>/config`` with the ``dev`` and ``o`` mappings and its entities
under ``cmps``; an empty retained payload removes it, and a device that comes back after that
(re-paired, reconnected) gets its payload again. A device is available only while all of its
availability topics say ``online`` (``availability_mode: all``): its own last will
(``<root>/device/<id>/status``), the hub's view of it (``<root>/ha/device/<id>/availability``,
``offline`` as soon as the hub marks it offline, e.g. a hung device past its heartbeat timeout)
and the hub itself (``<root>/hub/status``). States are JSON on ``<root>/ha/device/<id>/state`` and
``<root>/ha/hub/state``, numbers rounded (never -0.0) and every numeric sensor with its unit and
a ``suggested_display_precision``; the hub's state follows its device counts at once. Everything
is published again when Home Assistant announces itself (``<prefix>/status`` = ``online``) and
after every reconnect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from . import __version__
from .config import HomeAssistantConfig, HubConfig
from .plugin_api import PluginEvent
from .registry import DeviceChanged, DeviceRecord, DeviceRegistry, DeviceRemoved
from .router.ledger import PERIODS, Ledger

if TYPE_CHECKING:
    from .bus import EventBus
    from .energy.model import EnergySnapshot
    from .mqtt import MqttLink
    from .pairing import Pairing
    from .topics import Topics

log = logging.getLogger(__name__)

ORIGIN = {"name": "sovereign-hub", "sw": __version__}
_KEEP = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789")


class HomeAssistantHub(Protocol):
    """What :class:`HomeAssistantDiscovery` uses of the hub (hub/runtime.py's ``Hub`` is one)."""

    config: HubConfig
    topics: Topics
    bus: EventBus
    mqtt: MqttLink | None
    registry: DeviceRegistry
    pairing: Pairing
    ledger: Ledger
    last_energy_snapshot: EnergySnapshot | None


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


def _available(topic: str, template: str | None = None) -> dict[str, Any]:
    entry = {"topic": topic, "payload_available": "online", "payload_not_available": "offline"}
    if template is not None:
        entry["value_template"] = template
    return entry


def _num(value: float | None, digits: int) -> float | None:
    """A published number: rounded, None kept, never -0.0 (shown as "-0.0" by Home Assistant)."""
    return None if value is None else round(float(value), digits) + 0.0


class HomeAssistantDiscovery:
    def __init__(self, hub: HomeAssistantHub, cfg: HomeAssistantConfig) -> None:
        self.hub = hub
        self.cfg = cfg
        self.status_topic = f"{cfg.prefix}/status"
        self.root = hub.topics.root
        self.eeg_score: float | None = None
        self.published = 0  # config payloads sent (tests and /api/health)
        self._dirty: set[str] = set()
        self._known: set[str] = set()  # devices whose config Home Assistant has (until removed)
        self._available: dict[str, bool] = {}  # the hub's view last published per device
        self._counts: tuple[int, int] | None = None  # (online, pending) last published on the hub state
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

    def availability_topic(self, device_id: str) -> str:
        """The hub's own view of a device: ``online``/``offline`` (retained)."""
        return f"{self.root}/ha/device/{device_id}/availability"

    def hub_config_topic(self) -> str:
        return f"{self.cfg.prefix}/device/{hub_object_id(self.hub.config.hub_id)}/config"

    def hub_config(self) -> dict[str, Any]:
        hub_id = self.hub.config.hub_id
        oid = hub_object_id(hub_id)
        hub_up = _available(self.hub.topics.hub_status)
        state = f"{self.root}/ha/hub/state"
        return {
            "dev": {"ids": [oid], "name": f"Sovereign Hub ({hub_id})", "mf": "Sovereign Hub", "mdl": "hub",
                    "sw": __version__},
            "o": ORIGIN,
            "availability": [hub_up], "availability_mode": "all",
            "state_topic": state, "qos": 1,
            "cmps": {
                f"{oid}_carbon": _sensor(f"{oid}_carbon", "Grid carbon intensity", "{{ value_json.carbon_g_per_kwh }}",
                                         unit_of_measurement="gCO2/kWh", state_class="measurement",
                                         suggested_display_precision=0, icon="mdi:molecule-co2"),
                f"{oid}_mode": _sensor(f"{oid}_mode", "Energy mode", "{{ value_json.energy_mode }}",
                                       device_class="enum",
                                       options=["tiny_only", "prefer_small", "prefer_local", "solar_peak", "clean_grid"]),
                # Unavailable while no cloud price is known: "no price", not $0.
                f"{oid}_saved": _sensor(f"{oid}_saved", "Saved today against all-cloud", "{{ value_json.saved_today }}",
                                        device_class="monetary", unit_of_measurement="USD", state_class="total",
                                        suggested_display_precision=4,
                                        availability=[hub_up, _available(state, "{{ 'online' if value_json.saved_today "
                                                                                "is not none else 'offline' }}")]),
                # A rolling 24 h count goes down too: a measurement, not total_increasing.
                f"{oid}_tasks": _sensor(f"{oid}_tasks", "Tasks today", "{{ value_json.tasks_today }}",
                                        unit_of_measurement="tasks", state_class="measurement",
                                        suggested_display_precision=0, icon="mdi:counter"),
                f"{oid}_devices": _sensor(f"{oid}_devices", "Devices online", "{{ value_json.devices_online }}",
                                          unit_of_measurement="devices", state_class="measurement",
                                          suggested_display_precision=0, icon="mdi:devices"),
                f"{oid}_pending": _sensor(f"{oid}_pending", "Devices waiting to be paired",
                                          "{{ value_json.devices_pending }}", unit_of_measurement="devices",
                                          state_class="measurement", suggested_display_precision=0,
                                          icon="mdi:shield-key"),
                f"{oid}_focus": _sensor(f"{oid}_focus", "EEG feedback score", "{{ value_json.eeg_score }}",
                                        state_class="measurement", suggested_display_precision=2, icon="mdi:brain"),
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
                                   unit_of_measurement="tasks", state_class="measurement",
                                   suggested_display_precision=0, icon="mdi:cpu-64-bit"),
            f"{oid}_models": _sensor(f"{oid}_models", "Models", "{{ value_json.models }}",
                                     entity_category="diagnostic", icon="mdi:brain"),
            f"{oid}_source": _sensor(f"{oid}_source", "Power source", "{{ value_json.power_source }}",
                                     device_class="enum", options=["battery", "mains", "solar", "ups"]),
        }
        if cap.power.battery_pct is not None or (rec.energy and rec.energy.battery_pct is not None):
            cmps[f"{oid}_battery"] = _sensor(f"{oid}_battery", "Battery", "{{ value_json.battery_pct }}",
                                             device_class="battery", unit_of_measurement="%",
                                             state_class="measurement", suggested_display_precision=0)
        cmps[f"{oid}_power"] = _sensor(f"{oid}_power", "Power", "{{ value_json.power_w }}", device_class="power",
                                       unit_of_measurement="W", state_class="measurement",
                                       suggested_display_precision=1)
        dev: dict[str, Any] = {"ids": [oid], "name": cap.name, "mf": "Sovereign Hub device",
                               "mdl": f"{cap.tier.value} tier", "via_device": hub_oid}
        if cap.software:
            dev["sw"] = cap.software
        if rec.id and cap.endpoints.http_port and cap.endpoints.host:
            dev["cu"] = f"http://{cap.endpoints.host}:{cap.endpoints.http_port}/capability"
        # Available only while the device's last will, the hub's view of it and the hub all say
        # online: a hung device keeps its MQTT session (and its will unsent) for 1.5 keepalives,
        # but the hub marks it offline at its heartbeat timeout.
        availability = [_available(self.hub.topics.device(rec.id, "status")),
                        _available(self.availability_topic(rec.id)), _available(self.hub.topics.hub_status)]
        return {"dev": dev, "o": ORIGIN, "availability": availability, "availability_mode": "all",
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
        self._known.add(rec.id)
        await self.hub.mqtt.publish(self.config_topic(rec.id), json.dumps(self.device_config(rec)), qos=1, retain=True)
        self.published += 1
        await self._publish_availability(rec, force=True)
        await self._publish_device_state(rec)

    async def _publish_availability(self, rec: DeviceRecord, force: bool = False) -> None:
        """The hub's view of the device, when it changed (retained: Home Assistant may restart)."""
        if self.hub.mqtt is None or (not force and self._available.get(rec.id) == rec.online):
            return
        self._available[rec.id] = rec.online
        await self.hub.mqtt.publish(self.availability_topic(rec.id), b"online" if rec.online else b"offline", qos=1,
                                    retain=True)

    # -- states --------------------------------------------------------------------------------

    def device_state(self, rec: DeviceRecord) -> dict[str, Any]:
        cap, report = rec.capability, rec.energy
        return {"tier": cap.tier.value, "online": rec.online,
                "active": report.load.active if report and report.load else 0,
                "battery_pct": _num(report.battery_pct if report and report.battery_pct is not None
                                    else cap.power.battery_pct, 1),
                "power_source": (report.source if report else cap.power.source).value,
                "power_w": _num(report.power_w if report and report.power_w is not None else None, 1),
                "models": ", ".join(m.name for m in cap.models)[:255]}

    async def _publish_device_state(self, rec: DeviceRecord) -> None:
        if self.hub.mqtt is not None:
            await self.hub.mqtt.publish(f"{self.root}/ha/device/{rec.id}/state", json.dumps(self.device_state(rec)),
                                        qos=0, retain=True)

    def counts(self) -> tuple[int, int]:
        """(devices online, devices pending): paired devices online, and unpaired ones."""
        online = pending = 0
        for r in self.hub.registry.all():
            if not self.hub.pairing.is_trusted(r.id):
                pending += 1
            elif r.online:
                online += 1
        return online, pending

    async def hub_state(self) -> dict[str, Any]:
        snap = self.hub.last_energy_snapshot
        now = time.time()
        today = (await asyncio.to_thread(self.hub.ledger.report, now - PERIODS["today"], now))["total"]
        saved = today.get("saved_cost")
        router = self.hub.config.router
        if not today.get("count") and router.cloud_price(router.counterfactual_model)[0] is None:
            saved = None  # no price known: "no price" (unavailable), not $0
        online, pending = self.counts()
        return {"carbon_g_per_kwh": _num(snap.carbon_g_per_kwh, 1) if snap else None,
                "energy_mode": snap.mode.value if snap else None,
                "saved_today": _num(saved, 4), "tasks_today": today.get("count", 0),
                "devices_online": online, "devices_pending": pending,
                "eeg_score": self.eeg_score}

    async def _publish_hub_state(self) -> None:
        if self.hub.mqtt is not None:
            state = await self.hub_state()
            self._counts = (state["devices_online"], state["devices_pending"])
            await self.hub.mqtt.publish(f"{self.root}/ha/hub/state", json.dumps(state), qos=0, retain=True)

    def _changed(self, event: DeviceChanged) -> None:
        self._dirty.add(event.device_id)
        self._wake.set()

    async def _removed(self, event: DeviceRemoved) -> None:
        # Forgotten here too, before any await: if it comes back (reconnects, is paired again), its
        # config is published anew, or Home Assistant would never see it again.
        self._known.discard(event.device_id)
        self._available.pop(event.device_id, None)
        self._wake.set()  # the counts on the hub state
        if self.hub.mqtt is not None:
            # An empty retained payload removes the device from Home Assistant.
            await self.hub.mqtt.publish(self.config_topic(event.device_id), b"", qos=1, retain=True)
            await self.hub.mqtt.publish(f"{self.root}/ha/device/{event.device_id}/state", b"", qos=0, retain=True)
            await self.hub.mqtt.publish(self.availability_topic(event.device_id), b"", qos=1, retain=True)

    def _plugin_event(self, event: PluginEvent) -> None:
        if event.kind == "eeg.feedback" and event.data.get("score") is not None:
            self.eeg_score = round(float(event.data["score"]), 3)

    async def _states(self) -> None:
        """Changed devices at most once a second, and the hub's state when its device counts
        changed; everything every ``state_interval_s``."""
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
            for n, device_id in enumerate(ids, 1):
                if n % 25 == 0:
                    # Publishing never yields by itself: a thousand new devices' configs would
                    # hold the loop for ~50-100 ms, in the middle of the announce storm that
                    # brought them (the storm benchmark saw it as a bimodal hub time).
                    await asyncio.sleep(0)
                rec = self.hub.registry.get(device_id)
                if rec is None or not self.hub.pairing.is_trusted(device_id):
                    continue
                if device_id not in self._known:
                    await self._publish_device(rec)  # new, or back after a removal: its config first
                else:
                    await self._publish_availability(rec)
                    await self._publish_device_state(rec)
            if full or self.counts() != self._counts:
                if full:
                    last_full = time.monotonic()
                await self._publish_hub_state()
            await asyncio.sleep(1.0)
