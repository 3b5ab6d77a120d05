"""The energy snapshot and mode: a pure function of the inputs, the devices and the clock.

No I/O and no clock of its own: the hub and the simulator call it with their own ``now``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .model import (
    METRICS,
    DevicePower,
    EnergyMode,
    EnergySnapshot,
    ForecastOut,
    ForecastPoint,
    InputOut,
    InputValue,
    ModeThresholds,
)


@dataclass(frozen=True, slots=True)
class DeviceEnergyView:
    """What the snapshot needs of a device: its latest energy report, or its announcement."""

    device_id: str
    source: str  # battery | mains | solar | ups
    battery_pct: float | None
    charging: bool | None
    active_w: float | None
    report_at: float | None


def _fmt(value: float, unit: str) -> str:
    return f"{value:.0f} {unit}"


def solar_surplus(values: Mapping[str, float | None]) -> float | None:
    """Power the site has to spare now. A measured export (and a home battery soaking up
    power) beats PV minus load, which misses loads the meter sees and the inverter does not."""
    grid, battery = values.get("grid_w"), values.get("battery_w")
    if grid is not None:
        return max(0.0, -grid) + (max(0.0, -battery) if battery is not None else 0.0)
    pv, load = values.get("pv_w"), values.get("load_w")
    if pv is not None and load is not None:
        return max(0.0, pv - load)
    if pv is not None and pv == 0:
        return 0.0
    return None


def compute_snapshot(
    now: float,
    inputs: Mapping[str, InputValue],
    forecasts: Mapping[str, list[ForecastPoint]],
    devices: Iterable[DeviceEnergyView],
    thresholds: ModeThresholds,
) -> EnergySnapshot:
    t = thresholds
    values = {m: (iv.usable(now) if iv else None) for m, iv in inputs.items()}
    carbon, price = values.get("carbon_g_per_kwh"), values.get("price_per_kwh")
    export_price = values.get("export_price_per_kwh")
    surplus = solar_surplus(values)

    reasons: list[str] = []

    def unknown(metric: str, what: str) -> str:
        iv = inputs.get(metric)
        if iv is None:
            return f"{what} unknown (no source configured)"
        status = iv.status(now)
        age = f", {now - iv.measured_at:.0f} s old" if iv.measured_at is not None else ""
        detail = f": {iv.error}" if iv.error else ""
        return f"{what} unknown ({status.value}{age}{detail})"

    solar_peak = surplus is not None and surplus >= t.solar_peak_surplus_w
    clean = carbon is not None and carbon <= t.clean_grid_g_per_kwh
    if surplus is None:
        reasons.append(unknown("pv_w" if "pv_w" in inputs else "grid_w", "solar surplus"))
    elif solar_peak:
        reasons.append(f"solar surplus {_fmt(surplus, 'W')} >= {_fmt(t.solar_peak_surplus_w, 'W')}: "
                       "medium tier and batch work allowed")
    else:
        reasons.append(f"solar surplus {_fmt(surplus, 'W')} < {_fmt(t.solar_peak_surplus_w, 'W')}")
    if carbon is None:
        reasons.append(unknown("carbon_g_per_kwh", "grid carbon intensity"))
    elif clean:
        reasons.append(f"grid carbon {_fmt(carbon, 'g/kWh')} <= {_fmt(t.clean_grid_g_per_kwh, 'g/kWh')}: "
                       "large (cloud) allowed")
    else:
        reasons.append(f"grid carbon {_fmt(carbon, 'g/kWh')} > {_fmt(t.clean_grid_g_per_kwh, 'g/kWh')}")
    mode = EnergyMode.solar_peak if solar_peak else EnergyMode.clean_grid if clean else EnergyMode.prefer_local
    if mode is EnergyMode.prefer_local:
        reasons.append("neither solar peak nor clean grid: prefer local devices")

    # Marginal energy of the site: surplus PV first (its price is the feed-in forgone), then grid.
    pv_price = export_price if export_price is not None else 0.0
    site_g = t.pv_g_per_kwh if surplus else carbon
    site_price = pv_price if surplus else price

    device_out: dict[str, DevicePower] = {}
    for d in devices:
        on_battery = d.source == "battery" and not d.charging
        pv = values.get("pv_w")
        if d.source == "solar" and pv is not None and pv > 0:
            g, p = t.pv_g_per_kwh, 0.0  # its own panel while the sun shines (the site's PV says when)
        else:  # a solar device at night, or with no PV reading, draws from its store or the grid
            # Share of this device's draw that the surplus covers.
            cover = 0.0
            if surplus:
                cover = 1.0 if not d.active_w else min(1.0, surplus / d.active_w)
            g = None if carbon is None and cover < 1 else cover * t.pv_g_per_kwh + (1 - cover) * (carbon or 0.0)
            p = None if price is None and cover < 1 else cover * pv_price + (1 - cover) * (price or 0.0)
            if d.source == "battery":  # it will be recharged from the site, with losses
                g = None if g is None else g / t.battery_efficiency
                p = None if p is None else p / t.battery_efficiency
        d_reasons: list[str]
        if on_battery and d.battery_pct is not None and d.battery_pct < t.battery_tiny_only_pct:
            d_mode = EnergyMode.tiny_only
            d_reasons = [f"on battery at {d.battery_pct:.0f} % < {t.battery_tiny_only_pct:.0f} %: tiny models only"]
        elif on_battery and d.battery_pct is not None and d.battery_pct < t.battery_prefer_small_pct:
            d_mode = EnergyMode.prefer_small
            d_reasons = [f"on battery at {d.battery_pct:.0f} % < {t.battery_prefer_small_pct:.0f} %: prefer small"]
        else:
            d_mode, d_reasons = mode, ["follows the site mode"]
        device_out[d.device_id] = DevicePower(
            source=d.source, battery_pct=d.battery_pct, charging=d.charging, on_mains=not on_battery,
            mode=d_mode, mode_reasons=d_reasons,
            marginal_g_per_kwh=None if g is None else round(g, 3),
            marginal_price_per_kwh=None if p is None else round(p, 5),
            report_age_s=None if d.report_at is None else round(now - d.report_at, 3),
        )

    def fc(metric: str) -> list[ForecastOut]:
        return [ForecastOut(start=f.start, end=f.end, value=f.value) for f in forecasts.get(metric, []) if f.end > now]

    return EnergySnapshot(
        now=now, mode=mode, mode_reasons=reasons,
        carbon_g_per_kwh=carbon, carbon_forecast=fc("carbon_g_per_kwh"), pv_forecast=fc("pv_w"),
        price_per_kwh=price, price_forecast=fc("price_per_kwh"), export_price_per_kwh=export_price,
        pv_w=values.get("pv_w"), load_w=values.get("load_w"), grid_w=values.get("grid_w"),
        battery_soc_pct=values.get("battery_soc_pct"), solar_surplus_w=surplus,
        site_marginal_g_per_kwh=site_g, site_marginal_price_per_kwh=site_price,
        devices=device_out,
        inputs={m: InputOut(value=iv.value, unit=METRICS[m].unit, source=iv.source, status=iv.status(now),
                            age_s=None if iv.measured_at is None else round(now - iv.measured_at, 3),
                            error=iv.error or None)
                for m, iv in inputs.items()},
    )
