"""The device registry: one entry per device id, merged from every discovery source.

What a device announced is stored as announced; what the hub observed (sources, liveness,
last seen, latest energy report) sits beside it. Entries persist in SQLite under the data
directory; writes are batched (write-behind) so that an announce storm costs one transaction
instead of a thousand.

Liveness merge rule. Each source keeps its own online flag and the device is online when any
source is. An MQTT ``offline`` (last will or heartbeat timeout) is authoritative: it means the
process that advertised everything is gone, so it also clears the other sources' flags (a
crashed agent's zeroconf record lingers in mDNS caches for minutes). A zeroconf removal or a
failed Ollama poll clears only its own flag.

Hints. Anyone on the LAN can publish an mDNS record for any id, so ``zeroconf`` is a *hint*: it
may introduce an unknown device (shown as pending until paired), but for a paired id or one heard
over MQTT it moves only its own flag, never the capability, and it keeps such a device online
only if nothing better has spoken for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .bus import EventBus
from .capability import Capability, EnergyReport

log = logging.getLogger(__name__)

AUTHORITATIVE_SOURCE = "mqtt"
#: Sources anyone on the LAN can forge (an mDNS record): they may make an unknown device
#: *pending*, never change a known one nor make it routable.
HINT_SOURCES = frozenset({"zeroconf"})


def has_authority(rec: "DeviceRecord") -> bool:
    """Has the device been heard through a source that proves who it is (not only mDNS)?"""
    return any(source not in HINT_SOURCES for source in rec.sources)


@dataclass(frozen=True, slots=True)
class DeviceChanged:
    """A device was added or its capability, liveness or energy changed."""

    device_id: str
    added: bool = False
    online_changed: bool = False
    online: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DeviceRemoved:
    device_id: str
    reason: str


@dataclass(slots=True)
class DeviceRecord:
    capability: Capability
    first_seen: float
    last_seen: float
    #: source name → currently online according to that source
    sources: dict[str, bool] = field(default_factory=dict)
    #: source name → when that source last heard from the device
    source_seen: dict[str, float] = field(default_factory=dict)
    online: bool = False
    offline_reason: str = "not seen since the hub started"
    energy: EnergyReport | None = None
    energy_at: float | None = None
    #: Announced ``sleeping`` before its link dropped (hub/power): offline, not gone, and woken
    #: by the hub when work needs it. Cleared when it is heard again or says ``offline``.
    sleeping: bool = False

    @property
    def id(self) -> str:
        return self.capability.id

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.capability.name,
            "tier": self.capability.tier.value,
            "online": self.online,
            "offline_reason": None if self.online else self.offline_reason,
            "power_state": "sleeping" if self.sleeping else "awake" if self.online else None,
            "sources": sorted(self.sources),
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "capability": self.capability.model_dump(mode="json"),
            "energy": self.energy.model_dump(mode="json") if self.energy else None,
            "energy_at": self.energy_at,
        }


class DeviceRegistry:
    """In-memory registry with SQLite persistence. Not thread-safe: use from the event loop."""

    def __init__(self, bus: EventBus, db_path: Path | None) -> None:
        self._bus = bus
        #: Set by the hub: may the router use this device (else it is shown as pending), and is it
        #: paired (then an mDNS record can never rewrite it).
        self.is_trusted: Callable[[str], bool] = lambda _device_id: True
        self.is_paired: Callable[[str], bool] = lambda _device_id: False
        self._devices: dict[str, DeviceRecord] = {}
        #: liveness heard before the announcement (retained messages arrive in any order)
        self._pending_liveness: dict[str, tuple[str, bool, float, bool]] = {}
        self._dirty: set[str] = set()
        self._deleted: set[str] = set()
        self._db: sqlite3.Connection | None = None
        self._write_lock = threading.Lock()
        if db_path is not None:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            # Written from one worker thread at a time (see _write_lock), read only at start.
            self._db = sqlite3.connect(db_path, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS devices (id TEXT PRIMARY KEY, capability TEXT NOT NULL,"
                " sources TEXT NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL,"
                " energy TEXT, energy_at REAL)"
            )
            self._load()

    # -- persistence -------------------------------------------------------------------------

    def _load(self) -> None:
        assert self._db is not None
        for row in self._db.execute("SELECT id, capability, sources, first_seen, last_seen, energy, energy_at FROM devices"):
            device_id, cap_json, sources_json, first, last, energy_json, energy_at = row
            try:
                cap = Capability.model_validate_json(cap_json)
                energy = EnergyReport.model_validate_json(energy_json) if energy_json else None
            except ValueError as exc:  # a schema change made an old row unreadable: drop it, loudly
                log.warning("dropping stored device %s: %s", device_id, exc)
                self._deleted.add(device_id)
                continue
            # Nothing is known to be alive until a source says so again.
            sources = {name: False for name in json.loads(sources_json)}
            self._devices[device_id] = DeviceRecord(cap, first, last, sources, {}, False,
                                                    "not seen since the hub started", energy, energy_at)
        log.info("registry: loaded %d devices", len(self._devices))

    def _collect(self) -> tuple[list[tuple[Any, ...]], list[str]]:
        """Snapshot what changed (cheap, in the loop). The models are frozen, so they can be
        serialized later in another thread; the mutable fields are copied here."""
        rows = []
        for device_id in self._dirty:
            rec = self._devices.get(device_id)
            if rec is not None:
                rows.append((device_id, rec.capability, sorted(rec.sources), rec.first_seen, rec.last_seen,
                             rec.energy, rec.energy_at))
        deleted = list(self._deleted)
        self._dirty.clear()
        self._deleted.clear()
        return rows, deleted

    def _write(self, batch: tuple[list[tuple[Any, ...]], list[str]]) -> None:
        rows, deleted = batch
        if self._db is None or not (rows or deleted):
            return
        encoded = [(i, cap.model_dump_json(), json.dumps(src), first, last,
                    energy.model_dump_json() if energy else None, energy_at)
                   for i, cap, src, first, last, energy, energy_at in rows]
        with self._write_lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO devices VALUES (?,?,?,?,?,?,?)", encoded)
            self._db.executemany("DELETE FROM devices WHERE id = ?", [(d,) for d in deleted])

    def flush(self) -> None:
        """Write changed entries in one transaction, now."""
        self._write(self._collect())

    async def flush_async(self) -> None:
        """The same, with serialization and SQLite in a worker thread so that an announce storm
        is not paused by its own persistence."""
        batch = self._collect()
        if batch[0] or batch[1]:
            await asyncio.to_thread(self._write, batch)

    def close(self) -> None:
        self.flush()
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- queries -------------------------------------------------------------------------------

    def document(self, rec: DeviceRecord) -> dict[str, Any]:
        """The API's view of a device: what it announced, what the hub saw, and whether it is
        paired (``state``: pending, online or offline)."""
        doc = rec.to_dict()
        doc["paired"] = self.is_paired(rec.id)
        doc["state"] = "pending" if not self.is_trusted(rec.id) else "online" if rec.online else "offline"
        return doc

    def hint_only(self, device_id: str) -> bool:
        """May a hint source (mDNS) only mark its own flag for this id? Yes once the id is paired or
        has been heard through a source that proves who it is."""
        rec = self._devices.get(device_id)
        return self.is_paired(device_id) or rec is not None and has_authority(rec)

    def get(self, device_id: str) -> DeviceRecord | None:
        return self._devices.get(device_id)

    def all(self) -> list[DeviceRecord]:
        return list(self._devices.values())

    def __len__(self) -> int:
        return len(self._devices)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._devices

    # -- observations ----------------------------------------------------------------------

    def announce(self, cap: Capability, source: str, at: float | None = None, live: bool = True) -> None:
        """A capability document from ``source``. ``live`` is False for a retained MQTT
        announcement re-read after a (re)subscribe: it tells what the device can do, not that
        it is alive now."""
        at = time.time() if at is None else at
        rec = self._devices.get(cap.id)
        if source in HINT_SOURCES and self.hint_only(cap.id):
            # A hint never rewrites a device that proves itself over MQTT: only its own flag moves.
            if rec is not None:
                self.liveness(cap.id, source, live, at, "mDNS record")
            return
        added = rec is None
        if rec is None:
            rec = DeviceRecord(cap, first_seen=at, last_seen=at)
            self._devices[cap.id] = rec
        elif rec.capability != cap:
            rec.capability = cap
        elif not live and source in rec.sources:
            return  # the same retained document again: nothing to do
        rec.sources.setdefault(source, False)
        self._dirty.add(cap.id)
        pending = self._pending_liveness.pop(cap.id, None)
        changed = False
        if live:
            changed = self._set_source(rec, source, True, at, "announced", added=added)
        elif pending is not None:
            rec.sleeping = pending[3]
            changed = self._set_source(rec, pending[0], pending[1], pending[2], "status before announcement",
                                       added=added)
        if not changed:
            self._bus.publish(DeviceChanged(cap.id, added=added, online=rec.online))

    def liveness(self, device_id: str, source: str, online: bool, at: float | None = None, reason: str = "",
                 sleeping: bool = False) -> None:
        """``sleeping``: the device said it is going to sleep (offline, and wakeable)."""
        at = time.time() if at is None else at
        rec = self._devices.get(device_id)
        if rec is None:
            self._pending_liveness[device_id] = (source, online, at, sleeping)
            return
        rec.sources.setdefault(source, False)
        was = rec.sleeping
        if source == AUTHORITATIVE_SOURCE:
            rec.sleeping = sleeping and not online
        if not self._set_source(rec, source, online, at, reason or ("online" if online else "offline")) \
                and was != rec.sleeping:
            self._dirty.add(rec.id)
            self._bus.publish(DeviceChanged(device_id, online=rec.online, reason=reason))

    def heartbeat(self, device_id: str, report: EnergyReport, at: float | None = None) -> bool:
        """An energy report. Returns False when the device has not announced itself."""
        at = time.time() if at is None else at
        rec = self._devices.get(device_id)
        if rec is None:
            return False
        rec.energy = report
        rec.energy_at = at
        self._dirty.add(device_id)
        rec.sleeping = False
        changed = self._set_source(rec, AUTHORITATIVE_SOURCE, True, at, "heartbeat")
        if not changed:
            self._bus.publish(DeviceChanged(device_id, online=rec.online))
        return True

    def remove(self, device_id: str, reason: str) -> bool:
        if self._devices.pop(device_id, None) is None:
            return False
        self._pending_liveness.pop(device_id, None)
        self._dirty.discard(device_id)
        self._deleted.add(device_id)
        self._bus.publish(DeviceRemoved(device_id, reason))
        return True

    def expire(self, now: float, heartbeat_timeout_s: float, forget_after_s: float,
               listening_since: float = 0.0) -> list[str]:
        """Mark silent MQTT devices offline; forget devices offline for too long.

        ``listening_since`` is when the hub's broker connection last came up: a device is not
        blamed for silence while the hub could not hear it. Returns the ids forgotten."""
        forgotten = []
        for rec in list(self._devices.values()):
            seen = rec.source_seen.get(AUTHORITATIVE_SOURCE)
            if seen is not None:
                seen = max(seen, listening_since)
            if rec.sources.get(AUTHORITATIVE_SOURCE) and seen is not None and now - seen > heartbeat_timeout_s:
                self._set_source(rec, AUTHORITATIVE_SOURCE, False, now,
                                 f"no message for {now - seen:.0f} s (heartbeat timeout {heartbeat_timeout_s:g} s)")
            if not rec.online and not rec.sleeping and now - rec.last_seen > forget_after_s:
                forgotten.append(rec.id)
                self.remove(rec.id, f"offline for more than {forget_after_s:g} s")
        return forgotten

    # -- internals -------------------------------------------------------------------------

    def _set_source(self, rec: DeviceRecord, source: str, online: bool, at: float, reason: str,
                    added: bool = False) -> bool:
        """Apply one source's verdict; returns True (and publishes the change) when the device's
        online state changed."""
        if online:
            rec.last_seen = max(rec.last_seen, at)
            rec.source_seen[source] = at
        rec.sources[source] = online
        if not online and source == AUTHORITATIVE_SOURCE:
            for name in rec.sources:
                rec.sources[name] = False
        # A hint (mDNS) keeps alive only a device nothing better has spoken for: a forged or
        # lingering record must not hold up a device whose MQTT session is gone.
        authority = has_authority(rec)
        now_online = any(on for name, on in rec.sources.items() if not authority or name not in HINT_SOURCES)
        if now_online == rec.online:
            return False
        rec.online = now_online
        if not now_online:
            rec.offline_reason = f"{source}: {reason}"
        self._dirty.add(rec.id)
        self._bus.publish(DeviceChanged(rec.id, added=added, online_changed=True, online=now_online,
                                        reason=f"{source}: {reason}"))
        return True
