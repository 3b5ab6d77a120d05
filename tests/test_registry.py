"""The registry's merge rules and persistence, without a broker."""

from __future__ import annotations

from pathlib import Path

from hub.bus import EventBus
from hub.capability import Capability
from hub.registry import DeviceChanged, DeviceRegistry, DeviceRemoved

from .payloads import capability_doc


def cap(device_id: str, profile: str = "laptop", **kw: object) -> Capability:
    return Capability.model_validate(capability_doc(device_id, profile, **kw))


def test_one_entry_per_id_across_sources() -> None:
    reg = DeviceRegistry(EventBus(), None)
    reg.announce(cap("a"), "mqtt", at=1)
    reg.announce(cap("a"), "zeroconf", at=2)
    assert len(reg) == 1
    rec = reg.get("a")
    assert rec is not None and rec.online and set(rec.sources) == {"mqtt", "zeroconf"}


def test_last_will_overrides_a_lingering_zeroconf_record() -> None:
    reg = DeviceRegistry(EventBus(), None)
    reg.announce(cap("a"), "mqtt", at=1)
    reg.announce(cap("a"), "zeroconf", at=1)
    reg.liveness("a", "mqtt", False, at=2, reason="last will")
    rec = reg.get("a")
    assert rec is not None and not rec.online and "last will" in rec.offline_reason


def test_zeroconf_removal_alone_does_not_take_an_mqtt_device_offline() -> None:
    reg = DeviceRegistry(EventBus(), None)
    reg.announce(cap("a"), "mqtt", at=1)
    reg.announce(cap("a"), "zeroconf", at=1)
    reg.liveness("a", "zeroconf", False, at=2)
    assert reg.get("a").online  # type: ignore[union-attr]


def test_retained_announcement_is_not_a_sign_of_life() -> None:
    reg = DeviceRegistry(EventBus(), None)
    reg.announce(cap("a"), "mqtt", at=1, live=False)
    assert not reg.get("a").online  # type: ignore[union-attr]


def test_status_before_announcement_is_applied_when_it_arrives() -> None:
    reg = DeviceRegistry(EventBus(), None)
    reg.liveness("a", "mqtt", True, at=1)
    assert len(reg) == 0
    reg.announce(cap("a"), "mqtt", at=1, live=False)
    assert reg.get("a").online  # type: ignore[union-attr]


def test_heartbeat_timeout_and_forgetting() -> None:
    bus = EventBus()
    removed: list[str] = []
    bus.subscribe(DeviceRemoved, lambda e: removed.append(e.device_id))
    reg = DeviceRegistry(bus, None)
    reg.announce(cap("a"), "mqtt", at=100)
    reg.expire(now=120, heartbeat_timeout_s=30, forget_after_s=1000)
    assert reg.get("a").online  # type: ignore[union-attr]
    reg.expire(now=131, heartbeat_timeout_s=30, forget_after_s=1000)
    rec = reg.get("a")
    assert rec is not None and not rec.online and "heartbeat timeout" in rec.offline_reason
    reg.expire(now=1101, heartbeat_timeout_s=30, forget_after_s=1000)
    assert reg.get("a") is None and removed == ["a"]


def test_no_timeout_blamed_for_the_hubs_own_outage() -> None:
    reg = DeviceRegistry(EventBus(), None)
    reg.announce(cap("a"), "mqtt", at=100)
    # The hub was disconnected from 110 to 200; the device gets a full timeout after that.
    reg.expire(now=210, heartbeat_timeout_s=30, forget_after_s=1000, listening_since=200)
    assert reg.get("a").online  # type: ignore[union-attr]


def test_events(tmp_path: Path) -> None:
    bus = EventBus()
    events: list[DeviceChanged] = []
    bus.subscribe(DeviceChanged, events.append)
    reg = DeviceRegistry(bus, None)
    reg.announce(cap("a"), "mqtt")
    reg.liveness("a", "mqtt", False)
    assert any(e.added for e in events)
    assert events[-1].online_changed and not events[-1].online


def test_persistence_survives_restart_and_starts_offline(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite3"
    reg = DeviceRegistry(EventBus(), db)
    reg.announce(cap("a", "watch"), "mqtt", at=1)
    reg.announce(cap("b", "gpu-box"), "zeroconf", at=1)
    reg.remove("b", "test")
    reg.announce(cap("c"), "mqtt", at=1)
    reg.close()
    again = DeviceRegistry(EventBus(), db)
    assert sorted(r.id for r in again.all()) == ["a", "c"]
    a = again.get("a")
    assert a is not None and not a.online and a.capability.tier.value == "tiny"
    assert a.sources == {"mqtt": False}
    again.close()


def test_unreadable_stored_row_is_dropped_not_fatal(tmp_path: Path) -> None:
    import sqlite3
    db = tmp_path / "r.sqlite3"
    reg = DeviceRegistry(EventBus(), db)
    reg.announce(cap("a"), "mqtt", at=1)
    reg.close()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO devices VALUES ('bad', '{\"v\": 99}', '[]', 0, 0, NULL, NULL)")
    again = DeviceRegistry(EventBus(), db)
    assert [r.id for r in again.all()] == ["a"]
    again.close()
