"""Energy snapshot and mode (pure), the input store, forecast windows and SQLite history."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from hub.bus import EventBus
from hub.energy.forecast import NoWindow, best_window, mean_over
from hub.energy.model import EnergyMode, ForecastPoint, InputStatus, InputValue, ModeThresholds
from hub.energy.snapshot import DeviceEnergyView, compute_snapshot, solar_surplus
from hub.energy.store import EnergyReading, EnergyStore
from hub.history import SqliteHistory
from hub.rejects import Rejections
from hub.state import StateStore

NOW = 1_800_000_000.0
T = ModeThresholds()


def iv(metric: str, value: float | None, age: float = 0, stale_after: float = 300, error: str = "") -> InputValue:
    return InputValue(metric, value, "test", None if value is None else NOW - age, stale_after, error,
                      NOW if error else None)


def snap(devices: list[DeviceEnergyView] = (), **values: float):  # type: ignore[assignment]
    return compute_snapshot(NOW, {m: iv(m, v) for m, v in values.items()}, {}, devices, T)


def phone(pct: float, charging: bool = False) -> DeviceEnergyView:
    return DeviceEnergyView("phone", "battery", pct, charging, 4.0, NOW)


def test_modes_follow_carbon_and_solar() -> None:
    assert snap(carbon_g_per_kwh=250, pv_w=0, load_w=500).mode is EnergyMode.prefer_local
    clean = snap(carbon_g_per_kwh=80, pv_w=0, load_w=500)
    assert clean.mode is EnergyMode.clean_grid and any("80 g/kWh <= 100" in r for r in clean.mode_reasons)
    sunny = snap(carbon_g_per_kwh=250, pv_w=4000, load_w=600)
    assert sunny.mode is EnergyMode.solar_peak and sunny.solar_surplus_w == 3400
    assert any("3400 W >= 1500 W" in r for r in sunny.mode_reasons)
    # Both: the solar peak comes first in the design's order.
    assert snap(carbon_g_per_kwh=50, pv_w=4000, load_w=600).mode is EnergyMode.solar_peak


def test_thresholds_are_configurable() -> None:
    t = ModeThresholds(clean_grid_g_per_kwh=200, solar_peak_surplus_w=5000)
    s = compute_snapshot(NOW, {"carbon_g_per_kwh": iv("carbon_g_per_kwh", 150), "pv_w": iv("pv_w", 4000),
                               "load_w": iv("load_w", 600)}, {}, [], t)
    assert s.mode is EnergyMode.clean_grid


def test_device_battery_modes() -> None:
    assert snap([phone(15)], carbon_g_per_kwh=50).devices["phone"].mode is EnergyMode.tiny_only
    assert snap([phone(35)], carbon_g_per_kwh=50).devices["phone"].mode is EnergyMode.prefer_small
    assert snap([phone(80)], carbon_g_per_kwh=50).devices["phone"].mode is EnergyMode.clean_grid
    charging = snap([phone(15, charging=True)], carbon_g_per_kwh=50).devices["phone"]
    assert charging.mode is EnergyMode.clean_grid and charging.on_mains
    assert "15 % < 20 %" in snap([phone(15)]).devices["phone"].mode_reasons[0]


def test_marginal_carbon_and_price_of_each_power_source() -> None:
    box = DeviceEnergyView("box", "mains", None, None, 400.0, NOW)
    panel = DeviceEnergyView("node", "solar", None, None, 1.0, NOW)
    s = snap([box, panel, phone(60)], carbon_g_per_kwh=200, price_per_kwh=0.30, export_price_per_kwh=0.10,
             pv_w=700, load_w=500)
    # 200 W of surplus covers half of the box's 400 W: half PV (0 g, the 0.10 feed-in forgone), half grid.
    assert s.devices["box"].marginal_g_per_kwh == pytest.approx(100)
    assert s.devices["box"].marginal_price_per_kwh == pytest.approx(0.20)
    assert s.devices["node"].marginal_g_per_kwh == 0 and s.devices["node"].marginal_price_per_kwh == 0
    # The phone's 4 W are covered by the surplus; recharging loses 10 %.
    assert s.devices["phone"].marginal_price_per_kwh == pytest.approx(0.10 / 0.9, rel=1e-3)
    night = snap([box], carbon_g_per_kwh=200, price_per_kwh=0.30, pv_w=0, load_w=500)
    assert night.devices["box"].marginal_g_per_kwh == 200 and night.site_marginal_g_per_kwh == 200


def test_surplus_prefers_measured_export() -> None:
    assert solar_surplus({"grid_w": -1200.0, "battery_w": -300.0, "pv_w": 5000.0, "load_w": 100.0}) == 1500
    assert solar_surplus({"grid_w": 800.0}) == 0
    assert solar_surplus({"pv_w": 3000.0, "load_w": 1000.0}) == 2000
    assert solar_surplus({"load_w": 1000.0}) is None


def test_stale_carbon_is_not_used_and_says_why() -> None:
    s = compute_snapshot(NOW, {"carbon_g_per_kwh": iv("carbon_g_per_kwh", 50, age=900, stale_after=600)}, {}, [], T)
    assert s.carbon_g_per_kwh is None and s.mode is EnergyMode.prefer_local
    assert any("grid carbon intensity unknown (stale, 900 s old)" in r for r in s.mode_reasons)
    assert s.inputs["carbon_g_per_kwh"].status is InputStatus.stale and s.inputs["carbon_g_per_kwh"].age_s == 900


def test_missing_inputs_are_named() -> None:
    s = compute_snapshot(NOW, {}, {}, [], T)
    assert s.mode is EnergyMode.prefer_local
    assert any("no source configured" in r for r in s.mode_reasons)


@pytest.fixture
def store() -> EnergyStore:
    bus = EventBus()
    return EnergyStore(bus, Rejections(StateStore(bus)), max_site_power_w=30_000)


@pytest.mark.parametrize("metric,value,why", [
    ("battery_soc_pct", -5, "outside the plausible range"),
    ("pv_w", 10_000_000, "outside the plausible range [0, 30000]"),
    ("carbon_g_per_kwh", math.nan, "not a finite number"),
    ("carbon_g_per_kwh", math.inf, "not a finite number"),
    ("watts", 5, "unknown metric"),
])
def test_implausible_readings_keep_the_last_good_value(store: EnergyStore, metric: str, value: float, why: str) -> None:
    good_metric = metric if metric != "watts" else "pv_w"
    assert store.report("inv", good_metric, 40, at=NOW - 10)
    assert not store.report("inv", metric, value, at=NOW)
    kept = store.inputs[good_metric] if metric != "watts" else store.inputs["pv_w"]
    assert kept.value == 40
    if metric != "watts":
        assert why in kept.error and kept.status(NOW) is InputStatus.invalid
        assert kept.status(NOW + 400) is InputStatus.stale, "the last good value ages"
    assert store._rejections._state.counters["rejected_readings"] == 1


def test_good_reading_clears_the_error_and_is_recorded(store: EnergyStore) -> None:
    seen: list[EnergyReading] = []
    store._bus.subscribe(EnergyReading, seen.append)
    store.fail("inv", "pv_w", "HTTP 503", at=NOW)
    assert store.inputs["pv_w"].status(NOW) is InputStatus.missing
    store.report("inv", "pv_w", 1234, at=NOW + 1)
    assert store.inputs["pv_w"].status(NOW + 1) is InputStatus.ok and not store.inputs["pv_w"].error
    assert [(r.metric, r.value) for r in seen] == [("pv_w", 1234)]


def test_forecast_points_are_checked(store: EnergyStore) -> None:
    kept = store.set_forecast("api", "carbon_g_per_kwh", [
        ForecastPoint(NOW, NOW + 1800, 120), ForecastPoint(NOW + 1800, NOW + 3600, -4),
        ForecastPoint(NOW + 3600, NOW + 3600, 80), ForecastPoint(NOW + 3600, NOW + 5400, 90)])
    assert kept == 2 and [p.value for p in store.forecasts["carbon_g_per_kwh"]] == [120, 90]


def hours(values: list[float], start: float = NOW) -> list[ForecastPoint]:
    return [ForecastPoint(start + i * 3600, start + (i + 1) * 3600, v) for i, v in enumerate(values)]


def test_best_window_by_carbon() -> None:
    fc = hours([300, 250, 90, 80, 200, 310])
    w = best_window(fc, 2 * 3600, NOW, NOW + 6 * 3600)
    assert (w.start, w.mean) == (NOW + 2 * 3600, 85)
    # The deadline rules out the clean hours.
    w = best_window(fc, 2 * 3600, NOW, NOW + 3 * 3600)
    assert w.start == NOW + 3600 and w.mean == pytest.approx((250 + 90) / 2)
    # Half-hour alignment: a window may start mid-interval.
    assert mean_over(fc, NOW + 1800, NOW + 5400) == pytest.approx((300 + 250) / 2)


def test_best_window_errors() -> None:
    with pytest.raises(NoWindow, match="deadline"):
        best_window(hours([100]), 7200, NOW, NOW + 3600)
    with pytest.raises(NoWindow, match="does not cover"):
        best_window(hours([100], start=NOW + 86400), 3600, NOW, NOW + 7200)


def test_sqlite_history_raw_rollup_and_retention(tmp_path: Path) -> None:
    h = SqliteHistory(tmp_path / "h.sqlite3", raw_retention_days=1, rollup_retention_days=30)
    day = 86400
    for i in range(0, 3 * day, 30):  # three days of 30 s points: value = hour of the day
        h.add("carbon_g_per_kwh", NOW - 3 * day + i, float((i // 3600) % 24))
    h.flush()
    recent = h.query("carbon_g_per_kwh", NOW - 3600, NOW, 600, now=NOW)
    assert len(recent) == 6 and all(b.n == 20 for b in recent)
    assert recent[0].mean == 23 and recent[0].min == 23
    h.apply_retention(NOW)
    # Older than the raw retention: answered from the 5-minute aggregates, same means.
    old = h.query("carbon_g_per_kwh", NOW - 2 * day, NOW - 2 * day + 3600, 3600, now=NOW)
    assert len(old) == 1 and old[0].n == 120 and old[0].mean == 0.0
    assert h.query("carbon_g_per_kwh", NOW - 2 * day, NOW - 2 * day + 3600, 60, now=NOW)[0].n == 10, \
        "steps below 5 min fall back to the aggregates' resolution"
    assert h.metrics() == ["carbon_g_per_kwh"]
    h.close()


async def test_poller_retries_with_backoff_then_reports_why() -> None:
    import asyncio

    from hub.plugin_api import Poller, SourceError
    calls: list[float] = []
    failures: list[str] = []
    loop = asyncio.get_running_loop()

    async def fetch() -> None:
        calls.append(loop.time())
        if len(calls) == 1:
            await asyncio.sleep(1)  # longer than the timeout
        if len(calls) == 2:
            raise SourceError("Status.Code 8: device not ready")
        if len(calls) == 3:
            raise KeyError("P_PV")  # a plugin bug must not end the polling

    p = Poller(fetch, failures.append, interval_s=10, timeout_s=0.2, retries=2)
    assert await p.attempt() == "KeyError: 'P_PV'"
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert gaps[0] >= 1.0 + 0.2 - 0.05 and gaps[1] >= 2.0 - 0.05, f"backoff 1 s then 2 s, got {gaps}"
    assert await p.attempt() is None and p.successes == 1 and p.failures == 1
