"""Fronius Solar API v1 against a stand-in server on loopback.

A Fronius inverter cannot run here. The stand-in serves GetPowerFlowRealtimeData.fcgi answers in
the shape of the example in Fronius' "Solar API V1" documentation (Head.Status.Code/Reason/
UserMessage; Body.Data.Site.P_PV, P_Load negative while consuming, P_Grid positive on import,
P_Akku, Meter_Location, Mode; Body.Data.Inverters."1".P, SOC).
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from aiohttp import web

from .conftest import reading, wait_for
from .test_energy_grid_apis import serve

DOC = {
    "Body": {"Data": {
        "Inverters": {"1": {"DT": 99, "E_Day": 8130.0, "E_Total": 11456100.0, "E_Year": 1840900.0, "P": 3612.0,
                            "SOC": 62.5}},
        "Site": {"E_Day": 8130.0, "E_Total": 11456100.0, "E_Year": 1840900.0, "Meter_Location": "grid",
                 "Mode": "bidirectional", "P_Akku": -450.0, "P_Grid": -2262.0, "P_Load": -900.0, "P_PV": 3612.0,
                 "rel_Autonomy": 100.0, "rel_SelfConsumption": 37.4},
        "Version": "12"}},
    "Head": {"RequestArguments": {}, "Status": {"Code": 0, "Reason": "", "UserMessage": ""},
             "Timestamp": "2026-11-24T12:00:00+01:00"},
}


async def test_fronius_power_flow_and_bad_answers(mosquitto: Any, make_hub: Any) -> None:
    state: dict[str, Any] = {"doc": DOC, "status": 200, "raw": None, "delay": 0.0}

    async def flow(_: web.Request) -> web.Response:
        await asyncio.sleep(state["delay"])
        if state["raw"] is not None:
            return web.Response(text=state["raw"], status=state["status"])
        return web.json_response(state["doc"], status=state["status"])

    async with serve({"/solar_api/v1/GetPowerFlowRealtimeData.fcgi": flow}) as url:
        async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                            plugins={"fronius": {"url": url, "poll_interval_s": 1, "timeout_s": 0.4,
                                                 "retries": 0}}) as hub:
            await wait_for(lambda: reading(hub, "battery_soc_pct") is not None, 30, what="first poll")
            snap = hub.energy_snapshot()
            assert (snap.pv_w, snap.load_w, snap.grid_w, snap.battery_soc_pct) == (3612, 900, -2262, 62.5)
            assert hub.energy.inputs["battery_w"].value == -450
            # Export 2262 W plus 450 W going into the home battery.
            assert snap.solar_surplus_w == 2712 and snap.mode.value == "solar_peak"

            night = copy.deepcopy(DOC)
            night["Body"]["Data"]["Site"].update(P_PV=None, P_Grid=700.0, P_Akku=None)
            state["doc"] = night
            await wait_for(lambda: hub.energy_snapshot().pv_w == 0, 60, what="night: P_PV null → 0 W")
            assert hub.energy_snapshot().grid_w == 700 and hub.energy_snapshot().solar_surplus_w == 0

            bad_status = copy.deepcopy(DOC)
            bad_status["Head"]["Status"] = {"Code": 8, "Reason": "Transfer timeout", "UserMessage": ""}
            huge = copy.deepcopy(DOC)
            huge["Body"]["Data"]["Site"]["P_PV"] = 10_000_000.0
            for status, doc, raw, delay, metric, why in (
                    (500, DOC, None, 0.0, "pv_w", "HTTP 500"),
                    (200, DOC, "<html>not json</html>", 0.0, "pv_w", "not JSON"),
                    (200, bad_status, None, 0.0, "grid_w", "Status.Code 8: Transfer timeout"),
                    (200, huge, None, 0.0, "pv_w", "outside the plausible range"),
                    (200, DOC, None, 1.0, "load_w", "no answer within 0.4 s")):
                state.update(status=status, doc=doc, raw=raw, delay=delay)
                await wait_for(lambda m=metric, w=why: w in hub.energy.inputs[m].error, 60, what=why)
                assert hub.energy.inputs["pv_w"].value == 0, "the last good value is kept"
            state.update(status=200, doc=DOC, raw=None, delay=0.0)
            await wait_for(lambda: hub.energy_snapshot().pv_w == 3612, 60, what="recovery")
            assert hub.state.counters["rejected_readings"] >= 1
