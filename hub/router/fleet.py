"""Building the router's FleetSnapshot from the registry and the energy snapshot (the edge)."""

from __future__ import annotations

from collections.abc import Callable

from ..energy.model import EnergySnapshot
from ..registry import HINT_SOURCES, DeviceRecord
from .model import DeviceView, FleetSnapshot


def _anyone(_device_id: str) -> bool:
    return True


def fleet_snapshot(records: list[DeviceRecord], energy: EnergySnapshot,
                   trusted: Callable[[str], bool] = _anyone) -> FleetSnapshot:
    """Only trusted (paired) devices that are online through a source that proves identity: an
    mDNS record alone is a hint that anyone on the LAN can forge."""
    views = []
    for rec in records:
        if not rec.online or not trusted(rec.id) or not any(
                on for source, on in rec.sources.items() if source not in HINT_SOURCES):
            continue
        cap, report = rec.capability, rec.energy
        power = energy.devices.get(rec.id)
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
        ))
    return FleetSnapshot(now=energy.now, devices=tuple(views))
