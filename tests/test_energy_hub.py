"""Energy in a running hub: replay and tariff plugins, /api/energy, history, the MQTT snapshot,
the CLI, and bad CSV input."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp

from plugins.tariff import Period, TariffConfig, price_at, schedule

from .conftest import ROOT, reading, retained_messages, retained_until, wait_for

# Replay the real 2020 GB data from a sunny noon in June, an hour per real second.
REPLAY = {"speed": 3600, "report_interval_s": 0.2, "start": "2020-06-21T11:00:00", "solar_peak_w": 5000,
          "load_w": 600}


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as resp:
        return resp.status, await resp.json()


async def test_energy_api_with_replay(mosquitto: Any, make_hub: Any, spawn_agent: Any) -> None:
    # The replay's clock starts with the hub and runs an hour a second: the agent is started (and
    # its retained announcement waited for) first, so that its start-up, slow on a busy machine,
    # does not carry the replay past the afternoon before the first look.
    agent = spawn_agent(mosquitto.url, "phone", None, "--no-zeroconf", "--battery-pct", "15", "--heartbeat-s", "0.5")
    await retained_until(mosquitto.port, f"sovereign/device/{agent.device_id}/announce", bool, 60, "the agent")
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, energy={"publish_interval_s": 0.5,
                                                                             "min_publish_interval_s": 0.1},
                        plugins={"replay": REPLAY}) as hub:
        await wait_for(lambda: (r := hub.registry.get(agent.device_id)) and r.energy, 30, what="agent")
        async with aiohttp.ClientSession() as s:
            await wait_for(lambda: reading(hub, "pv_w") is not None, 30, what="replayed PV")
            status, snap = await get(s, f"{hub.http_url}/api/energy")
            assert status == 200
            for key in ("mode", "mode_reasons", "carbon_g_per_kwh", "solar_surplus_w", "devices", "inputs"):
                assert key in snap
            assert snap["carbon_g_per_kwh"] > 0 and snap["mode_reasons"]
            assert snap["pv_w"] > 1500, "a June noon in GB, scaled to a 5 kW roof"
            assert snap["mode"] == "solar_peak"
            assert 90 <= len(snap["carbon_forecast"]) <= 100, "48 h of half-hour points"
            assert snap["carbon_forecast"][-1]["end"] - snap["now"] <= 48 * 3600 / 3600 + 1, "in clock time"
            assert snap["inputs"]["carbon_g_per_kwh"]["age_s"] < 2
            assert snap["devices"][agent.device_id]["mode"] == "tiny_only"
            # Values change as the replay advances (an evening comes in a few seconds).
            seen = set()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and len(seen) < 4:
                seen.add(round((await get(s, f"{hub.http_url}/api/energy"))[1]["carbon_g_per_kwh"], 3))
                await asyncio.sleep(0.3)  # between samples
            assert len(seen) >= 4
            await wait_for(lambda: hub.energy_snapshot().pv_w == 0, 60, what="sunset in the replay")
            assert hub.energy_snapshot().mode in ("prefer_local", "clean_grid")
            # History: readings and derived values are recorded (written out every 0.5 s).

            async def carbon_history() -> Any:
                status, hist = await get(s, f"{hub.http_url}/api/energy/history?metric=carbon_g_per_kwh"
                                            "&since=-5m&step=5s")
                assert status == 200, hist
                return hist if len(hist["points"]) >= 3 else None

            hist = await wait_for(carbon_history, 30, interval=0.1, what="3 points of carbon history")
            assert hist["points"][0]["n"] >= 1
            status, hist = await get(s, f"{hub.http_url}/api/energy/history?metric=energy_mode&since=-5m&step=1m")
            assert status == 200 and hist["points"]
            status, hist = await get(s, f"{hub.http_url}/api/energy/history?metric=device.{agent.device_id}.battery_pct"
                                        "&since=-5m&step=1m")
            assert hist["points"][0]["mean"] == 15
            for bad in ("since=-5m", "metric=x&step=0", "metric=x&step=abc", "metric=x&since=yesterday",
                        "metric=x&since=now&until=-1h", "metric=x&since=-365d&step=1s"):
                status, body = await get(s, f"{hub.http_url}/api/energy/history?{bad}")
                assert status == 400 and body["error"]["message"], bad
            # The best window for a 2-hour job due within 20 hours — of replayed time, which runs
            # 3600 times faster than the clock: 2 s and 20 s.
            status, win = await get(s, f"{hub.http_url}/api/energy/best-window?duration=2s&deadline=20s&by=carbon")
            assert status == 200 and win["mean"] <= win["if_started_now"] and win["wait_s"] >= 0
            status, body = await get(s, f"{hub.http_url}/api/energy/best-window?duration=2h&deadline=1h")
            assert status == 422 and body["error"]["code"] == "no_window"
        # The snapshot is retained on MQTT for other devices and Home Assistant.
        site = await asyncio.to_thread(retained_messages, mosquitto.port, "sovereign/energy/site")
        assert json.loads(site["sovereign/energy/site"])["mode"] in ("solar_peak", "prefer_local", "clean_grid")
        # And the CLI prints it.
        out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "hub", "energy", "--url", hub.http_url],
                                      capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert out.returncode == 0 and out.stdout.startswith("mode: ") and "carbon_g_per_kwh" in out.stdout


async def test_bad_csv_fails_the_plugin_with_a_reason(mosquitto: Any, make_hub: Any, tmp_path: Path) -> None:
    bad = tmp_path / "carbon.csv"
    bad.write_text("When,Value\n2020-01-01 00:00:00,100\n")
    async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                        plugins={"replay": {"carbon_csv": str(bad), "solar_csv": None}}) as hub:
        status = hub.plugins.statuses["replay"]
        assert status.state == "failed" and "expected the header 'Time,Carbon Intensity'" in status.error
        assert hub.energy_snapshot().carbon_g_per_kwh is None
    rows = tmp_path / "rows.csv"
    rows.write_text("Time,Carbon Intensity\n2020-01-01 00:00:00,100\nnot a time,5\n2020-01-01 00:30:00,nan\n"
                    "2020-01-01 01:00:00,120\n")
    async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                        plugins={"replay": {"carbon_csv": str(rows), "solar_csv": None,
                                            "start": "2020-01-01T00:40:00", "report_interval_s": 0.2}}) as hub:
        await wait_for(lambda: reading(hub, "carbon_g_per_kwh") is not None, 30, what="replayed carbon")
        assert hub.energy.inputs["carbon_g_per_kwh"].value == 100, "unreadable rows skipped, not fatal"


def test_tariff_time_of_use() -> None:
    cfg = TariffConfig(price_per_kwh=0.30, timezone="Europe/London",
                       periods=[Period(start="23:30", end="05:30", price_per_kwh=0.07),
                                Period(start="16:00", end="19:00", price_per_kwh=0.45, days=["mon", "tue", "wed",
                                                                                           "thu", "fri"])])

    def at(iso: str) -> float:
        return price_at(cfg, datetime.fromisoformat(iso).timestamp())

    assert at("2026-07-06T02:00:00+01:00") == 0.07  # Monday night (BST), wraps past midnight
    assert at("2026-07-06T23:45:00+01:00") == 0.07
    assert at("2026-07-06T12:00:00+01:00") == 0.30
    assert at("2026-07-06T17:00:00+01:00") == 0.45  # weekday peak
    assert at("2026-07-05T17:00:00+01:00") == 0.30  # Sunday: no peak
    start = datetime(2026, 7, 6, 12, 0, tzinfo=timezone.utc).timestamp()
    plan = schedule(cfg, start)
    assert plan[0].start == start and plan[-1].end == start + 48 * 3600
    assert all(a.end == b.start for a, b in zip(plan, plan[1:])), "contiguous"
    assert {p.value for p in plan} == {0.07, 0.30, 0.45}


async def test_tariff_plugin_reports_price(mosquitto: Any, make_hub: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                        plugins={"tariff": {"price_per_kwh": 0.25, "export_price_per_kwh": 0.05}}) as hub:
        await wait_for(lambda: reading(hub, "price_per_kwh") is not None, 30, what="price")
        snap = hub.energy_snapshot()
        assert snap.price_per_kwh == 0.25 and snap.export_price_per_kwh == 0.05 and snap.price_forecast
