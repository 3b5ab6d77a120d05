"""Building the router's FleetSnapshot from the registry and the energy snapshot (the edge)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..energy.model import EnergySnapshot
from ..energy.snapshot import DeviceEnergyView
from ..registry import HINT_SOURCES, DeviceRecord
from .model import DeviceView, FleetSnapshot


#: A sleeping device that announced no wake latency is presumed this slow to come back.
DEFAULT_WAKE_MS = 30_000.0


def _anyone(_device_id: str) -> bool:
    return True


def fleet_snapshot(records: list[DeviceRecord], energy: EnergySnapshot,
                   trusted: Callable[[str], bool] = _anyone, wakeable: Callable[[str], bool] = _anyone) -> FleetSnapshot:
    """Only trusted (paired) devices that are online through a source that proves identity: an
    mDNS record alone is a hint that anyone on the LAN can forge. A sleeping device is offered
    with its wake latency and energy when it announced a way to wake it and ``wakeable`` (its
    last wake did not fail)."""
    views = []
    for rec in records:
        cap, report = rec.capability, rec.energy
        asleep = rec.sleeping and cap.power.wake_method.kind != "none" and wakeable(rec.id)
        if not trusted(rec.id) or not asleep and (not rec.online or not any(
                on for source, on in rec.sources.items() if source not in HINT_SOURCES)):
            continue
        power = energy.devices.get(rec.id)
        wake_ms = wake_j = 0.0
        if asleep:
            # Waking it for one task costs the wake and the idle time before it may sleep again.
            p = cap.power
            wake_ms = p.wake_latency_ms if p.wake_latency_ms is not None else DEFAULT_WAKE_MS
            wake_j = p.wake_energy_j() + (p.idle_w or 0.0) * (p.allow_sleep_after_s or 0.0)
        views.append(DeviceView(
            id=rec.id, tier=cap.tier, models=tuple(cap.models),
            power_source=(report.source if report else cap.power.source).value,
            battery_pct=report.battery_pct if report else cap.power.battery_pct,
            battery_floor_pct=cap.power.battery_floor_pct,
            charging=report.charging if report else cap.power.charging,
            active_w=cap.power.active_w, idle_w=cap.power.idle_w,
            active_tasks=report.load.active if report else 0,
            energy_mode=(power.mode.value if power else energy.mode.value),
            marginal_g_per_kwh=power.marginal_g_per_kwh if power else energy.site_marginal_g_per_kwh,
            marginal_price_per_kwh=power.marginal_price_per_kwh if power else energy.site_marginal_price_per_kwh,
            asleep=asleep, wake_ms=wake_ms, wake_j=wake_j,
        ))
    return FleetSnapshot(now=energy.now, devices=tuple(views))


def device_energy_views(records: Iterable[DeviceRecord]) -> list[DeviceEnergyView]:
    """What the energy snapshot needs of each online device: its latest energy report, or what
    it announced."""
    views = []
    for rec in records:
        if not rec.online:
            continue
        power, report = rec.capability.power, rec.energy
        views.append(DeviceEnergyView(
            device_id=rec.id,
            source=(report.source if report else power.source).value,
            battery_pct=report.battery_pct if report else power.battery_pct,
            charging=report.charging if report else power.charging,
            active_w=power.active_w, report_at=rec.energy_at))
    return views


class FleetView:
    """The router's view of the fleet, rebuilt at most once a second (``monotonic``) and only
    after a device or energy change: building it indexes every model by task, ~8 ms for 1,000
    devices. The hub and the simulator both route on one."""

    def __init__(self, build: Callable[[], FleetSnapshot], monotonic: Callable[[], float]) -> None:
        self._build, self._monotonic = build, monotonic
        self._snapshot: FleetSnapshot | None = None
        self._built = 0.0
        self._dirty = True

    def __call__(self) -> FleetSnapshot:
        now = self._monotonic()
        if self._snapshot is None or (self._dirty and now - self._built >= 1.0):
            self._snapshot = self._build()
            self._built, self._dirty = now, False
        return self._snapshot

    def changed(self, _event: object = None) -> None:
        """Something the view shows changed: rebuild it within the second."""
        self._dirty = True

    def refresh(self) -> FleetSnapshot:
        """Rebuild it now (a device was paired or unpaired; a caller must see a change at once)."""
        self._snapshot = None
        return self()
